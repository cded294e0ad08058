/* Unit tests: [route PATTERN] parsing, matching order and inheritance, and
 * pool keys that differ on every TLS field. */
#include <check.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "pool.h"
#include "route.h"

static char path[64];
static struct muxd km; /* the daemon state pool keys take the credential key from */

static struct config *load(const char *text)
{
	struct config_errors errs;
	struct config *cfg;
	int fd;

	snprintf(path, sizeof(path), "/tmp/muxd-route-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	cfg = config_load(path, &errs);
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.lines[i]);
	config_errors_free(&errs);
	unlink(path);
	return cfg;
}

static size_t load_errors(const char *text, const char *want)
{
	struct config_errors errs;
	struct config *cfg;
	size_t n;
	int fd;

	snprintf(path, sizeof(path), "/tmp/muxd-route-XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	cfg = config_load(path, &errs);
	ck_assert_ptr_null(cfg);
	n = errs.n;
	ck_assert_msg(n > 0 && strstr(errs.lines[0], want), "got '%s', want '%s'",
	              n ? errs.lines[0] : "", want);
	config_errors_free(&errs);
	unlink(path);
	return n;
}

START_TEST(patterns)
{
	struct config_route r;

	ck_assert(config_parse_route_pattern("*", &r) && r.kind == ROUTE_ANY);
	ck_assert(config_parse_route_pattern("Api.Example.com", &r) && r.kind == ROUTE_HOST);
	ck_assert_str_eq(r.host, "api.example.com");
	ck_assert(config_parse_route_pattern("*.example.com", &r) && r.kind == ROUTE_SUFFIX);
	ck_assert_str_eq(r.host, ".example.com");
	ck_assert(config_parse_route_pattern("h:8443", &r) && r.kind == ROUTE_HOST_PORT);
	ck_assert_uint_eq(r.port, 8443);
	ck_assert(config_parse_route_pattern("[::1]:443", &r) && r.kind == ROUTE_HOST_PORT);
	ck_assert_str_eq(r.host, "::1");
	ck_assert(config_parse_route_pattern("10.0.0.0/8", &r) && r.kind == ROUTE_CIDR);
	ck_assert(config_parse_route_pattern("0:0::1", &r) && r.kind == ROUTE_HOST);
	ck_assert_str_eq(r.host, "::1");
	static const char *const bad[] = {"",    "h:",    "h:0",         "h:70000", "*.",
	                                  "a b", "[::1]", "10.0.0.0/33", "x/8",     "*x.com"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!config_parse_route_pattern(bad[i], &r), "accepted '%s'", bad[i]);
}
END_TEST

START_TEST(matching_order)
{
	struct config *cfg = load("[route *]\nverify = on\n"
	                          "[route 10.0.0.0/8]\nca_file = /dev/null\n"
	                          "[route 10.1.0.0/16]\nverify = off\n"
	                          "[route *.example.com]\nverify = off\n"
	                          "[route *.api.example.com]\nca_file = /dev/null\n"
	                          "[route api.example.com]\nca_file = /dev/null\n"
	                          "[route api.example.com:8443]\nverify = off\n");
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "api.example.com", 8443, &r);
	ck_assert_str_eq(r.rule->pattern, "api.example.com:8443");
	route_for(cfg, "api.example.com", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "api.example.com");
	route_for(cfg, "v1.api.example.com", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "*.api.example.com");
	route_for(cfg, "www.example.com", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "*.example.com");
	route_for(cfg, "example.com", 443, &r); /* a suffix does not match its own apex */
	ck_assert_str_eq(r.rule->pattern, "*");
	route_for(cfg, "10.1.2.3", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "10.1.0.0/16");
	route_for(cfg, "10.2.2.3", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "10.0.0.0/8");
	route_for(cfg, "other.org", 443, &r);
	ck_assert_str_eq(r.rule->pattern, "*");
	config_unref(cfg);
}
END_TEST

