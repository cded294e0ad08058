/*
 * ca — muxd's local certificate authority (see ca.h). The CA (ECDSA P-256)
 * lives in state_dir as ca.pem and ca.key, written atomically once and then
 * only loaded. Leaf certificates share one in-memory ECDSA P-256 key, are
 * issued per host on demand and kept in an LRU cache (hash map + list) of
 * reference-counted credentials. Single-threaded: no locking.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls/ca.h"

#define SYSTEM_TRUST_FILE "/etc/ssl/certs/ca-certificates.crt"
#define CA_VALIDITY_DAYS 3652 /* 10 years, leap days included */
#define LEAF_BACKDATE (60 * 60)
#define LEAF_VALIDITY (4 * 24 * 60 * 60)
#define LEAF_RENEW_BEFORE (24 * 60 * 60)
#define SERIAL_SIZE 16
#define HOST_MAX 253
#define FILE_MAX (16 * 1024 * 1024)
#define CACHE_MAX (1u << 22)
/* a new master key for client session tickets once a day: a ticket made
 * under the previous one (GnuTLS's tickets live 6 h) gets a full handshake */
#define TICKET_KEY_LIFETIME (24 * 60 * 60)

struct local_ca_leaf {
	unsigned refs;
	gnutls_certificate_credentials_t creds;
	time_t not_after;
	char *host; /* the cache key: lower case, IP literals in canonical form */
	uint32_t hash;
	struct local_ca_leaf *hnext;       /* hash bucket chain */
	struct local_ca_leaf *prev, *next; /* LRU list, most recently used first */
};

struct local_ca {
	char *cert_path, *key_path, *bundle_path;
	gnutls_x509_crt_t crt;
	gnutls_x509_privkey_t key;
	gnutls_privkey_t signer; /* the CA key, for signing leaves */
	char *pem;
	size_t pem_len;
	char fingerprint[7 + 32 * 3];
	gnutls_datum_t der; /* the CA certificate, DER */
	gnutls_x509_privkey_t leaf_key;
	gnutls_privkey_t leaf_priv; /* the same key, for its public part */
	unsigned char leaf_key_id[64];
	size_t leaf_key_id_len;
	unsigned char ca_key_id[64]; /* the CA's subject key id: the leaves' authority key id */
	size_t ca_key_id_len;
	gnutls_datum_t ticket_key;
	time_t ticket_key_made;
	/* the leaf cache */
	struct local_ca_leaf **buckets;
	size_t nbuckets; /* a power of two */
	unsigned count, cap;
	struct local_ca_leaf *lru_head, *lru_tail;
};

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...)
{
	if (!err || !err_size)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, err_size, fmt, ap);
	va_end(ap);
}

static char *path_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	while (dl > 1 && dir[dl - 1] == '/')
		dl--;
	char *p = malloc(dl + 1 + nl + 1);
	if (!p)
		return NULL;
	memcpy(p, dir, dl);
	p[dl] = '/';
	memcpy(p + dl + 1, name, nl + 1);
	return p;
}

/* ---- files ---- */

/* mkdir -p, creating every missing component with mode 0700. */
static int make_dirs(const char *dir, char *err, size_t err_size)
{
	size_t len = strlen(dir);
	if (len == 0) {
		set_err(err, err_size, "state_dir is empty");
		return -1;
	}
	char *p = strdup(dir);
	if (!p) {
		set_err(err, err_size, "out of memory");
		return -1;
	}
	for (size_t i = 1; i <= len; i++) {
		if (p[i] != '/' && p[i] != '\0')
			continue;
		char c = p[i];
		p[i] = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			set_err(err, err_size, "cannot create %s: %s", p, strerror(errno));
			free(p);
			return -1;
		}
		p[i] = c;
	}
	free(p);
	struct stat st;
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		set_err(err, err_size, "%s is not a directory", dir);
		return -1;
	}
	return 0;
}

