/*
 * Unit tests for the table-driven paths of src/http1.c (issue 15): every
 * byte class the parser looks up agrees with the RFC's definition on all 256
 * bytes (field names, values, methods, targets, reasons, Host values,
 * reg-names, chunk extensions, trailer names, the head scan, case folding);
 * which answer a head with a bad line gets while it is incomplete; and the
 * Connection index (http1_msg.conn) that makes the hop-by-hop filter O(1)
 * for well-known tokens gives the answers the field scan gives.
 */
#include "http1.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reference predicates, written from the RFCs ---- */

static bool ref_alnum(int c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 9110 5.6.2 */
static bool ref_tchar(int c)
{
	return ref_alnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RFC 9110 5.5: HTAB, SP, VCHAR, obs-text */
static bool ref_value(int c)
{
	return c == '\t' || c == ' ' || (c >= 0x21 && c <= 0x7e) || c >= 0x80;
}

static bool ref_host(int c)
{
	return ref_alnum(c) || (c != 0 && strchr("-._~%!$&'()*+,;=:[]", c) != NULL);
}

static bool ref_regname(int c)
{
	return ref_alnum(c) || (c != 0 && strchr("-._~", c) != NULL);
}

static int ref_lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static enum http1_result parse_req(const char *s, size_t n)
{
	struct http1_msg m;
	size_t used = 0;
	enum http1_result r = http1_parse_request(s, n, &m, &used);

	if (r == HTTP1_OK)
		ck_assert_uint_eq(used, n);
	http1_msg_free(&m);
	return r;
}

/* s with every '@' replaced by byte c; returns the length */
static size_t with_byte(char *out, const char *s, int c)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++)
		out[i] = s[i] == '@' ? (char)c : s[i];
	out[n] = '\0';
	return n;
}

#define EXPECT(cond) ((cond) ? HTTP1_OK : HTTP1_BAD)

START_TEST(classes_field_name)
{
	char s[128];
	int c = _i;
	size_t n = with_byte(s, "GET / HTTP/1.1\r\nHost: a\r\nX@Y: 1\r\n\r\n", c);

	/* a ':' ends the name early: "X" with the value "Y: 1" */
	ck_assert_int_eq(parse_req(s, n), EXPECT(ref_tchar(c) || c == ':'));
}
END_TEST

START_TEST(classes_field_value)
{
	char s[128];
	int c = _i;
	size_t n = with_byte(s, "GET / HTTP/1.1\r\nHost: a\r\nX: a@b\r\n\r\n", c);

	ck_assert_int_eq(parse_req(s, n), EXPECT(ref_value(c)));
	/* the same byte as the last of a value, before trailing OWS */
	n = with_byte(s, "GET / HTTP/1.1\r\nHost: a\r\nX: a@ \t\r\n\r\n", c);
	ck_assert_int_eq(parse_req(s, n), EXPECT(ref_value(c)));
}
END_TEST

START_TEST(classes_method_and_target)
{
	char s[128];
	int c = _i;
	size_t n = with_byte(s, "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", c);

	ck_assert_int_eq(parse_req(s, n), EXPECT(ref_tchar(c)));
	n = with_byte(s, "GET /@x HTTP/1.1\r\nHost: a\r\n\r\n", c);
	ck_assert_int_eq(parse_req(s, n), EXPECT(c > 0x20 && c < 0x7f));
	n = with_byte(s, "GET http://h@x/ HTTP/1.1\r\nHost: a\r\n\r\n", c);
	ck_assert_int_eq(parse_req(s, n), EXPECT(c > 0x20 && c < 0x7f));
}
END_TEST

START_TEST(classes_reason)
{
	char s[128];
	int c = _i;
	struct http1_msg m;
	size_t used, n = with_byte(s, "HTTP/1.1 200 O@K\r\nContent-Length: 0\r\n\r\n", c);

	ck_assert_int_eq(http1_parse_response(s, n, "GET", &m, &used), EXPECT(ref_value(c)));
	http1_msg_free(&m);
}
END_TEST

START_TEST(classes_host_value)
{
	char s[128];
	int c = _i;
	size_t n = with_byte(s, "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", c);

	ck_assert_int_eq(parse_req(s, n), EXPECT(ref_host(c)));
}
END_TEST

START_TEST(classes_reg_name)
{
	char s[32], host[32];
	int c = _i;
	uint16_t port;
	bool v6;

	with_byte(s, "a@b:80", c);
	ck_assert(http1_parse_authority(s, host, sizeof(host), &port, &v6) == ref_regname(c));
	if (ref_regname(c)) {
		ck_assert_int_eq(host[1], ref_lower(c));
		ck_assert_uint_eq(port, 80);
	}
}
END_TEST