START_TEST(inheritance)
{
	struct config *cfg = load("[route *]\nca_file = /dev/null\n"
	                          "[route a.test]\nverify = off\n"
	                          "[route b.test]\n");
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "a.test", 443, &r); /* verify from the rule, ca_file from [route *] */
	ck_assert(!r.verify);
	ck_assert_str_eq(r.ca_file, "/dev/null");
	route_for(cfg, "b.test", 443, &r);
	ck_assert(r.verify);
	config_unref(cfg);

	cfg = load("[muxd]\nvia = on\n");
	route_for(cfg, "x.test", 443, &r); /* built-in defaults */
	ck_assert_ptr_null(r.rule);
	ck_assert(r.verify);
	ck_assert_ptr_null(r.ca_file);
	config_unref(cfg);
}
END_TEST

START_TEST(route_errors)
{
	load_errors("[route a b]\n", "bad pattern");
	load_errors("[route *]\nverify = maybe\n", "[route *] verify: bad boolean");
	load_errors("[route *]\nproxyx = direct\n", "[route *] proxyx: unknown key");
	load_errors("[route *]\nca_file = /nonexistent/ca.pem\n", "cannot read");
	load_errors("[route x]\n[route x]\n", "given twice");
	ck_assert_uint_eq(load_errors("[route *]\nverify = x\n[route y]\nverify = z\n", ":2:"), 2);
}
END_TEST

