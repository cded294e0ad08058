/*
 * Unit tests for src/tls/ca.c: CA creation and loading (modes, fields, refusal
 * cases), leaf issuing (SANs, verification, a TLS handshake), the LRU cache,
 * renewal and ca-bundle.pem. The test program defines time() to move the
 * clock forward for the renewal test. (What an issue costs is measured by
 * bench/ca_issue, not asserted here.)
 */
#include "tls/ca.h"

#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SYSTEM_TRUST_FILE "/etc/ssl/certs/ca-certificates.crt"

/* ---- a movable clock: this definition takes the place of libc's time() ---- */

static time_t clock_offset;

time_t time(time_t *t)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	time_t now = ts.tv_sec + clock_offset;
	if (t)
		*t = now;
	return now;
}

/* ---- helpers ---- */

static char top_dir[64]; /* made by main, removed by main whatever happens */
static char tmp_dir[128];
static char state[160];
static char err[512];

static void rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		if (!d)
			return;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char sub[512];
			snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
			rm_rf(sub);
		}
		closedir(d);
		rmdir(path);
	} else {
		unlink(path);
	}
}

static void setup(void)
{
	clock_offset = 0;
	snprintf(tmp_dir, sizeof tmp_dir, "%s/t.XXXXXX", top_dir);
	ck_assert_ptr_nonnull(mkdtemp(tmp_dir));
	snprintf(state, sizeof state, "%s/state", tmp_dir);
	err[0] = '\0';
}

static void teardown(void)
{
	rm_rf(tmp_dir);
}

static char *path_in(const char *dir, const char *name)
{
	static char bufs[4][512];
	static int i;
	char *p = bufs[i++ % 4];
	snprintf(p, 512, "%s/%s", dir, name);
	return p;
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static struct local_ca *open_ok(const char *dir, unsigned cache_size)
{
	struct local_ca *ca = local_ca_open(dir, cache_size, err, sizeof err);
	ck_assert_msg(ca, "local_ca_open: %s", err);
	return ca;
}

static void open_fails(const char *dir, const char *needle)
{
	err[0] = '\0';
	struct local_ca *ca = local_ca_open(dir, 8, err, sizeof err);
	ck_assert_ptr_null(ca);
	ck_assert_msg(strstr(err, needle), "error \"%s\" lacks \"%s\"", err, needle);
}

static gnutls_x509_crt_t ca_crt(struct local_ca *ca)
{
	size_t len;
	const char *pem = local_ca_pem(ca, &len);
	gnutls_datum_t d = {(unsigned char *)pem, (unsigned)len};
	gnutls_x509_crt_t crt;
	ck_assert_int_eq(gnutls_x509_crt_init(&crt), 0);
	ck_assert_int_eq(gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM), 0);
	return crt;
}

/* Certificate idx of the leaf's chain (0: the leaf, 1: the CA). */
static gnutls_x509_crt_t leaf_crt(struct local_ca_leaf *leaf, unsigned idx)
{
	gnutls_datum_t der;
	ck_assert_int_eq(gnutls_certificate_get_crt_raw(local_ca_leaf_creds(leaf), 0, idx, &der),
	                 0);
	gnutls_x509_crt_t crt;
	ck_assert_int_eq(gnutls_x509_crt_init(&crt), 0);
	ck_assert_int_eq(gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER), 0);
	return crt;
}

static struct local_ca_leaf *get(struct local_ca *ca, const char *host, bool want_issued)
{
	bool issued = !want_issued;
	struct local_ca_leaf *l = local_ca_leaf_get(ca, host, &issued, err, sizeof err);
	ck_assert_msg(l, "leaf for %s: %s", host, err);
	ck_assert_msg(issued == want_issued, "%s: issued=%d", host, issued);
	return l;
}