/* Reads a whole regular file; NUL-terminated. NULL with errno set on failure. */
static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > FILE_MAX) {
		close(fd);
		errno = S_ISDIR(st.st_mode) ? EISDIR : S_ISREG(st.st_mode) ? EFBIG : EINVAL;
		return NULL;
	}
	size_t cap = (size_t)st.st_size + 2, n = 0; /* room to see EOF */
	char *buf = malloc(cap);
	if (!buf) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	for (;;) {
		if (n + 1 == cap) {
			if (cap > FILE_MAX) {
				free(buf);
				close(fd);
				errno = EFBIG;
				return NULL;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				errno = ENOMEM;
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			close(fd);
			errno = e;
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static void fsync_dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	if (!dir)
		return;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	free(dir);
}

/* Writes a (then b, if any) to path atomically: a temporary file in the same
 * directory, fsync, rename, fsync of the directory. */
static int write_atomic(const char *path, mode_t mode, const void *a, size_t alen, const void *b,
                        size_t blen, char *err, size_t err_size)
{
	size_t pl = strlen(path);
	char *tmp = malloc(pl + 8);
	if (!tmp) {
		set_err(err, err_size, "out of memory");
		return -1;
	}
	memcpy(tmp, path, pl);
	memcpy(tmp + pl, ".XXXXXX", 8);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		set_err(err, err_size, "cannot create a temporary file for %s: %s", path,
		        strerror(errno));
		free(tmp);
		return -1;
	}
	if (fchmod(fd, mode) < 0 || write_all(fd, a, alen) < 0 ||
	    (b && write_all(fd, b, blen) < 0) || fsync(fd) < 0) {
		set_err(err, err_size, "cannot write %s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		free(tmp);
		return -1;
	}
	if (close(fd) < 0 || rename(tmp, path) < 0) {
		set_err(err, err_size, "cannot write %s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return -1;
	}
	free(tmp);
	fsync_dir_of(path);
	return 0;
}

/* ---- the CA ---- */

static int random_serial(gnutls_x509_crt_t crt)
{
	unsigned char serial[SERIAL_SIZE];
	if (gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial) < 0)
		return -1;
	serial[0] &= 0x7f; /* positive */
	if (serial[0] == 0)
		serial[0] = 0x01; /* and exactly SERIAL_SIZE bytes in DER */
	return gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
}

/* Replaces a certificate built in memory by its parsed DER encoding: GnuTLS
 * fills some fields (the raw issuer and subject names that chain building
 * compares) only on import, so a freshly signed certificate would not be
 * recognised as issued by the CA. */
static int reimport(gnutls_x509_crt_t *crt)
{
	gnutls_datum_t der = {NULL, 0};
	gnutls_x509_crt_t fresh = NULL;
	int r = gnutls_x509_crt_export2(*crt, GNUTLS_X509_FMT_DER, &der);
	if (r >= 0)
		r = gnutls_x509_crt_init(&fresh);
	if (r >= 0)
		r = gnutls_x509_crt_import(fresh, &der, GNUTLS_X509_FMT_DER);
	gnutls_free(der.data);
	if (r < 0) {
		if (fresh)
			gnutls_x509_crt_deinit(fresh);
		return r;
	}
	gnutls_x509_crt_deinit(*crt);
	*crt = fresh;
	return 0;
}

static int gen_p256(gnutls_x509_privkey_t *key)
{
	int r = gnutls_x509_privkey_init(key);
	if (r < 0)
		return r;
	r = gnutls_x509_privkey_generate(*key, GNUTLS_PK_ECDSA,
	                                 GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
	if (r < 0) {
		gnutls_x509_privkey_deinit(*key);
		*key = NULL;
	}
	return r;
}

/* Creates a new CA key and self-signed certificate into ca->key and ca->crt. */
static int create_ca(struct local_ca *ca, char *err, size_t err_size)
{
	char host[256] = "";
	if (gethostname(host, sizeof host - 1) < 0 || !host[0])
		strcpy(host, "localhost");
	host[sizeof host - 1] = '\0';
	char cn[320];
	snprintf(cn, sizeof cn, "muxd local CA (%s)", host);

	const char *what = "generate the CA key";
	int r = gen_p256(&ca->key);
	if (r < 0)
		goto fail;
	what = "create the CA certificate";
	if ((r = gnutls_x509_crt_init(&ca->crt)) < 0)
		goto fail;
	time_t now = time(NULL);
	unsigned char kid[64];
	size_t kid_len = sizeof kid;
	if ((r = gnutls_x509_crt_set_version(ca->crt, 3)) < 0 || (r = random_serial(ca->crt)) < 0 ||
	    (r = gnutls_x509_crt_set_dn_by_oid(ca->crt, GNUTLS_OID_X520_ORGANIZATION_NAME, 0,
	                                       "muxd", 4)) < 0 ||
	    (r = gnutls_x509_crt_set_dn_by_oid(ca->crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
	                                       (unsigned)strlen(cn))) < 0 ||
	    (r = gnutls_x509_crt_set_activation_time(ca->crt, now - LEAF_BACKDATE)) < 0 ||
	    (r = gnutls_x509_crt_set_expiration_time(ca->crt,
	                                             now + (time_t)CA_VALIDITY_DAYS * 86400)) < 0 ||
	    (r = gnutls_x509_crt_set_key(ca->crt, ca->key)) < 0 ||
	    (r = gnutls_x509_crt_set_basic_constraints(ca->crt, 1, 0)) < 0 ||
	    (r = gnutls_x509_crt_set_key_usage(ca->crt, GNUTLS_KEY_KEY_CERT_SIGN |
	                                                    GNUTLS_KEY_CRL_SIGN)) < 0 ||
	    (r = gnutls_x509_crt_get_key_id(ca->crt, GNUTLS_KEYID_USE_SHA1, kid, &kid_len)) < 0 ||
	    (r = gnutls_x509_crt_set_subject_key_id(ca->crt, kid, kid_len)) < 0)
		goto fail;
	what = "sign the CA certificate";
	if ((r = gnutls_privkey_init(&ca->signer)) < 0 ||
	    (r = gnutls_privkey_import_x509(ca->signer, ca->key, 0)) < 0 ||
	    (r = gnutls_x509_crt_privkey_sign(ca->crt, ca->crt, ca->signer, GNUTLS_DIG_SHA256, 0)) <
	        0 ||
	    (r = reimport(&ca->crt)) < 0)
		goto fail;

	what = "export the CA";
	gnutls_datum_t kpem = {NULL, 0}, cpem = {NULL, 0};
	if ((r = gnutls_x509_privkey_export2_pkcs8(ca->key, GNUTLS_X509_FMT_PEM, NULL,
	                                           GNUTLS_PKCS_PLAIN, &kpem)) < 0)
		goto fail;
	if ((r = gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM, &cpem)) < 0) {
		gnutls_memset(kpem.data, 0, kpem.size);
		gnutls_free(kpem.data);
		goto fail;
	}
	/* The key first: a crash in between leaves only ca.key, which open refuses
	 * rather than pairing a new key with an old certificate. */
	int w = write_atomic(ca->key_path, 0600, kpem.data, kpem.size, NULL, 0, err, err_size);
	if (w == 0)
		w = write_atomic(ca->cert_path, 0644, cpem.data, cpem.size, NULL, 0, err, err_size);
	gnutls_memset(kpem.data, 0, kpem.size);
	gnutls_free(kpem.data);
	gnutls_free(cpem.data);
	return w;
fail:
	set_err(err, err_size, "cannot %s: %s", what, gnutls_strerror(r));
	return -1;
}

/* Loads ca->crt and ca->key from existing files, checking the key's mode and
 * that both belong together. */
static int load_ca(struct local_ca *ca, const struct stat *key_st, char *err, size_t err_size)
{
	if (key_st->st_mode & 077) {
		set_err(err, err_size,
		        "%s has mode %04o: it must not be readable by others (chmod 600)",
		        ca->key_path, (unsigned)(key_st->st_mode & 07777));
		return -1;
	}
	size_t klen = 0, clen = 0;
	char *kbuf = read_file(ca->key_path, &klen);
	if (!kbuf) {
		set_err(err, err_size, "cannot read %s: %s", ca->key_path, strerror(errno));
		return -1;
	}
	int r = gnutls_x509_privkey_init(&ca->key);
	if (r >= 0) {
		gnutls_datum_t d = {(unsigned char *)kbuf, (unsigned)klen};
		r = gnutls_x509_privkey_import2(ca->key, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
	}
	explicit_bzero(kbuf, klen);
	free(kbuf);
	if (r < 0) {
		set_err(err, err_size, "%s: not a usable private key: %s", ca->key_path,
		        gnutls_strerror(r));
		return -1;
	}
	char *cbuf = read_file(ca->cert_path, &clen);
	if (!cbuf) {
		set_err(err, err_size, "cannot read %s: %s", ca->cert_path, strerror(errno));
		return -1;
	}
	r = gnutls_x509_crt_init(&ca->crt);
	if (r >= 0) {
		gnutls_datum_t d = {(unsigned char *)cbuf, (unsigned)clen};
		r = gnutls_x509_crt_import(ca->crt, &d, GNUTLS_X509_FMT_PEM);
	}
	free(cbuf);
	if (r < 0) {
		set_err(err, err_size, "%s: not a usable certificate: %s", ca->cert_path,
		        gnutls_strerror(r));
		return -1;
	}
	unsigned char cid[64], kid[64];
	size_t cid_len = sizeof cid, kid_len = sizeof kid;
	if (gnutls_x509_crt_get_key_id(ca->crt, GNUTLS_KEYID_USE_SHA256, cid, &cid_len) < 0 ||
	    gnutls_x509_privkey_get_key_id(ca->key, GNUTLS_KEYID_USE_SHA256, kid, &kid_len) < 0 ||
	    cid_len != kid_len || memcmp(cid, kid, cid_len) != 0) {
		set_err(err, err_size,
		        "%s does not match %s (the key belongs to another certificate): restore "
		        "the matching pair, or remove both to create a new CA",
		        ca->key_path, ca->cert_path);
		return -1;
	}
	unsigned critical = 0;
	if (gnutls_x509_crt_get_ca_status(ca->crt, &critical) <= 0) {
		set_err(err, err_size, "%s is not a CA certificate", ca->cert_path);
		return -1;
	}
	time_t exp = gnutls_x509_crt_get_expiration_time(ca->crt);
	if (exp != (time_t)-1 && exp <= time(NULL)) {
		set_err(err, err_size,
		        "%s has expired: remove %s and %s to create a new CA (clients must then "
		        "trust the new one)",
		        ca->cert_path, ca->cert_path, ca->key_path);
		return -1;
	}
	if ((r = gnutls_privkey_init(&ca->signer)) < 0 ||
	    (r = gnutls_privkey_import_x509(ca->signer, ca->key, 0)) < 0) {
		set_err(err, err_size, "%s: %s", ca->key_path, gnutls_strerror(r));
		return -1;
	}
	return 0;
}

/* Creates or loads the CA, then fills pem and fingerprint. */
static int open_ca(struct local_ca *ca, char *err, size_t err_size)
{
	struct stat cst, kst;
	bool have_cert = stat(ca->cert_path, &cst) == 0;
	int cert_errno = errno;
	bool have_key = stat(ca->key_path, &kst) == 0;
	int key_errno = errno;
	if (!have_cert && cert_errno != ENOENT) {
		set_err(err, err_size, "cannot access %s: %s", ca->cert_path, strerror(cert_errno));
		return -1;
	}
	if (!have_key && key_errno != ENOENT) {
		set_err(err, err_size, "cannot access %s: %s", ca->key_path, strerror(key_errno));
		return -1;
	}
	if (have_cert != have_key) {
		const char *has = have_cert ? ca->cert_path : ca->key_path;
		const char *lacks = have_cert ? ca->key_path : ca->cert_path;
		set_err(err, err_size,
		        "%s exists but %s does not: restore it, or remove %s to create a new CA",
		        has, lacks, has);
		return -1;
	}
	int r = have_cert ? load_ca(ca, &kst, err, err_size) : create_ca(ca, err, err_size);
	if (r < 0)
		return -1;

	gnutls_datum_t pem = {NULL, 0};
	if ((r = gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM, &pem)) < 0) {
		set_err(err, err_size, "cannot export the CA certificate: %s", gnutls_strerror(r));
		return -1;
	}
	ca->pem = malloc(pem.size + 1);
	if (!ca->pem) {
		gnutls_free(pem.data);
		set_err(err, err_size, "out of memory");
		return -1;
	}
	memcpy(ca->pem, pem.data, pem.size);
	ca->pem[pem.size] = '\0';
	ca->pem_len = pem.size;
	gnutls_free(pem.data);

	unsigned critical = 0;
	ca->ca_key_id_len = sizeof ca->ca_key_id;
	if (gnutls_x509_crt_get_subject_key_id(ca->crt, ca->ca_key_id, &ca->ca_key_id_len,
	                                       &critical) < 0) {
		ca->ca_key_id_len = sizeof ca->ca_key_id; /* none in the file: derive one */
		if ((r = gnutls_x509_crt_get_key_id(ca->crt, GNUTLS_KEYID_USE_SHA1, ca->ca_key_id,
		                                    &ca->ca_key_id_len)) < 0) {
			set_err(err, err_size, "cannot identify the CA key: %s",
			        gnutls_strerror(r));
			return -1;
		}
	}

	unsigned char fp[32];
	size_t fp_len = sizeof fp;
	if ((r = gnutls_x509_crt_get_fingerprint(ca->crt, GNUTLS_DIG_SHA256, fp, &fp_len)) < 0) {
		set_err(err, err_size, "cannot fingerprint the CA: %s", gnutls_strerror(r));
		return -1;
	}
	char *o = ca->fingerprint;
	o += sprintf(o, "SHA256:");
	for (size_t i = 0; i < fp_len; i++)
		o += sprintf(o, i ? ":%02X" : "%02X", fp[i]);
	return 0;
}

/* ---- ca-bundle.pem ---- */

static bool mtime_before(const struct stat *a, const struct stat *b)
{
	return a->st_mtim.tv_sec < b->st_mtim.tv_sec ||
	       (a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec < b->st_mtim.tv_nsec);
}

static bool bundle_current(const struct local_ca *ca, const struct stat *sys_st)
{
	struct stat bst, cst;
	if (stat(ca->bundle_path, &bst) < 0 || stat(ca->cert_path, &cst) < 0)
		return false;
	if (mtime_before(&bst, &cst) || (sys_st && mtime_before(&bst, sys_st)))
		return false;
	size_t len = 0;
	char *b = read_file(ca->bundle_path, &len);
	if (!b)
		return false;
	bool ok = len >= ca->pem_len && memcmp(b + len - ca->pem_len, ca->pem, ca->pem_len) == 0;
	free(b);
	return ok;
}

static int update_bundle(const struct local_ca *ca, char *err, size_t err_size)
{
	struct stat sys_st;
	bool have_sys = stat(SYSTEM_TRUST_FILE, &sys_st) == 0;
	if (bundle_current(ca, have_sys ? &sys_st : NULL))
		return 0;
	size_t slen = 0;
	char *sys = NULL;
	if (have_sys) {
		sys = read_file(SYSTEM_TRUST_FILE, &slen);
		if (!sys) {
			set_err(err, err_size, "cannot read %s: %s", SYSTEM_TRUST_FILE,
			        strerror(errno));
			return -1;
		}
		if (slen && sys[slen - 1] != '\n')
			sys[slen++] = '\n'; /* read_file leaves room for the NUL */
	}
	int r =
	    sys ? write_atomic(ca->bundle_path, 0644, sys, slen, ca->pem, ca->pem_len, err,
	                       err_size)
	        : write_atomic(ca->bundle_path, 0644, ca->pem, ca->pem_len, NULL, 0, err, err_size);
	free(sys);
	return r;
}

/* ---- open / free ---- */

struct local_ca *local_ca_open(const char *state_dir, unsigned leaf_cache_size, char *err,
                               size_t err_size)
{
	if (!state_dir) {
		set_err(err, err_size, "no state_dir");
		return NULL;
	}
	if (make_dirs(state_dir, err, err_size) < 0)
		return NULL;
	struct local_ca *ca = calloc(1, sizeof *ca);
	if (!ca) {
		set_err(err, err_size, "out of memory");
		return NULL;
	}
	ca->cap = leaf_cache_size ? leaf_cache_size : 1;
	if (ca->cap > CACHE_MAX)
		ca->cap = CACHE_MAX;
	ca->nbuckets = 16;
	while (ca->nbuckets < (size_t)ca->cap * 2)
		ca->nbuckets *= 2;
	ca->buckets = calloc(ca->nbuckets, sizeof *ca->buckets);
	ca->cert_path = path_join(state_dir, "ca.pem");
	ca->key_path = path_join(state_dir, "ca.key");
	ca->bundle_path = path_join(state_dir, "ca-bundle.pem");
	if (!ca->buckets || !ca->cert_path || !ca->key_path || !ca->bundle_path) {
		set_err(err, err_size, "out of memory");
		goto fail;
	}
	if (open_ca(ca, err, err_size) < 0 || update_bundle(ca, err, err_size) < 0)
		goto fail;
	int r = gen_p256(&ca->leaf_key);
	if (r < 0) {
		set_err(err, err_size, "cannot generate the leaf key: %s", gnutls_strerror(r));
		goto fail;
	}
	if ((r = gnutls_privkey_init(&ca->leaf_priv)) < 0 ||
	    (r = gnutls_privkey_import_x509(ca->leaf_priv, ca->leaf_key, 0)) < 0 ||
	    (r = gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_DER, &ca->der)) < 0) {
		set_err(err, err_size, "cannot prepare the leaf key: %s", gnutls_strerror(r));
		goto fail;
	}
	ca->leaf_key_id_len = sizeof ca->leaf_key_id;
	r = gnutls_x509_privkey_get_key_id(ca->leaf_key, GNUTLS_KEYID_USE_SHA1, ca->leaf_key_id,
	                                   &ca->leaf_key_id_len);
	if (r < 0) {
		set_err(err, err_size, "cannot identify the leaf key: %s", gnutls_strerror(r));
		goto fail;
	}
	r = gnutls_session_ticket_key_generate(&ca->ticket_key);
	if (r < 0) {
		set_err(err, err_size, "cannot generate the session ticket key: %s",
		        gnutls_strerror(r));
		goto fail;
	}
	ca->ticket_key_made = time(NULL);
	return ca;
fail:
	local_ca_free(ca);
	return NULL;
}

static void free_ticket_key(gnutls_datum_t *key)
{
	if (!key->data)
		return;
	gnutls_memset(key->data, 0, key->size);
	gnutls_free(key->data);
	key->data = NULL;
	key->size = 0;
}

static void leaf_unref(struct local_ca_leaf *leaf)
{
	if (--leaf->refs)
		return;
	gnutls_certificate_free_credentials(leaf->creds);
	free(leaf->host);
	free(leaf);
}

void local_ca_free(struct local_ca *ca)
{
	if (!ca)
		return;
	struct local_ca_leaf *l = ca->lru_head;
	while (l) {
		struct local_ca_leaf *next = l->next;
		l->prev = l->next = l->hnext = NULL;
		leaf_unref(l); /* leaves still referenced elsewhere stay valid */
		l = next;
	}
	free(ca->buckets);
	free_ticket_key(&ca->ticket_key);
	if (ca->leaf_priv)
		gnutls_privkey_deinit(ca->leaf_priv);
	if (ca->leaf_key)
		gnutls_x509_privkey_deinit(ca->leaf_key);
	gnutls_free(ca->der.data);
	if (ca->signer)
		gnutls_privkey_deinit(ca->signer);
	if (ca->key)
		gnutls_x509_privkey_deinit(ca->key);
	if (ca->crt)
		gnutls_x509_crt_deinit(ca->crt);
	free(ca->pem);
	free(ca->cert_path);
	free(ca->key_path);
	free(ca->bundle_path);
	free(ca);
}

const char *local_ca_cert_path(const struct local_ca *ca)
{
	return ca->cert_path;
}

const char *local_ca_bundle_path(const struct local_ca *ca)
{
	return ca->bundle_path;
}

const char *local_ca_pem(const struct local_ca *ca, size_t *len)
{
	if (len)
		*len = ca->pem_len;
	return ca->pem;
}

void local_ca_fingerprint(const struct local_ca *ca, char *out, size_t size)
{
	if (size)
		snprintf(out, size, "%s", ca->fingerprint);
}

const gnutls_datum_t *local_ca_ticket_key(struct local_ca *ca)
{
	time_t now = time(NULL);
	gnutls_datum_t fresh = {NULL, 0};

	/* a session copies the key (gnutls_session_ticket_enable_server): the
	 * old one can go at once; if no new one can be made, the old one stays */
	if ((now - ca->ticket_key_made >= TICKET_KEY_LIFETIME || now < ca->ticket_key_made) &&
	    gnutls_session_ticket_key_generate(&fresh) >= 0) {
		free_ticket_key(&ca->ticket_key);
		ca->ticket_key = fresh;
		ca->ticket_key_made = now;
	}
	return &ca->ticket_key;
}

/* ---- the leaf cache ---- */

static uint32_t hash_host(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static void lru_unlink(struct local_ca *ca, struct local_ca_leaf *l)
{
	if (l->prev)
		l->prev->next = l->next;
	else
		ca->lru_head = l->next;
	if (l->next)
		l->next->prev = l->prev;
	else
		ca->lru_tail = l->prev;
	l->prev = l->next = NULL;
}

static void lru_push_front(struct local_ca *ca, struct local_ca_leaf *l)
{
	l->prev = NULL;
	l->next = ca->lru_head;
	if (ca->lru_head)
		ca->lru_head->prev = l;
	else
		ca->lru_tail = l;
	ca->lru_head = l;
}

static struct local_ca_leaf *cache_find(struct local_ca *ca, const char *host, uint32_t h)
{
	for (struct local_ca_leaf *l = ca->buckets[h & (ca->nbuckets - 1)]; l; l = l->hnext)
		if (l->hash == h && strcmp(l->host, host) == 0)
			return l;
	return NULL;
}

/* Takes l out of the cache and drops the cache's reference. */
static void cache_remove(struct local_ca *ca, struct local_ca_leaf *l)
{
	struct local_ca_leaf **pp = &ca->buckets[l->hash & (ca->nbuckets - 1)];
	while (*pp != l)
		pp = &(*pp)->hnext;
	*pp = l->hnext;
	l->hnext = NULL;
	lru_unlink(ca, l);
	ca->count--;
	leaf_unref(l);
}

static void cache_insert(struct local_ca *ca, struct local_ca_leaf *l)
{
	while (ca->count >= ca->cap && ca->lru_tail)
		cache_remove(ca, ca->lru_tail);
	size_t b = l->hash & (ca->nbuckets - 1);
	l->hnext = ca->buckets[b];
	ca->buckets[b] = l;
	lru_push_front(ca, l);
	l->refs++;
	ca->count++;
}

/* ---- leaves ---- */

/* The cache key for host: IP literals (v6 possibly in brackets) in canonical
 * form with their binary address, names in lower case. */
static int normalize_host(const char *host, char *out, unsigned char *ip, size_t *ip_len)
{
	size_t len = strlen(host);
	*ip_len = 0;
	if (len == 0 || len > HOST_MAX)
		return -1;
	char buf[HOST_MAX + 1];
	memcpy(buf, host, len + 1);
	if (buf[0] == '[' && buf[len - 1] == ']' && len > 2) {
		memmove(buf, buf + 1, len - 2);
		buf[len - 2] = '\0';
		if (inet_pton(AF_INET6, buf, ip) != 1)
			return -1;
		*ip_len = 16;
	} else if (inet_pton(AF_INET, buf, ip) == 1) {
		*ip_len = 4;
	} else if (inet_pton(AF_INET6, buf, ip) == 1) {
		*ip_len = 16;
	}
	if (*ip_len) {
		if (!inet_ntop(*ip_len == 4 ? AF_INET : AF_INET6, ip, out, HOST_MAX + 1))
			return -1;
		return 0;
	}
	if (buf[len - 1] == '.')
		buf[--len] = '\0'; /* the absolute form names the same host */
	if (len == 0 || buf[0] == '.' || strstr(buf, ".."))
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		           c == '.' || c == '_'))
			return -1;
		out[i] = (char)c;
	}
	out[len] = '\0';
	return 0;
}

