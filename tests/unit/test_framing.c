/*
 * Unit tests for how relayed responses are framed and filtered (issue 18):
 * http1_relay_framing() for every status / method / body / client version,
 * the HTTP/2 and HTTP/3 head built by upstream/fields.c (END_STREAM on the
 * HEADERS frame, reason phrases), Connection never dropping Content-Length,
 * and the one trailer filter (RFC 9110 6.5.1) both directions share.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"
#include "upstream/fields.h"

/* ---- http1_relay_framing ---- */

START_TEST(framing_no_body_by_status_or_method)
{
	static const int statuses[] = {100, 103, 204, 304};

	for (int minor = 0; minor <= 1; minor++) {
		for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
			for (int b = HTTP1_BODY_NONE; b <= HTTP1_BODY_UNKNOWN; b++)
				ck_assert_int_eq(
				    http1_relay_framing(statuses[i], "GET", b, minor, true),
				    HTTP1_FRAME_NONE);
		for (int b = HTTP1_BODY_NONE; b <= HTTP1_BODY_UNKNOWN; b++) {
			ck_assert_int_eq(http1_relay_framing(200, "HEAD", b, minor, false),
			                 HTTP1_FRAME_NONE);
			ck_assert_int_eq(http1_relay_framing(302, "HEAD", b, minor, false),
			                 HTTP1_FRAME_NONE);
		}
		ck_assert_int_eq(http1_relay_framing(200, "CONNECT", HTTP1_BODY_NONE, minor, false),
		                 HTTP1_FRAME_NONE);
	}
}
END_TEST

START_TEST(framing_empty_body_has_length_zero)
{
	/* a 302 or 200 that ended with its head: Content-Length: 0, whatever
	 * the client's version */
	for (int minor = 0; minor <= 1; minor++) {
		ck_assert_int_eq(http1_relay_framing(302, "GET", HTTP1_BODY_NONE, minor, false),
		                 HTTP1_FRAME_EMPTY);
		ck_assert_int_eq(http1_relay_framing(200, "GET", HTTP1_BODY_NONE, minor, true),
		                 HTTP1_FRAME_EMPTY);
		ck_assert_int_eq(http1_relay_framing(404, "POST", HTTP1_BODY_NONE, minor, false),
		                 HTTP1_FRAME_EMPTY);
		ck_assert_int_eq(http1_relay_framing(407, "CONNECT", HTTP1_BODY_NONE, minor, false),
		                 HTTP1_FRAME_EMPTY);
	}
}
END_TEST

START_TEST(framing_unknown_length)
{
	for (int b = HTTP1_BODY_CHUNKED; b <= HTTP1_BODY_UNKNOWN; b++) {
		ck_assert_int_eq(http1_relay_framing(200, "GET", b, 1, false), HTTP1_FRAME_CHUNKED);
		ck_assert_int_eq(http1_relay_framing(200, "GET", b, 0, false), HTTP1_FRAME_CLOSE);
		ck_assert_int_eq(http1_relay_framing(500, "GET", b, 0, true), HTTP1_FRAME_CLOSE);
	}
}
END_TEST

START_TEST(framing_length_and_trailers)
{
	ck_assert_int_eq(http1_relay_framing(200, "GET", HTTP1_BODY_LENGTH, 1, false),
	                 HTTP1_FRAME_LENGTH);
	ck_assert_int_eq(http1_relay_framing(200, "GET", HTTP1_BODY_LENGTH, 0, false),
	                 HTTP1_FRAME_LENGTH);
	/* trailers wanted: chunked to HTTP/1.1, the length (and no trailers) to 1.0 */
	ck_assert_int_eq(http1_relay_framing(200, "GET", HTTP1_BODY_LENGTH, 1, true),
	                 HTTP1_FRAME_CHUNKED);
	ck_assert_int_eq(http1_relay_framing(200, "GET", HTTP1_BODY_LENGTH, 0, true),
	                 HTTP1_FRAME_LENGTH);
}
END_TEST

/* ---- the head of an HTTP/2 or HTTP/3 response (upstream/fields.c) ---- */

static struct sbuf hdrs;
static size_t nhdrs;
static struct http1_msg hm;

static void add(const char *name, const char *value)
{
	ck_assert_ptr_null(
	    fields_add_head(&hdrs, &nhdrs, name, strlen(name), value, strlen(value)));
}

static void head_teardown(void)
{
	free(hdrs.p);
	memset(&hdrs, 0, sizeof(hdrs));
	nhdrs = 0;
}