/* Verifies leaf against the CA, for purpose serverAuth and host name host. */
static void verify_leaf(struct local_ca *ca, struct local_ca_leaf *leaf, const char *host)
{
	gnutls_x509_crt_t cacrt = ca_crt(ca);
	gnutls_x509_crt_t chain[2] = {leaf_crt(leaf, 0), leaf_crt(leaf, 1)};
	unsigned status = ~0u;
	ck_assert_int_eq(gnutls_x509_crt_verify(chain[0], &cacrt, 1, 0, &status), 0);
	ck_assert_uint_eq(status, 0);

	gnutls_x509_trust_list_t tl;
	ck_assert_int_eq(gnutls_x509_trust_list_init(&tl, 0), 0);
	gnutls_x509_crt_t copy = ca_crt(ca); /* the list owns it */
	ck_assert_int_eq(gnutls_x509_trust_list_add_cas(tl, &copy, 1, 0), 1);
	gnutls_typed_vdata_st vdata[2] = {
	    {GNUTLS_DT_DNS_HOSTNAME, (unsigned char *)host, 0},
	    {GNUTLS_DT_KEY_PURPOSE_OID, (unsigned char *)GNUTLS_KP_TLS_WWW_SERVER, 0},
	};
	status = ~0u;
	ck_assert_int_eq(
	    gnutls_x509_trust_list_verify_crt2(tl, chain, 2, vdata, 2, 0, &status, NULL), 0);
	ck_assert_msg(status == 0, "verification status %#x for %s", status, host);
	gnutls_x509_trust_list_deinit(tl, 1);
	gnutls_x509_crt_deinit(chain[0]);
	gnutls_x509_crt_deinit(chain[1]);
	gnutls_x509_crt_deinit(cacrt);
}

/* The subject (or issuer) name in RFC 4514 order, as `openssl -nameopt RFC2253` shows it. */
static void get_dn(gnutls_x509_crt_t crt, bool issuer, char *out, size_t size)
{
	gnutls_datum_t dn;
	ck_assert_int_eq(issuer ? gnutls_x509_crt_get_issuer_dn3(crt, &dn, 0)
	                        : gnutls_x509_crt_get_dn3(crt, &dn, 0),
	                 0);
	snprintf(out, size, "%.*s", (int)dn.size, (char *)dn.data);
	gnutls_free(dn.data);
}

static void key_id(gnutls_x509_crt_t crt, unsigned char *id, size_t *len)
{
	*len = 64;
	ck_assert_int_eq(gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, id, len), 0);
}

/* ---- the CA ---- */

