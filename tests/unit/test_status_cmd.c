/* Unit tests without a socket for src/admin_client.c's response parser
 * (framing by src/http1: Content-Length, chunked split anywhere, the close;
 * errors for non-200, truncation, malformed and oversized responses) and src/status_cmd.c's
 * renderer with its JSON parser (edge cases, strict numbers, limits). */
#include "admin_client.h"
#include "status_cmd.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OK_HEAD "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

static char err[512];
static int status;
static size_t blen;

/* The whole response at once (then the close); NULL with err on error. */
static char *parse(const char *resp, size_t len)
{
	char *copy = malloc(len ? len : 1), *body;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, resp, len); /* exactly sized: overreads show under ASan */
	err[0] = '\0';
	blen = (size_t)-1;
	body = admin_parse_response(copy, len, &status, &blen, err, sizeof(err));
	free(copy);
	return body;
}

static char *parse_str(const char *resp)
{
	return parse(resp, strlen(resp));
}

/* Feeds resp[0..len) in two pieces (split at `split`), then eof when
 * eof_after. Expects MORE until the message is complete; returns the result
 * of the last call and the number of bytes fed when it came (*at). */
static enum admin_parse feed2(struct admin_resp *r, const char *resp, size_t len, size_t split,
                              bool eof_after, size_t *at)
{
	size_t cuts[] = {split, len};
	enum admin_parse res = ADMIN_PARSE_MORE;

	memset(r, 0, sizeof(*r));
	for (size_t i = 0; i < 2; i++) {
		*at = cuts[i];
		res = admin_resp_feed(r, resp, cuts[i], false, err, sizeof(err));
		if (res != ADMIN_PARSE_MORE)
			return res;
	}
	if (eof_after)
		res = admin_resp_feed(r, resp, len, true, err, sizeof(err));
	return res;
}

/* Fed one byte more at a time: MORE up to done_at bytes, then DONE with body. */
static void feed_bytewise(const char *resp, size_t done_at, const char *body)
{
	struct admin_resp r;

	memset(&r, 0, sizeof(r));
	for (size_t n = 0; n <= done_at; n++) {
		enum admin_parse res = admin_resp_feed(&r, resp, n, false, err, sizeof(err));
		if (n < done_at) {
			ck_assert_msg(res == ADMIN_PARSE_MORE, "at %zu: %d %s", n, res, err);
			continue;
		}
		ck_assert_msg(res == ADMIN_PARSE_DONE, "at %zu: %d %s", n, res, err);
		ck_assert_uint_eq(r.body_len, strlen(body));
		ck_assert_str_eq(r.body, body);
	}
	admin_resp_free(&r);
}

/* ---- framing ---- */

START_TEST(content_length_body)
{
	const char *resp = OK_HEAD "Content-Length: 11\r\n\r\n{\"a\": true}";
	char *body = parse_str(resp);

	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "{\"a\": true}");
	ck_assert_uint_eq(blen, 11);
	ck_assert_int_eq(status, 200);
	free(body);
	/* complete by its length: no need to wait for the close */
	feed_bytewise(resp, strlen(resp), "{\"a\": true}");

	/* bytes after the message are not its body */
	body = parse_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]HTTP/1.1 200 OK\r\n");
	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "[]");
	free(body);

	/* Content-Length: 0 and HTTP/1.0 */
	body = parse_str("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
	ck_assert_msg(body, "%s", err);
	ck_assert_uint_eq(blen, 0);
	ck_assert_str_eq(body, "");
	free(body);

	/* field names are case-insensitive, values trimmed */
	body = parse_str("HTTP/1.1 200 OK\r\ncontent-LENGTH:   3  \r\n\r\nabc");
	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "abc");
	free(body);
}
END_TEST

START_TEST(chunked_body_split_anywhere)
{
	static const char resp[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	                           "4;name=value\r\n{\"co\r\n"
	                           "A\r\nnnections\"\r\n"
	                           "1\r\n:\r\n"
	                           "5\r\n []}\n\r\n"
	                           "0\r\nX-Trailer: yes\r\n\r\n";
	const char *want = "{\"connections\": []}\n";
	size_t len = sizeof(resp) - 1;
	struct admin_resp r;
	char *body = parse(resp, len);

	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, want);
	ck_assert_uint_eq(blen, strlen(want));
	free(body);
	/* in two pieces split at every offset: the same body, complete at the
	 * last byte without waiting for the close */
	for (size_t split = 0; split <= len; split++) {
		size_t at = 0;
		enum admin_parse res = feed2(&r, resp, len, split, false, &at);

		ck_assert_msg(res == ADMIN_PARSE_DONE, "split %zu: %d %s", split, res, err);
		ck_assert_uint_eq(at, len);
		ck_assert_str_eq(r.body, want);
		ck_assert_uint_eq(r.body_len, strlen(want));
		admin_resp_free(&r);
	}
	feed_bytewise(resp, len, want);

	/* an empty chunked body */
	body = parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "");
	free(body);
}
END_TEST

