/* Unit tests for src/transport/tls_sessions.c: the resumption store, its
 * bounds and expiry, the session file's format and the file itself. */
#include "transport/tls_sessions.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define T0 ((time_t)1700000000)

static struct tls_sessions *s;

static void setup(void)
{
	s = tls_sessions_new();
	ck_assert_ptr_nonnull(s);
}

static void teardown(void)
{
	tls_sessions_free(s);
}

static bool put(const char *key, const char *data, time_t expires, uint32_t early, const char *alpn)
{
	struct tls_session_entry e = {.key = key,
	                              .data = (const unsigned char *)data,
	                              .len = strlen(data),
	                              .expires = expires,
	                              .max_early = early};
	snprintf(e.alpn, sizeof(e.alpn), "%s", alpn);
	return tls_sessions_put(s, &e, T0);
}

START_TEST(put_get_replace)
{
	const struct tls_session_entry *e;

	ck_assert(!tls_sessions_dirty(s));
	ck_assert(put("a", "one", T0 + 10, 16384, "http/1.1"));
	ck_assert(tls_sessions_dirty(s));
	e = tls_sessions_get(s, "a", T0);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(e->len, 3);
	ck_assert(memcmp(e->data, "one", 3) == 0);
	ck_assert_uint_eq(e->max_early, 16384);
	ck_assert_str_eq(e->alpn, "http/1.1");
	ck_assert(put("a", "two!", T0 + 10, 0, "h2"));
	ck_assert_uint_eq(tls_sessions_count(s), 1);
	e = tls_sessions_get(s, "a", T0);
	ck_assert_uint_eq(e->len, 4);
	ck_assert_str_eq(e->alpn, "h2");
	ck_assert_ptr_null(tls_sessions_get(s, "b", T0));
	tls_sessions_remove(s, "a");
	ck_assert_ptr_null(tls_sessions_get(s, "a", T0));
}
END_TEST

START_TEST(expiry)
{
	ck_assert(!put("gone", "x", T0, 0, "")); /* already expired: not kept */
	ck_assert(put("a", "x", T0 + 5, 0, ""));
	ck_assert_ptr_nonnull(tls_sessions_get(s, "a", T0 + 4));
	ck_assert_ptr_null(tls_sessions_get(s, "a", T0 + 5));
	ck_assert_uint_eq(tls_sessions_count(s), 0);
}
END_TEST

START_TEST(bounds)
{
	char key[32], big[TLS_SESSION_MAX_DATA + 2];

	for (int i = 0; i < TLS_SESSIONS_MAX + 10; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		ck_assert(put(key, "data", T0 + 100, 0, ""));
	}
	ck_assert_uint_eq(tls_sessions_count(s), TLS_SESSIONS_MAX);
	ck_assert_ptr_null(tls_sessions_get(s, "k0", T0)); /* the oldest went */
	ck_assert_ptr_nonnull(tls_sessions_get(s, "k1033", T0));
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert(!put("big", big, T0 + 100, 0, "")); /* one entry's data is bounded */
	ck_assert(!put("", "x", T0 + 100, 0, ""));
	/* an ALPN that the file could not hold is dropped, not the entry */
	ck_assert(put("sp", "x", T0 + 100, 0, "a b"));
	ck_assert_str_eq(tls_sessions_get(s, "sp", T0)->alpn, "");
}
END_TEST

START_TEST(format_parse_round_trip)
{
	struct tls_sessions *t = tls_sessions_new();
	const struct tls_session_entry *e;
	char *buf;
	size_t len;

	ck_assert(put("https://a:443 sni=a", "\x01\x02\xff", T0 + 100, 16384, "http/1.1"));
	ck_assert(put("h3|https://a:443", "q", T0 + 200, 0, "h3"));
	buf = tls_sessions_format(s, T0, &len);
	ck_assert_ptr_nonnull(buf);
	ck_assert(strncmp(buf, "muxd-tls-sessions 2\n", 20) == 0);
	ck_assert_ptr_null(tls_sessions_parse(t, buf, len, T0));
	ck_assert_uint_eq(tls_sessions_count(t), 2);
	ck_assert(!tls_sessions_dirty(t)); /* it is what the file holds */
	e = tls_sessions_get(t, "https://a:443 sni=a", T0);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(e->len, 3);
	ck_assert(memcmp(e->data, "\x01\x02\xff", 3) == 0);
	ck_assert_uint_eq(e->max_early, 16384);
	ck_assert_str_eq(e->alpn, "http/1.1");
	ck_assert_int_eq(e->expires, T0 + 100);
	/* expired entries are dropped when read */
	tls_sessions_free(t);
	t = tls_sessions_new();
	ck_assert_ptr_null(tls_sessions_parse(t, buf, len, T0 + 150));
	ck_assert_uint_eq(tls_sessions_count(t), 1);
	free(buf);
	tls_sessions_free(t);
}
END_TEST

/* QUIC's entries keep the server's transport parameters (0-RTT needs
 * them): stored, written and read back byte for byte. */