START_TEST(creates_ca)
{
	char deep[200];
	snprintf(deep, sizeof deep, "%s/a/b/state", tmp_dir);
	struct local_ca *ca = open_ok(deep, 8);
	struct stat st;
	ck_assert_int_eq(stat(deep, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0700);
	ck_assert_int_eq(stat(path_in(deep, "ca.pem"), &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	ck_assert_int_eq(stat(path_in(deep, "ca.key"), &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	ck_assert_str_eq(local_ca_cert_path(ca), path_in(deep, "ca.pem"));
	ck_assert_str_eq(local_ca_bundle_path(ca), path_in(deep, "ca-bundle.pem"));

	/* no temporary files left behind */
	DIR *d = opendir(deep);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	ck_assert_int_eq(n, 3);

	/* ca.pem holds what local_ca_pem returns */
	size_t flen, plen;
	char *file = slurp(local_ca_cert_path(ca), &flen);
	const char *pem = local_ca_pem(ca, &plen);
	ck_assert_uint_eq(flen, plen);
	ck_assert_int_eq(memcmp(file, pem, plen), 0);
	ck_assert_uint_eq(strlen(pem), plen);
	free(file);

	gnutls_x509_crt_t crt = ca_crt(ca);
	unsigned critical = 0, is_ca = 0;
	int pathlen = -2;
	ck_assert_int_eq(gnutls_x509_crt_get_basic_constraints(crt, &critical, &is_ca, &pathlen),
	                 1);
	ck_assert_uint_eq(is_ca, 1);
	ck_assert_int_eq(pathlen, 0);
	ck_assert_uint_eq(critical, 1);
	unsigned usage = 0;
	critical = 0;
	ck_assert_int_ge(gnutls_x509_crt_get_key_usage(crt, &usage, &critical), 0);
	ck_assert_uint_eq(critical, 1);
	ck_assert(usage & GNUTLS_KEY_KEY_CERT_SIGN);
	ck_assert(usage & GNUTLS_KEY_CRL_SIGN);
	ck_assert(!(usage & GNUTLS_KEY_DIGITAL_SIGNATURE));
	unsigned char ski[64];
	size_t ski_len = sizeof ski;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_key_id(crt, ski, &ski_len, &critical), 0);
	ck_assert_uint_gt(ski_len, 0);

	time_t nb = gnutls_x509_crt_get_activation_time(crt);
	time_t na = gnutls_x509_crt_get_expiration_time(crt);
	time_t now = time(NULL);
	ck_assert(nb <= now && nb >= now - 2 * 3600);
	double years = (double)(na - now) / (365.25 * 86400);
	ck_assert_msg(years > 9.99 && years < 10.01, "validity %.3f years", years);

	unsigned bits = 0;
	ck_assert_int_eq(gnutls_x509_crt_get_pk_algorithm(crt, &bits), GNUTLS_PK_ECDSA);
	gnutls_ecc_curve_t curve;
	gnutls_datum_t x, y;
	ck_assert_int_eq(gnutls_x509_crt_get_pk_ecc_raw(crt, &curve, &x, &y), 0);
	ck_assert_int_eq(curve, GNUTLS_ECC_CURVE_SECP256R1);
	gnutls_free(x.data);
	gnutls_free(y.data);
	ck_assert_int_eq(gnutls_x509_crt_get_signature_algorithm(crt), GNUTLS_SIGN_ECDSA_SHA256);

	char dn[512];
	get_dn(crt, false, dn, sizeof dn);
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	char want[400];
	snprintf(want, sizeof want, "CN=muxd local CA (%s),O=muxd", host);
	ck_assert_str_eq(dn, want);
	get_dn(crt, true, dn, sizeof dn);
	ck_assert_str_eq(dn, want);

	unsigned char serial[40];
	size_t serial_len = sizeof serial;
	ck_assert_int_eq(gnutls_x509_crt_get_serial(crt, serial, &serial_len), 0);
	ck_assert_uint_eq(serial_len, 16);
	ck_assert_uint_lt(serial[0], 0x80);

	/* the fingerprint is that of the DER certificate */
	unsigned char fp[32];
	size_t fp_len = sizeof fp;
	ck_assert_int_eq(gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, fp, &fp_len), 0);
	char want_fp[128] = "SHA256:", got_fp[128];
	for (size_t i = 0; i < fp_len; i++)
		sprintf(want_fp + strlen(want_fp), i ? ":%02X" : "%02X", fp[i]);
	local_ca_fingerprint(ca, got_fp, sizeof got_fp);
	ck_assert_str_eq(got_fp, want_fp);
	ck_assert_uint_eq(strlen(got_fp), 7 + 32 * 3 - 1);
	char small[10];
	local_ca_fingerprint(ca, small, sizeof small);
	ck_assert_uint_eq(strlen(small), 9);
	ck_assert_int_eq(strncmp(small, want_fp, 9), 0);

	const gnutls_datum_t *tk = local_ca_ticket_key(ca);
	ck_assert_ptr_nonnull(tk->data);
	ck_assert_uint_gt(tk->size, 0);

	gnutls_x509_crt_deinit(crt);
	local_ca_free(ca);
}
END_TEST

START_TEST(reopen_keeps_ca)
{
	struct local_ca *ca = open_ok(state, 8);
	char fp1[128], fp2[128];
	local_ca_fingerprint(ca, fp1, sizeof fp1);
	local_ca_free(ca);
	size_t pl1, kl1, pl2, kl2;
	char *p1 = slurp(path_in(state, "ca.pem"), &pl1);
	char *k1 = slurp(path_in(state, "ca.key"), &kl1);

	ca = open_ok(state, 8);
	local_ca_fingerprint(ca, fp2, sizeof fp2);
	ck_assert_str_eq(fp1, fp2);
	char *p2 = slurp(path_in(state, "ca.pem"), &pl2);
	char *k2 = slurp(path_in(state, "ca.key"), &kl2);
	ck_assert_uint_eq(pl1, pl2);
	ck_assert_uint_eq(kl1, kl2);
	ck_assert_int_eq(memcmp(p1, p2, pl1), 0);
	ck_assert_int_eq(memcmp(k1, k2, kl1), 0);

	/* leaves of the reloaded CA verify too */
	struct local_ca_leaf *l = get(ca, "reload.example", true);
	verify_leaf(ca, l, "reload.example");
	local_ca_leaf_put(l);
	local_ca_free(ca);
	free(p1);
	free(k1);
	free(p2);
	free(k2);
}
END_TEST

START_TEST(loose_key_mode)
{
	local_ca_free(open_ok(state, 8));
	ck_assert_int_eq(chmod(path_in(state, "ca.key"), 0644), 0);
	open_fails(state, "ca.key has mode 0644");
	ck_assert(strstr(err, "chmod 600"));
	ck_assert_int_eq(chmod(path_in(state, "ca.key"), 0640), 0);
	open_fails(state, "mode 0640");
	ck_assert_int_eq(chmod(path_in(state, "ca.key"), 0600), 0);
	local_ca_free(open_ok(state, 8));
}
END_TEST

START_TEST(unreadable_key)
{
	local_ca_free(open_ok(state, 8));
	/* a directory in its place: unreadable even for root */
	ck_assert_int_eq(unlink(path_in(state, "ca.key")), 0);
	ck_assert_int_eq(mkdir(path_in(state, "ca.key"), 0700), 0);
	open_fails(state, "cannot read");
	ck_assert(strstr(err, "ca.key"));
	ck_assert_int_eq(rmdir(path_in(state, "ca.key")), 0);

	/* garbage in the key file */
	int fd = open(path_in(state, "ca.key"), O_WRONLY | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "junk\n", 5), 5);
	close(fd);
	open_fails(state, "ca.key");
}
END_TEST

START_TEST(mismatched_key)
{
	char other[200];
	snprintf(other, sizeof other, "%s/other", tmp_dir);
	local_ca_free(open_ok(state, 8));
	local_ca_free(open_ok(other, 8));
	ck_assert_int_eq(rename(path_in(other, "ca.key"), path_in(state, "ca.key")), 0);
	open_fails(state, "does not match");
	ck_assert(strstr(err, "ca.key") && strstr(err, "ca.pem"));
}
END_TEST

START_TEST(one_file_only)
{
	local_ca_free(open_ok(state, 8));
	size_t len;
	char *key = slurp(path_in(state, "ca.key"), &len);
	ck_assert_int_eq(unlink(path_in(state, "ca.key")), 0);
	open_fails(state, "ca.key does not");
	ck_assert(strstr(err, "ca.pem exists"));
	/* nothing was regenerated */
	struct stat st;
	ck_assert_int_eq(stat(path_in(state, "ca.key"), &st), -1);

	ck_assert_int_eq(unlink(path_in(state, "ca.pem")), 0);
	int fd = open(path_in(state, "ca.key"), O_WRONLY | O_CREAT, 0600);
	ck_assert_int_eq(write(fd, key, len), (ssize_t)len);
	close(fd);
	open_fails(state, "ca.pem does not");
	ck_assert(strstr(err, "ca.key exists"));
	ck_assert_int_eq(stat(path_in(state, "ca.pem"), &st), -1);
	free(key);
}
END_TEST

/* ---- leaves ---- */

START_TEST(leaf_for_name)
{
	struct local_ca *ca = open_ok(state, 8);
	struct local_ca_leaf *l = get(ca, "api.example.com", true);
	verify_leaf(ca, l, "api.example.com");

	gnutls_x509_crt_t crt = leaf_crt(l, 0), cacrt = ca_crt(ca), chain_ca = leaf_crt(l, 1);
	ck_assert(gnutls_x509_crt_equals(cacrt, chain_ca));
	ck_assert(gnutls_x509_crt_check_hostname(crt, "api.example.com"));
	ck_assert(!gnutls_x509_crt_check_hostname(crt, "www.example.com"));

	char san[256];
	size_t san_len = sizeof san;
	unsigned critical;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &san_len, &critical),
	                 GNUTLS_SAN_DNSNAME);
	ck_assert_uint_eq(san_len, strlen("api.example.com"));
	ck_assert_int_eq(memcmp(san, "api.example.com", san_len), 0);
	san_len = sizeof san;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_alt_name(crt, 1, san, &san_len, &critical),
	                 GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);
	char dn[256];
	get_dn(crt, false, dn, sizeof dn);
	ck_assert_str_eq(dn, "CN=api.example.com");

	unsigned is_ca = 1;
	int pathlen;
	ck_assert_int_ge(gnutls_x509_crt_get_basic_constraints(crt, &critical, &is_ca, &pathlen),
	                 0);
	ck_assert_uint_eq(is_ca, 0);
	unsigned usage = 0;
	ck_assert_int_ge(gnutls_x509_crt_get_key_usage(crt, &usage, &critical), 0);
	ck_assert_uint_eq(usage, GNUTLS_KEY_DIGITAL_SIGNATURE);
	char oid[128];
	size_t oid_len = sizeof oid;
	ck_assert_int_eq(gnutls_x509_crt_get_key_purpose_oid(crt, 0, oid, &oid_len, &critical), 0);
	ck_assert_str_eq(oid, GNUTLS_KP_TLS_WWW_SERVER);
	oid_len = sizeof oid;
	ck_assert_int_eq(gnutls_x509_crt_get_key_purpose_oid(crt, 1, oid, &oid_len, &critical),
	                 GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);

	unsigned char aki[64], ski[64];
	size_t aki_len = sizeof aki, ski_len = sizeof ski;
	ck_assert_int_eq(gnutls_x509_crt_get_authority_key_id(crt, aki, &aki_len, &critical), 0);
	ck_assert_int_eq(gnutls_x509_crt_get_subject_key_id(cacrt, ski, &ski_len, &critical), 0);
	ck_assert_uint_eq(aki_len, ski_len);
	ck_assert_int_eq(memcmp(aki, ski, aki_len), 0);

	unsigned char serial[40];
	size_t serial_len = sizeof serial;
	ck_assert_int_eq(gnutls_x509_crt_get_serial(crt, serial, &serial_len), 0);
	ck_assert_uint_eq(serial_len, 16);
	ck_assert_uint_lt(serial[0], 0x80);
	ck_assert_uint_gt(serial[0], 0);

	unsigned bits;
	ck_assert_int_eq(gnutls_x509_crt_get_pk_algorithm(crt, &bits), GNUTLS_PK_ECDSA);
	ck_assert_int_eq(gnutls_x509_crt_get_signature_algorithm(crt), GNUTLS_SIGN_ECDSA_SHA256);

	/* validity: one hour back, four days ahead */
	time_t nb = gnutls_x509_crt_get_activation_time(crt);
	time_t na = gnutls_x509_crt_get_expiration_time(crt);
	time_t now = time(NULL);
	ck_assert_int_eq(na - nb, 4 * 86400 + 3600);
	ck_assert(nb <= now - 3590 && nb >= now - 3610);

	/* a second host: same key, another serial */
	struct local_ca_leaf *l2 = get(ca, "www.example.com", true);
	ck_assert_ptr_ne(l, l2);
	gnutls_x509_crt_t crt2 = leaf_crt(l2, 0);
	unsigned char id1[64], id2[64], s2[40];
	size_t id1_len, id2_len, s2_len = sizeof s2;
	key_id(crt, id1, &id1_len);
	key_id(crt2, id2, &id2_len);
	ck_assert_uint_eq(id1_len, id2_len);
	ck_assert_int_eq(memcmp(id1, id2, id1_len), 0);
	key_id(cacrt, id2, &id2_len);
	ck_assert_int_ne(memcmp(id1, id2, id1_len), 0);
	ck_assert_int_eq(gnutls_x509_crt_get_serial(crt2, s2, &s2_len), 0);
	ck_assert(s2_len != serial_len || memcmp(s2, serial, s2_len) != 0);

	gnutls_x509_crt_deinit(crt);
	gnutls_x509_crt_deinit(crt2);
	gnutls_x509_crt_deinit(cacrt);
	gnutls_x509_crt_deinit(chain_ca);
	local_ca_leaf_put(l);
	local_ca_leaf_put(l2);
	local_ca_free(ca);
}
END_TEST