START_TEST(classes_chunk_extension_and_trailer_name)
{
	static struct http1_chunked ck;
	char s[64], name[4] = {'X', (char)_i, 'Y', '\0'};
	int c = _i;
	size_t n = with_byte(s, "1;a@b\r\nx\r\n0\r\n\r\n", c), off = 0, used, dl;
	const char *d;
	enum http1_chunk_event ev;

	memset(&ck, 0, sizeof(ck));
	do {
		ev = http1_chunked_next(&ck, s + off, n - off, &used, &d, &dl);
		off += used;
	} while (ev == HTTP1_CHUNK_DATA);
	/* "a=b" is a name and a value, "a;b" two names */
	ck_assert_int_eq(ev, ref_tchar(c) || c == '=' || c == ';' ? HTTP1_CHUNK_DONE
	                                                          : HTTP1_CHUNK_ERROR);
	ck_assert(http1_trailer_allowed(name, 3) == ref_tchar(c));
}
END_TEST

START_TEST(classes_head_scan)
{
	struct http1_head_scan sc;
	char s[8];
	int c = _i;
	size_t n = with_byte(s, "ab@d", c);

	s[2] = (char)c; /* also for NUL */
	memset(&sc, 0, sizeof(sc));
	/* NUL and bare LF stop at once, a CR at the byte after it (not LF) */
	bool stop = http1_head_scan(&sc, s, n);
	ck_assert(stop == (c == 0 || c == '\n' || c == '\r'));
	ck_assert_uint_eq(sc.seen, c == 0 || c == '\n' ? 3 : 4);
	ck_assert_int_eq(sc.last[2], c == 0 || c == '\n' ? c : 'd');
}
END_TEST

/* Long runs are skipped a word at a time: the byte at every offset of a
 * word still decides, for values and for the head scan. */
START_TEST(classes_long_runs_every_offset)
{
	char s[128];
	int c = _i;

	for (size_t pos = 0; pos < 24; pos++) {
		struct http1_head_scan sc;
		size_t n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
		size_t at = n + pos;

		memset(s + n, 'v', 24);
		s[at] = (char)c;
		n += 24;
		n += (size_t)sprintf(s + n, "\r\n\r\n");
		ck_assert_int_eq(parse_req(s, n), EXPECT(ref_value(c)));

		memset(&sc, 0, sizeof(sc));
		bool stop = http1_head_scan(&sc, s + at - pos, 24); /* the value alone */
		ck_assert(stop == (c == 0 || c == '\n' || (c == '\r' && pos < 23)));
		if (c == 0 || c == '\n')
			ck_assert_uint_eq(sc.seen, pos + 1);
		else if (c == '\r' && pos < 23)
			ck_assert_uint_eq(sc.seen, pos + 2);
		else
			ck_assert_uint_eq(sc.seen, 24);
		ck_assert_int_eq(sc.last[2], stop && c != '\r' ? c : pos == 23 ? c : 'v');
	}
}
END_TEST

START_TEST(classes_case_folding)
{
	char s[64], name[3] = {'q', 0, 0};
	int c = _i;
	struct http1_msg m;
	size_t used, n;

	if (!ref_tchar(c))
		return;
	n = with_byte(s, "HTTP/1.1 200 OK\r\nQ@: 1\r\n\r\n", c);
	ck_assert_int_eq(http1_parse_response(s, n, "GET", &m, &used), HTTP1_OK);
	for (int d = 1; d < 256; d++) {
		name[1] = (char)d;
		ck_assert((http1_find(&m, name) != NULL) == (ref_lower(d) == ref_lower(c)));
	}
	http1_msg_free(&m);
}
END_TEST

/* ---- which answer, while a head with a bad line is incomplete ---- */

START_TEST(bad_line_waits_for_the_head)
{
	static const char bad_name[] = "GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n";
	static const char bad_line[] = "GET /\r\nHost: a\r\n";
	char s[256];

	/* the parser waits for the head to decide, as before */
	ck_assert_int_eq(parse_req(bad_name, strlen(bad_name)), HTTP1_INCOMPLETE);
	ck_assert_int_eq(parse_req(bad_line, strlen(bad_line)), HTTP1_INCOMPLETE);
	snprintf(s, sizeof(s), "%s\r\n", bad_name);
	ck_assert_int_eq(parse_req(s, strlen(s)), HTTP1_BAD);
	snprintf(s, sizeof(s), "%s\r\n", bad_line);
	ck_assert_int_eq(parse_req(s, strlen(s)), HTTP1_BAD);
	/* ... unless a byte rejected on sight follows: then BAD at once */
	snprintf(s, sizeof(s), "%sX: a\nb", bad_name);
	ck_assert_int_eq(parse_req(s, strlen(s)), HTTP1_BAD);
	snprintf(s, sizeof(s), "%sX: a\rb", bad_line);
	ck_assert_int_eq(parse_req(s, strlen(s)), HTTP1_BAD);
}
END_TEST