/* A certificate of a chain for gnutls_certificate_set_key: a copy of der,
 * and the public key of key (the certificate's), with the given usage. */
static int make_pcert(gnutls_pcert_st *pc, const gnutls_datum_t *der, gnutls_privkey_t key,
                      unsigned usage)
{
	memset(pc, 0, sizeof *pc);
	pc->type = GNUTLS_CRT_X509;
	int r = gnutls_pubkey_init(&pc->pubkey);
	if (r < 0) {
		pc->pubkey = NULL;
		return r;
	}
	if ((r = gnutls_pubkey_import_privkey(pc->pubkey, key, usage, 0)) >= 0 &&
	    !(pc->cert.data = gnutls_malloc(der->size)))
		r = GNUTLS_E_MEMORY_ERROR;
	if (r < 0) {
		gnutls_pubkey_deinit(pc->pubkey);
		pc->pubkey = NULL;
		return r;
	}
	memcpy(pc->cert.data, der->data, der->size);
	pc->cert.size = der->size;
	return 0;
}

static struct local_ca_leaf *issue(struct local_ca *ca, const char *host, const unsigned char *ip,
                                   size_t ip_len, time_t now, char *err, size_t err_size)
{
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t der = {NULL, 0};
	gnutls_pcert_st chain[2];
	gnutls_privkey_t key = NULL;
	memset(chain, 0, sizeof chain);
	struct local_ca_leaf *leaf = calloc(1, sizeof *leaf);
	if (!leaf || !(leaf->host = strdup(host))) {
		free(leaf);
		set_err(err, err_size, "out of memory");
		return NULL;
	}
	leaf->refs = 1;
	leaf->not_after = now + LEAF_VALIDITY;
	int r;
	if ((r = gnutls_x509_crt_init(&crt)) < 0 || (r = gnutls_x509_crt_set_version(crt, 3)) < 0 ||
	    (r = random_serial(crt)) < 0 ||
	    (r = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, host,
	                                       (unsigned)strlen(host))) < 0 ||
	    (r = gnutls_x509_crt_set_activation_time(crt, now - LEAF_BACKDATE)) < 0 ||
	    (r = gnutls_x509_crt_set_expiration_time(crt, leaf->not_after)) < 0 ||
	    (r = gnutls_x509_crt_set_key(crt, ca->leaf_key)) < 0 ||
	    (r = gnutls_x509_crt_set_subject_alt_name(
	         crt, ip_len ? GNUTLS_SAN_IPADDRESS : GNUTLS_SAN_DNSNAME,
	         ip_len ? (void *)ip : host, ip_len ? (unsigned)ip_len : (unsigned)strlen(host),
	         GNUTLS_FSAN_SET)) < 0 ||
	    (r = gnutls_x509_crt_set_basic_constraints(crt, 0, -1)) < 0 ||
	    (r = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0 ||
	    (r = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0 ||
	    (r = gnutls_x509_crt_set_subject_key_id(crt, ca->leaf_key_id, ca->leaf_key_id_len)) <
	        0 ||
	    (r = gnutls_x509_crt_set_authority_key_id(crt, ca->ca_key_id, ca->ca_key_id_len)) < 0 ||
	    (r = gnutls_x509_crt_privkey_sign(crt, ca->crt, ca->signer, GNUTLS_DIG_SHA256, 0)) <
	        0 ||
	    (r = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der)) < 0)
		goto fail;
	if ((r = gnutls_certificate_allocate_credentials(&leaf->creds)) < 0)
		goto fail;
	/* The leaf key and certificate match by construction: skip GnuTLS's
	 * sign-and-verify check, which would double the cost of an issue. */
	gnutls_certificate_set_flags(leaf->creds, GNUTLS_CERTIFICATE_SKIP_KEY_CERT_MATCH);
	/* The credentials straight from the DER and the keys we hold: parsing the
	 * new certificate again and importing the CA's, as building them from
	 * certificate objects does, was a third of an issue. */
	if ((r = make_pcert(&chain[0], &der, ca->leaf_priv, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0 ||
	    (r = make_pcert(&chain[1], &ca->der, ca->signer,
	                    GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN)) < 0 ||
	    (r = gnutls_privkey_init(&key)) < 0 ||
	    (r = gnutls_privkey_import_x509(key, ca->leaf_key, GNUTLS_PRIVKEY_IMPORT_COPY)) < 0 ||
	    (r = gnutls_certificate_set_key(leaf->creds, (const char *[]){host}, 1, chain, 2,
	                                    key)) < 0)
		goto fail;
	/* the credentials own the chain's contents and the key now */
	gnutls_free(der.data);
	gnutls_x509_crt_deinit(crt);
	return leaf;
fail:
	set_err(err, err_size, "cannot issue a certificate for %s: %s", host, gnutls_strerror(r));
	gnutls_free(der.data);
	for (int i = 0; i < 2; i++)
		if (chain[i].pubkey)
			gnutls_pcert_deinit(&chain[i]);
	if (key)
		gnutls_privkey_deinit(key);
	if (crt)
		gnutls_x509_crt_deinit(crt);
	if (leaf->creds)
		gnutls_certificate_free_credentials(leaf->creds);
	free(leaf->host);
	free(leaf);
	return NULL;
}

struct local_ca_leaf *local_ca_leaf_get(struct local_ca *ca, const char *host, bool *issued,
                                        char *err, size_t err_size)
{
	if (issued)
		*issued = false;
	char key[HOST_MAX + 1];
	unsigned char ip[16];
	size_t ip_len = 0;
	if (!host || normalize_host(host, key, ip, &ip_len) < 0) {
		set_err(err, err_size, "cannot issue a certificate for \"%.64s\": not a host name",
		        host ? host : "");
		return NULL;
	}
	uint32_t h = hash_host(key);
	time_t now = time(NULL);
	struct local_ca_leaf *l = cache_find(ca, key, h);
	if (l && l->not_after - now >= LEAF_RENEW_BEFORE) {
		lru_unlink(ca, l);
		lru_push_front(ca, l);
		l->refs++;
		return l;
	}
	if (l)
		cache_remove(ca, l); /* about to expire: renew */
	l = issue(ca, key, ip, ip_len, now, err, err_size);
	if (!l)
		return NULL;
	l->hash = h;
	cache_insert(ca, l);
	if (issued)
		*issued = true;
	return l;
}

gnutls_certificate_credentials_t local_ca_leaf_creds(const struct local_ca_leaf *leaf)
{
	return leaf->creds;
}

void local_ca_leaf_put(struct local_ca_leaf *leaf)
{
	if (leaf)
		leaf_unref(leaf);
}