static void check_ip_leaf(struct local_ca *ca, const char *host, int af, const char *canon)
{
	unsigned char want[16];
	ck_assert_int_eq(inet_pton(af, canon, want), 1);
	size_t want_len = af == AF_INET ? 4 : 16;
	struct local_ca_leaf *l = get(ca, host, true);
	gnutls_x509_crt_t crt = leaf_crt(l, 0);
	unsigned char san[64];
	size_t san_len = sizeof san;
	unsigned critical;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &san_len, &critical),
	                 GNUTLS_SAN_IPADDRESS);
	ck_assert_uint_eq(san_len, want_len);
	ck_assert_int_eq(memcmp(san, want, want_len), 0);
	san_len = sizeof san;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_alt_name(crt, 1, san, &san_len, &critical),
	                 GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE);
	ck_assert(gnutls_x509_crt_check_ip(crt, want, (unsigned)want_len, 0));
	char dn[128], want_dn[128];
	get_dn(crt, false, dn, sizeof dn);
	snprintf(want_dn, sizeof want_dn, "CN=%s", canon);
	ck_assert_str_eq(dn, want_dn);
	verify_leaf(ca, l, canon);
	gnutls_x509_crt_deinit(crt);
	/* the canonical spelling hits the same cache entry */
	struct local_ca_leaf *again = get(ca, canon, false);
	ck_assert_ptr_eq(again, l);
	local_ca_leaf_put(again);
	local_ca_leaf_put(l);
}