START_TEST(too_many_fields_then_bad_line)
{
	static char s[HTTP1_MAX_FIELDS * 8 + 128];
	size_t n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\n");

	for (int i = 1; i < HTTP1_MAX_FIELDS; i++)
		n += (size_t)sprintf(s + n, "X: %d\r\n", i % 10);
	n += (size_t)sprintf(s + n, "Y: 1\r\n"); /* field 129: too many */
	n += (size_t)sprintf(s + n, "Bad Name: 1\r\n");
	ck_assert_int_eq(parse_req(s, n), HTTP1_INCOMPLETE);
	n += (size_t)sprintf(s + n, "\r\n");
	ck_assert_int_eq(parse_req(s, n), HTTP1_TOO_LARGE);
}
END_TEST

/* ---- the Connection index ---- */

static struct http1_msg msg;

static void teardown(void)
{
	http1_msg_free(&msg);
}

static void parse_ok(const char *s)
{
	size_t used;

	ck_assert_int_eq(http1_parse_request(s, strlen(s), &msg, &used), HTTP1_OK);
}

static const char *const probe[] = {
    "X-Foo", "x-foo", "X-Bar", "X-Fo",       "X-Foo2",         "Close", "close", "keep-alive",
    "te",    "Host",  "",      "Connection", "Content-Length", "a",     "b",     "Upgrade",
};

/* The index answers as the field scan does (an unindexed copy), name by name. */
static void same_as_scan(const struct http1_msg *m)
{
	static struct http1_msg plain;

	ck_assert(m->conn & HTTP1_CONN_INDEXED);
	plain = *m;
	plain.conn = 0;
	for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++)
		ck_assert_msg(http1_is_hop_by_hop(m, probe[i]) ==
		                  http1_is_hop_by_hop(&plain, probe[i]),
		              "%s", probe[i]);
	for (size_t i = 0; i < m->nfields; i++)
		ck_assert(http1_is_hop_by_hop(m, m->fields[i].name) ==
		          http1_is_hop_by_hop(&plain, m->fields[i].name));
	ck_assert(http1_upgrade_requested(m, "websocket") ==
	          http1_upgrade_requested(&plain, "websocket"));
	/* and indexing by hand gives the parser's index */
	http1_msg_index_connection(&plain);
	ck_assert_uint_eq(plain.conn, m->conn);
}