START_TEST(close_delimited_body)
{
	const char *resp = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"connections\":[]}";
	struct admin_resp r;
	size_t at;
	char *body = parse_str(resp);

	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "{\"connections\":[]}");
	free(body);
	/* never complete before the close, whatever has arrived */
	for (size_t split = 0; split <= strlen(resp); split++) {
		ck_assert_int_eq(feed2(&r, resp, strlen(resp), split, false, &at),
		                 ADMIN_PARSE_MORE);
		ck_assert_int_eq(admin_resp_feed(&r, resp, strlen(resp), true, err, sizeof(err)),
		                 ADMIN_PARSE_DONE);
		ck_assert_str_eq(r.body, "{\"connections\":[]}");
		admin_resp_free(&r);
	}
	/* HTTP/1.0 without Content-Length; an empty body */
	body = parse_str("HTTP/1.0 200 OK\r\n\r\n");
	ck_assert_msg(body, "%s", err);
	ck_assert_uint_eq(blen, 0);
	free(body);
}
END_TEST

START_TEST(interim_heads_skipped)
{
	char resp[4096] = "";
	char *body = parse_str("HTTP/1.1 100 Continue\r\n\r\n"
	                       "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
	                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");

	ck_assert_msg(body, "%s", err);
	ck_assert_str_eq(body, "ok");
	ck_assert_int_eq(status, 200);
	free(body);

	for (int i = 0; i < ADMIN_MAX_INTERIM + 1; i++)
		strcat(resp, "HTTP/1.1 102 Processing\r\n\r\n");
	strcat(resp, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	ck_assert_ptr_null(parse_str(resp));
	ck_assert_msg(strstr(err, "interim"), "%s", err);

	/* 101 is final: not what a GET of /status.json wants */
	ck_assert_ptr_null(parse_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"));
	ck_assert_int_eq(status, 101);
	ck_assert_msg(strncmp(err, "answered 101 Switching Protocols", 32) == 0, "%s", err);
}
END_TEST

/* ---- errors ---- */

START_TEST(non_200_status)
{
	ck_assert_ptr_null(parse_str("HTTP/1.1 404 Not Found\r\nContent-Length: 24\r\n\r\n"
	                             "muxd: no such page\nmore\n"));
	ck_assert_int_eq(status, 404);
	ck_assert_str_eq(err, "answered 404 Not Found: muxd: no such page");

	/* without a body; the reason phrase is the standard one, not the peer's */
	ck_assert_ptr_null(parse_str("HTTP/1.1 403 Go Away\r\nContent-Length: 0\r\n\r\n"));
	ck_assert_str_eq(err, "answered 403 Forbidden");
	ck_assert_ptr_null(parse_str("HTTP/1.1 204 No Content\r\n\r\n"));
	ck_assert_str_eq(err, "answered 204 No Content");

	/* chunked and close-delimited error bodies; control bytes are not echoed */
	ck_assert_ptr_null(parse_str("HTTP/1.1 500 Internal Server Error\r\n"
	                             "Transfer-Encoding: chunked\r\n\r\n"
	                             "5\r\nmuxd:\r\n9\r\n \x1b[31mbad\r\n0\r\n\r\n"));
	ck_assert_str_eq(err, "answered 500 Internal Server Error: muxd: ?[31mbad");
	ck_assert_ptr_null(parse_str("HTTP/1.0 503 Service Unavailable\r\n\r\ndraining\r\n"));
	ck_assert_str_eq(err, "answered 503 Service Unavailable: draining");

	/* a status says more than a broken body */
	ck_assert_ptr_null(parse_str("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\nabc"));
	ck_assert_int_eq(status, 502);
	ck_assert_msg(strncmp(err, "answered 502 Bad Gateway (truncated", 35) == 0, "%s", err);
}
END_TEST

START_TEST(truncated_response)
{
	ck_assert_ptr_null(parse_str(""));
	ck_assert_str_eq(err, "connection closed without a response");
	ck_assert_int_eq(status, 0);
	ck_assert_ptr_null(parse_str("HTTP/1.1 200 OK\r\nContent-Len"));
	ck_assert_str_eq(err, "connection closed in the response head");

	ck_assert_ptr_null(parse_str("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"));
	ck_assert_str_eq(err, "truncated response: connection closed after 5 of 10 body bytes");
	ck_assert_int_eq(status, 200);

	/* a chunked body cut anywhere before its last chunk */
	{
		static const char resp[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
		                           "3\r\nabc\r\n0\r\n\r\n";
		size_t head = strstr(resp, "\r\n\r\n") + 4 - resp;

		for (size_t cut = head; cut < sizeof(resp) - 1; cut++) {
			ck_assert_ptr_null(parse(resp, cut));
			ck_assert_msg(strstr(err, "closed in the chunked body"), "cut %zu: %s", cut,
			              err);
		}
	}
}
END_TEST

START_TEST(malformed_head)
{
	struct admin_resp r;
	static const char *const bad[] = {
	    "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",             /* bare LF */
	    "HTTP/1.1 200 OK\r\nContent-Length: 2\rX: y\r\n\r\nok", /* bare CR */
	    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
	    "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
	    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
	    "HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
	    "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
	    "HTTP/2.0 200 OK\r\n\r\n",
	    "HTTP/1.1 2000 OK\r\n\r\n",
	};
	static const char nul[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n";

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_ptr_null(parse_str(bad[i]));
		ck_assert_msg(strcmp(err, "malformed response head") == 0, "%zu: %s", i, err);
	}
	ck_assert_ptr_null(parse(nul, sizeof(nul) - 1));
	ck_assert_str_eq(err, "malformed response head");
	/* not HTTP at all: said as soon as it shows, without waiting for more */
	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(
	    admin_resp_feed(&r, "SSH-2.0-OpenSSH_9.6\r\n", 21, false, err, sizeof(err)),
	    ADMIN_PARSE_ERROR);
	ck_assert_str_eq(err, "not an HTTP response (is this muxd?)");
	admin_resp_free(&r);
	ck_assert_int_eq(admin_resp_feed(&r, "HTX", 3, false, err, sizeof(err)), ADMIN_PARSE_ERROR);
	admin_resp_free(&r);
	ck_assert_int_eq(admin_resp_feed(&r, "HTTP", 4, false, err, sizeof(err)), ADMIN_PARSE_MORE);
	admin_resp_free(&r);

	/* a malformed chunked body */
	ck_assert_ptr_null(parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	                             "zz\r\nab\r\n0\r\n\r\n"));
	ck_assert_str_eq(err, "malformed chunked body");
	ck_assert_ptr_null(parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	                             "2\r\nabc\r\n0\r\n\r\n"));
	ck_assert_str_eq(err, "malformed chunked body");
}
END_TEST

START_TEST(oversized_response)
{
	struct admin_resp r;
	char resp[256], *big, *body;
	size_t head, len;

	/* a Content-Length over the limit fails at once, before any body byte */
	snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
	         ADMIN_MAX_RESPONSE);
	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(admin_resp_feed(&r, resp, strlen(resp), false, err, sizeof(err)),
	                 ADMIN_PARSE_ERROR);
	ck_assert_msg(strstr(err, "response too large: Content-Length"), "%s", err);
	admin_resp_free(&r);
	ck_assert_ptr_null(
	    parse_str("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"));

	/* a smaller limit: exactly max bytes is fine, one more is not */
	snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\n\r\n%s", "0123456789");
	len = strlen(resp);
	for (int framing = 0; framing < 3; framing++) {
		if (framing == 1)
			snprintf(resp, sizeof(resp),
			         "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
			         "0123456789");
		if (framing == 2)
			snprintf(resp, sizeof(resp),
			         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
			         "a\r\n0123456789\r\n0\r\n\r\n");
		len = strlen(resp);
		memset(&r, 0, sizeof(r));
		r.max = len;
		ck_assert_int_eq(admin_resp_feed(&r, resp, len, true, err, sizeof(err)),
		                 ADMIN_PARSE_DONE);
		ck_assert_str_eq(r.body, "0123456789");
		admin_resp_free(&r);
		memset(&r, 0, sizeof(r));
		r.max = len - 1;
		ck_assert_int_eq(admin_resp_feed(&r, resp, len, false, err, sizeof(err)),
		                 ADMIN_PARSE_ERROR);
		ck_assert_msg(strstr(err, "response too large"), "%d: %s", framing, err);
		admin_resp_free(&r);
	}

	/* over the limit before a head is complete: no status to quote */
	memset(&r, 0, sizeof(r));
	r.max = 8;
	ck_assert_int_eq(admin_resp_feed(&r, "HTTP/1.1 200 OK\r\n", 17, false, err, sizeof(err)),
	                 ADMIN_PARSE_ERROR);
	ck_assert_str_eq(err, "response too large (over 8 bytes)");
	ck_assert_int_eq(r.status, 0);
	admin_resp_free(&r);

	/* a head over HTTP1_MAX_HEAD */
	big = malloc(HTTP1_MAX_HEAD + 64);
	ck_assert_ptr_nonnull(big);
	strcpy(big, "HTTP/1.1 200 OK\r\nX-Big: ");
	head = strlen(big);
	memset(big + head, 'a', HTTP1_MAX_HEAD + 64 - head);
	ck_assert_ptr_null(parse(big, HTTP1_MAX_HEAD + 64));
	ck_assert_msg(strstr(err, "response head too large"), "%s", err);
	free(big);

	/* the default limit, close-delimited */
	len = (size_t)ADMIN_MAX_RESPONSE + 1;
	big = malloc(len);
	ck_assert_ptr_nonnull(big);
	memset(big, ' ', len);
	memcpy(big, "HTTP/1.1 200 OK\r\n\r\n", 19);
	ck_assert_ptr_null(admin_parse_response(big, len, &status, &blen, err, sizeof(err)));
	ck_assert_msg(strstr(err, "response too large (over 33554432 bytes)"), "%s", err);
	body = admin_parse_response(big, len - 1, &status, &blen, err, sizeof(err));
	ck_assert_msg(body, "%s", err);
	ck_assert_uint_eq(blen, len - 1 - 19);
	free(body);
	free(big);
}
END_TEST

/* ---- rendering and JSON ---- */

static char *out;
static size_t out_len;

/* status_render into a string (out); the doc is passed exactly sized. */
static bool render_n(const char *doc, size_t len)
{
	char *copy = malloc(len ? len : 1);
	FILE *f;
	bool ok;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, doc, len);
	free(out);
	out = NULL;
	f = open_memstream(&out, &out_len);
	ck_assert_ptr_nonnull(f);
	err[0] = '\0';
	ok = status_render(copy, len, "127.0.0.1:3128", f, err, sizeof(err));
	fclose(f);
	free(copy);
	if (!ok)
		ck_assert_uint_eq(out_len, 0); /* nothing printed on failure */
	return ok;
}