START_TEST(leaf_for_ip)
{
	struct local_ca *ca = open_ok(state, 8);
	check_ip_leaf(ca, "127.0.0.1", AF_INET, "127.0.0.1");
	check_ip_leaf(ca, "::1", AF_INET6, "::1");
	check_ip_leaf(ca, "[2001:DB8:0::1]", AF_INET6, "2001:db8::1");
	local_ca_free(ca);
}
END_TEST

START_TEST(bad_hosts)
{
	struct local_ca *ca = open_ok(state, 8);
	const char *bad[] = {"",    "a b",  "x/y",       "evil\n.com",
	                     "a,b", "[::1", "[1.2.3.4]", "*.example.com",
	                     ".",   "a..b", ".a.b",      "fe80::1%eth0"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		bool issued = true;
		err[0] = '\0';
		ck_assert_ptr_null(local_ca_leaf_get(ca, bad[i], &issued, err, sizeof err));
		ck_assert(!issued);
		ck_assert_msg(strstr(err, "not a host name"), "%s", err);
	}
	char longname[300];
	memset(longname, 'a', sizeof longname - 1);
	longname[sizeof longname - 1] = '\0';
	ck_assert_ptr_null(local_ca_leaf_get(ca, longname, NULL, err, sizeof err));
	local_ca_free(ca);
}
END_TEST