START_TEST(conn_close_and_a_name)
{
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n"
	         "X-Bar: 2\r\n\r\n");
	ck_assert(http1_is_hop_by_hop(&msg, "X-Foo"));
	ck_assert(http1_is_hop_by_hop(&msg, "x-FOO"));
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Bar"));
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Fo"));
	ck_assert(!msg.keep_alive);
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_CLOSE | HTTP1_CONN_OTHER);
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_several_fields)
{
	parse_ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-A: 1\r\nconnection: X-A\r\n"
	         "CONNECTION: te\r\n\r\n");
	ck_assert(msg.keep_alive);
	ck_assert(http1_is_hop_by_hop(&msg, "x-a"));
	ck_assert(!http1_is_hop_by_hop(&msg, "X-B"));
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_KEEP_ALIVE | HTTP1_CONN_TE |
	                                HTTP1_CONN_OTHER);
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_case_insensitive)
{
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nCoNNecTion: ClOsE\r\n\r\n");
	ck_assert(!msg.keep_alive);
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_CLOSE);
	ck_assert(http1_is_hop_by_hop(&msg, "CLOSE"));
	same_as_scan(&msg);
	http1_msg_free(&msg);
	parse_ok("GET / HTTP/1.0\r\nconnection: KEEP-ALIVE\r\n\r\n");
	ck_assert(msg.keep_alive);
	same_as_scan(&msg);
	http1_msg_free(&msg);
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: UPGRADE\r\nUpgrade: websocket\r\n\r\n");
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_UPGRADE);
	ck_assert(http1_upgrade_requested(&msg, "websocket"));
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_tokens_with_ows_and_parameters)
{
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: \t x-foo \t,\t close ;q=1 , ,a;b\r\n"
	         "\r\n");
	ck_assert(!msg.keep_alive);
	ck_assert(http1_is_hop_by_hop(&msg, "X-Foo"));
	ck_assert(http1_is_hop_by_hop(&msg, "a"));
	ck_assert(!http1_is_hop_by_hop(&msg, "b"));   /* a parameter, not a token */
	ck_assert(!http1_is_hop_by_hop(&msg, ""));    /* empty elements name nothing */
	ck_assert(!http1_is_hop_by_hop(&msg, "q=1")); /* nor do parameters */
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_only_well_known_tokens)
{
	/* nothing but well-known tokens: no other name is looked for */
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, te, , upgrade\r\n"
	         "X-Foo: 1\r\nClose: 1\r\n\r\n");
	ck_assert(msg.keep_alive);
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_KEEP_ALIVE | HTTP1_CONN_TE |
	                                HTTP1_CONN_UPGRADE);
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Foo"));
	ck_assert(!http1_is_hop_by_hop(&msg, "Close"));
	same_as_scan(&msg);
	http1_msg_free(&msg);
	/* a field named like a token that is listed goes */
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: 1\r\n\r\n");
	ck_assert(http1_is_hop_by_hop(&msg, "Close"));
	ck_assert(!http1_is_hop_by_hop(&msg, "Host"));
	same_as_scan(&msg);
	http1_msg_free(&msg);
	/* no Connection field at all */
	parse_ok("GET / HTTP/1.1\r\nHost: a\r\nX-Foo: 1\r\n\r\n");
	ck_assert_uint_eq(msg.conn, HTTP1_CONN_INDEXED);
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Foo"));
	ck_assert(http1_is_hop_by_hop(&msg, "Keep-Alive"));
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_never_drops_content_length)
{
	parse_ok("POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, close\r\n"
	         "Content-Length: 1\r\n\r\n");
	ck_assert(!http1_is_hop_by_hop(&msg, "content-length"));
	same_as_scan(&msg);
}
END_TEST

START_TEST(conn_unindexed_is_scanned)
{
	/* a message built by hand (conn 0) is answered from its fields */
	static struct http1_msg m;

	http1_msg_init(&m);
	m.fields[0] = (struct http1_field){"Connection", 10, "X-Foo, close", 12};
	m.fields[1] = (struct http1_field){"X-Foo", 5, "1", 1};
	m.nfields = 2;
	ck_assert_uint_eq(m.conn, 0);
	ck_assert(http1_is_hop_by_hop(&m, "x-foo"));
	ck_assert(http1_is_hop_by_hop(&m, "close"));
	ck_assert(!http1_is_hop_by_hop(&m, "X-Bar"));
	http1_msg_index_connection(&m);
	ck_assert_uint_eq(m.conn, HTTP1_CONN_INDEXED | HTTP1_CONN_CLOSE | HTTP1_CONN_OTHER);
	ck_assert(http1_is_hop_by_hop(&m, "x-foo"));
	ck_assert(!http1_is_hop_by_hop(&m, "X-Bar"));
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("http1_parse");
	TCase *t;

	t = tcase_create("classes");
	tcase_add_loop_test(t, classes_field_name, 0, 256);
	tcase_add_loop_test(t, classes_field_value, 0, 256);
	tcase_add_loop_test(t, classes_method_and_target, 0, 256);
	tcase_add_loop_test(t, classes_reason, 0, 256);
	tcase_add_loop_test(t, classes_host_value, 0, 256);
	tcase_add_loop_test(t, classes_reg_name, 0, 256);
	tcase_add_loop_test(t, classes_chunk_extension_and_trailer_name, 0, 256);
	tcase_add_loop_test(t, classes_head_scan, 0, 256);
	tcase_add_loop_test(t, classes_long_runs_every_offset, 0, 256);
	tcase_add_loop_test(t, classes_case_folding, 0, 256);
	suite_add_tcase(s, t);

	t = tcase_create("answers");
	tcase_add_test(t, bad_line_waits_for_the_head);
	tcase_add_test(t, too_many_fields_then_bad_line);
	suite_add_tcase(s, t);

	t = tcase_create("connection");
	tcase_add_checked_fixture(t, NULL, teardown);
	tcase_add_test(t, conn_close_and_a_name);
	tcase_add_test(t, conn_several_fields);
	tcase_add_test(t, conn_case_insensitive);
	tcase_add_test(t, conn_tokens_with_ows_and_parameters);
	tcase_add_test(t, conn_only_well_known_tokens);
	tcase_add_test(t, conn_never_drops_content_length);
	tcase_add_test(t, conn_unindexed_is_scanned);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