START_TEST(pool_keys)
{
	struct route base = {.verify = true, .ca_file = NULL}, r;
	struct pool_key a, b;

	ck_assert(pool_key_init(&a, &km, "https", "h.test", 443, &base));
	ck_assert(pool_key_init(&b, &km, "https", "h.test", 443, &base));
	ck_assert_str_eq(a.id, b.id);

	r = base;
	r.verify = false;
	ck_assert(pool_key_init(&b, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(a.id, b.id);

	r = base;
	r.ca_file = "/dev/null";
	ck_assert(pool_key_init(&b, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(a.id, b.id);

	r = base;
	r.h2 = true; /* another ALPN set */
	ck_assert(pool_key_init(&b, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(a.id, b.id);

	ck_assert(pool_key_init(&b, &km, "https", "h.test", 8443, &base));
	ck_assert_str_ne(a.id, b.id);
	ck_assert(pool_key_init(&b, &km, "https", "g.test", 443, &base));
	ck_assert_str_ne(a.id, b.id);
	ck_assert(pool_key_init(&b, &km, "http", "h.test", 443, &base));
	ck_assert_str_ne(a.id, b.id);

	/* the same path, another file (identity, not name) */
	char p1[] = "/tmp/muxd-ca-XXXXXX";
	int fd = mkstemp(p1);
	close(fd);
	r = base;
	r.ca_file = p1;
	ck_assert(pool_key_init(&a, &km, "https", "h.test", 443, &r));
	unlink(p1);
	fd = open(p1, O_CREAT | O_WRONLY | O_EXCL, 0600);
	ck_assert_int_ge(fd, 0);
	char filler[1 << 12];
	memset(filler, 'x', sizeof(filler));
	ck_assert_int_eq(write(fd, filler, sizeof(filler)), (ssize_t)sizeof(filler));
	close(fd);
	ck_assert(pool_key_init(&b, &km, "https", "h.test", 443, &r));
	unlink(p1);
	ck_assert_str_ne(a.id, b.id);
}
END_TEST

/* ---- client certificates ---- */

static char cert_dir[64];
static char cert1[128], key1[128], cert2[128], key2[128];

static void write_pem(const char *file, const gnutls_datum_t *pem)
{
	FILE *f = fopen(file, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(pem->data, 1, pem->size, f), pem->size);
	fclose(f);
}

/* A self-signed client certificate (CN cn) and its ECDSA key, as PEM files. */
static void make_client_cert(const char *cn, const char *cert, const char *key)
{
	gnutls_x509_privkey_t k;
	gnutls_x509_crt_t c;
	gnutls_datum_t pem;
	unsigned char serial = (unsigned char)cn[0];
	time_t now = time(NULL);

	ck_assert_int_eq(gnutls_x509_privkey_init(&k), 0);
	ck_assert_int_eq(
	    gnutls_x509_privkey_generate(k, GNUTLS_PK_ECDSA,
	                                 GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
	    0);
	ck_assert_int_eq(gnutls_x509_crt_init(&c), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_version(c, 3), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_serial(c, &serial, 1), 0);
	ck_assert_int_eq(
	    gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_COMMON_NAME, 0, cn, strlen(cn)), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_key(c, k), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_activation_time(c, now - 60), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_expiration_time(c, now + 3600), 0);
	ck_assert_int_eq(gnutls_x509_crt_set_key_purpose_oid(c, GNUTLS_KP_TLS_WWW_CLIENT, 0), 0);
	ck_assert_int_eq(gnutls_x509_crt_sign2(c, c, k, GNUTLS_DIG_SHA256, 0), 0);
	ck_assert_int_eq(gnutls_x509_crt_export2(c, GNUTLS_X509_FMT_PEM, &pem), 0);
	write_pem(cert, &pem);
	gnutls_free(pem.data);
	ck_assert_int_eq(gnutls_x509_privkey_export2(k, GNUTLS_X509_FMT_PEM, &pem), 0);
	write_pem(key, &pem);
	gnutls_free(pem.data);
	gnutls_x509_crt_deinit(c);
	gnutls_x509_privkey_deinit(k);
}

static void client_certs_setup(void)
{
	snprintf(cert_dir, sizeof(cert_dir), "/tmp/muxd-client-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(cert_dir));
	snprintf(cert1, sizeof(cert1), "%s/one.pem", cert_dir);
	snprintf(key1, sizeof(key1), "%s/one.key", cert_dir);
	snprintf(cert2, sizeof(cert2), "%s/two.pem", cert_dir);
	snprintf(key2, sizeof(key2), "%s/two.key", cert_dir);
	make_client_cert("one", cert1, key1);
	make_client_cert("two", cert2, key2);
}

static void client_certs_teardown(void)
{
	unlink(cert1);
	unlink(key1);
	unlink(cert2);
	unlink(key2);
	rmdir(cert_dir);
}

START_TEST(client_cert_config)
{
	char text[1024];
	struct config *cfg;
	struct route r;

	snprintf(text, sizeof(text),
	         "[route *]\nclient_cert = %s\nclient_key = %s\n"
	         "[route two.test]\nclient_cert = %s\nclient_key = %s\n"
	         "[route plain.test]\nverify = off\n",
	         cert1, key1, cert2, key2);
	cfg = load(text);
	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "two.test", 443, &r);
	ck_assert_str_eq(r.client_cert, cert2);
	ck_assert_str_eq(r.client_key, key2);
	route_for(cfg, "plain.test", 443, &r); /* inherited from [route *], as a pair */
	ck_assert_str_eq(r.client_cert, cert1);
	ck_assert_str_eq(r.client_key, key1);
	config_unref(cfg);

	cfg = load("[route *]\nverify = on\n");
	route_for(cfg, "x.test", 443, &r);
	ck_assert_ptr_null(r.client_cert);
	ck_assert_ptr_null(r.client_key);
	config_unref(cfg);

	/* the key of another certificate: an error on the client_key line */
	snprintf(text, sizeof(text),
	         "[route *]\nverify = on\n[route a.test]\nclient_cert = %s\nclient_key = %s\n",
	         cert1, key2);
	ck_assert_uint_eq(load_errors(text, ":5: [route a.test] client_key: "), 1);
	load_errors(text, "does not match client_cert");

	/* one without the other */
	snprintf(text, sizeof(text), "[route a.test]\nclient_cert = %s\n", cert1);
	ck_assert_uint_eq(
	    load_errors(text, ":2: [route a.test] client_cert: given without client_key"), 1);
	snprintf(text, sizeof(text), "[route *]\nclient_key = %s\n", key1);
	load_errors(text, ":2: [route *] client_key: given without client_cert");
	/* not even completed by inheritance: each section gives both or neither */
	snprintf(text, sizeof(text),
	         "[route *]\nclient_cert = %s\nclient_key = %s\n[route a.test]\nclient_key = %s\n",
	         cert1, key1, key2);
	load_errors(text, ":5: [route a.test] client_key: given without client_cert");

	/* unreadable, not a key, given twice */
	snprintf(text, sizeof(text), "[route *]\nclient_cert = %s/missing.pem\nclient_key = %s\n",
	         cert_dir, key1);
	ck_assert_uint_eq(load_errors(text, ":2: [route *] client_cert: cannot read"), 1);
	snprintf(text, sizeof(text), "[route *]\nclient_cert = %s\nclient_key = %s\n", cert1,
	         cert2);
	load_errors(text, ":3: [route *] client_key: cannot load");
	snprintf(text, sizeof(text),
	         "[route *]\nclient_cert = %s\nclient_key = %s\nclient_key = %s\n", cert1, key1,
	         key1);
	load_errors(text, ":4: [route *] client_key: given twice");
}
END_TEST

START_TEST(client_cert_keys)
{
	struct route base = {.verify = true, .h2 = true, .h3 = true}, r;
	struct pool_key none, one, two, k;

	ck_assert(pool_key_init(&none, &km, "https", "h.test", 443, &base));
	ck_assert(none.h3);
	ck_assert_str_eq(none.client_cert, "");
	r = base;
	r.client_cert = cert1;
	r.client_key = key1;
	ck_assert(pool_key_init(&one, &km, "https", "h.test", 443, &r));
	ck_assert_str_eq(one.client_cert, cert1);
	ck_assert_str_eq(one.client_key, key1);
	ck_assert(!one.h3); /* HTTP/3 presents no client certificate: TCP only */
	ck_assert_str_ne(none.id, one.id);
	ck_assert(pool_key_init(&k, &km, "https", "h.test", 443, &r));
	ck_assert_str_eq(one.id, k.id);
	r.client_cert = cert2;
	r.client_key = key2;
	ck_assert(pool_key_init(&two, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(one.id, two.id);
	ck_assert_str_ne(none.id, two.id);

	/* the same paths, other contents (by file identity, not name): another key */
	FILE *f = fopen(cert1, "a");
	ck_assert_ptr_nonnull(f);
	fputs("\n", f);
	fclose(f);
	r.client_cert = cert1;
	r.client_key = key1;
	ck_assert(pool_key_init(&k, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(one.id, k.id);

	/* plain http:// has no TLS, hence no client certificate */
	ck_assert(pool_key_init(&k, &km, "http", "h.test", 80, &r));
	ck_assert_str_eq(k.client_cert, "");
}
END_TEST

START_TEST(intercept_and_bypass)
{
	struct config *cfg = load("[intercept]\nports = 443 8443\n"
	                          "bypass = bank.example *.internal 10.0.0.0/8 pinned.test:443\n");

	ck_assert_ptr_nonnull(cfg);
	ck_assert(route_intercepts(cfg, "api.example.com", 443));
	ck_assert(route_intercepts(cfg, "api.example.com", 8443));
	ck_assert(!route_intercepts(cfg, "api.example.com", 4443)); /* not in ports */
	ck_assert(!route_intercepts(cfg, "bank.example", 443));
	ck_assert(!route_intercepts(cfg, "BANK.example", 443));
	ck_assert(!route_intercepts(cfg, "git.internal", 443));
	ck_assert(route_intercepts(cfg, "internal", 443));
	ck_assert(!route_intercepts(cfg, "10.1.2.3", 443));
	ck_assert(route_intercepts(cfg, "11.1.2.3", 443));
	ck_assert(!route_intercepts(cfg, "pinned.test", 443));
	ck_assert(route_intercepts(cfg, "pinned.test", 8443));
	ck_assert(route_intercept_bypassed(cfg, "bank.example", 443));
	ck_assert(route_intercept_bypassed(cfg, "pinned.test", 443));
	ck_assert(!route_intercept_bypassed(cfg, "pinned.test", 8443));  /* intercepted */
	ck_assert(!route_intercept_bypassed(cfg, "bank.example", 4443)); /* not in ports */
	config_unref(cfg);

	cfg = load("[intercept]\nenabled = off\n");
	ck_assert(!route_intercepts(cfg, "api.example.com", 443));
	config_unref(cfg);

	cfg = load("[muxd]\nvia = on\n"); /* defaults: on, port 443, nothing bypassed */
	ck_assert(route_intercepts(cfg, "api.example.com", 443));
	ck_assert_uint_eq(cfg->leaf_cache, 1024);
	config_unref(cfg);

	load_errors("[intercept]\nbypass = a b/99\n", "[intercept] bypass: bad pattern");
	load_errors("[intercept]\nports = 0\n", "[intercept] ports: bad port");
	load_errors("[intercept]\nleaf_cache = 0\n", "[intercept] leaf_cache");
}
END_TEST

/* intercept_without_sni: off by default, inherited from [route *], one
 * boolean per route. */
START_TEST(intercept_without_sni_key)
{
	struct route r;
	struct config *cfg = load("[route *]\nintercept_without_sni = on\n"
	                          "[route *.pinned.example]\nintercept_without_sni = off\n");

	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "api.example.com", 443, &r);
	ck_assert(r.intercept_without_sni);
	route_for(cfg, "a.pinned.example", 443, &r);
	ck_assert(!r.intercept_without_sni);
	config_unref(cfg);
	cfg = load("[route api.example.com]\nh2 = off\n");
	route_for(cfg, "api.example.com", 443, &r);
	ck_assert(!r.intercept_without_sni);
	config_unref(cfg);
	load_errors("[route *]\nintercept_without_sni = sometimes\n",
	            "[route *] intercept_without_sni: bad boolean 'sometimes'");
	load_errors("[route *]\nintercept_without_sni = on\nintercept_without_sni = off\n",
	            "[route *] intercept_without_sni: given twice");
}
END_TEST

/* A v4-mapped IPv6 destination is the IPv4 address it maps, for IP
 * patterns as for CIDRs (and bypass patterns). */
START_TEST(v4_mapped_destination)
{
	struct config *cfg = load("[route 10.1.2.3]\nproxy = http://parent.test:3128\n"
	                          "[route ::ffff:10.9.9.9]\nproxy = http://other.test:3128\n"
	                          "[intercept]\nbypass = 10.7.7.7\n");
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "::ffff:10.1.2.3", 443, &r);
	ck_assert_uint_eq(r.nhops, 1);
	ck_assert_str_eq(r.hops[0].host, "parent.test");
	route_for(cfg, "10.9.9.9", 443, &r);
	ck_assert_uint_eq(r.nhops, 1);
	ck_assert_str_eq(r.hops[0].host, "other.test");
	route_for(cfg, "::ffff:10.1.2.4", 443, &r);
	ck_assert_uint_eq(r.nhops, 0);
	ck_assert(!route_intercepts(cfg, "::ffff:10.7.7.7", 443));
	ck_assert(route_intercepts(cfg, "::ffff:10.7.7.8", 443));
	config_unref(cfg);
}
END_TEST

/* IP literals against every kind of pattern: an IPv4 address by CIDR (the
 * address is looked at only when some pattern is a CIDR) and by exact
 * pattern, v4-mapped forms as the IPv4 address, IPv6 in any spelling as its
 * canonical form, by exact pattern and by CIDR; names are never addresses. */
START_TEST(ip_literals)
{
	struct config *cfg = load("[route 192.168.0.0/16]\nproxy = http://lan.test:3128\n"
	                          "[route 2001:db8::1]\nproxy = http://exact6.test:3128\n"
	                          "[route fd00::/8]\nproxy = http://ula.test:3128\n"
	                          "[route 10.0.0.1:8080]\nproxy = http://port.test:3128\n"
	                          "[intercept]\nbypass = 172.16.0.0/12\n");
	struct config *plain = load("[route 10.1.2.3]\nproxy = http://exact4.test:3128\n");
	static const struct {
		const char *host;
		uint16_t port;
		const char *via; /* NULL: direct */
	} cases[] = {
	    {"192.168.1.1", 443, "lan.test"},
	    {"192.168.255.255", 80, "lan.test"},
	    {"192.169.0.1", 443, NULL},
	    {"::ffff:192.168.7.7", 443, "lan.test"},
	    {"2001:db8::1", 443, "exact6.test"},
	    {"2001:0db8:0000::0001", 443, "exact6.test"},
	    {"2001:db8::2", 443, NULL},
	    {"fd12:3456::9", 443, "ula.test"},
	    {"fe80::1", 443, NULL},
	    {"10.0.0.1", 8080, "port.test"},
	    {"10.0.0.1", 8081, NULL},
	    {"192.168.1.1.example", 443, NULL},
	    {"1.2.3.4.5", 443, NULL},
	};
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	ck_assert_ptr_nonnull(plain);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		route_for(cfg, cases[i].host, cases[i].port, &r);
		if (!cases[i].via) {
			ck_assert_msg(r.nhops == 0, "%s", cases[i].host);
			continue;
		}
		ck_assert_msg(r.nhops == 1, "%s", cases[i].host);
		ck_assert_str_eq(r.hops[0].host, cases[i].via);
	}
	ck_assert(!route_intercepts(cfg, "172.16.3.4", 443));
	ck_assert(!route_intercepts(cfg, "::ffff:172.31.0.1", 443));
	ck_assert(route_intercepts(cfg, "172.32.0.1", 443));
	ck_assert(route_intercepts(cfg, "h.test", 443));
	/* no CIDR pattern: IPv4 literals by their text */
	route_for(plain, "10.1.2.3", 443, &r);
	ck_assert_uint_eq(r.nhops, 1);
	ck_assert_str_eq(r.hops[0].host, "exact4.test");
	route_for(plain, "::ffff:10.1.2.3", 443, &r);
	ck_assert_uint_eq(r.nhops, 1);
	route_for(plain, "10.1.2.4", 443, &r);
	ck_assert_uint_eq(r.nhops, 0);
	config_unref(cfg);
	config_unref(plain);
}
END_TEST

/* An origin reached at an address but named (SNI, verification) by a name
 * has a pool key of its own. */
START_TEST(pool_key_sni)
{
	struct config *cfg = load("[muxd]\nvia = on\n");
	struct pool_key a, b, c;
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "127.0.0.1", 443, &r);
	ck_assert(pool_key_init(&a, &km, "https", "127.0.0.1", 443, &r));
	ck_assert(pool_key_init_sni(&b, &km, "https", "127.0.0.1", 443, "bank.example", &r));
	ck_assert(pool_key_init_sni(&c, &km, "https", "127.0.0.1", 443, NULL, &r));
	ck_assert_str_eq(a.id, c.id);
	ck_assert_str_ne(a.id, b.id);
	ck_assert_str_eq(b.host, "127.0.0.1");
	ck_assert_str_eq(b.sni, "bank.example");
	ck_assert_str_eq(a.sni, "127.0.0.1");
	ck_assert_ptr_nonnull(strstr(b.id, " sni=bank.example "));
	config_unref(cfg);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("route");
	TCase *tc = tcase_create("route");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, patterns);
	tcase_add_test(tc, matching_order);
	tcase_add_test(tc, inheritance);
	tcase_add_test(tc, route_errors);
	tcase_add_test(tc, pool_keys);
	tcase_add_test(tc, intercept_and_bypass);
	tcase_add_test(tc, intercept_without_sni_key);
	tcase_add_test(tc, v4_mapped_destination);
	tcase_add_test(tc, ip_literals);
	tcase_add_test(tc, pool_key_sni);
	suite_add_tcase(s, tc);
	tc = tcase_create("client_cert");
	tcase_add_checked_fixture(tc, client_certs_setup, client_certs_teardown);
	tcase_add_test(tc, client_cert_config);
	tcase_add_test(tc, client_cert_keys);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