static bool render(const char *doc)
{
	return render_n(doc, strlen(doc));
}

static void render_teardown(void)
{
	free(out);
	out = NULL;
}

START_TEST(render_document)
{
	const char *doc =
	    "{\"format\": 1, \"uptime_s\": 312.4, \"clients\": 1, \"draining\": false,\n"
	    " \"connections\": [\n"
	    "  {\"origin\": \"example.org:443\", \"proto\": \"h2\", \"state\": \"idle\","
	    "   \"streams\": 0, \"requests\": 14, \"age_s\": 40.2, \"idle_s\": 3.1},\n"
	    "  {\"origin\": \"example.net:80\", \"proto\": null, \"state\": \"connecting\","
	    "   \"streams\": 0, \"requests\": 0}],\n"
	    " \"altsvc\": [{\"origin\": \"https://example.org:443\", \"alt_host\": \"::1\","
	    "   \"alt_port\": 443, \"expires_in_s\": 86190, \"broken\": false,"
	    "   \"broken_for_s\": 0}],\n"
	    " \"counters\": {\"requests_total\": {\"h1\": 0}}, \"unknown\": [null, true]}";

	ck_assert_msg(render(doc), "%s", err);
	ck_assert_str_eq(out, "muxd at 127.0.0.1:3128: up 5m12s, 1 client connection, "
	                      "2 upstream connections\n\n"
	                      "ORIGIN           PROTO  STATE       STREAMS  REQUESTS  IDLE\n"
	                      "example.org:443  h2     idle              0        14  3.1s\n"
	                      "example.net:80   -      connecting        0         0     -\n"
	                      "\nAlt-Svc cache:\n"
	                      "ORIGIN                   ALTERNATIVE   EXPIRES IN  BROKEN FOR\n"
	                      "https://example.org:443  h3 [::1]:443      23h56m           -\n");

	ck_assert(render("{\"connections\": []}"));
	ck_assert_msg(strstr(out, "no upstream connections\n") && strstr(out, "no entries\n"), "%s",
	              out);

	/* JSON, but not muxd's document */
	ck_assert(!render("[]"));
	ck_assert_str_eq(err, "no connections list (is this muxd?)");
	ck_assert(!render("{\"connections\": {}}"));
	ck_assert(!render("\"connections\""));
}
END_TEST

