/* Unit tests for src/http1.c: heads, framing, chunked bodies, URIs. */
#include "http1.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H11 "Host: example.com\r\n"

/* Parse a string literal (may hold NULs) as a request; expect result r. */
#define ASSERT_REQ(lit, r)                                                                         \
	do {                                                                                       \
		struct http1_msg m_;                                                               \
		size_t c_ = 0;                                                                     \
		ck_assert_int_eq(http1_parse_request(lit, sizeof(lit) - 1, &m_, &c_), r);          \
		if ((r) == HTTP1_OK)                                                               \
			ck_assert_uint_eq(c_, sizeof(lit) - 1);                                    \
		else                                                                               \
			ck_assert_ptr_null(m_.head);                                               \
		http1_msg_free(&m_);                                                               \
	} while (0)

#define ASSERT_RESP(lit, method, r)                                                                \
	do {                                                                                       \
		struct http1_msg m_;                                                               \
		size_t c_ = 0;                                                                     \
		ck_assert_int_eq(http1_parse_response(lit, sizeof(lit) - 1, method, &m_, &c_), r); \
		http1_msg_free(&m_);                                                               \
	} while (0)

static struct http1_msg msg;
static size_t used;

static enum http1_result req(const char *s)
{
	used = 0;
	return http1_parse_request(s, strlen(s), &msg, &used);
}

static enum http1_result resp(const char *s, const char *method)
{
	used = 0;
	return http1_parse_response(s, strlen(s), method, &msg, &used);
}

static void teardown(void)
{
	http1_msg_free(&msg);
}

/* ---- requests: good paths ---- */

START_TEST(req_simple)
{
	const char *s = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\n"
	                "X-Empty:\r\n\r\n";

	ck_assert_int_eq(req(s), HTTP1_OK);
	ck_assert_uint_eq(used, strlen(s));
	ck_assert_str_eq(msg.method, "GET");
	ck_assert_str_eq(msg.target, "/index.html?q=1");
	ck_assert_int_eq(msg.version_minor, 1);
	ck_assert_uint_eq(msg.nfields, 3);
	ck_assert_str_eq(msg.fields[0].name, "Host");
	ck_assert_uint_eq(msg.fields[0].name_len, 4);
	ck_assert_str_eq(msg.fields[1].value, "*/*");
	ck_assert_uint_eq(msg.fields[1].value_len, 3);
	ck_assert_str_eq(msg.fields[2].value, "");
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert(msg.keep_alive);
	ck_assert(!msg.expect_continue);
	ck_assert_uint_eq(msg.head_len, strlen(s));
	ck_assert_ptr_nonnull(http1_find(&msg, "accept"));
	ck_assert_ptr_null(http1_find(&msg, "Accept-Encoding"));
}
END_TEST

START_TEST(req_pipelined)
{
	const char *s = "GET /a HTTP/1.1\r\n" H11 "\r\nGET /b HTTP/1.1\r\n" H11 "\r\n";
	size_t first;

	ck_assert_int_eq(req(s), HTTP1_OK);
	ck_assert_str_eq(msg.target, "/a");
	first = used;
	ck_assert_uint_eq(first, strlen(s) / 2);
	http1_msg_free(&msg);
	ck_assert_int_eq(req(s + first), HTTP1_OK);
	ck_assert_str_eq(msg.target, "/b");
	ck_assert_uint_eq(first + used, strlen(s));
}
END_TEST

START_TEST(req_leading_crlf)
{
	const char *s = "\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n";

	ck_assert_int_eq(req(s), HTTP1_OK);
	ck_assert_uint_eq(used, strlen(s));
	ck_assert_str_eq(msg.method, "GET");
	ck_assert_uint_eq(msg.head_len, strlen(s) - 4);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("\r\n\r\n"), HTTP1_INCOMPLETE);
}
END_TEST

START_TEST(req_incomplete_prefixes)
{
	const char *s = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++) {
		ck_assert_int_eq(http1_parse_request(s, i, &msg, &used), HTTP1_INCOMPLETE);
		ck_assert_ptr_null(msg.head);
	}
	ck_assert_int_eq(http1_parse_request(s, n, &msg, &used), HTTP1_OK);
}
END_TEST

START_TEST(req_http10)
{
	ck_assert_int_eq(req("GET / HTTP/1.0\r\n\r\n"), HTTP1_OK);
	ck_assert_int_eq(msg.version_minor, 0);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), HTTP1_OK);
	ck_assert(msg.keep_alive);
}
END_TEST

START_TEST(req_keep_alive_rules)
{
	ck_assert_int_eq(req("GET / HTTP/1.1\r\n" H11 "Connection: close\r\n\r\n"), HTTP1_OK);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("GET / HTTP/1.1\r\n" H11 "Connection: foo, CLOSE\r\n\r\n"), HTTP1_OK);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("GET / HTTP/1.1\r\n" H11 "Connection: keep-alive\r\n\r\n"), HTTP1_OK);
	ck_assert(msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(
	    req("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"), HTTP1_OK);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("GET / HTTP/1.0\r\nKeep-Alive: 5\r\n\r\n"), HTTP1_OK);
	ck_assert(!msg.keep_alive);
}
END_TEST

START_TEST(req_expect)
{
	ck_assert_int_eq(req("PUT / HTTP/1.1\r\n" H11 "Expect: 100-Continue\r\n"
	                     "Content-Length: 1\r\n\r\n"),
	                 HTTP1_OK);
	ck_assert(msg.expect_continue);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("PUT / HTTP/1.1\r\n" H11 "Expect: 100-continue-x\r\n\r\n"), HTTP1_OK);
	ck_assert(!msg.expect_continue);
}
END_TEST