START_TEST(transport_params_round_trip)
{
	struct tls_sessions *t = tls_sessions_new();
	static const unsigned char tp[] = {0x01, 0x00, 0xff, 0x42};
	struct tls_session_entry e = {.key = "h3|https://a:443",
	                              .data = (const unsigned char *)"q",
	                              .len = 1,
	                              .expires = T0 + 100,
	                              .tp = tp,
	                              .tp_len = sizeof(tp)};
	const struct tls_session_entry *g;
	char *buf;
	size_t len;

	ck_assert(tls_sessions_put(s, &e, T0));
	ck_assert(put("plain", "p", T0 + 100, 0, ""));
	buf = tls_sessions_format(s, T0, &len);
	ck_assert_ptr_nonnull(buf);
	ck_assert_ptr_nonnull(strstr(buf, " 0100ff42\n"));
	ck_assert_ptr_null(tls_sessions_parse(t, buf, len, T0));
	g = tls_sessions_get(t, "h3|https://a:443", T0);
	ck_assert(g && g->tp_len == sizeof(tp) && memcmp(g->tp, tp, sizeof(tp)) == 0);
	g = tls_sessions_get(t, "plain", T0);
	ck_assert(g && g->tp_len == 0 && g->tp == NULL);
	/* too large a set is refused */
	e.tp_len = TLS_SESSION_MAX_TP + 1;
	ck_assert(!tls_sessions_put(t, &e, T0));
	free(buf);
	tls_sessions_free(t);
}
END_TEST

START_TEST(parse_refuses_damage)
{
	static const char *const bad[] = {
	    "",
	    "muxd-tls-sessions 3\n",
	    "muxd-tls-sessions 2\n1800000000 0 - 6b 7a -",       /* no end of line */
	    "muxd-tls-sessions 2\n1800000000 0 - 6b 7 -\n",      /* odd hex */
	    "muxd-tls-sessions 2\n1800000000 0 - 6B 7a -\n",     /* upper-case hex */
	    "muxd-tls-sessions 2\n1800000000 0 - 6b006b 7a -\n", /* NUL in a key */
	    "muxd-tls-sessions 2\n1800000000 0 -  6b 7a -\n",    /* empty field */
	    "muxd-tls-sessions 2\n1800000000 0 - 6b 7a 7a 7a\n", /* a field too many */
	    "muxd-tls-sessions 2\n1800000000 0 - 6b 7a\n",       /* no tp field */
	    "muxd-tls-sessions 2\n1800000000 0 - 6b 7a 7\n",     /* odd tp hex */
	    "muxd-tls-sessions 2\n1800000000 4294967296 - 6b 7a -\n",
	    "muxd-tls-sessions 2\n-1 0 - 6b 7a -\n",
	    "muxd-tls-sessions 2\n1800000000 0 - 6b -\n",
	    /* the first format: ignored as a whole */
	    "muxd-tls-sessions 1\n1800000000 0 - 6b 7a\n",
	};

	ck_assert(put("mine", "x", T0 + 100, 0, ""));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(tls_sessions_parse(s, bad[i], strlen(bad[i]), T0) != NULL, "%s",
		              bad[i]);
		ck_assert_uint_eq(tls_sessions_count(s), 1);
	}
}
END_TEST

START_TEST(parse_keeps_what_memory_knows)
{
	const char *file = "muxd-tls-sessions 2\n"
	                   "1800000000 0 - 6b 6f6c64 -\n"  /* k = "old" */
	                   "1800000000 0 - 6c 6f6c64 -\n"; /* l = "old" */
	const struct tls_session_entry *e;

	ck_assert(put("k", "new", T0 + 100, 0, ""));
	ck_assert_ptr_null(tls_sessions_parse(s, file, strlen(file), T0));
	e = tls_sessions_get(s, "k", T0);
	ck_assert(e && e->len == 3 && memcmp(e->data, "new", 3) == 0);
	ck_assert_ptr_nonnull(tls_sessions_get(s, "l", T0));
}
END_TEST

START_TEST(save_and_load)
{
	char dir[] = "/tmp/test_tls_sessions.XXXXXX", path[128], tmp[160];
	struct tls_sessions *t = tls_sessions_new();
	struct stat st;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/sessions.cache", dir);
	ck_assert_ptr_null(tls_sessions_load(t, path, T0)); /* no file: no warning */
	ck_assert(put("a", "secret", T0 + 100, 0, "h2"));
	ck_assert(tls_sessions_save(s, path, T0, false));
	ck_assert(!tls_sessions_dirty(s));
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0600);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	ck_assert_int_ne(access(tmp, F_OK), 0); /* renamed into place */
	ck_assert_ptr_null(tls_sessions_load(t, path, T0));
	ck_assert_ptr_nonnull(tls_sessions_get(t, "a", T0));
	ck_assert(tls_sessions_save(s, path, T0, true));
	/* a damaged file is refused as a whole */
	FILE *f = fopen(path, "w");
	fputs("muxd-tls-sessions 2\n1800000000 0 - 6b", f);
	fclose(f);
	tls_sessions_free(t);
	t = tls_sessions_new();
	ck_assert_ptr_nonnull(tls_sessions_load(t, path, T0));
	ck_assert_uint_eq(tls_sessions_count(t), 0);
	tls_sessions_free(t);
	unlink(path);
	rmdir(dir);
}
END_TEST

static Suite *sessions_suite(void)
{
	Suite *su = suite_create("tls_sessions");
	TCase *t = tcase_create("store");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, put_get_replace);
	tcase_add_test(t, expiry);
	tcase_add_test(t, bounds);
	tcase_add_test(t, format_parse_round_trip);
	tcase_add_test(t, transport_params_round_trip);
	tcase_add_test(t, parse_refuses_damage);
	tcase_add_test(t, parse_keeps_what_memory_knows);
	tcase_add_test(t, save_and_load);
	suite_add_tcase(su, t);
	return su;
}

int main(void)
{
	SRunner *sr = srunner_create(sessions_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