/* A connection kept open by keep-warm reads "idle,warm"; names coalesced
 * onto a connection follow its origin. */
START_TEST(render_warm_and_coalesced)
{
	const char *doc =
	    "{\"uptime_s\": 1, \"clients\": 0, \"connections\": [\n"
	    "  {\"origin\": \"a.example:443\", \"proto\": \"h2\", \"state\": \"idle\","
	    "   \"streams\": 0, \"requests\": 9, \"idle_s\": 2.0, \"warm\": true,"
	    "   \"hosts\": [\"a.example\", \"b.example\"]},\n"
	    "  {\"origin\": \"c.example:443\", \"proto\": \"h2\", \"state\": \"active\","
	    "   \"streams\": 1, \"requests\": 1, \"warm\": false, \"hosts\": [\"c.example\"]}]}";

	ck_assert_msg(render(doc), "%s", err);
	ck_assert_str_eq(out,
	                 "muxd at 127.0.0.1:3128: up 1.0s, 0 client connections, "
	                 "2 upstream connections\n\n"
	                 "ORIGIN                    PROTO  STATE      STREAMS  REQUESTS  IDLE\n"
	                 "a.example:443 +b.example  h2     idle,warm        0         9  2.0s\n"
	                 "c.example:443             h2     active           1         1     -\n"
	                 "\nAlt-Svc cache:\nno entries\n");
}
END_TEST