START_TEST(cache_hit_and_case)
{
	struct local_ca *ca = open_ok(state, 8);
	struct local_ca_leaf *a = get(ca, "API.Example.COM", true);
	struct local_ca_leaf *b = get(ca, "api.example.com", false);
	ck_assert_ptr_eq(a, b);
	gnutls_x509_crt_t crt = leaf_crt(a, 0);
	ck_assert(gnutls_x509_crt_check_hostname(crt, "api.example.com"));
	char san[64];
	size_t san_len = sizeof san;
	unsigned critical;
	ck_assert_int_eq(gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &san_len, &critical),
	                 GNUTLS_SAN_DNSNAME);
	ck_assert_int_eq(memcmp(san, "api.example.com", san_len), 0);
	gnutls_x509_crt_deinit(crt);
	/* issued may be NULL */
	struct local_ca_leaf *c = local_ca_leaf_get(ca, "api.EXAMPLE.com", NULL, err, sizeof err);
	ck_assert_ptr_eq(c, a);
	local_ca_leaf_put(a);
	local_ca_leaf_put(b);
	local_ca_leaf_put(c);
	/* the cache's own reference keeps it */
	struct local_ca_leaf *d = get(ca, "api.example.com", false);
	ck_assert_ptr_eq(d, a);
	local_ca_leaf_put(d);
	d = get(ca, "api.example.com.", false); /* the absolute form names the same host */
	ck_assert_ptr_eq(d, a);
	local_ca_leaf_put(d);
	local_ca_leaf_put(NULL);
	local_ca_free(ca);
}
END_TEST

START_TEST(lru_eviction)
{
	struct local_ca *ca = open_ok(state, 3);
	struct local_ca_leaf *a = get(ca, "a.test", true);
	local_ca_leaf_put(get(ca, "b.test", true));
	local_ca_leaf_put(get(ca, "c.test", true));
	local_ca_leaf_put(get(ca, "a.test", false)); /* a is now the most recent */
	local_ca_leaf_put(get(ca, "d.test", true));  /* evicts b */
	local_ca_leaf_put(get(ca, "c.test", false));
	local_ca_leaf_put(get(ca, "a.test", false));
	local_ca_leaf_put(get(ca, "d.test", false));
	local_ca_leaf_put(get(ca, "b.test", true)); /* evicts c */
	local_ca_leaf_put(get(ca, "c.test", true)); /* evicts a */
	/* a is out of the cache but still held: its credentials stay valid */
	struct local_ca_leaf *a2 = get(ca, "a.test", true); /* evicts d */
	ck_assert_ptr_ne(a2, a);
	verify_leaf(ca, a, "a.test");
	verify_leaf(ca, a2, "a.test");
	local_ca_leaf_put(a);
	local_ca_leaf_put(a2);
	local_ca_leaf_put(get(ca, "b.test", false));
	local_ca_leaf_put(get(ca, "c.test", false));
	local_ca_leaf_put(get(ca, "d.test", true));

	/* a leaf held past local_ca_free stays valid */
	struct local_ca_leaf *kept = get(ca, "kept.test", true);
	gnutls_x509_crt_t cacrt = ca_crt(ca);
	local_ca_free(ca);
	gnutls_x509_crt_t crt = leaf_crt(kept, 0);
	unsigned status = ~0u;
	ck_assert_int_eq(gnutls_x509_crt_verify(crt, &cacrt, 1, 0, &status), 0);
	ck_assert_uint_eq(status, 0);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_crt_deinit(cacrt);
	local_ca_leaf_put(kept);
}
END_TEST

START_TEST(cache_size_one)
{
	struct local_ca *ca = open_ok(state, 0); /* treated as 1 */
	local_ca_leaf_put(get(ca, "x.test", true));
	local_ca_leaf_put(get(ca, "x.test", false));
	local_ca_leaf_put(get(ca, "y.test", true));
	local_ca_leaf_put(get(ca, "x.test", true));
	local_ca_free(ca);
}
END_TEST

