/*
 * Unit tests for src/exchange.c (with the HTTP/1.1 client stream,
 * src/client/h1_stream.c): the request-body relay (fixed length and
 * chunked, with the client's bytes in chains split at every point and an
 * upstream send space of 1..63 bytes), the response-body relay, and the
 * retry rule of DESIGN.md principle 3.
 *
 * The exchange runs between fakes: a fake upstream stream (it records what
 * it is sent and offers as much send space as the test says), a fake pool
 * that hands that stream over when the test says so, and a fake client
 * connection whose input the test fills with exactly sized heap chains
 * (evbuffer_add_reference), so that a read past a chain is a wrong byte here
 * and an error under AddressSanitizer. The pool is replaced at link time (ld
 * --wrap, see EXCHANGE_SEAMS in the Makefile); the client stream given to
 * exchange_start is a real h1_stream with the connection's part faked.
 */
#include "exchange.h"

#include <event2/buffer.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client/h1_stream.h"
#include "config.h"
#include "harness.h"
#include "http1.h"
#include "log.h"
#include "pool.h"
#include "upstream/upstream.h"

/* ---- the fake client connection ---- */

static struct fake_client {
	struct transport t;
	struct evbuffer *in, *out;
	int responses; /* respond calls */
	int status;    /* of the last one */
	bool done, aborted, keep_alive;
} fc;

static struct evbuffer *fc_input(struct transport *t)
{
	(void)t;
	return fc.in;
}

static struct evbuffer *fc_output(struct transport *t)
{
	(void)t;
	return fc.out;
}

static void fc_set_reading(struct transport *t, bool on)
{
	(void)t;
	(void)on;
}

static void fc_nothing(struct transport *t)
{
	(void)t;
}

static bool fc_alive(struct transport *t)
{
	(void)t;
	return true;
}

static const struct transport_ops fc_ops = {fc_input,   fc_output,  fc_set_reading,
                                            fc_nothing, fc_nothing, fc_alive};

/* The client's request stream: the real HTTP/1.1 framing over the fake
 * client transport, with the connection's part (respond, done, abort,
 * peer) faked below. */
static struct h1_stream hs;

static const char *fake_peer(const struct client_stream *cs)
{
	(void)cs;
	return "client";
}

static void fake_respond(struct client_stream *cs, int status, const char *content_type,
                         const char *body, size_t body_len)
{
	(void)cs;
	(void)content_type;
	fc.responses++;
	fc.status = status;
	evbuffer_add_printf(fc.out, "HTTP/1.1 %d muxd\r\nContent-Length: %zu\r\n\r\n", status,
	                    body_len);
	evbuffer_add(fc.out, body, body_len);
}

static void fake_done(struct client_stream *cs)
{
	bool keep_alive = h1_stream_keep_alive(&hs);

	(void)cs;
	h1_stream_clear(&hs);
	ck_assert(!fc.done && !fc.aborted);
	fc.done = true;
	fc.keep_alive = keep_alive;
}

static void fake_abort(struct client_stream *cs)
{
	(void)cs;
	h1_stream_clear(&hs);
	ck_assert(!fc.done && !fc.aborted);
	fc.aborted = true;
}

/* The client stream's operations, as the HTTP/1.1 session's. */
static const struct client_stream_ops fake_client_ops = {
    h1_stream_read_body,
    h1_stream_consumed,
    h1_stream_trailers,
    h1_stream_send_interim,
    h1_stream_send_continue,
    h1_stream_send_head,
    h1_stream_send_space,
    h1_stream_send_body,
    h1_stream_send_end,
    fake_respond,
    fake_done,
    fake_abort,
    fake_peer,
    NULL, /* upgrade: none */
};

static void chain_free(const void *data, size_t len, void *arg)
{
	(void)len;
	(void)arg;
	free((void *)data);
}

/* The client sends p[0..n) as one exactly sized chain. */
static void client_sends(const void *p, size_t n)
{
	void *copy;

	if (n == 0)
		return;
	copy = malloc(n);
	ck_assert_ptr_nonnull(copy);
	memcpy(copy, p, n);
	ck_assert_int_eq(evbuffer_add_reference(fc.in, copy, n, chain_free, NULL), 0);
}

/* ---- the fake pool ---- */

static struct fake_pool {
	int calls;       /* pool_start_stream calls */
	bool fresh_only; /* of the last one */
	bool waiting;    /* a waiter is pending */
	int cancels;     /* pool_wait_cancel calls */
	char token;      /* what a pool_wait pointer points to */
	bool any_host;   /* keys for other origins than origin.test are fine */
	const struct upstream_stream_cbs *stream_cbs;
	const struct pool_wait_cbs *cbs;
	void *ctx;
} fp;

struct pool_wait *__wrap_pool_start_stream(struct pool *p, const struct pool_key *key,
                                           bool fresh_only,
                                           const struct upstream_stream_cbs *stream_cbs,
                                           const struct pool_wait_cbs *cbs, void *ctx);
void __wrap_pool_wait_cancel(struct pool_wait *w);
void __wrap_pool_altsvc_learned(struct pool *p, const struct pool_key *key, const char *value,
                                size_t len);

struct pool_wait *__wrap_pool_start_stream(struct pool *p, const struct pool_key *key,
                                           bool fresh_only,
                                           const struct upstream_stream_cbs *stream_cbs,
                                           const struct pool_wait_cbs *cbs, void *ctx)
{
	(void)p;
	if (!fp.any_host)
		ck_assert_str_eq(key->host, "origin.test");
	ck_assert(!fp.waiting);
	fp.calls++;
	fp.fresh_only = fresh_only;
	fp.waiting = true;
	fp.stream_cbs = stream_cbs;
	fp.cbs = cbs;
	fp.ctx = ctx;
	return (struct pool_wait *)&fp.token;
}