/* A value in a document that is otherwise muxd's: whether it parses. */
static bool value_ok(const char *value)
{
	char doc[256];

	snprintf(doc, sizeof(doc), "{\"connections\": [], \"x\": %s}", value);
	return render(doc);
}

START_TEST(json_numbers)
{
	static const char *const good[] = {
	    "0", "-0", "12", "-12.5", "1e3", "1E+3", "1e-3", "0.0001", "1e999", "-1e999", "1.5E-2",
	    /* longer than the parser's stack copy */
	    ("123456789012345678901234567890123456789012345678901234567"
	     "89012345678901234567890")};
	static const char *const bad[] = {"01", "+1",   ".5",  "1.",    "1e",  "1e+",      "0x10",
	                                  "-",  "--1",  "nan", "NaN",   "inf", "Infinity", "1.e3",
	                                  "0e", "1ee2", "\v1", "1_000", "- 1"};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(value_ok(good[i]), "%s: %s", good[i], err);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(!value_ok(bad[i]), "%s accepted", bad[i]);
		ck_assert_msg(strncmp(err, "malformed JSON (at byte ", 24) == 0, "%s", err);
	}
	/* numbers at the very end of the input need no NUL after them */
	ck_assert(!render_n("12345", 2));
	ck_assert_str_eq(err, "no connections list (is this muxd?)");
	ck_assert(render_n("{\"connections\":[], \"n\": 1}0x10", 26));
	/* absurd durations print, clamped */
	ck_assert(render("{\"uptime_s\": 1e300, \"connections\": [{\"origin\": \"a:1\", "
	                 "\"state\": \"idle\", \"idle_s\": -1e999, \"requests\": 1e300}]}"));
	ck_assert_msg(strstr(out, "up 11574074d01h"), "%s", out);
}
END_TEST

