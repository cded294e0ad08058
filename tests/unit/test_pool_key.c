/*
 * Unit tests for src/pool_key.c: the exact text of key ids (they are logged,
 * shown on the status page, name TLS sessions, and decide sharing), for
 * every part of a key — IPv6 literals in brackets, SNI and ALPN, verify,
 * early data, file identities, loopback denial, each kind of hop with and
 * without credentials, forwarding, tunnels — and at the limits: an id that
 * just fits, one that does not (cut like snprintf, and the key refused), a
 * host of 255 bytes. Also that every field is set whatever the memory held
 * before (keys are made in place, per request, without zeroing them), that a
 * packed key unpacks to the same, and the hex of credential ids.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "muxd.h"
#include "pool_key.h"
#include "route.h"

static struct muxd km; /* only its secret is read */

static void secret_init(void)
{
	memset(km.secret, 0x42, sizeof(km.secret));
}

/* The id of a key made in memory full of garbage. */
static bool id_of(struct pool_key *k, const char *scheme, const char *host, uint16_t port,
                  const char *sni, const struct route *r)
{
	memset(k, 0x5a, sizeof(*k));
	return pool_key_init_sni(k, &km, scheme, host, port, sni, r);
}

START_TEST(cred_id_hex)
{
	char id[17];

	secret_init();
	pool_cred_id(&km, "alice", "s3cret", id);
	ck_assert_str_eq(id, "35e072fab3b32187");
	pool_cred_id(&km, "bob", NULL, id);
	ck_assert_str_eq(id, "d60bb1bc9ce63a7e");
}
END_TEST