START_TEST(req_content_length)
{
	ck_assert_int_eq(req("POST / HTTP/1.1\r\n" H11 "Content-Length: 42\r\n\r\n"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(msg.content_length, 42);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("POST / HTTP/1.1\r\n" H11 "Content-Length: 0\r\n\r\n"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("POST / HTTP/1.0\r\ncontent-length: 9223372036854775807\r\n\r\n"),
	                 HTTP1_OK);
	ck_assert_uint_eq(msg.content_length, INT64_MAX);
}
END_TEST

START_TEST(req_content_length_duplicates_collapse)
{
	ck_assert_int_eq(req("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 5\r\n\r\n"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(msg.content_length, 5);
	http1_msg_free(&msg);
	ck_assert_int_eq(
	    req("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"),
	    HTTP1_OK);
	ck_assert_uint_eq(msg.content_length, 5);
}
END_TEST

START_TEST(req_chunked)
{
	ck_assert_int_eq(req("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_CHUNKED);
	http1_msg_free(&msg);
	ck_assert_int_eq(req("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding:  Chunked \r\n\r\n"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_CHUNKED);
}
END_TEST

START_TEST(req_value_htab_and_obs_text)
{
	ck_assert_int_eq(req("GET / HTTP/1.1\r\n" H11 "X-A:\ta\tb\t\r\nX-B: caf\xc3\xa9\r\n\r\n"),
	                 HTTP1_OK);
	ck_assert_str_eq(http1_find(&msg, "x-a")->value, "a\tb");
	ck_assert_str_eq(http1_find(&msg, "x-b")->value, "caf\xc3\xa9");
}
END_TEST

/* ---- requests: every rejection rule ---- */

START_TEST(bad_cl_and_te)
{
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11
	           "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11
	           "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
	           HTTP1_BAD);
}
END_TEST

START_TEST(bad_cl_differs)
{
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 6\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_cl_syntax)
{
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: +5\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: -1\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 0x5\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5 5\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5,\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length:\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5.0\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_cl_overflow)
{
	/* over INT64_MAX: lengths are signed 64-bit further on (-1 = unknown) */
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 9223372036854775808\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.0\r\nContent-Length: 18446744073709551615\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 9223372036854775813\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 09223372036854775808\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 18446744073709551616\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Content-Length: 99999999999999999999999\r\n\r\n",
	           HTTP1_BAD);
}
END_TEST

START_TEST(bad_te_codings)
{
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, gzip\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked;q=1\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: \r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked,\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: xchunked\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_te_chunked_twice)
{
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n"
	           "Transfer-Encoding: chunked\r\n\r\n",
	           HTTP1_BAD);
}
END_TEST

START_TEST(bad_te_http10)
{
	ASSERT_REQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_obs_fold)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\r\n b\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\r\n\tb\r\n\r\n", HTTP1_BAD);
	/* whitespace between the start line and the first field */
	ASSERT_REQ("GET / HTTP/1.1\r\n " H11 "\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_bare_cr)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\rb\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /\r HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	/* rejected before the head is complete */
	ASSERT_REQ("GET / HTTP/1.1\r\nX-A: a\rb", HTTP1_BAD);
	ASSERT_REQ("\r\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_bare_lf)
{
	ASSERT_REQ("GET / HTTP/1.1\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\nHost: a\n\n", HTTP1_BAD);
	ASSERT_REQ("\nGET / HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
}
END_TEST

/* Feed s[0..len) to a head scan byte by byte (fresh state); returns how
 * many bytes were fed when it stopped, 0 when it never did. */
static size_t scan_bytewise(const char *s, size_t len)
{
	struct http1_head_scan sc;

	memset(&sc, 0, sizeof(sc));
	for (size_t i = 0; i < len; i++)
		if (http1_head_scan(&sc, s + i, 1))
			return sc.seen;
	return 0;
}

static size_t scan_whole(const char *s, size_t len)
{
	struct http1_head_scan sc;

	memset(&sc, 0, sizeof(sc));
	return http1_head_scan(&sc, s, len) ? sc.seen : 0;
}

/* A head with bare line endings (or other rejected bytes) and no CRLF CRLF
 * at all: the scan stops at the first such byte and the parser, given the
 * bytes up to there, answers BAD at once (not INCOMPLETE: 400, never a
 * client held open waiting for a blank line that never comes). */
START_TEST(bad_bytes_stop_the_head_scan)
{
	static const char *const bad[] = {
	    "GET / HTTP/1.1\nHost: a\n\n",       "GET / HTTP/1.1\nHost: a\nX-A: b\n",
	    "GET / HTTP/1.1\r\nHost: a\nX-A: b", "\nGET / HTTP/1.1\r\nHost: a",
	    "GET / HTTP/1.1\r\nHost: a\rb",      "GET / HTTP/1.1\r\nHost: a\r\n\rX",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = strlen(bad[i]), at = scan_bytewise(bad[i], len), used = 0;
		ck_assert_msg(at > 0, "case %zu: the scan never stopped", i);
		ck_assert_uint_eq(scan_whole(bad[i], len), at);
		ck_assert_int_eq(http1_parse_request(bad[i], at, &msg, &used), HTTP1_BAD);
	}
	/* NUL */
	ck_assert_uint_eq(scan_bytewise("GET /\0 HTTP/1.1", 16), 6);
}
END_TEST

START_TEST(head_scan_stops_at_the_end_of_a_head)
{
	static const char head[] = "GET / HTTP/1.1\r\n" H11 "X-A: a\r\n\r\n";
	char buf[sizeof(head) + 8];
	size_t n = sizeof(head) - 1, used = 0;

	ck_assert_uint_eq(scan_bytewise(head, n), n);
	memcpy(buf, head, n);
	memcpy(buf + n, "BODYBODY", 8);
	ck_assert_uint_eq(scan_whole(buf, n + 8), n);
	ck_assert_int_eq(http1_parse_request(buf, n, &msg, &used), HTTP1_OK);
	ck_assert_uint_eq(used, n);
	/* a CR at the end of what arrived is not decided until the next byte */
	ck_assert_uint_eq(scan_bytewise("GET / HTTP/1.1\r", 15), 0);
	/* a good prefix never stops the scan */
	for (size_t k = 1; k < n; k++)
		ck_assert_uint_eq(scan_whole(head, k), 0);
}
END_TEST

START_TEST(head_scan_leading_empty_lines)
{
	static const char s[] = "\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n";
	struct http1_head_scan sc;
	size_t n = sizeof(s) - 1, used = 0;

	memset(&sc, 0, sizeof(sc));
	ck_assert(http1_head_scan(&sc, s, n)); /* the empty lines: the parser waits */
	ck_assert_uint_eq(sc.seen, 4);
	ck_assert_int_eq(http1_parse_request(s, sc.seen, &msg, &used), HTTP1_INCOMPLETE);
	ck_assert(http1_head_scan(&sc, s + sc.seen, n - sc.seen));
	ck_assert_uint_eq(sc.seen, n);
	ck_assert_int_eq(http1_parse_request(s, n, &msg, &used), HTTP1_OK);
}
END_TEST

START_TEST(bad_nul)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\0b\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X\0A: a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /\0 HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_ctl_in_field)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\x01"
	           "b\r\n\r\n",
	           HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\x1f\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A: a\x7f\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-\x01: a\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_ws_before_colon)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A : a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X-A\t: a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_field_name)
{
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 ": a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X(A): a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X\"A: a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "NoColon\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\n" H11 "X\xc3\xa9: a\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_method)
{
	ASSERT_REQ("G(T / HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ(" / HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET\t/ HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET  / HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("M-SEARCH * HTTP/1.1\r\n" H11 "\r\n", HTTP1_OK);
}
END_TEST

START_TEST(bad_target)
{
	ASSERT_REQ("GET /a b HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /a\tb HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /a\x01 HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /a\x7f HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /\xc3\xa9 HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET  HTTP/1.1\r\n" H11 "\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_version)
{
	ASSERT_REQ("GET / HTTP/2.0\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.2\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/0.9\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / http/1.1\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1 \r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.10\r\n" H11 "\r\n", HTTP1_BAD);
	ASSERT_REQ("GET /\r\n" H11 "\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_host_missing)
{
	ASSERT_REQ("GET / HTTP/1.1\r\nX-A: a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: \r\n\r\n", HTTP1_OK); /* empty Host is allowed */
}
END_TEST

START_TEST(bad_host_twice)
{
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", HTTP1_BAD);
}
END_TEST

START_TEST(bad_host_value)
{
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTP1_BAD);
	ASSERT_REQ("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", HTTP1_OK);
}
END_TEST

static char *build(size_t nfields, size_t pad)
{
	char *buf = malloc(64 + nfields * 16 + pad), *p = buf;

	p += sprintf(p, "GET / HTTP/1.1\r\nHost: h\r\n");
	for (size_t i = 1; i < nfields; i++)
		p += sprintf(p, "X-%zu: v\r\n", i);
	if (pad) {
		p += sprintf(p, "X-Pad: ");
		memset(p, 'a', pad);
		p += pad;
		p += sprintf(p, "\r\n");
	}
	strcpy(p, "\r\n");
	return buf;
}

START_TEST(too_large_size)
{
	char *s = malloc(HTTP1_MAX_HEAD + 100);
	size_t n = sprintf(s, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");

	memset(s + n, 'a', HTTP1_MAX_HEAD + 100 - n);
	ck_assert_int_eq(http1_parse_request(s, HTTP1_MAX_HEAD - 1, &msg, &used), HTTP1_INCOMPLETE);
	ck_assert_int_eq(http1_parse_request(s, HTTP1_MAX_HEAD, &msg, &used), HTTP1_TOO_LARGE);
	ck_assert_int_eq(http1_parse_request(s, HTTP1_MAX_HEAD + 100, &msg, &used),
	                 HTTP1_TOO_LARGE);
	free(s);

	/* complete heads: exactly HTTP1_MAX_HEAD bytes is fine, one more is not */
	s = build(1, 0);
	n = strlen(s);
	free(s);
	s = build(1, HTTP1_MAX_HEAD - n - 9);
	ck_assert_int_eq(req(s), HTTP1_OK);
	ck_assert_uint_eq(used, HTTP1_MAX_HEAD);
	http1_msg_free(&msg);
	free(s);
	s = build(1, HTTP1_MAX_HEAD - n - 8);
	ck_assert_int_eq(req(s), HTTP1_TOO_LARGE);
	free(s);

	/* endless empty lines before the request line */
	s = malloc(HTTP1_MAX_HEAD + 2);
	for (size_t i = 0; i < HTTP1_MAX_HEAD + 2; i += 2)
		memcpy(s + i, "\r\n", 2);
	ck_assert_int_eq(http1_parse_request(s, HTTP1_MAX_HEAD + 2, &msg, &used), HTTP1_TOO_LARGE);
	free(s);
}
END_TEST

START_TEST(too_large_fields)
{
	char *s = build(HTTP1_MAX_FIELDS, 0);

	ck_assert_int_eq(req(s), HTTP1_OK);
	ck_assert_uint_eq(msg.nfields, HTTP1_MAX_FIELDS);
	http1_msg_free(&msg);
	free(s);
	s = build(HTTP1_MAX_FIELDS + 1, 0);
	ck_assert_int_eq(req(s), HTTP1_TOO_LARGE);
	ck_assert_ptr_null(msg.head);
	free(s);
}
END_TEST

/* ---- responses ---- */

START_TEST(resp_length)
{
	const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world!";

	ck_assert_int_eq(resp(s, "GET"), HTTP1_OK);
	ck_assert_int_eq(msg.status, 200);
	ck_assert_str_eq(msg.reason, "OK");
	ck_assert_int_eq(msg.body, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(msg.content_length, 12);
	ck_assert_uint_eq(used, strlen(s) - 12);
	ck_assert(msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert(msg.keep_alive);
}
END_TEST

/* A response Content-Length over INT64_MAX is malformed (a 502), never an
 * unknown length; INT64_MAX itself is a length. */
START_TEST(resp_cl_overflow)
{
	ck_assert_int_eq(
	    resp("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n", "GET"),
	    HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(msg.content_length, INT64_MAX);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n", "GET",
	            HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n", "GET",
	            HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n", "GET",
	            HTTP1_BAD);
	/* even where the length does not frame the body */
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n", "HEAD",
	            HTTP1_BAD);
}
END_TEST

START_TEST(resp_chunked)
{
	ck_assert_int_eq(
	    resp("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_CHUNKED);
	ck_assert_str_eq(msg.reason, "Not Found");
	ck_assert(msg.keep_alive);
}
END_TEST

START_TEST(resp_close_delimited)
{
	ck_assert_int_eq(resp("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_CLOSE);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert(!msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
	                      "Content-Length: 1\r\n\r\n",
	                      "GET"),
	                 HTTP1_OK);
	ck_assert(msg.keep_alive);
	ck_assert_int_eq(msg.version_minor, 0);
}
END_TEST

START_TEST(resp_no_body_cases)
{
	ck_assert_int_eq(resp("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "HEAD"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert(msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 204 No Content\r\n\r\n", "DELETE"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert(msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", "GET"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "GET"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT"), HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert(msg.keep_alive);
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n", "CONNECT"),
	                 HTTP1_OK);
	ck_assert_int_eq(msg.body, HTTP1_BODY_LENGTH);
}
END_TEST

START_TEST(resp_1xx_then_final)
{
	const char *s =
	    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
	size_t first;

	ck_assert_int_eq(resp(s, "POST"), HTTP1_OK);
	ck_assert_int_eq(msg.status, 100);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	first = used;
	http1_msg_free(&msg);
	ck_assert_int_eq(resp(s + first, "POST"), HTTP1_OK);
	ck_assert_int_eq(msg.status, 201);
	ck_assert_uint_eq(first + used, strlen(s));
}
END_TEST

START_TEST(resp_reason_forms)
{
	ck_assert_int_eq(resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_str_eq(msg.reason, "");
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_str_eq(msg.reason, "");
	http1_msg_free(&msg);
	ck_assert_int_eq(resp("HTTP/1.1 599 Very  custom\treason\r\n\r\n", "GET"), HTTP1_OK);
	ck_assert_str_eq(msg.reason, "Very  custom\treason");
}
END_TEST

START_TEST(resp_bad)
{
	ASSERT_RESP("HTTP/1.1 20 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 2000 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 099 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 600 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 2x0 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1  200 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/2 200 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 O\x01K\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("\r\nHTTP/1.1 200 OK\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
	            "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "GET",
	            HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\nContent-Length: 0\n\n", "GET", HTTP1_BAD);
	ASSERT_RESP("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", "GET", HTTP1_INCOMPLETE);
}
END_TEST

/* ---- chunked bodies ---- */

static struct http1_chunked ck;
static char out[1 << 16];
static size_t out_len;

/* Decode in[0..len) fed in pieces of `step` bytes; returns the last event. */
static enum http1_chunk_event decode(const char *in, size_t len, size_t step, size_t *total)
{
	enum http1_chunk_event ev = HTTP1_CHUNK_NEED_MORE;
	size_t off = 0;

	memset(&ck, 0, sizeof(ck));
	out_len = 0;
	while (off < len) {
		size_t n = len - off < step ? len - off : step, c = 0, dl;
		const char *d;

		ev = http1_chunked_next(&ck, in + off, n, &c, &d, &dl);
		ck_assert_uint_le(c, n);
		off += c;
		if (ev == HTTP1_CHUNK_DATA) {
			ck_assert(d >= in && d + dl <= in + off && dl > 0);
			memcpy(out + out_len, d, dl);
			out_len += dl;
		} else if (ev != HTTP1_CHUNK_NEED_MORE) {
			break;
		} else {
			ck_assert_uint_eq(c, n);
		}
	}
	if (total)
		*total = off;
	return ev;
}

#define ASSERT_CHUNKED(lit, ev) ASSERT_CHUNKED_N(lit, sizeof(lit) - 1, ev)
#define ASSERT_CHUNKED_N(s, n, ev)                                                                 \
	do {                                                                                       \
		ck_assert_int_eq(decode(s, n, n, NULL), ev);                                       \
		ck_assert_int_eq(decode(s, n, 1, NULL), ev);                                       \
	} while (0)

START_TEST(chunked_whole_and_bytewise)
{
	static const char body[] =
	    "5\r\nhello\r\n6\r\n world\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
	    "0\r\n\r\nNEXT";
	size_t n = sizeof(body) - 1, total;

	for (size_t step = 1; step <= n; step++) {
		ck_assert_int_eq(decode(body, n, step, &total), HTTP1_CHUNK_DONE);
		ck_assert_uint_eq(total, n - 4);
		ck_assert_uint_eq(out_len, 37);
		ck_assert(memcmp(out, "hello worldabcdefghijklmnopqrstuvwxyz", 37) == 0);
		ck_assert_str_eq(ck.trailers, "");
	}
}
END_TEST

START_TEST(chunked_done_is_sticky)
{
	size_t c, dl;
	const char *d;

	ck_assert_int_eq(decode("0\r\n\r\n", 5, 5, NULL), HTTP1_CHUNK_DONE);
	ck_assert_int_eq(http1_chunked_next(&ck, "1\r\n", 3, &c, &d, &dl), HTTP1_CHUNK_DONE);
	ck_assert_uint_eq(c, 0);
	memset(&ck, 0, sizeof(ck));
	ck_assert_int_eq(http1_chunked_next(&ck, "", 0, &c, &d, &dl), HTTP1_CHUNK_NEED_MORE);
	ck_assert_uint_eq(c, 0);
}
END_TEST

START_TEST(chunked_large_sizes)
{
	ASSERT_CHUNKED("FFFFFFFFFFFFFFFF\r\nabc", HTTP1_CHUNK_DATA);
	ASSERT_CHUNKED("00000000000000000000001\r\nx\r\n0\r\n\r\n", HTTP1_CHUNK_DONE);
	ASSERT_CHUNKED("A\r\n0123456789\r\n0\r\n\r\n", HTTP1_CHUNK_DONE);
}
END_TEST

START_TEST(chunked_size_overflow)
{
	ASSERT_CHUNKED("10000000000000000\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("FFFFFFFFFFFFFFFFF\r\n", HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_size_not_hex)
{
	ASSERT_CHUNKED("g\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("-1\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0x5\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED(" 5\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5 \r\nhello", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\rx", HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_missing_crlf_after_data)
{
	ASSERT_CHUNKED("5\r\nhelloX\r\n0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\r\nhelloX\n0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\r\nhello\n0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\r\nhello\r0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5\r\nhello0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\n\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\n\rx", HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_extensions)
{
	ASSERT_CHUNKED("5;a\r\nhello\r\n0\r\n\r\n", HTTP1_CHUNK_DONE);
	ASSERT_CHUNKED("5;a=b\r\nhello\r\n0;last\r\n\r\n", HTTP1_CHUNK_DONE);
	ASSERT_CHUNKED("5 ; a = b ;c;d=\"x y\\\"z\"\r\nhello\r\n0\r\n\r\n", HTTP1_CHUNK_DONE);
	ASSERT_CHUNKED("5;a=\"\" \t;b\r\nhello\r\n0\r\n\r\n", HTTP1_CHUNK_DONE);
	ck_assert_uint_eq(out_len, 5);
	ck_assert(memcmp(out, "hello", 5) == 0);
}
END_TEST

START_TEST(chunked_bad_extensions)
{
	ASSERT_CHUNKED("5;\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;=b\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a b\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=b c\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=\"b\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=\"b\"c\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=@\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a\x01\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a=\"\x7f\"\r\nhello\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("5;a \r\nhello\r\n", HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_line_too_long)
{
	static char s[6000];
	size_t n;

	/* 4000 leading zeros are fine, 5000 exceed the size-line cap */
	memset(s, '0', 4000);
	memcpy(s + 4000, "1\r\nx\r\n0\r\n\r\n", 11);
	ASSERT_CHUNKED_N(s, (size_t)4011, HTTP1_CHUNK_DONE);
	memset(s, '0', 5000);
	memcpy(s + 5000, "1\r\nx\r\n0\r\n\r\n", 11);
	ASSERT_CHUNKED_N(s, (size_t)5011, HTTP1_CHUNK_ERROR);
	n = sprintf(s, "1;a=");
	memset(s + n, 'b', 5000);
	memcpy(s + n + 5000, "\r\nx\r\n0\r\n\r\n", 10);
	ASSERT_CHUNKED_N(s, n + 5010, HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_trailers)
{
	static const char body[] =
	    "3\r\nabc\r\n0\r\nX-Sum:  12 \r\nX-Empty:\r\nEtag:\t\"a b\"\r\n\r\n";
	size_t n = sizeof(body) - 1, total;

	for (size_t step = 1; step <= n; step++) {
		ck_assert_int_eq(decode(body, n, step, &total), HTTP1_CHUNK_DONE);
		ck_assert_uint_eq(total, n);
		ck_assert_str_eq(ck.trailers, "X-Sum: 12\r\nX-Empty: \r\nEtag: \"a b\"\r\n");
		ck_assert_uint_eq(ck.trailer_len, strlen(ck.trailers));
	}
}
END_TEST

START_TEST(chunked_bad_trailers)
{
	ASSERT_CHUNKED("0\r\nX: a\r\n b\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\n b\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nNoColon\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nX : a\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\n: a\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nX: a\x01\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nX: a\0\r\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nX: a\n\r\n", HTTP1_CHUNK_ERROR);
	ASSERT_CHUNKED("0\r\nX: a\rb\r\n\r\n", HTTP1_CHUNK_ERROR);
}
END_TEST

START_TEST(chunked_trailers_too_large)
{
	static char s[10000];
	size_t n = sprintf(s, "0\r\nX-Big: ");

	memset(s + n, 'a', 8200);
	memcpy(s + n + 8200, "\r\n\r\n", 4);
	ASSERT_CHUNKED_N(s, n + 8204, HTTP1_CHUNK_ERROR);
	/* the largest trailer that fits: 8191 bytes plus the NUL */
	n = sprintf(s, "0\r\nX:");
	memset(s + n, 'a', 8191 - 5);
	memcpy(s + n + 8191 - 5, "\r\n\r\n", 4);
	ASSERT_CHUNKED_N(s, n + 8191 - 1, HTTP1_CHUNK_DONE);
	ck_assert_uint_eq(strlen(ck.trailers), 8191);
	memmove(s + n + 1, s + n, 8191 - 5 + 4); /* one byte more no longer fits */
	ASSERT_CHUNKED_N(s, n + 8191, HTTP1_CHUNK_ERROR);
}
END_TEST

/* ---- hop-by-hop, lists ---- */

START_TEST(hop_by_hop)
{
	const char *names[] = {
	    "Connection",        "keep-alive", "PROXY-CONNECTION",    "te",
	    "Transfer-Encoding", "Upgrade",    "Proxy-Authorization", "proxy-authenticate"};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		ck_assert(http1_is_hop_by_hop(NULL, names[i]));
	ck_assert(!http1_is_hop_by_hop(NULL, "Content-Length"));
	ck_assert(!http1_is_hop_by_hop(NULL, "Trailer"));
	ck_assert(!http1_is_hop_by_hop(NULL, "Host"));
	ck_assert(!http1_is_hop_by_hop(NULL, "TEX"));
}
END_TEST

START_TEST(hop_by_hop_connection_named)
{
	ck_assert_int_eq(req("GET / HTTP/1.1\r\n" H11 "Connection: X-Foo , close\r\n"
	                     "X-Foo: 1\r\nX-Bar: 2\r\nconnection: x-baz\r\n\r\n"),
	                 HTTP1_OK);
	ck_assert(http1_is_hop_by_hop(&msg, "x-foo"));
	ck_assert(http1_is_hop_by_hop(&msg, "X-Baz"));
	ck_assert(http1_is_hop_by_hop(&msg, "Close"));
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Bar"));
	ck_assert(!http1_is_hop_by_hop(&msg, "X-Fo"));
	ck_assert(!http1_is_hop_by_hop(&msg, "Host"));
	ck_assert(!msg.keep_alive);
}
END_TEST

START_TEST(list_has)
{
	const char *v = "gzip, Deflate ,\tbr\t,,x";

	ck_assert(http1_list_has(v, strlen(v), "gzip"));
	ck_assert(http1_list_has(v, strlen(v), "deflate"));
	ck_assert(http1_list_has(v, strlen(v), "BR"));
	ck_assert(http1_list_has(v, strlen(v), "x"));
	ck_assert(!http1_list_has(v, strlen(v), "gzi"));
	ck_assert(!http1_list_has(v, strlen(v), ""));
	ck_assert(!http1_list_has(v, 4, "Deflate"));
	ck_assert(http1_list_has(v, 4, "gzip"));
	ck_assert(!http1_list_has("", 0, "a"));
}
END_TEST

/* ---- URIs and authorities ---- */

static struct http1_uri uri;

START_TEST(uri_basic)
{
	ck_assert(http1_parse_absolute_uri("http://Example.COM/a/b?c=D", &uri));
	ck_assert_str_eq(uri.scheme, "http");
	ck_assert_str_eq(uri.host, "example.com");
	ck_assert_uint_eq(uri.port, 80);
	ck_assert_str_eq(uri.path, "/a/b?c=D");
	ck_assert(!uri.ipv6);
	ck_assert(http1_parse_absolute_uri("HTTPS://h.example", &uri));
	ck_assert_str_eq(uri.scheme, "https");
	ck_assert_uint_eq(uri.port, 443);
	ck_assert_str_eq(uri.path, "/");
	ck_assert(http1_parse_absolute_uri("https://h:8443/x", &uri));
	ck_assert_uint_eq(uri.port, 8443);
	ck_assert(http1_parse_absolute_uri("http://h:65535", &uri));
	ck_assert_uint_eq(uri.port, 65535);
	ck_assert(http1_parse_absolute_uri("http://10.0.0.1:1/", &uri));
	ck_assert_str_eq(uri.host, "10.0.0.1");
}
END_TEST

START_TEST(uri_query_and_fragment)
{
	ck_assert(http1_parse_absolute_uri("http://h?x=1", &uri));
	ck_assert_str_eq(uri.path, "/?x=1");
	ck_assert(http1_parse_absolute_uri("http://h/p?q#frag", &uri));
	ck_assert_str_eq(uri.path, "/p?q");
	ck_assert(http1_parse_absolute_uri("http://h#frag", &uri));
	ck_assert_str_eq(uri.path, "/");
	ck_assert(http1_parse_absolute_uri("http://h:81?q#f", &uri));
	ck_assert_str_eq(uri.path, "/?q");
	ck_assert_uint_eq(uri.port, 81);
}
END_TEST

/* Parsing writes the path and its terminator only, not the rest of the
 * 16 KiB buffer: zeroing it all once cost more per keep-alive request than
 * the rest of the request's parsing (docs/performance.md, Findings). */
START_TEST(uri_path_tail_untouched)
{
	memset(&uri, 0xa5, sizeof(uri));
	ck_assert(http1_parse_absolute_uri("http://Example.COM:8080/a?b", &uri));
	ck_assert_str_eq(uri.scheme, "http");
	ck_assert_str_eq(uri.host, "example.com");
	ck_assert_uint_eq(uri.port, 8080);
	ck_assert_str_eq(uri.path, "/a?b");
	ck_assert(!uri.ipv6);
	ck_assert_uint_eq((unsigned char)uri.path[sizeof(uri.path) - 1], 0xa5);
	memset(&uri, 0xa5, sizeof(uri));
	ck_assert(!http1_parse_absolute_uri("ftp://h/", &uri));
	ck_assert_str_eq(uri.path, "");
	ck_assert_str_eq(uri.host, "");
}
END_TEST

/* Parsing and freeing a head clear the message but its 4 KiB field array
 * beyond the fields in use: zeroing it all cost ~4 k instructions at each
 * of the four parses and frees of a proxied request (docs/performance.md,
 * "Restructuring and deadlines"). */
START_TEST(msg_fields_tail_untouched)
{
	static const char req[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n";
	const unsigned char *last = (const unsigned char *)&msg.fields[HTTP1_MAX_FIELDS - 1];
	size_t used = 0;

	memset(&msg, 0xa5, sizeof(msg));
	ck_assert_int_eq(http1_parse_request(req, strlen(req), &msg, &used), HTTP1_OK);
	ck_assert_uint_eq(msg.nfields, 2);
	ck_assert_str_eq(msg.fields[1].name, "A");
	ck_assert(msg.keep_alive && !msg.expect_continue);
	ck_assert_int_eq(msg.body, HTTP1_BODY_NONE);
	ck_assert_uint_eq(last[0], 0xa5);
	http1_msg_free(&msg);
	ck_assert_ptr_null(msg.head);
	ck_assert_uint_eq(msg.nfields, 0);
	ck_assert(!msg.keep_alive);
	ck_assert_uint_eq(last[0], 0xa5);
	/* a rejected head leaves the message empty too */
	memset(&msg, 0xa5, sizeof(msg));
	ck_assert_int_eq(
	    http1_parse_request("GET / HTTP/1.1\r\nA: 1\r\nB : 2\r\n\r\n", 31, &msg, &used),
	    HTTP1_BAD);
	ck_assert_ptr_null(msg.head);
	ck_assert_uint_eq(msg.nfields, 0);
	memset(&msg, 0, sizeof(msg));
}
END_TEST

START_TEST(uri_ipv6)
{
	ck_assert(http1_parse_absolute_uri("http://[2001:DB8::1]:8080/x", &uri));
	ck_assert(uri.ipv6);
	ck_assert_str_eq(uri.host, "2001:db8::1");
	ck_assert_uint_eq(uri.port, 8080);
	ck_assert(http1_parse_absolute_uri("https://[::1]", &uri));
	ck_assert_str_eq(uri.host, "::1");
	ck_assert_uint_eq(uri.port, 443);
	ck_assert(http1_parse_absolute_uri("http://[::ffff:1.2.3.4]/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://[::1/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://[zz::1]/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://[]/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://[::1]x/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://::1/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://[fe80::1%25eth0]/", &uri));
}
END_TEST

START_TEST(uri_rejects)
{
	ck_assert(!http1_parse_absolute_uri("http://user@h/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://user:pw@h/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://@h/", &uri));
	ck_assert(!http1_parse_absolute_uri("http:///x", &uri));
	ck_assert(!http1_parse_absolute_uri("http://", &uri));
	ck_assert(!http1_parse_absolute_uri("http://:80/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:0/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:65536/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:123456/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:8a/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h:-1/", &uri));
	ck_assert(!http1_parse_absolute_uri("ftp://h/", &uri));
	ck_assert(!http1_parse_absolute_uri("httpx://h/", &uri));
	ck_assert(!http1_parse_absolute_uri("http:/h/", &uri));
	ck_assert(!http1_parse_absolute_uri("/path", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h/a b", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h/a\tb", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h/\x7f", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h/\xc3\xa9", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h\xc3\xa9/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h!x/", &uri));
	ck_assert(!http1_parse_absolute_uri("http://h%41/", &uri));
}
END_TEST

START_TEST(uri_too_long)
{
	static char s[HTTP1_MAX_TARGET + 300];
	size_t n = sprintf(s, "http://h/");

	memset(s + n, 'a', sizeof(uri.path) - 2);
	s[n + sizeof(uri.path) - 2] = '\0';
	ck_assert(http1_parse_absolute_uri(s, &uri));
	ck_assert_uint_eq(strlen(uri.path), sizeof(uri.path) - 1);
	strcat(s, "a");
	ck_assert(!http1_parse_absolute_uri(s, &uri));
	memset(s + 7, 'a', 256);
	s[7 + 256] = '\0';
	ck_assert(!http1_parse_absolute_uri(s, &uri));
	s[7 + 255] = '\0';
	ck_assert(http1_parse_absolute_uri(s, &uri));
}
END_TEST

/* Request targets of 16 KiB are common (long query strings); longer ones
 * get 414 from downstream, so the URI buffer takes any target up to the
 * limit. */
START_TEST(uri_takes_targets_up_to_the_limit)
{
	static char s[HTTP1_MAX_TARGET + 1];
	size_t n = (size_t)sprintf(s, "http://example.com/?q=");

	ck_assert_uint_ge(HTTP1_MAX_TARGET, 16 * 1024);
	memset(s + n, 'a', HTTP1_MAX_TARGET - n);
	s[HTTP1_MAX_TARGET] = '\0';
	ck_assert(http1_parse_absolute_uri(s, &uri));
	ck_assert_uint_eq(strlen(uri.path), HTTP1_MAX_TARGET - strlen("http://example.com"));
}
END_TEST

START_TEST(authority)
{
	char host[256];
	uint16_t port = 0;
	bool v6 = true;

	ck_assert(http1_parse_authority("Example.com:443", host, sizeof(host), &port, &v6));
	ck_assert_str_eq(host, "example.com");
	ck_assert_uint_eq(port, 443);
	ck_assert(!v6);
	ck_assert(http1_parse_authority("[::1]:8443", host, sizeof(host), &port, &v6));
	ck_assert_str_eq(host, "::1");
	ck_assert_uint_eq(port, 8443);
	ck_assert(v6);
	ck_assert(http1_parse_authority("h:65535", host, sizeof(host), &port, &v6));
	ck_assert(http1_parse_authority("h:1", host, 2, &port, &v6));
	ck_assert(!http1_parse_authority("hh:1", host, 2, &port, &v6));
}
END_TEST

START_TEST(authority_rejects)
{
	char host[256];
	uint16_t port;
	bool v6;

	ck_assert(!http1_parse_authority("example.com", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("example.com:", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("example.com:0", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("example.com:65536", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("example.com:44x", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("[::1]", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("[::1]443", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("[nope]:443", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority(":443", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("u@h:443", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("h:443/", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("h :443", host, sizeof(host), &port, &v6));
	ck_assert(!http1_parse_authority("::1:443", host, sizeof(host), &port, &v6));
}
END_TEST

START_TEST(reason)
{
	ck_assert_str_eq(http1_reason(200), "OK");
	ck_assert_str_eq(http1_reason(407), "Proxy Authentication Required");
	ck_assert_str_eq(http1_reason(431), "Request Header Fields Too Large");
	ck_assert_str_eq(http1_reason(508), "Loop Detected");
	ck_assert_str_eq(http1_reason(299), "Unknown");
	ck_assert_str_eq(http1_reason(-1), "Unknown");
}
END_TEST

START_TEST(basic_credentials)
{
	char out[HTTP1_BASIC_MAX];

	/* RFC 7617 section 2, and every padding length */
	ck_assert(http1_basic_credentials("Aladdin:open sesame", out, sizeof(out)));
	ck_assert_str_eq(out, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
	ck_assert(http1_basic_credentials("user:pass", out, sizeof(out)));
	ck_assert_str_eq(out, "Basic dXNlcjpwYXNz");
	ck_assert(http1_basic_credentials("a:bc", out, sizeof(out)));
	ck_assert_str_eq(out, "Basic YTpiYw==");
	ck_assert(http1_basic_credentials("a:bcd", out, sizeof(out)));
	ck_assert_str_eq(out, "Basic YTpiY2Q=");
	ck_assert(http1_basic_credentials(":", out, sizeof(out)));
	ck_assert_str_eq(out, "Basic Og==");
	/* exactly fitting, and one byte short */
	ck_assert(http1_basic_credentials("user:pass", out, 19));
	ck_assert(!http1_basic_credentials("user:pass", out, 18));
}
END_TEST

/* ---- Upgrade ---- */

START_TEST(upgrade_listed)
{
	const char *ws = "websocket";
	const char *two = "websocket,h2c";
#define LISTED(v, a) http1_upgrade_listed(v, strlen(v), a)
	ck_assert(LISTED("websocket", ws));
	ck_assert(LISTED("WebSocket", ws));
	ck_assert(LISTED(" websocket , ", ws));
	ck_assert(LISTED("websocket/13", ws));
	ck_assert(LISTED("h2c, websocket", two));
	ck_assert(!LISTED("h2c, websocket", ws)); /* every one offered must be allowed */
	ck_assert(!LISTED("websockets", ws));
	ck_assert(!LISTED("websock", ws));
	ck_assert(!LISTED("", ws));
	ck_assert(!LISTED(" , ", ws));
	ck_assert(!LISTED("/13", ws));
	ck_assert(!LISTED("websocket", ""));
	ck_assert(LISTED("h2c", two));
#undef LISTED
}
END_TEST

START_TEST(upgrade_requested)
{
	static const struct {
		const char *head;
		bool want;
	} cases[] = {
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	     true},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\n"
	     "Upgrade: WebSocket\r\n\r\n",
	     true},
	    {"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
	     "Content-Length: 3\r\n\r\n",
	     true},
	    /* no Connection: upgrade, or no Upgrade */
	    {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", false},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", false},
	    /* not allowed, HTTP/1.0, CONNECT, two Upgrade fields */
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", false},
	    {"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", false},
	    {"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: upgrade\r\n"
	     "Upgrade: websocket\r\n\r\n",
	     false},
	    {"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
	     "Upgrade: websocket\r\n\r\n",
	     false},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ck_assert_int_eq(req(cases[i].head), HTTP1_OK);
		ck_assert_msg(http1_upgrade_requested(&msg, "websocket") == cases[i].want,
		              "case %zu", i);
		ck_assert(!http1_upgrade_requested(&msg, "")); /* upgrade = none */
		http1_msg_free(&msg);
	}
}
END_TEST

static Suite *http1_suite(void)
{
	Suite *s = suite_create("http1");
	TCase *t;

#define ADD(tc, fn) tcase_add_test(tc, fn)
	t = tcase_create("request");
	tcase_add_checked_fixture(t, NULL, teardown);
	ADD(t, req_simple);
	ADD(t, req_pipelined);
	ADD(t, req_leading_crlf);
	ADD(t, req_incomplete_prefixes);
	ADD(t, req_http10);
	ADD(t, req_keep_alive_rules);
	ADD(t, req_expect);
	ADD(t, req_content_length);
	ADD(t, req_content_length_duplicates_collapse);
	ADD(t, req_chunked);
	ADD(t, req_value_htab_and_obs_text);
	ADD(t, upgrade_listed);
	ADD(t, upgrade_requested);
	suite_add_tcase(s, t);

	t = tcase_create("reject");
	tcase_add_checked_fixture(t, NULL, teardown);
	ADD(t, bad_cl_and_te);
	ADD(t, bad_cl_differs);
	ADD(t, bad_cl_syntax);
	ADD(t, bad_cl_overflow);
	ADD(t, bad_te_codings);
	ADD(t, bad_te_chunked_twice);
	ADD(t, bad_te_http10);
	ADD(t, bad_obs_fold);
	ADD(t, bad_bare_cr);
	ADD(t, bad_bare_lf);
	ADD(t, bad_bytes_stop_the_head_scan);
	ADD(t, head_scan_stops_at_the_end_of_a_head);
	ADD(t, head_scan_leading_empty_lines);
	ADD(t, bad_nul);
	ADD(t, bad_ctl_in_field);
	ADD(t, bad_ws_before_colon);
	ADD(t, bad_field_name);
	ADD(t, bad_method);
	ADD(t, bad_target);
	ADD(t, bad_version);
	ADD(t, bad_host_missing);
	ADD(t, bad_host_twice);
	ADD(t, bad_host_value);
	ADD(t, too_large_size);
	ADD(t, too_large_fields);
	suite_add_tcase(s, t);

	t = tcase_create("response");
	tcase_add_checked_fixture(t, NULL, teardown);
	ADD(t, resp_length);
	ADD(t, resp_cl_overflow);
	ADD(t, resp_chunked);
	ADD(t, resp_close_delimited);
	ADD(t, resp_no_body_cases);
	ADD(t, resp_1xx_then_final);
	ADD(t, resp_reason_forms);
	ADD(t, resp_bad);
	suite_add_tcase(s, t);

	t = tcase_create("chunked");
	ADD(t, chunked_whole_and_bytewise);
	ADD(t, chunked_done_is_sticky);
	ADD(t, chunked_large_sizes);
	ADD(t, chunked_size_overflow);
	ADD(t, chunked_size_not_hex);
	ADD(t, chunked_missing_crlf_after_data);
	ADD(t, chunked_extensions);
	ADD(t, chunked_bad_extensions);
	ADD(t, chunked_line_too_long);
	ADD(t, chunked_trailers);
	ADD(t, chunked_bad_trailers);
	ADD(t, chunked_trailers_too_large);
	suite_add_tcase(s, t);

	t = tcase_create("fields");
	tcase_add_checked_fixture(t, NULL, teardown);
	ADD(t, hop_by_hop);
	ADD(t, hop_by_hop_connection_named);
	ADD(t, list_has);
	suite_add_tcase(s, t);

	t = tcase_create("uri");
	ADD(t, uri_basic);
	ADD(t, uri_query_and_fragment);
	ADD(t, uri_path_tail_untouched);
	ADD(t, msg_fields_tail_untouched);
	ADD(t, uri_ipv6);
	ADD(t, uri_rejects);
	ADD(t, uri_too_long);
	ADD(t, uri_takes_targets_up_to_the_limit);
	ADD(t, authority);
	ADD(t, authority_rejects);
	ADD(t, reason);
	ADD(t, basic_credentials);
	suite_add_tcase(s, t);
#undef ADD
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(http1_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
