/* Unit tests: the identities muxd shows and compares — the instance id behind
 * the Via token, the keyed hash that names proxy credentials, file identities
 * taken at config load (never per request), deny_loopback_targets, loop
 * detection by address — and the buffered access log. */
#include <arpa/inet.h>
#include <check.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"
#include "log.h"
#include "muxd.h"
#include "pool.h"
#include "route.h"

static struct config *load_text(const char *text)
{
	char path[] = "/tmp/muxd-ident-XXXXXX";
	struct config_errors errs;
	struct config *cfg;
	int fd = mkstemp(path);

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

static void write_file(const char *path, const char *text)
{
	char tmp[300];
	FILE *f;

	/* replaced as a rotation does it: a new file renamed over the old */
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	f = fopen(tmp, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	ck_assert_int_eq(rename(tmp, path), 0);
}

/* ---- the instance id and the Via token ---- */

START_TEST(instance_id_is_kept_in_state_dir)
{
	char dir[256], dir2[256];
	char path[300], token[32];
	struct muxd a, b, c;
	char err[300];
	struct stat st;

	ck_assert(tmpdir_new(dir, sizeof(dir), "ident"));
	ck_assert(tmpdir_new(dir2, sizeof(dir2), "ident2"));
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	memset(&c, 0, sizeof(c));
	ck_assert(muxd_load_instance(&a, dir, err, sizeof(err)));
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(strncmp(a.via_token, "1.1 muxd-", 9), 0);
	ck_assert_uint_eq(strlen(a.via_token), 9 + 8);
	for (size_t i = 9; i < 17; i++)
		ck_assert(strchr("0123456789abcdef", a.via_token[i]) != NULL);

	/* created once, private */
	snprintf(path, sizeof(path), "%s/instance-id", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_int_eq(st.st_size, 33);

	/* the next start finds the same id */
	ck_assert(muxd_load_instance(&b, dir, err, sizeof(err)));
	ck_assert_str_eq(a.via_token, b.via_token);
	snprintf(token, sizeof(token), "%s", a.via_token);

	/* loop detection names this instance only: not plain "muxd", not another */
	ck_assert(muxd_via_is_self(&a, token + 4, strlen(token + 4)));
	ck_assert(!muxd_via_is_self(&a, "muxd", 4));
	ck_assert(!muxd_via_is_self(&a, "muxd-00000000", 13));

	/* another state directory: another instance */
	ck_assert(muxd_load_instance(&c, dir2, err, sizeof(err)));
	ck_assert_str_ne(c.via_token, a.via_token);
	ck_assert(!muxd_via_is_self(&c, token + 4, strlen(token + 4)));

	/* a state directory that cannot be written: an id for this process */
	struct muxd d;
	memset(&d, 0, sizeof(d));
	ck_assert(muxd_load_instance(&d, "/proc/muxd-no-such-dir", err, sizeof(err)));
	ck_assert_str_ne(err, "");
	ck_assert_int_eq(strncmp(d.via_token, "1.1 muxd-", 9), 0);
	tmpdir_remove(dir);
	tmpdir_remove(dir2);
}
END_TEST

/* ---- credentials: a keyed hash ---- */

static uint64_t old_fnv64(const char *a, const char *b)
{
	uint64_t h = 14695981039346656037ull;
	for (const char *s = a; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	h = (h ^ ':') * 1099511628211ull;
	for (const char *s = b; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

START_TEST(credential_ids_are_keyed)
{
	static struct muxd m1, m2;
	char a[17], b[17], c[17], d[17], fnv[17];

	memset(m1.secret, 0x11, sizeof(m1.secret));
	memset(m2.secret, 0x22, sizeof(m2.secret));
	pool_cred_id(&m1, "alice", "s3cret", a);
	pool_cred_id(&m1, "alice", "s3cret", b);
	ck_assert_str_eq(a, b); /* the same within a process */
	ck_assert_uint_eq(strlen(a), 16);
	pool_cred_id(&m2, "alice", "s3cret", c);
	ck_assert_str_ne(a, c); /* another key, another id */
	pool_cred_id(&m1, "alice", "s3cres", d);
	ck_assert_str_ne(a, d);
	pool_cred_id(&m1, "alice:s3", "cret", d); /* no ambiguity at the separator */
	ck_assert_str_ne(a, d);
	snprintf(fnv, sizeof(fnv), "%016llx", (unsigned long long)old_fnv64("alice", "s3cret"));
	ck_assert_str_ne(a, fnv);

	/* what the key id (logs, status page) shows is the keyed id */
	struct config *cfg = load_text("[route *]\nproxy = http://alice:s3cret@127.0.0.1:3129\n");
	struct route r;
	struct pool_key k;
	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "h.test", 80, &r);
	ck_assert(pool_key_init(&k, &m1, "http", "h.test", 80, &r));
	ck_assert_ptr_nonnull(strstr(k.id, a));
	ck_assert_ptr_null(strstr(k.id, fnv));
	ck_assert_ptr_null(strstr(k.id, "s3cret"));
	config_unref(cfg);
}
END_TEST

/* ---- file identities: taken at load, not per request ---- */

START_TEST(file_identity_comes_from_the_route)
{
	static struct muxd km;
	char dir[256];
	char ca[300], text[700];
	struct pool_key k1, k2, k3;
	struct route r;

	ck_assert(tmpdir_new(dir, sizeof(dir), "ident"));
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	write_file(ca, "one\n");
	snprintf(text, sizeof(text), "[route *]\nca_file = %s\nproxy_ca_file = %s\n", ca, ca);
	struct config *cfg = load_text(text);
	ck_assert_ptr_nonnull(cfg);
	route_for(cfg, "h.test", 443, &r);
	ck_assert_ptr_nonnull(r.ca_file_id);
	ck_assert_ptr_nonnull(r.proxy_ca_file_id);
	ck_assert_int_eq(strncmp(r.ca_file_id, ca, strlen(ca)), 0);
	ck_assert(pool_key_init(&k1, &km, "https", "h.test", 443, &r));

	/* the file is replaced: requests keep the identity of the load ... */
	write_file(ca, "another CA, longer\n");
	route_for(cfg, "h.test", 443, &r);
	ck_assert(pool_key_init(&k2, &km, "https", "h.test", 443, &r));
	ck_assert_str_eq(k1.id, k2.id);

	/* ... and the reload takes the new one */
	struct config *cfg2 = load_text(text);
	ck_assert_ptr_nonnull(cfg2);
	route_for(cfg2, "h.test", 443, &r);
	ck_assert(pool_key_init(&k3, &km, "https", "h.test", 443, &r));
	ck_assert_str_ne(k1.id, k3.id);
	config_unref(cfg);
	config_unref(cfg2);
	tmpdir_remove(dir);
}
END_TEST

/* ---- deny_loopback_targets ---- */

START_TEST(deny_loopback_auto)
{
	struct config *cfg = load_text("[muxd]\nvia = on\n");
	struct route r;

	ck_assert_ptr_nonnull(cfg);
	ck_assert_int_eq(cfg->deny_loopback_targets, -1);
	ck_assert(!config_deny_loopback(cfg)); /* allow is loopback only */
	config_unref(cfg);

	cfg = load_text("[muxd]\nallow = 127.0.0.0/8 ::1 10.0.0.0/8\n");
	ck_assert(config_deny_loopback(cfg));
	route_for(cfg, "h.test", 80, &r);
	ck_assert(r.deny_loopback);
	config_unref(cfg);

	cfg = load_text("[muxd]\nallow = 10.0.0.0/8\ndeny_loopback_targets = off\n");
	ck_assert(!config_deny_loopback(cfg));
	config_unref(cfg);

	cfg = load_text("[muxd]\ndeny_loopback_targets = on\n");
	ck_assert(config_deny_loopback(cfg));
	config_unref(cfg);

	cfg = load_text("[muxd]\ndeny_loopback_targets = auto\n");
	ck_assert(!config_deny_loopback(cfg));
	config_unref(cfg);

	ck_assert_ptr_null(load_text("[muxd]\ndeny_loopback_targets = maybe\n"));
}
END_TEST

/* ---- loop detection by address ---- */

static struct sockaddr_storage addr(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons(port);
	} else {
		ck_assert_int_eq(inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr),
		                 1);
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
	}
	return ss;
}

START_TEST(self_addresses)
{
	static struct muxd sm;
	struct sockaddr_storage t;

	sm.self[0] = addr("127.0.0.1", 3128);
	sm.self[1] = addr("::1", 3128);
	sm.nself = 2;
	t = addr("127.0.0.1", 3128);
	ck_assert(muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("::ffff:127.0.0.1", 3128);
	ck_assert(muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("::1", 3128);
	ck_assert(muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("0.0.0.0", 3128); /* connecting to 0.0.0.0 reaches this host */
	ck_assert(muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("127.0.0.1", 3129);
	ck_assert(!muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("127.0.0.2", 3128);
	ck_assert(!muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("192.0.2.1", 3128);
	ck_assert(!muxd_is_self(&sm, (struct sockaddr *)&t));

	/* a wildcard listener: every local address on its port */
	sm.self[0] = addr("0.0.0.0", 8080);
	sm.nself = 1;
	t = addr("127.0.0.9", 8080);
	ck_assert(muxd_is_self(&sm, (struct sockaddr *)&t));
	t = addr("192.0.2.1", 8080); /* TEST-NET: on no interface here */
	ck_assert(!muxd_is_self(&sm, (struct sockaddr *)&t));

	t = addr("127.0.0.5", 1);
	ck_assert(muxd_is_loopback((struct sockaddr *)&t));
	t = addr("::ffff:127.0.0.5", 1);
	ck_assert(muxd_is_loopback((struct sockaddr *)&t));
	t = addr("::1", 1);
	ck_assert(muxd_is_loopback((struct sockaddr *)&t));
	t = addr("10.0.0.1", 1);
	ck_assert(!muxd_is_loopback((struct sockaddr *)&t));
}
END_TEST

/* ---- the access log: buffered, written by a timer, complete at close ---- */

static size_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

START_TEST(access_log_buffered)
{
	struct event_base *base = event_base_new();
	char dir[256];
	char path[300], err[300];
	struct access_log *al;

	ck_assert(tmpdir_new(dir, sizeof(dir), "alog"));
	snprintf(path, sizeof(path), "%s/access.log", dir);
	al = access_log_open(base, path, err, sizeof(err));
	ck_assert_ptr_nonnull(al);
	for (int i = 0; i < 100; i++)
		access_log_line(al, "line %d\n", i);
	/* nothing written per request ... */
	ck_assert_uint_eq(file_size(path), 0);
	/* ... but within the flush interval */
	struct timeval tv = {(ACCESS_LOG_FLUSH_MS + 500) / 1000,
	                     ((ACCESS_LOG_FLUSH_MS + 500) % 1000) * 1000};
	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
	ck_assert_uint_gt(file_size(path), 0);
	size_t after_timer = file_size(path);

	/* a full buffer is written at once: memory stays bounded */
	char big[1000];
	memset(big, 'x', sizeof(big) - 2);
	big[sizeof(big) - 2] = '\n';
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < 2 * ACCESS_LOG_BUF / 1000; i++)
		access_log_line(al, "%s", big);
	ck_assert_uint_gt(file_size(path), after_timer);

	/* closing writes the rest: every line is there */
	access_log_line(al, "last\n");
	access_log_close(al);
	size_t expect = after_timer + (size_t)(2 * ACCESS_LOG_BUF / 1000) * 999 + 5;
	ck_assert_uint_eq(file_size(path), expect);
	event_base_free(base);
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("identity");
	TCase *tc = tcase_create("identity");

	tcase_add_test(tc, instance_id_is_kept_in_state_dir);
	tcase_add_test(tc, credential_ids_are_keyed);
	tcase_add_test(tc, file_identity_comes_from_the_route);
	tcase_add_test(tc, deny_loopback_auto);
	tcase_add_test(tc, self_addresses);
	tcase_add_test(tc, access_log_buffered);
	suite_add_tcase(s, tc);
	return run_suite(s) ? EXIT_FAILURE : EXIT_SUCCESS;
}