START_TEST(direct_ids)
{
	struct route r = {.verify = true, .h2 = true, .h3 = true, .early_data = true};
	struct pool_key k;

	secret_init();
	ck_assert(id_of(&k, "http", "example.com", 80, NULL, &r));
	ck_assert_str_eq(k.id, "http://example.com:80");
	ck_assert(id_of(&k, "http", "::1", 8080, NULL, &r));
	ck_assert_str_eq(k.id, "http://[::1]:8080");
	ck_assert(id_of(&k, "https", "example.com", 443, NULL, &r));
	ck_assert_str_eq(
	    k.id, "https://example.com:443 sni=example.com alpn=h2,http/1.1,h3 verify=1 ca=system");
	ck_assert(id_of(&k, "https", "2001:db8::7", 65535, NULL, &r));
	ck_assert_str_eq(k.id, "https://[2001:db8::7]:65535 sni=2001:db8::7 alpn=h2,http/1.1,h3 "
	                       "verify=1 ca=system");
	/* an address verified as a name; no h2, no h3, verify off, no 0-RTT, a CA */
	r = (struct route){
	    .verify = false, .ca_file = "/etc/ca.pem", .ca_file_id = "/etc/ca.pem#1:2:3"};
	ck_assert(id_of(&k, "https", "10.0.0.1", 8443, "name.test", &r));
	ck_assert_str_eq(k.id, "https://10.0.0.1:8443 sni=name.test alpn=http/1.1 verify=0 "
	                       "early=off ca=/etc/ca.pem#1:2:3");
	ck_assert_str_eq(k.sni, "name.test");
	ck_assert_str_eq(k.host, "10.0.0.1");
	ck_assert_str_eq(k.ca_file, "/etc/ca.pem");
	/* a client certificate: its pair by identity, and never HTTP/3 */
	r = (struct route){.verify = true,
	                   .h2 = true,
	                   .h3 = true,
	                   .early_data = true,
	                   .client_cert = "c.pem",
	                   .client_key = "k.pem",
	                   .client_cert_id = "CID",
	                   .client_key_id = "KID"};
	ck_assert(id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert_str_eq(
	    k.id,
	    "https://h.test:443 sni=h.test alpn=h2,http/1.1 verify=1 ca=system cert=CID key=KID");
	ck_assert(!k.h3);
	ck_assert_str_eq(k.client_cert, "c.pem");
	ck_assert_str_eq(k.client_key, "k.pem");
	/* loopback targets denied */
	r = (struct route){.verify = true, .h2 = true, .deny_loopback = true};
	ck_assert(id_of(&k, "http", "h.test", 80, NULL, &r));
	ck_assert_str_eq(k.id, "http://h.test:80 lo=deny");
	ck_assert(k.deny_loopback);
	/* a file named without an identity is looked at now */
	r = (struct route){.verify = true, .ca_file = "/nonexistent/muxd-test-ca.pem"};
	ck_assert(id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert_str_eq(k.id, "https://h.test:443 sni=h.test alpn=http/1.1 verify=1 early=off "
	                       "ca=/nonexistent/muxd-test-ca.pem@missing");
}
END_TEST

START_TEST(hop_ids)
{
	struct config_hop hops[3] = {
	    {.kind = HOP_SOCKS5H,
	     .host = "fe80::1",
	     .port = 1080,
	     .user = "alice",
	     .pass = "s3cret"},
	    {.kind = HOP_HTTPS, .host = "p.test", .port = 443},
	    {.kind = HOP_SOCKS5, .host = "s.test", .port = 1, .user = "bob"},
	};
	struct route r = {.verify = true,
	                  .h2 = true,
	                  .h3 = true,
	                  .early_data = true,
	                  .hops = hops,
	                  .nhops = 3,
	                  .proxy_ca_file = "/p/ca.pem",
	                  .proxy_ca_file_id = "PID",
	                  .deny_loopback = true};
	struct pool_key k;

	secret_init();
	ck_assert(id_of(&k, "https", "o.test", 443, NULL, &r));
	ck_assert_str_eq(k.id,
	                 "https://o.test:443 sni=o.test alpn=h2,http/1.1 verify=1 ca=system "
	                 "via=socks5h://[fe80::1]:1080#35e072fab3b32187 via=https://p.test:443 "
	                 "proxy_ca=PID via=socks5://s.test:1#d60bb1bc9ce63a7e");
	ck_assert(!k.h3 && !k.forward && !k.deny_loopback);
	ck_assert_uint_eq(k.nhops, 3);
	ck_assert_str_eq(k.hops[0].user, "alice");
	ck_assert_str_eq(k.hops[0].pass, "s3cret");
	ck_assert_str_eq(k.hops[1].user, "");
	ck_assert_str_eq(k.hops[1].pass, "");
	ck_assert(!k.hops[1].auth);
	ck_assert_str_eq(k.hops[2].pass, "");
	ck_assert_str_eq(k.proxy_ca_file, "/p/ca.pem");
	ck_assert_str_eq(k.proxy_ca_file_id, "PID");
	/* plain http:// with an HTTP parent last: forwarded, one key for all */
	r.nhops = 2;
	hops[1].kind = HOP_HTTP;
	ck_assert(id_of(&k, "http", "o.test", 80, NULL, &r));
	ck_assert(k.forward);
	ck_assert_str_eq(k.id, "http-forward via=socks5h://[fe80::1]:1080#35e072fab3b32187 "
	                       "via=http://p.test:443");
	/* a tunnel to the same place is not forwarded */
	ck_assert(id_of(&k, "tunnel", "o.test", 80, NULL, &r));
	ck_assert(!k.forward && !k.tls);
	ck_assert_str_eq(k.id, "tunnel://o.test:80 via=socks5h://[fe80::1]:1080#35e072fab3b32187 "
	                       "via=http://p.test:443");
	/* more hops than a key holds */
	struct config_hop many[5] = {{.kind = HOP_HTTP, .host = "a", .port = 1}};
	r = (struct route){.verify = true, .hops = many, .nhops = 5};
	ck_assert(!id_of(&k, "http", "o.test", 80, NULL, &r));
}
END_TEST

/* Every field of a key made in garbage is what a zeroed key would hold. */
START_TEST(fields_set_in_garbage)
{
	struct route r = {.verify = true, .h2 = true, .h3 = true, .early_data = true};
	struct pool_key k, u;
	struct pool_key_packed *p;

	secret_init();
	ck_assert(id_of(&k, "http", "h.test", 8080, NULL, &r));
	ck_assert_str_eq(k.scheme, "http");
	ck_assert_str_eq(k.host, "h.test");
	ck_assert_str_eq(k.sni, "h.test");
	ck_assert_uint_eq(k.port, 8080);
	ck_assert(!k.tls && !k.verify && !k.h3 && !k.early_data);
	ck_assert(!k.forward && !k.deny_loopback && k.warm_ok);
	ck_assert_str_eq(k.ca_file, "");
	ck_assert_str_eq(k.client_cert, "");
	ck_assert_str_eq(k.client_key, "");
	ck_assert_str_eq(k.proxy_ca_file, "");
	ck_assert_str_eq(k.proxy_ca_file_id, "");
	ck_assert_str_eq(k.alpn, "");
	ck_assert_uint_eq(k.nhops, 0);
	ck_assert(id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert(k.tls && k.verify && k.h3 && k.early_data);
	ck_assert_str_eq(k.alpn, "h2,http/1.1");
	ck_assert_str_eq(k.ca_file, "");
	/* packed and back: the same key, equal and hashed alike */
	p = pool_key_pack(&k);
	ck_assert_ptr_nonnull(p);
	ck_assert(pool_key_packed_equal(p, &k));
	ck_assert_uint_eq(pool_key_packed_hash(p), pool_key_hash(&k));
	pool_key_unpack(p, &u);
	ck_assert_str_eq(u.id, k.id);
	ck_assert_str_eq(u.alpn, k.alpn);
	ck_assert_str_eq(u.sni, k.sni);
	ck_assert(pool_key_equal(&u, &k));
	free(p);
}
END_TEST

/* The id holds 2047 bytes: one that fits exactly is a key, one byte more
 * is refused with the id cut as snprintf cuts it. */
START_TEST(id_limits)
{
	static char ca_id[1200], cert_id[1200], key_id[1200], host[256];
	const char *head = "https://h.test:443 sni=h.test alpn=http/1.1 verify=1 early=off ca=";
	struct route r = {.verify = true,
	                  .ca_file = "ca",
	                  .ca_file_id = ca_id,
	                  .client_cert = "c",
	                  .client_key = "k",
	                  .client_cert_id = cert_id,
	                  .client_key_id = key_id};
	struct pool_key k;
	char want[300];
	size_t fit;

	secret_init();
	memset(ca_id, 'a', 1000);
	memset(cert_id, 'c', 800);
	fit = sizeof(k.id) - 1 - strlen(head) - 1000 - strlen(" cert=") - 800 - strlen(" key=");
	memset(key_id, 'k', fit);
	ck_assert(id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert_uint_eq(strlen(k.id), sizeof(k.id) - 1);
	ck_assert_int_eq(strncmp(k.id, head, strlen(head)), 0);
	ck_assert_int_eq(k.id[sizeof(k.id) - 2], 'k');
	ck_assert_int_eq(k.id[sizeof(k.id) - 2 - fit], '=');
	key_id[fit] = 'k'; /* one more */
	ck_assert(!id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert_uint_eq(strlen(k.id), sizeof(k.id) - 1);
	ck_assert_int_eq(strncmp(k.id, head, strlen(head)), 0);
	ck_assert_int_eq(k.id[sizeof(k.id) - 2], 'k');
	/* the overflow in an earlier part: cut there, nothing after */
	memset(cert_id, 'c', 1199);
	ck_assert(!id_of(&k, "https", "h.test", 443, NULL, &r));
	ck_assert_uint_eq(strlen(k.id), sizeof(k.id) - 1);
	ck_assert_int_eq(k.id[sizeof(k.id) - 2], 'c');
	ck_assert_ptr_null(strstr(k.id, " key="));

	/* a host of 255 bytes, the most a name has */
	memset(host, 'a', 255);
	r = (struct route){.verify = true};
	ck_assert(id_of(&k, "http", host, 65535, NULL, &r));
	snprintf(want, sizeof(want), "http://%s:65535", host);
	ck_assert_str_eq(k.id, want);
	ck_assert_str_eq(k.host, host);
	ck_assert(id_of(&k, "http", host, 0, NULL, &r));
	snprintf(want, sizeof(want), "http://%s:0", host);
	ck_assert_str_eq(k.id, want);
}
END_TEST

/* Keys that differ in a byte or two spread over the pool's 256 hash chains
 * (which take the hash's low bits): the ports of one host, the hosts of one
 * domain, the same origin with and without verification. */
START_TEST(hash_spreads)
{
	static unsigned chains[256];
	struct route r = {.verify = true,
	                  .h2 = true,
	                  .ca_file = "/etc/ssl/ca.pem",
	                  .ca_file_id = "/etc/ssl/ca.pem@2049:1234567:4096:1700000000.123456789"};
	struct pool_key k;
	char host[64];
	unsigned most = 0;

	secret_init();
	for (unsigned i = 0; i < 2048; i++) {
		snprintf(host, sizeof(host), "h%u.example.com", i % 512);
		r.verify = i % 2;
		ck_assert(id_of(&k, i % 4 < 2 ? "https" : "http", host, (uint16_t)(8000 + i / 4),
		                NULL, &r));
		unsigned c = ++chains[pool_key_hash(&k) % 256];
		most = c > most ? c : most;
	}
	/* 8 a chain on average */
	ck_assert_uint_le(most, 24);
	ck_assert_uint_ne(pool_key_hash(&k), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pool_key");
	TCase *tc = tcase_create("ids");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, cred_id_hex);
	tcase_add_test(tc, direct_ids);
	tcase_add_test(tc, hop_ids);
	tcase_add_test(tc, fields_set_in_garbage);
	tcase_add_test(tc, id_limits);
	tcase_add_test(tc, hash_spreads);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