void __wrap_pool_wait_cancel(struct pool_wait *w)
{
	ck_assert_ptr_eq(w, (struct pool_wait *)&fp.token);
	ck_assert(fp.waiting);
	fp.waiting = false;
	fp.cancels++;
}

void __wrap_pool_altsvc_learned(struct pool *p, const struct pool_key *key, const char *value,
                                size_t len)
{
	(void)p;
	(void)key;
	(void)value;
	(void)len;
}

/* ---- the fake upstream stream ---- */

struct fake_stream {
	struct upstream_stream base;
	struct upstream_conn conn;
	size_t space;  /* send space now; send_body uses it up */
	bool oversent; /* send_body got more than the space, or nothing */
	int heads, ends;
	bool cancelled;
	char method[16];
	char authority[320], path[64], accept[16]; /* of the head sent */
	bool has_body;
	int64_t content_length;
	struct evbuffer *got;  /* request body bytes received */
	char trailers[8192];   /* from send_end */
	struct evbuffer *body; /* response body for the exchange to take */
	int consumed;
};

static void s_send_head(struct upstream_stream *us, const struct upstream_request *r)
{
	struct fake_stream *s = (struct fake_stream *)us;

	s->heads++;
	snprintf(s->method, sizeof(s->method), "%s", r->method);
	snprintf(s->authority, sizeof(s->authority), "%s", r->authority);
	snprintf(s->path, sizeof(s->path), "%s", r->path);
	for (size_t i = 0; i < r->nfields; i++)
		if (r->fields[i].name_len == 6 && strncasecmp(r->fields[i].name, "accept", 6) == 0)
			snprintf(s->accept, sizeof(s->accept), "%.*s", (int)r->fields[i].value_len,
			         r->fields[i].value);
	s->has_body = r->has_body;
	s->content_length = r->content_length;
}

static size_t s_send_space(struct upstream_stream *us)
{
	return ((struct fake_stream *)us)->space;
}

static void s_send_body(struct upstream_stream *us, const void *data, size_t len)
{
	struct fake_stream *s = (struct fake_stream *)us;

	if (len == 0 || len > s->space || s->ends > 0) {
		s->oversent = true;
		return;
	}
	s->space -= len;
	evbuffer_add(s->got, data, len);
}

static void s_send_end(struct upstream_stream *us, const char *trailers)
{
	struct fake_stream *s = (struct fake_stream *)us;

	s->ends++;
	snprintf(s->trailers, sizeof(s->trailers), "%s", trailers ? trailers : "");
}

static struct evbuffer *s_body(struct upstream_stream *us)
{
	return ((struct fake_stream *)us)->body;
}

static void s_consumed(struct upstream_stream *us)
{
	((struct fake_stream *)us)->consumed++;
}

static void s_cancel(struct upstream_stream *us)
{
	((struct fake_stream *)us)->cancelled = true;
}

static const struct upstream_stream_ops fake_ops = {
    s_send_head, s_send_space, s_send_body, s_send_end, s_body, s_consumed, s_cancel};

/* exchange.c keeps an ended exchange for the next, but not under ASan */
#if defined(__SANITIZE_ADDRESS__)
#define SPARE_EXPECTED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPARE_EXPECTED 0
#endif
#endif
#ifndef SPARE_EXPECTED
#define SPARE_EXPECTED 1
#endif

#define NSTREAMS 3
static struct fake_stream streams[NSTREAMS];
static struct exchange *ex;

static void setup(void)
{
	muxd_setup(HM_CFG);
	log_set_level(LOG_ERROR);
	memset(&fc, 0, sizeof(fc));
	memset(&fp, 0, sizeof(fp));
	fc.t.ops = &fc_ops;
	fc.in = evbuffer_new();
	fc.out = evbuffer_new();
	for (int i = 0; i < NSTREAMS; i++) {
		struct fake_stream *s = &streams[i];
		memset(s, 0, sizeof(*s));
		s->base.ops = &fake_ops;
		s->base.conn = &s->conn;
		s->conn.proto = PROTO_H1;
		s->got = evbuffer_new();
		s->body = evbuffer_new();
	}
	ex = NULL;
}

static bool ex_alive(void)
{
	return ex && !fc.done && !fc.aborted;
}

/* The exchange (when it still runs) goes as when the client disconnects. */
static void end_exchange(void)
{
	if (ex_alive())
		exchange_abort(ex);
	h1_stream_clear(&hs);
	h1_stream_clear(&hs);
	ex = NULL;
}

static void teardown(void)
{
	end_exchange();
	for (int i = 0; i < NSTREAMS; i++) {
		evbuffer_free(streams[i].got);
		evbuffer_free(streams[i].body);
	}
	evbuffer_free(fc.in);
	evbuffer_free(fc.out);
	muxd_teardown();
}

/* Start an exchange for the request head (absolute form), routed by its
 * URI, verified as tls_name (NULL: by the URI's host). */
static void start_as(const char *head, const char *tls_name)
{
	struct http1_msg req;
	struct http1_uri uri;
	size_t used = 0;

	ck_assert_int_eq(http1_parse_request(head, strlen(head), &req, &used), HTTP1_OK);
	ck_assert_uint_eq(used, strlen(head));
	ck_assert(http1_parse_absolute_uri(req.target, &uri));
	fc.done = fc.aborted = fc.keep_alive = false;
	fc.responses = fc.status = 0;
	fp.calls = 0;
	ck_assert(h1_stream_begin(&hs, &fake_client_ops, &m, &fc.t, &req));
	ex = exchange_start(&m, &hs.base, &req, &uri, tls_name);
	ck_assert_ptr_nonnull(ex);
	ck_assert_int_eq(fp.calls, 1);
	ck_assert(!fp.fresh_only);
}