START_TEST(h2_head_ending_stream_gets_length_zero)
{
	add("location", "/elsewhere");
	fields_msg(&hm, hdrs.p, hdrs.len, nhdrs, 302, true);
	ck_assert_int_eq(hm.body, HTTP1_BODY_NONE);
	ck_assert_str_eq(hm.reason, "Found");
	ck_assert_int_eq(http1_relay_framing(hm.status, "GET", hm.body, 1, false),
	                 HTTP1_FRAME_EMPTY);
	ck_assert_int_eq(http1_relay_framing(hm.status, "GET", hm.body, 0, false),
	                 HTTP1_FRAME_EMPTY);
	ck_assert_int_eq(http1_relay_framing(hm.status, "HEAD", hm.body, 1, false),
	                 HTTP1_FRAME_NONE);
}
END_TEST

START_TEST(h2_head_without_length_is_unknown)
{
	add("content-type", "text/plain");
	fields_msg(&hm, hdrs.p, hdrs.len, nhdrs, 200, false);
	/* no HTTP/1.1 framing faked: the client side decides */
	ck_assert_int_eq(hm.body, HTTP1_BODY_UNKNOWN);
	ck_assert_int_eq(http1_relay_framing(hm.status, "GET", hm.body, 1, false),
	                 HTTP1_FRAME_CHUNKED);
	ck_assert_int_eq(http1_relay_framing(hm.status, "GET", hm.body, 0, false),
	                 HTTP1_FRAME_CLOSE);
}
END_TEST

START_TEST(h2_head_with_length)
{
	add("content-length", "5");
	fields_msg(&hm, hdrs.p, hdrs.len, nhdrs, 200, false);
	ck_assert_int_eq(hm.body, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(hm.content_length, 5);
	ck_assert_int_eq(http1_relay_framing(hm.status, "GET", hm.body, 1, false),
	                 HTTP1_FRAME_LENGTH);
}
END_TEST

/* The head is indexed for the hop-by-hop filter (no Connection field can
 * come from HTTP/2 or HTTP/3): it answers as a scan of the fields does. */
START_TEST(h2_head_indexed_for_the_hop_filter)
{
	static struct http1_msg plain;
	static const char *const names[] = {"content-type", "x-foo",   "close",
	                                    "te",           "upgrade", "content-length"};

	add("content-type", "text/plain");
	add("x-foo", "1");
	add("content-length", "5");
	fields_msg(&hm, hdrs.p, hdrs.len, nhdrs, 200, false);
	ck_assert_uint_eq(hm.conn, HTTP1_CONN_INDEXED);
	plain = hm;
	plain.conn = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		ck_assert(http1_is_hop_by_hop(&hm, names[i]) ==
		          http1_is_hop_by_hop(&plain, names[i]));
	ck_assert(!http1_is_hop_by_hop(&hm, "x-foo"));
}
END_TEST

START_TEST(h2_reason_phrases)
{
	static const struct {
		int status;
		const char *reason;
	} cases[] = {{100, "Continue"},
	             {103, "Early Hints"},
	             {200, "OK"},
	             {201, "Created"},
	             {204, "No Content"},
	             {302, "Found"},
	             {304, "Not Modified"},
	             {409, "Conflict"},
	             {418, "Unknown"},
	             {422, "Unprocessable Content"},
	             {429, "Too Many Requests"},
	             {503, "Service Unavailable"}};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fields_msg(&hm, "", 0, 0, cases[i].status, false);
		ck_assert_str_eq(hm.reason, cases[i].reason);
	}
	ck_assert_str_eq(http1_reason(102), "Processing");
	ck_assert_str_eq(http1_reason(511), "Network Authentication Required");
}
END_TEST

/* ---- Connection never names framing away ---- */

START_TEST(connection_content_length_not_hop_by_hop)
{
	static const char s[] = "HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop\r\n"
	                        "Content-Length: 5\r\nX-Hop: 1\r\n\r\nhello";
	struct http1_msg m;
	size_t used = 0;

	ck_assert_int_eq(http1_parse_response(s, sizeof(s) - 1, "GET", &m, &used), HTTP1_OK);
	ck_assert_int_eq(m.body, HTTP1_BODY_LENGTH);
	ck_assert(!http1_is_hop_by_hop(&m, "Content-Length"));
	ck_assert(!http1_is_hop_by_hop(&m, "content-length"));
	ck_assert(http1_is_hop_by_hop(&m, "X-Hop"));
	ck_assert(http1_is_hop_by_hop(&m, "Transfer-Encoding"));
	http1_msg_free(&m);
}
END_TEST

/* ---- trailers ---- */