START_TEST(json_strings)
{
	static const char *const bad[] = {
	    "\"abc",       "\"a\\\"",  "\"\\x41\"",          "\"\\u12\"",
	    "\"\\u12G4\"", "\"a\tb\"", "\"a\nb\"",           "\"\\ud800\\u0041\"",
	    "'a'",         "\"\\",     "\"\\ud800\\ud800\"",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!value_ok(bad[i]), "%s accepted", bad[i]);
	ck_assert(value_ok("\"\""));
	ck_assert(value_ok("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""));

	/* decoded: \u escapes to UTF-8, a surrogate pair, a lone surrogate as
	 * U+FFFD, \u0000 as '?'; control bytes never reach the terminal */
	ck_assert_msg(render("{\"connections\": [{\"origin\": "
	                     "\"caf\\u00e9-\\ud83d\\ude00-\\udc00-\\u0000-\\u001b[2J-\\/\","
	                     " \"state\": \"active\"}]}"),
	              "%s", err);
	ck_assert_msg(strstr(out, "caf\xc3\xa9-\xf0\x9f\x98\x80-\xef\xbf\xbd-?-?[2J-/  "), "%s",
	              out);
	ck_assert(!strchr(out, '\x1b'));
	/* raw UTF-8 passes; columns count characters, not bytes */
	ck_assert(render("{\"connections\": [{\"origin\": \"\xc3\xa9\", \"proto\": \"h1\"},"
	                 "{\"origin\": \"ab\", \"proto\": \"h2\"}]}"));
	ck_assert_msg(strstr(out, "\n\xc3\xa9       h1") && strstr(out, "\nab      h2"), "%s", out);
}
END_TEST

START_TEST(json_structure)
{
	char doc[512], *p;

	static const char *const bad[] = {
	    "",  " ", "[1,]", "[,1]", "{\"a\" 1}", "{a: 1}", "{\"a\":}", "{\"a\":1,}", "[1 2]",
	    "[", "]", "tru",  "nul",  "falsey",    "{1: 2}", "[}",       "{\"a\":1]",  "[1]]",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!value_ok(bad[i]), "%s accepted", bad[i]);
	ck_assert(value_ok(" [ 1 , { \"a\" : [ ] , \"b\" : { } } , true, false, null ]\r\n\t"));

	/* whitespace around the document; trailing bytes are an error, and err
	 * says where */
	ck_assert(render(" \r\n\t{\"connections\":[]}\n"));
	ck_assert(!render("{\"connections\":[]} x"));
	ck_assert_str_eq(err, "malformed JSON (at byte 19 of 20)");
	ck_assert(!render("{\"connections\": [1,]}"));
	ck_assert_str_eq(err, "malformed JSON (at byte 19 of 21)");
	ck_assert(!render_n("{\"connections\":[]}\0", 19));

	/* 32 levels of nesting below the document, not 33 */
	for (int depth = 32; depth <= 33; depth++) {
		p = doc + sprintf(doc, "{\"connections\": [], \"x\": ");
		for (int i = 0; i < depth; i++)
			*p++ = '[';
		for (int i = 0; i < depth; i++)
			*p++ = ']';
		strcpy(p, "}");
		ck_assert_msg(render(doc) == (depth == 32), "depth %d: %s", depth, err);
	}

	/* duplicate keys: the first wins */
	ck_assert(render("{\"connections\": [], \"connections\": 5, \"clients\": 3}"));
	ck_assert_msg(strstr(out, "3 client connections"), "%s", out);
}
END_TEST

/* {"connections":[],"x":[0,0,...]} with n zeros: 3 + n values */
static bool render_zeros(size_t n)
{
	char *doc = malloc(2 * n + 32), *p = doc;
	bool ok;

	ck_assert_ptr_nonnull(doc);
	p += sprintf(p, "{\"connections\":[],\"x\":[");
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, i ? ",0" : "0");
	p += sprintf(p, "]}");
	ok = render_n(doc, (size_t)(p - doc));
	free(doc);
	return ok;
}

START_TEST(json_value_limit)
{
	/* at most 2^20 values are built; more are refused */
	ck_assert_msg(render_zeros((1u << 20) - 3), "%s", err);
	ck_assert(!render_zeros((1u << 20) - 2));
	ck_assert_msg(strncmp(err, "malformed JSON", 14) == 0, "%s", err);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("status_cmd");
	TCase *tc = tcase_create("response");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, content_length_body);
	tcase_add_test(tc, chunked_body_split_anywhere);
	tcase_add_test(tc, close_delimited_body);
	tcase_add_test(tc, interim_heads_skipped);
	tcase_add_test(tc, non_200_status);
	tcase_add_test(tc, truncated_response);
	tcase_add_test(tc, malformed_head);
	tcase_add_test(tc, oversized_response);
	suite_add_tcase(s, tc);
	tc = tcase_create("render");
	tcase_add_checked_fixture(tc, NULL, render_teardown);
	tcase_add_test(tc, render_document);
	tcase_add_test(tc, render_warm_and_coalesced);
	tcase_add_test(tc, json_numbers);
	tcase_add_test(tc, json_strings);
	tcase_add_test(tc, json_structure);
	tcase_add_test(tc, json_value_limit);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