START_TEST(renewal)
{
	struct local_ca *ca = open_ok(state, 8);
	struct local_ca_leaf *old = get(ca, "renew.test", true);
	gnutls_x509_crt_t crt = leaf_crt(old, 0);
	time_t old_na = gnutls_x509_crt_get_expiration_time(crt);
	gnutls_x509_crt_deinit(crt);

	clock_offset = 2 * 86400; /* two days left: still cached */
	local_ca_leaf_put(get(ca, "renew.test", false));
	clock_offset = 3 * 86400 - 60; /* a day and a minute left */
	local_ca_leaf_put(get(ca, "renew.test", false));
	clock_offset = 3 * 86400 + 60; /* under a day left: renewed */
	struct local_ca_leaf *fresh = get(ca, "renew.test", true);
	ck_assert_ptr_ne(fresh, old);
	crt = leaf_crt(fresh, 0);
	time_t na = gnutls_x509_crt_get_expiration_time(crt);
	ck_assert_int_ge(na - old_na, 3 * 86400);
	ck_assert_int_le(na - old_na, 3 * 86400 + 600);
	gnutls_x509_crt_deinit(crt);
	local_ca_leaf_put(get(ca, "renew.test", false));
	clock_offset = 0;
	verify_leaf(ca, old, "renew.test"); /* the held old leaf is intact */
	local_ca_leaf_put(old);
	local_ca_leaf_put(fresh);
	local_ca_free(ca);
}
END_TEST

START_TEST(ticket_key_rotation)
{
	struct local_ca *ca = open_ok(state, 8);
	unsigned char first[64], second[64];
	const gnutls_datum_t *tk = local_ca_ticket_key(ca);
	ck_assert_uint_eq(tk->size, sizeof first);
	memcpy(first, tk->data, sizeof first);

	clock_offset = 86400 - 60; /* under a day: the same key */
	tk = local_ca_ticket_key(ca);
	ck_assert_int_eq(memcmp(tk->data, first, sizeof first), 0);
	clock_offset = 86400 + 60; /* a day old: a new one */
	tk = local_ca_ticket_key(ca);
	ck_assert_uint_eq(tk->size, sizeof second);
	ck_assert_int_ne(memcmp(tk->data, first, sizeof first), 0);
	memcpy(second, tk->data, sizeof second);
	clock_offset = 2 * 86400; /* counted from the new key */
	ck_assert_int_eq(memcmp(local_ca_ticket_key(ca)->data, second, sizeof second), 0);
	clock_offset = 0; /* the clock went back: a new one again */
	tk = local_ca_ticket_key(ca);
	ck_assert_int_ne(memcmp(tk->data, second, sizeof second), 0);
	ck_assert_int_ne(memcmp(tk->data, first, sizeof first), 0);
	local_ca_free(ca);
}
END_TEST

/* ---- a TLS handshake with the leaf's credentials ---- */

static int handshake_step(gnutls_session_t s, bool *done)
{
	if (*done)
		return 0;
	int r = gnutls_handshake(s);
	if (r == 0)
		*done = true;
	else if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED && gnutls_error_is_fatal(r))
		return r;
	return 0;
}

START_TEST(tls_handshake)
{
	struct local_ca *ca = open_ok(state, 8);
	struct local_ca_leaf *leaf = get(ca, "secure.example", true);
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);

	gnutls_session_t srv, cli;
	ck_assert_int_eq(gnutls_init(&srv, GNUTLS_SERVER | GNUTLS_NONBLOCK), 0);
	ck_assert_int_eq(gnutls_set_default_priority(srv), 0);
	ck_assert_int_eq(
	    gnutls_credentials_set(srv, GNUTLS_CRD_CERTIFICATE, local_ca_leaf_creds(leaf)), 0);
	ck_assert_int_eq(gnutls_session_ticket_enable_server(srv, local_ca_ticket_key(ca)), 0);
	gnutls_transport_set_int(srv, sv[0]);

	gnutls_certificate_credentials_t cc;
	ck_assert_int_eq(gnutls_certificate_allocate_credentials(&cc), 0);
	/* trust ca-bundle.pem, as clients pointed at it by `muxd env` do */
	ck_assert_int_ge(gnutls_certificate_set_x509_trust_file(cc, local_ca_bundle_path(ca),
	                                                        GNUTLS_X509_FMT_PEM),
	                 1);
	ck_assert_int_eq(gnutls_init(&cli, GNUTLS_CLIENT | GNUTLS_NONBLOCK), 0);
	ck_assert_int_eq(gnutls_set_default_priority(cli), 0);
	ck_assert_int_eq(gnutls_credentials_set(cli, GNUTLS_CRD_CERTIFICATE, cc), 0);
	ck_assert_int_eq(gnutls_server_name_set(cli, GNUTLS_NAME_DNS, "secure.example", 14), 0);
	gnutls_session_set_verify_cert(cli, "secure.example", 0);
	gnutls_transport_set_int(cli, sv[1]);

	bool sdone = false, cdone = false;
	for (int i = 0; i < 1000 && !(sdone && cdone); i++) {
		ck_assert_int_eq(handshake_step(cli, &cdone), 0);
		ck_assert_int_eq(handshake_step(srv, &sdone), 0);
	}
	ck_assert(sdone && cdone);
	ck_assert_uint_eq(gnutls_session_get_verify_cert_status(cli), 0);

	gnutls_deinit(cli);
	gnutls_deinit(srv);
	gnutls_certificate_free_credentials(cc);
	close(sv[0]);
	close(sv[1]);
	local_ca_leaf_put(leaf);
	local_ca_free(ca);
}
END_TEST