static void start(const char *head)
{
	start_as(head, NULL);
}

/* The pool answers the pending waiter with stream s. */
static void give(struct fake_stream *s, bool reused)
{
	ck_assert(fp.waiting);
	fp.waiting = false;
	s->base.cbs = *fp.stream_cbs;
	s->base.ctx = fp.ctx;
	fp.cbs->on_stream(fp.ctx, &s->base, reused);
}

/* The stream's send space is `space` again, and it says so. */
static void send_ready(struct fake_stream *s, size_t space)
{
	s->space = space;
	if (ex_alive())
		s->base.cbs.on_send_ready(s->base.ctx);
}

static void expect_got(struct fake_stream *s, const void *want, size_t n)
{
	size_t len = evbuffer_get_length(s->got);
	const unsigned char *got = evbuffer_pullup(s->got, -1);

	ck_assert_msg(len == n, "upstream got %zu body bytes, want %zu", len, n);
	ck_assert_msg(n == 0 || memcmp(got, want, n) == 0, "upstream got other body bytes");
}

/* Send spaces: constant ones and a varying schedule. */
static const size_t varying[] = {5, 1, 63, 2, 17, 1, 1, 40, 3, 9, 62, 1, 7, 33, 2, 11};
static const size_t constant[] = {1, 2, 3, 7, 16, 31, 63};

/* Relay body[0..n) (the client's bytes after the head) with the chains
 * split at split, the stream handed over after the first chain, and the send
 * space following spaces[] (cycled), until the stream has its end. */
static void relay(const char *head, const char *body, size_t n, size_t split, const size_t *spaces,
                  size_t nspaces, struct fake_stream *s)
{
	start(head);
	client_sends(body, split);
	s->space = spaces[0];
	give(s, false);
	client_sends(body + split, n - split);
	if (ex_alive())
		exchange_client_read(ex);
	for (size_t i = 1; i < 100000 && ex_alive() && s->ends == 0; i++)
		send_ready(s, spaces[i % nspaces]);
}

/* ---- the request body ---- */

#define FIXED_HEAD                                                                                 \
	"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 150\r\n\r\n"

START_TEST(fixed_length_every_split_tiny_space)
{
	unsigned char *body = pattern_new(150, 7);
	static const char next[] =
	    "GET http://origin.test/next HTTP/1.1\r\nHost: origin.test\r\n\r\n";
	char wire[150 + sizeof(next)];

	memcpy(wire, body, 150);
	memcpy(wire + 150, next, sizeof(next) - 1); /* a pipelined request follows */
	for (size_t split = 0; split <= sizeof(wire) - 1; split++) {
		for (size_t k = 0; k <= sizeof(constant) / sizeof(constant[0]); k++) {
			struct fake_stream *s = &streams[0];
			bool vary = k == sizeof(constant) / sizeof(constant[0]);

			relay(FIXED_HEAD, wire, sizeof(wire) - 1, split,
			      vary ? varying : &constant[k],
			      vary ? sizeof(varying) / sizeof(varying[0]) : 1, s);
			ck_assert_msg(ex_alive() && fc.responses == 0, "split %zu: answered %d",
			              split, fc.status);
			ck_assert(!s->oversent);
			ck_assert_int_eq(s->heads, 1);
			ck_assert(s->has_body && s->content_length == 150);
			ck_assert_int_eq(s->ends, 1);
			expect_got(s, body, 150);
			/* the pipelined request is still the client's, whole */
			ck_assert_uint_eq(evbuffer_get_length(fc.in), sizeof(next) - 1);
			ck_assert(memcmp(evbuffer_pullup(fc.in, -1), next, sizeof(next) - 1) == 0);
			end_exchange();
			evbuffer_drain(fc.in, evbuffer_get_length(fc.in));
			evbuffer_drain(s->got, evbuffer_get_length(s->got));
			s->ends = s->heads = 0;
		}
	}
	free(body);
}
END_TEST

#define CHUNKED_HEAD                                                                               \
	"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\n"                             \
	"Transfer-Encoding: chunked\r\n\r\n"

/* A chunked body with an extension, a chunk of 64 bytes, trailers, and a
 * pipelined request after it. */
static const char chunked_wire[] =
    "5\r\nhello\r\n"
    "1A;name=\"v a\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
    "0\r\nX-Sum: 42\r\nX-Other:b \r\n\r\n"
    "GET http://origin.test/next HTTP/1.1\r\nHost: origin.test\r\n\r\n";
static const char chunked_data[] = "helloabcdefghijklmnopqrstuvwxyz01234567890123456789012345678901"
                                   "23456789012345678901234567890123";
static const char chunked_next[] =
    "GET http://origin.test/next HTTP/1.1\r\nHost: origin.test\r\n\r\n";

static void expect_chunked_relayed(struct fake_stream *s, size_t split)
{
	ck_assert_msg(ex_alive() && fc.responses == 0, "split %zu: answered %d", split, fc.status);
	ck_assert(!s->oversent);
	ck_assert(s->has_body && s->content_length == -1);
	ck_assert_int_eq(s->ends, 1);
	expect_got(s, chunked_data, sizeof(chunked_data) - 1);
	ck_assert_str_eq(s->trailers, "X-Sum: 42\r\nX-Other: b\r\n");
	ck_assert_uint_eq(evbuffer_get_length(fc.in), sizeof(chunked_next) - 1);
	ck_assert(memcmp(evbuffer_pullup(fc.in, -1), chunked_next, sizeof(chunked_next) - 1) == 0);
}