START_TEST(trailer_allowed)
{
	static const char *const banned[] = {"Content-Length",
	                                     "transfer-encoding",
	                                     "Host",
	                                     "Content-Type",
	                                     "Content-Encoding",
	                                     "Content-Range",
	                                     "Trailer",
	                                     "Authorization",
	                                     "Proxy-Authorization",
	                                     "Set-Cookie",
	                                     "Cookie",
	                                     "Cache-Control",
	                                     "Expect",
	                                     "Max-Forwards",
	                                     "Pragma",
	                                     "Range",
	                                     "TE",
	                                     "Age",
	                                     "Expires",
	                                     "Date",
	                                     "Location",
	                                     "Retry-After",
	                                     "Vary",
	                                     "Warning",
	                                     "WWW-Authenticate",
	                                     "Proxy-Authenticate",
	                                     "Connection",
	                                     "Keep-Alive",
	                                     "Proxy-Connection",
	                                     "Upgrade",
	                                     ":status",
	                                     ":path",
	                                     ""};
	static const char *const allowed[] = {"X-Checksum",    "grpc-status", "grpc-message",
	                                      "Server-Timing", "Digest",      "ETag2"};

	for (size_t i = 0; i < sizeof(banned) / sizeof(banned[0]); i++)
		ck_assert_msg(!http1_trailer_allowed(banned[i], strlen(banned[i])), "%s allowed",
		              banned[i]);
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		ck_assert_msg(http1_trailer_allowed(allowed[i], strlen(allowed[i])), "%s refused",
		              allowed[i]);
	/* a prefix of a banned name is another name */
	ck_assert(http1_trailer_allowed("Content-Lengthx", 15));
	ck_assert(!http1_trailer_allowed("Content-Lengthx", 14));
	ck_assert(!http1_trailer_allowed("bad name", 8));
}
END_TEST

START_TEST(filter_trailers)
{
	char t[] = "X-Checksum: abc\r\nContent-Length: 5\r\n:status: 200\r\nSet-Cookie: a=b\r\n"
	           "Host: evil\r\ngarbage line\r\ngrpc-status: 0\r\nAuthorization: Basic x\r\n"
	           "Transfer-Encoding: chunked\r\nTE: trailers\r\nno-end: x";
	size_t n = http1_filter_trailers(t);

	ck_assert_str_eq(t, "X-Checksum: abc\r\ngrpc-status: 0\r\n");
	ck_assert_uint_eq(n, strlen(t));

	char empty[] = "";
	ck_assert_uint_eq(http1_filter_trailers(empty), 0);
	char none[] = "Content-Type: text/plain\r\nVary: *\r\n";
	ck_assert_uint_eq(http1_filter_trailers(none), 0);
	ck_assert_str_eq(none, "");
	char kept[] = "a: 1\r\nb:2\r\n";
	ck_assert_uint_eq(http1_filter_trailers(kept), strlen("a: 1\r\nb:2\r\n"));
	ck_assert_str_eq(kept, "a: 1\r\nb:2\r\n");
}
END_TEST

START_TEST(filter_chunked_request_trailers)
{
	/* what the chunked decoder stores is what the filter takes */
	static const char body[] = "3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: other\r\n"
	                           "Content-Length: 99\r\nX-Two: 2\r\n\r\n";
	struct http1_chunked *c = calloc(1, sizeof(*c));
	const char *data;
	size_t consumed, dlen, off = 0;
	enum http1_chunk_event e;

	ck_assert_ptr_nonnull(c);
	do {
		e = http1_chunked_next(c, body + off, sizeof(body) - 1 - off, &consumed, &data,
		                       &dlen);
		off += consumed;
	} while (e == HTTP1_CHUNK_DATA);
	ck_assert_int_eq(e, HTTP1_CHUNK_DONE);
	http1_filter_trailers(c->trailers);
	ck_assert_str_eq(c->trailers, "X-Sum: 1\r\nX-Two: 2\r\n");
	free(c);
}
END_TEST

static Suite *framing_suite(void)
{
	Suite *s = suite_create("framing");
	TCase *t = tcase_create("relay");

#define ADD(tc, fn) tcase_add_test(tc, fn)
	ADD(t, framing_no_body_by_status_or_method);
	ADD(t, framing_empty_body_has_length_zero);
	ADD(t, framing_unknown_length);
	ADD(t, framing_length_and_trailers);
	ADD(t, connection_content_length_not_hop_by_hop);
	suite_add_tcase(s, t);

	t = tcase_create("fields");
	tcase_add_checked_fixture(t, NULL, head_teardown);
	ADD(t, h2_head_ending_stream_gets_length_zero);
	ADD(t, h2_head_without_length_is_unknown);
	ADD(t, h2_head_with_length);
	ADD(t, h2_reason_phrases);
	ADD(t, h2_head_indexed_for_the_hop_filter);
	suite_add_tcase(s, t);

	t = tcase_create("trailers");
	ADD(t, trailer_allowed);
	ADD(t, filter_trailers);
	ADD(t, filter_chunked_request_trailers);
	suite_add_tcase(s, t);
#undef ADD
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(framing_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