/* ---- ca-bundle.pem ---- */

static void check_bundle(struct local_ca *ca)
{
	size_t blen, plen, slen = 0;
	char *bundle = slurp(local_ca_bundle_path(ca), &blen);
	ck_assert_ptr_nonnull(bundle);
	const char *pem = local_ca_pem(ca, &plen);
	ck_assert_uint_ge(blen, plen);
	ck_assert_int_eq(memcmp(bundle + blen - plen, pem, plen), 0);
	char *sys = slurp(SYSTEM_TRUST_FILE, &slen);
	if (sys) {
		ck_assert_uint_ge(blen, slen + plen);
		ck_assert_int_eq(memcmp(bundle, sys, slen), 0);
		ck_assert_uint_le(blen - slen - plen, 1); /* at most a separating newline */
		free(sys);
	} else {
		ck_assert_uint_eq(blen, plen);
	}
	struct stat st;
	ck_assert_int_eq(stat(local_ca_bundle_path(ca), &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	free(bundle);
}

START_TEST(bundle)
{
	struct local_ca *ca = open_ok(state, 8);
	check_bundle(ca);
	local_ca_free(ca);
	const char *path = path_in(state, "ca-bundle.pem");

	/* deleted: rewritten */
	ck_assert_int_eq(unlink(path), 0);
	ca = open_ok(state, 8);
	check_bundle(ca);
	local_ca_free(ca);

	/* current: left alone */
	struct stat st1, st2;
	ck_assert_int_eq(stat(path, &st1), 0);
	local_ca_free(open_ok(state, 8));
	ck_assert_int_eq(stat(path, &st2), 0);
	ck_assert_uint_eq(st1.st_ino, st2.st_ino);

	/* not ending with the CA: rewritten */
	FILE *f = fopen(path, "w");
	fputs("stale\n", f);
	fclose(f);
	ca = open_ok(state, 8);
	check_bundle(ca);
	local_ca_free(ca);

	/* older than ca.pem: rewritten (a new file replaces it) */
	struct timespec old[2] = {{1000000, 0}, {1000000, 0}};
	ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);
	ck_assert_int_eq(stat(path, &st1), 0);
	ca = open_ok(state, 8);
	check_bundle(ca);
	local_ca_free(ca);
	ck_assert_int_eq(stat(path, &st2), 0);
	ck_assert_uint_ne(st1.st_ino, st2.st_ino);
	ck_assert_int_gt(st2.st_mtim.tv_sec, 1000000);
}
END_TEST

int main(void)
{
	strcpy(top_dir, "/tmp/test_ca.XXXXXX");
	if (!mkdtemp(top_dir)) {
		perror("mkdtemp");
		return EXIT_FAILURE;
	}
	Suite *s = suite_create("ca");
	TCase *tc = tcase_create("ca");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);

	tcase_add_test(tc, creates_ca);
	tcase_add_test(tc, reopen_keeps_ca);
	tcase_add_test(tc, loose_key_mode);
	tcase_add_test(tc, unreadable_key);
	tcase_add_test(tc, mismatched_key);
	tcase_add_test(tc, one_file_only);
	tcase_add_test(tc, leaf_for_name);
	tcase_add_test(tc, leaf_for_ip);
	tcase_add_test(tc, bad_hosts);
	tcase_add_test(tc, cache_hit_and_case);
	tcase_add_test(tc, lru_eviction);
	tcase_add_test(tc, cache_size_one);
	tcase_add_test(tc, renewal);
	tcase_add_test(tc, ticket_key_rotation);
	tcase_add_test(tc, tls_handshake);
	tcase_add_test(tc, bundle);
	suite_add_tcase(s, tc);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	rm_rf(top_dir);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