START_TEST(chunked_every_split_tiny_space)
{
	for (size_t split = 0; split <= sizeof(chunked_wire) - 1; split++) {
		for (size_t k = 0; k <= sizeof(constant) / sizeof(constant[0]); k++) {
			struct fake_stream *s = &streams[0];
			bool vary = k == sizeof(constant) / sizeof(constant[0]);

			relay(CHUNKED_HEAD, chunked_wire, sizeof(chunked_wire) - 1, split,
			      vary ? varying : &constant[k],
			      vary ? sizeof(varying) / sizeof(varying[0]) : 1, s);
			expect_chunked_relayed(s, split);
			end_exchange();
			evbuffer_drain(fc.in, evbuffer_get_length(fc.in));
			evbuffer_drain(s->got, evbuffer_get_length(s->got));
			s->ends = s->heads = 0;
		}
	}
}
END_TEST

/* Every byte its own chain: size lines, extensions and trailers straddle
 * chains everywhere; nothing may stall. */
START_TEST(chunked_one_byte_chains)
{
	static const size_t spaces[][3] = {{1, 1, 1}, {63, 63, 63}, {2, 1, 5}, {64 * 1024, 1, 7}};

	for (size_t k = 0; k < sizeof(spaces) / sizeof(spaces[0]); k++) {
		struct fake_stream *s = &streams[0];

		start(CHUNKED_HEAD);
		s->space = spaces[k][0];
		give(s, false);
		for (size_t i = 0; i < sizeof(chunked_wire) - 1; i++) {
			client_sends(chunked_wire + i, 1);
			if (ex_alive())
				exchange_client_read(ex);
			send_ready(s, spaces[k][i % 3]);
		}
		expect_chunked_relayed(s, 0);
		end_exchange();
		evbuffer_drain(fc.in, evbuffer_get_length(fc.in));
		evbuffer_drain(s->got, evbuffer_get_length(s->got));
		s->ends = s->heads = 0;
	}
}
END_TEST

/* The client's input may start with an empty chain (a commit that put its
 * bytes in the second of two reserved extents): that is no reason to stop. */
static void empty_first_chain(const char *data, size_t n)
{
	struct evbuffer_iovec v[2];
	int k;

	evbuffer_expand(fc.in, 100);
	k = evbuffer_reserve_space(fc.in, 8000, v, 2);
	ck_assert_int_eq(k, 2);
	ck_assert_uint_ge(v[1].iov_len, n);
	v[0].iov_len = 0;
	memcpy(v[1].iov_base, data, n);
	v[1].iov_len = n;
	ck_assert_int_eq(evbuffer_commit_space(fc.in, v, 2), 0);
	ck_assert_int_eq(evbuffer_peek(fc.in, -1, NULL, v, 1), 1);
	ck_assert_uint_eq(v[0].iov_len, 0); /* the case under test */
}

START_TEST(empty_first_chain_no_stall)
{
	static const char fixed[] = "abcdefghijkl";
	static const char chunked[] = "c\r\nabcdefghijkl\r\n0\r\n\r\n";

	start("POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\n"
	      "Content-Length: 12\r\n\r\n");
	empty_first_chain(fixed, 12);
	streams[0].space = 5;
	give(&streams[0], false);
	for (int i = 0; i < 10 && streams[0].ends == 0; i++)
		send_ready(&streams[0], 5);
	expect_got(&streams[0], fixed, 12);
	ck_assert_int_eq(streams[0].ends, 1);
	ck_assert(!streams[0].oversent); /* no empty sends either */
	end_exchange();

	start(CHUNKED_HEAD);
	empty_first_chain(chunked, sizeof(chunked) - 1);
	streams[1].space = 5;
	give(&streams[1], false);
	for (int i = 0; i < 10 && streams[1].ends == 0; i++)
		send_ready(&streams[1], 5);
	expect_got(&streams[1], fixed, 12);
	ck_assert_int_eq(streams[1].ends, 1);
	ck_assert(!streams[1].oversent); /* no empty sends either */
}
END_TEST

START_TEST(chunked_malformed_400)
{
	static const char bad[] = "5\r\nhello\r\nzz\r\n";

	for (size_t space = 1; space < 64; space += 20) {
		streams[0].space = space;
		relay(CHUNKED_HEAD, bad, sizeof(bad) - 1, 4, &space, 1, &streams[0]);
		ck_assert(fc.done && fc.responses == 1 && fc.status == 400 && !fc.keep_alive);
		ck_assert_int_eq(streams[0].ends, 0);
		ck_assert(streams[0].cancelled);
		end_exchange();
		evbuffer_drain(fc.in, evbuffer_get_length(fc.in));
		evbuffer_drain(streams[0].got, evbuffer_get_length(streams[0].got));
		streams[0].cancelled = false;
	}
}
END_TEST

/* ---- the response body ---- */

static void head_from(struct fake_stream *s, const char *text)
{
	struct http1_msg h;
	size_t used = 0;

	ck_assert_int_eq(http1_parse_response(text, strlen(text), "GET", &h, &used), HTTP1_OK);
	s->base.cbs.on_head(s->base.ctx, &h);
	http1_msg_free(&h);
}

/* What the client got: one response (1xx skipped); its decoded body in
 * body. */
static int client_response(struct evbuffer *body)
{
	size_t len = evbuffer_get_length(fc.out), used = 0;
	const char *p = (const char *)evbuffer_pullup(fc.out, -1);
	struct http1_msg h;
	int status;

	for (;;) {
		ck_assert_int_eq(http1_parse_response(p, len, "GET", &h, &used), HTTP1_OK);
		p += used;
		len -= used;
		if (h.status >= 200)
			break;
		http1_msg_free(&h);
	}
	status = h.status;
	if (h.body == HTTP1_BODY_CHUNKED) {
		struct http1_chunked *c = calloc(1, sizeof(*c));
		enum http1_chunk_event e = HTTP1_CHUNK_NEED_MORE;
		while (len > 0 && e != HTTP1_CHUNK_DONE) {
			const char *d;
			size_t n = 0, dl = 0;
			e = http1_chunked_next(c, p, len, &n, &d, &dl);
			ck_assert(e != HTTP1_CHUNK_ERROR);
			if (e == HTTP1_CHUNK_DATA)
				evbuffer_add(body, d, dl);
			p += n;
			len -= n;
		}
		ck_assert_int_eq(e, HTTP1_CHUNK_DONE);
		free(c);
	} else {
		evbuffer_add(body, p, len);
		len = 0;
	}
	ck_assert_uint_eq(len, 0);
	http1_msg_free(&h);
	return status;
}

/* The origin's body arrives in pieces while the client drains slowly: the
 * client's output stays bounded and gets every byte, in order. */
START_TEST(response_body_relayed_bounded)
{
	static const char *const heads[] = {
	    "HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n",
	    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
	};
	unsigned char *body = pattern_new(300000, 3);

	for (size_t i = 0; i < 2; i++) {
		struct fake_stream *s = &streams[i];
		struct evbuffer *wire = evbuffer_new(), *got = evbuffer_new();
		size_t fed = 0;

		start("GET http://origin.test/down HTTP/1.1\r\nHost: origin.test\r\n\r\n");
		give(s, false);
		head_from(s, heads[i]);
		for (size_t step = 0; fed < 300000 || evbuffer_get_length(s->body) > 0; step++) {
			size_t piece = 1 + (step * 7919) % 20000;
			if (piece > 300000 - fed)
				piece = 300000 - fed;
			if (piece > 0 && evbuffer_get_length(s->body) < TRANSPORT_BUF) {
				evbuffer_add(s->body, body + fed, piece);
				fed += piece;
				s->base.cbs.on_body(s->base.ctx);
			}
			ck_assert_uint_le(evbuffer_get_length(fc.out), TRANSPORT_BUF + 64);
			/* the client takes a little, then says it drained */
			evbuffer_remove_buffer(fc.out, wire, 1 + (step * 104729) % 30000);
			exchange_client_drain(ex);
			ck_assert(step < 100000);
		}
		s->base.cbs.on_end(s->base.ctx, "");
		ck_assert(fc.done);
		evbuffer_add_buffer(wire, fc.out);
		evbuffer_add_buffer(fc.out, wire);
		ck_assert_int_eq(client_response(got), 200);
		ck_assert_uint_eq(evbuffer_get_length(got), 300000);
		ck_assert(memcmp(evbuffer_pullup(got, -1), body, 300000) == 0);
		evbuffer_free(wire);
		evbuffer_free(got);
		evbuffer_drain(fc.out, evbuffer_get_length(fc.out));
		ex = NULL;
	}
	free(body);
}
END_TEST

/* Once the head went out, an error can only cut the connection (the
 * downstream flushes the head first, then closes). */
START_TEST(error_after_head_aborts)
{
	struct fake_stream *s = &streams[0];

	start("GET http://origin.test/down HTTP/1.1\r\nHost: origin.test\r\n\r\n");
	give(s, true);
	head_from(s, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
	evbuffer_add(s->body, "partial", 7);
	s->base.cbs.on_body(s->base.ctx);
	s->base.cbs.on_error(s->base.ctx, ERR_CLOSED, "connection reset", false);
	ck_assert(fc.aborted && !fc.done && fc.responses == 0);
	ck_assert_int_eq(fp.calls, 1);
	ck_assert(evbuffer_get_length(fc.out) > 0);
	ck_assert(strncmp((const char *)evbuffer_pullup(fc.out, -1), "HTTP/1.1 200 ", 13) == 0);
}
END_TEST

/* ---- retries (DESIGN.md principle 3) ---- */

#define GET_HEAD "GET http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\n\r\n"

static void answer_ok(struct fake_stream *s)
{
	head_from(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
	if (ex_alive())
		s->base.cbs.on_end(s->base.ctx, "");
}

/* Interim heads count against the client's buffer: relayed while it has
 * room, dropped while it holds TRANSPORT_BUF bytes (a client not reading). */
START_TEST(interim_heads_wait_for_room)
{
	static char fill[TRANSPORT_BUF];

	start(GET_HEAD);
	give(&streams[0], true);
	head_from(&streams[0], "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
	ck_assert_uint_gt(evbuffer_get_length(fc.out), 0);
	evbuffer_drain(fc.out, evbuffer_get_length(fc.out));
	evbuffer_add(fc.out, fill, sizeof(fill));
	head_from(&streams[0], "HTTP/1.1 103 Early Hints\r\nLink: </b>\r\n\r\n");
	ck_assert_uint_eq(evbuffer_get_length(fc.out), sizeof(fill));
	evbuffer_drain(fc.out, evbuffer_get_length(fc.out));
	struct evbuffer *body = evbuffer_new();
	answer_ok(&streams[0]);
	ck_assert_int_eq(client_response(body), 200);
	evbuffer_free(body);
}
END_TEST

/* A replayable request that fails on a reused connection before any response
 * byte goes once more, on a fresh connection, and the client never knows. */
START_TEST(retry_reused_replayable_once)
{
	start(GET_HEAD);
	give(&streams[0], true);
	streams[0].base.cbs.on_error(streams[0].base.ctx, ERR_CLOSED, "connection closed", true);
	ck_assert_int_eq(fp.calls, 2);
	ck_assert(fp.fresh_only && fp.waiting);
	ck_assert_uint_eq(m.metrics.upstream_retries, 1);
	ck_assert(ex_alive() && fc.responses == 0 && evbuffer_get_length(fc.out) == 0);
	give(&streams[1], false);
	ck_assert_int_eq(streams[1].heads, 1);
	ck_assert_str_eq(streams[1].method, "GET");
	answer_ok(&streams[1]);
	ck_assert(fc.done && fc.keep_alive && fc.responses == 0);
	ck_assert_int_eq(client_response(streams[2].got), 200); /* the body is dropped */
}
END_TEST

/* Only once: the retry failing too is the client's error. */
START_TEST(retry_only_once)
{
	start(GET_HEAD);
	give(&streams[0], true);
	streams[0].base.cbs.on_error(streams[0].base.ctx, ERR_CLOSED, "connection closed", true);
	give(&streams[1], true);
	streams[1].base.cbs.on_error(streams[1].base.ctx, ERR_CLOSED, "connection closed", true);
	ck_assert_int_eq(fp.calls, 2);
	ck_assert(fc.done && fc.responses == 1 && fc.status == 502);
	ck_assert_uint_eq(m.metrics.upstream_retries, 1);
}
END_TEST

static void expect_no_retry(int status)
{
	ck_assert_int_eq(fp.calls, 1);
	ck_assert(!fp.waiting);
	ck_assert(fc.done && fc.responses == 1 && fc.status == status);
	ck_assert_uint_eq(m.metrics.upstream_retries, 0);
}

/* A fresh connection's failure is the origin's answer, not a stale socket. */
START_TEST(no_retry_on_fresh_connection)
{
	start(GET_HEAD);
	give(&streams[0], false);
	streams[0].base.cbs.on_error(streams[0].base.ctx, ERR_CLOSED, "connection closed", true);
	expect_no_retry(502);
}
END_TEST

/* Some response byte arrived: the origin was processing the request. */
START_TEST(no_retry_after_response_bytes)
{
	start(GET_HEAD);
	give(&streams[0], true);
	streams[0].base.cbs.on_error(streams[0].base.ctx, ERR_RESPONSE_TIMEOUT, "no response",
	                             false);
	expect_no_retry(504);
}
END_TEST

/* Non-idempotent requests are not replayed on a guess... */
START_TEST(no_retry_non_idempotent)
{
	start(
	    "POST http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\n\r\n");
	client_sends("abcd", 4);
	give(&streams[0], true);
	streams[0].base.cbs.on_error(streams[0].base.ctx, ERR_CLOSED, "connection closed", true);
	expect_no_retry(502);
}
END_TEST

/* ...only when the origin said it did not process them (GOAWAY, REFUSED_STREAM),
 * and the body is still held. */
START_TEST(retry_unprocessed_whatever_the_method)
{
	struct fake_stream *s = &streams[0];

	start(
	    "POST http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\n\r\n");
	client_sends("abcd", 4);
	s->space = 0; /* no body byte left muxd */
	give(s, false);
	s->base.cbs.on_error(s->base.ctx, ERR_UNPROCESSED, "refused stream", true);
	ck_assert_int_eq(fp.calls, 2);
	give(&streams[1], false);
	send_ready(&streams[1], 64);
	expect_got(&streams[1], "abcd", 4);
	ck_assert_int_eq(streams[1].ends, 1);
}
END_TEST

/* A body of which more than muxd keeps (16 KiB) already went upstream
 * cannot be replayed. */
START_TEST(no_retry_once_body_sent)
{
	struct fake_stream *s = &streams[0];
	static char big[17000];

	memset(big, 'b', sizeof(big));
	start("PUT http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\nContent-Length: "
	      "20000\r\n\r\n");
	client_sends(big, sizeof(big));
	s->space = sizeof(big);
	give(s, true);
	expect_got(s, big, sizeof(big));
	s->base.cbs.on_error(s->base.ctx, ERR_CLOSED, "connection closed", true);
	expect_no_retry(502);
}
END_TEST

/* What went upstream before the failure (muxd kept it) goes again on the
 * retry, within the new stream's send space, before the rest; a request the
 * origin never processed is retried so even when it is not idempotent. */
START_TEST(retry_resends_sent_body)
{
	struct fake_stream *s = &streams[0];

	start(
	    "POST http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 8\r\n\r\n");
	client_sends("abcd", 4);
	s->space = 64;
	give(s, true);
	expect_got(s, "abcd", 4);
	s->base.cbs.on_error(s->base.ctx, ERR_UNPROCESSED, "stream refused", true);
	ck_assert_int_eq(fp.calls, 2);
	client_sends("efgh", 4);
	streams[1].space = 3;
	give(&streams[1], false);
	for (int i = 0; i < 10 && streams[1].ends == 0; i++)
		send_ready(&streams[1], 3);
	ck_assert(!streams[1].oversent);
	expect_got(&streams[1], "abcdefgh", 8);
	ck_assert_int_eq(streams[1].ends, 1);
	answer_ok(&streams[1]);
	ck_assert(fc.done && fc.keep_alive);
}
END_TEST

/* A replayable body still held by the client connection goes whole on the
 * retry. */
START_TEST(retry_resends_held_body)
{
	struct fake_stream *s = &streams[0];

	start(
	    "PUT http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 8\r\n\r\n");
	client_sends("abcd", 4);
	s->space = 0;
	give(s, true);
	s->base.cbs.on_error(s->base.ctx, ERR_CLOSED, "connection closed", true);
	ck_assert_int_eq(fp.calls, 2);
	client_sends("efgh", 4);
	exchange_client_read(ex); /* no stream: nothing moves */
	streams[1].space = 3;
	give(&streams[1], false);
	for (int i = 0; i < 10 && streams[1].ends == 0; i++)
		send_ready(&streams[1], 3);
	expect_got(&streams[1], "abcdefgh", 8);
	ck_assert_int_eq(streams[1].ends, 1);
	answer_ok(&streams[1]);
	ck_assert(fc.done && fc.keep_alive);
}
END_TEST

/* An empty chunked body (only its last chunk) was ended on the first stream;
 * the retry's stream must be ended too, or the origin waits forever. */
START_TEST(retry_ends_empty_chunked_body)
{
	struct fake_stream *s = &streams[0];
	static const char last[] = "0\r\nX-T: 1\r\n\r\n";

	start("PUT http://origin.test/r HTTP/1.1\r\nHost: origin.test\r\n"
	      "Transfer-Encoding: chunked\r\n\r\n");
	client_sends(last, sizeof(last) - 1);
	s->space = 64;
	give(s, true);
	ck_assert_int_eq(s->ends, 1);
	s->base.cbs.on_error(s->base.ctx, ERR_CLOSED, "connection closed", true);
	ck_assert_int_eq(fp.calls, 2);
	streams[1].space = 64;
	give(&streams[1], false);
	ck_assert_int_eq(streams[1].ends, 1);
	ck_assert_str_eq(streams[1].trailers, "X-T: 1\r\n");
	expect_got(&streams[1], "", 0);
}
END_TEST

/* The client going away while the pool looks for a connection cancels the
 * waiter; no callback reaches the client afterwards. */
START_TEST(abort_while_waiting)
{
	start(GET_HEAD);
	exchange_abort(ex);
	h1_stream_clear(&hs);
	ex = NULL;
	ck_assert_int_eq(fp.cancels, 1);
	ck_assert(!fp.waiting && !fc.done && !fc.aborted);
}
END_TEST

/* ---- cost per request (docs/performance.md, "Restructuring and deadlines") ---- */

/* calloc is wrapped in this binary (the Makefile's -Wl,--wrap=calloc for
 * test_exchange): the largest block zeroed since the last reset. */
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
static size_t calloc_max;

void *__wrap_calloc(size_t n, size_t size)
{
	if (size != 0 && n <= SIZE_MAX / size && n * size > calloc_max)
		calloc_max = n * size;
	return __real_calloc(n, size);
}

static void count_adds(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	if (info->n_added > 0)
		(*(int *)arg)++;
}

/* An exchange zeroes no request-sized buffer when it starts (its ~50 KiB
 * struct is mostly buffers for the largest target, key and head: calloc of
 * it was a third of a keep-alive request's instructions), and nothing in
 * it relies on them being zero: with malloc's memory poisoned
 * (M_PERTURB), the request still goes out with its authority, path and
 * fields right. */
START_TEST(start_zeroes_no_buffers)
{
	struct fake_stream *s = &streams[0];

	mallopt(M_PERTURB, 0x5a);
	calloc_max = 0;
	start("GET http://origin.test:8080/p/q?x=1 HTTP/1.1\r\nHost: origin.test:8080\r\n"
	      "Accept: */*\r\n\r\n");
	ck_assert_uint_lt(calloc_max, 4096);
	give(s, false);
	ck_assert_int_eq(s->heads, 1);
	ck_assert_str_eq(s->method, "GET");
	ck_assert_str_eq(s->authority, "origin.test:8080");
	ck_assert_str_eq(s->path, "/p/q?x=1");
	ck_assert_str_eq(s->accept, "*/*");
	answer_ok(s);
	ck_assert(fc.done && fc.keep_alive);
	mallopt(M_PERTURB, 0);
}
END_TEST

/* An ended exchange's memory serves the next request (no malloc and free
 * per keep-alive request), one kept at most, and what the first request
 * left in it (a longer path, more fields, a body, a retry's state) never
 * shows in the second. */
START_TEST(spare_exchange_reused)
{
	struct fake_stream *s = &streams[0];
	struct exchange *first;

	start("GET http://origin.test:8080/a/much/longer/path?with=query HTTP/1.1\r\n"
	      "Host: origin.test:8080\r\nAccept: text/html\r\nX-One: 1\r\nX-Two: 2\r\n\r\n");
	first = ex;
	give(s, true);
	ck_assert_str_eq(s->path, "/a/much/longer/path?with=query");
	ck_assert_str_eq(s->accept, "text/html");
	answer_ok(s);
	ck_assert(fc.done);
	end_exchange();
	if (SPARE_EXPECTED)
		ck_assert_ptr_eq(m.spare_exchange, first);
	memset(s->authority, 0, sizeof(s->authority));
	memset(s->accept, 0, sizeof(s->accept));
	start("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n");
	if (SPARE_EXPECTED)
		ck_assert_ptr_eq(ex, first);
	ck_assert_ptr_null(m.spare_exchange);
	give(s, false);
	ck_assert_str_eq(s->method, "GET");
	ck_assert_str_eq(s->authority, "origin.test");
	ck_assert_str_eq(s->path, "/");
	ck_assert_str_eq(s->accept, "");
	ck_assert(!s->has_body);
	ck_assert_int_eq(s->content_length, -1);
	answer_ok(s);
	ck_assert(fc.done && fc.keep_alive);
	end_exchange();
	/* one kept, not more: a second ended exchange is freed */
	start(GET_HEAD);
	first = ex;
	end_exchange();
	ck_assert_ptr_eq(m.spare_exchange, SPARE_EXPECTED ? first : NULL);
}
END_TEST

/* The authority a request goes upstream with (:authority, Host): the
 * default port of its scheme left out, any other kept, an IPv6 literal in
 * brackets, the origin's name instead of the address it was reached at,
 * the longest host name whole. */
START_TEST(authority_forms)
{
	static const struct {
		const char *url, *tls_name, *want;
	} cases[] = {
	    {"http://origin.test/", NULL, "origin.test"},
	    {"http://origin.test:80/", NULL, "origin.test"},
	    {"http://origin.test:443/", NULL, "origin.test:443"},
	    {"https://origin.test/", NULL, "origin.test"},
	    {"https://origin.test:80/", NULL, "origin.test:80"},
	    {"http://origin.test:1/", NULL, "origin.test:1"},
	    {"http://origin.test:65535/", NULL, "origin.test:65535"},
	    {"http://[::1]:8080/", NULL, "[::1]:8080"},
	    {"http://[2001:db8::1]/", NULL, "[2001:db8::1]"},
	    {"https://[2001:db8::1]:443/", NULL, "[2001:db8::1]"},
	    {"https://[::1]:8443/", "name.test", "name.test:8443"},
	    {"https://10.0.0.1/", "name.test", "name.test"},
	};
	char head[700], host[256], want[300];

	fp.any_host = true;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fake_stream *s = &streams[0];
		snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", cases[i].url);
		start_as(head, cases[i].tls_name);
		give(s, false);
		ck_assert_str_eq(s->authority, cases[i].want);
		answer_ok(s);
		ck_assert(fc.done);
		end_exchange();
	}
	memset(host, 'a', 255);
	host[255] = '\0';
	snprintf(head, sizeof(head), "GET http://%s:65535/ HTTP/1.1\r\nHost: x\r\n\r\n", host);
	start(head);
	give(&streams[0], false);
	snprintf(want, sizeof(want), "%s:65535", host);
	ck_assert_str_eq(streams[0].authority, want);
	answer_ok(&streams[0]);
}
END_TEST

/* The response head reaches the client's buffer in one piece: each
 * evbuffer_add runs the buffer's callbacks (the transport's, the session's
 * progress watch), and adding it field by field cost four rounds of them
 * per field. */
START_TEST(head_added_once)
{
	struct fake_stream *s = &streams[0];
	struct evbuffer *body = evbuffer_new();
	int adds = 0;
	struct evbuffer_cb_entry *cb = evbuffer_add_cb(fc.out, count_adds, &adds);

	start(GET_HEAD);
	give(s, false);
	head_from(s, "HTTP/1.1 200 OK\r\nServer: t\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n"
	             "Content-Type: text/plain\r\nETag: \"1\"\r\nContent-Length: 5\r\n"
	             "Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n");
	ck_assert_int_eq(adds, 1);
	evbuffer_add(s->body, "hello", 5);
	s->base.cbs.on_body(s->base.ctx);
	s->base.cbs.on_end(s->base.ctx, "");
	evbuffer_remove_cb_entry(fc.out, cb);
	char text[1024] = "";
	evbuffer_copyout(fc.out, text, sizeof(text) - 1);
	ck_assert_ptr_nonnull(strstr(text, "HTTP/1.1 200 OK\r\nServer: t\r\n"));
	ck_assert_ptr_nonnull(strstr(text, "\r\nETag: \"1\"\r\nCache-Control: no-cache\r\n"));
	ck_assert_ptr_nonnull(strstr(text, "\r\nContent-Length: 5\r\n"));
	ck_assert_ptr_null(strstr(text, "Connection:"));
	ck_assert_int_eq(client_response(body), 200);
	ck_assert_uint_eq(evbuffer_get_length(body), 5);
	evbuffer_free(body);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("exchange");
	TCase *relay_tc = tcase_create("relay");
	TCase *retry_tc = tcase_create("retry");

	tcase_add_checked_fixture(relay_tc, setup, teardown);
	tcase_set_timeout(relay_tc, 120);
	tcase_add_test(relay_tc, fixed_length_every_split_tiny_space);
	tcase_add_test(relay_tc, chunked_every_split_tiny_space);
	tcase_add_test(relay_tc, chunked_one_byte_chains);
	tcase_add_test(relay_tc, empty_first_chain_no_stall);
	tcase_add_test(relay_tc, chunked_malformed_400);
	tcase_add_test(relay_tc, response_body_relayed_bounded);
	tcase_add_test(relay_tc, error_after_head_aborts);
	suite_add_tcase(s, relay_tc);

	tcase_add_checked_fixture(retry_tc, setup, teardown);
	tcase_add_test(retry_tc, retry_reused_replayable_once);
	tcase_add_test(retry_tc, retry_only_once);
	tcase_add_test(retry_tc, no_retry_on_fresh_connection);
	tcase_add_test(retry_tc, no_retry_after_response_bytes);
	tcase_add_test(retry_tc, no_retry_non_idempotent);
	tcase_add_test(retry_tc, retry_unprocessed_whatever_the_method);
	tcase_add_test(retry_tc, interim_heads_wait_for_room);
	tcase_add_test(retry_tc, no_retry_once_body_sent);
	tcase_add_test(retry_tc, retry_resends_sent_body);
	tcase_add_test(retry_tc, retry_resends_held_body);
	tcase_add_test(retry_tc, retry_ends_empty_chunked_body);
	tcase_add_test(retry_tc, abort_while_waiting);
	suite_add_tcase(s, retry_tc);

	TCase *cost_tc = tcase_create("cost");
	tcase_add_checked_fixture(cost_tc, setup, teardown);
	tcase_add_test(cost_tc, start_zeroes_no_buffers);
	tcase_add_test(cost_tc, authority_forms);
	tcase_add_test(cost_tc, spare_exchange_reused);
	tcase_add_test(cost_tc, head_added_once);
	suite_add_tcase(s, cost_tc);

	return run_suite(s) ? 1 : 0;
}
