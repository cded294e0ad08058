/*
 * Fuzz target for the body relay in both directions: src/exchange.c with the
 * real HTTP/1.1 upstream codec (src/upstream/h1.c) over an in-memory
 * transport, the pool replaced by a fake at link time (ld --wrap,
 * EXCHANGE_SEAMS in the Makefile) and the client stream given to
 * exchange_start a real h1_stream (src/client/h1_stream.c) with the
 * connection's part faked.
 *
 * Input: flags (1 byte: the request's framing), the client's bytes after the
 * request head (3-byte little-endian length, then the bytes), the origin's
 * bytes (the same), then a schedule, one action per byte (low 2 bits; the
 * other 6 are its argument):
 *   0  the client sends its next arg+1 bytes, as one exactly sized chain;
 *   1  the upstream send space becomes arg bytes (63: all of it);
 *   2  the origin sends its next (arg+1)^2 bytes (arg 63: it closes);
 *   3  the client takes arg^2 * 16 bytes of its output (arg 62: it stops
 *      reading, its output is full; arg 63: its EOF).
 * Then everything is delivered and the exchange must end.
 *
 * Client bytes arrive in exactly sized heap chains (evbuffer_add_reference)
 * so that AddressSanitizer sees a read past one. Checks: no request body
 * chunk is larger than the stream's send space; what reached the origin
 * decodes to a prefix of the client's decoded body (all of it, with its
 * trailers as http1_filter_trailers leaves them, once the origin got the
 * body's end); the codec's decoded response body stays within TRANSPORT_BUF;
 * nothing hangs.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/h1_stream.h"
#include "config.h"
#include "exchange.h"
#include "fuzz.h"
#include "http1.h"
#include "log.h"
#include "muxd.h"
#include "pool.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

static struct muxd m;
static struct upstream_env env; /* from m */

/* ---- an in-memory byte stream: the client's and the origin's ---- */

struct mem {
	struct transport t;
	struct evbuffer *in, *out;
	size_t filler; /* bytes at the front of out that only take up space */
};

static struct mem client, origin;
static struct evbuffer *wire; /* what went out to the origin (filler removed) */
static bool conn_alive;       /* the h1 connection on origin lives */

static struct evbuffer *mem_input(struct transport *t)
{
	return ((struct mem *)t)->in;
}

static struct evbuffer *mem_output(struct transport *t)
{
	return ((struct mem *)t)->out;
}

static void mem_set_reading(struct transport *t, bool on)
{
	(void)t;
	(void)on;
}

static void mem_nothing(struct transport *t)
{
	(void)t;
}

static bool mem_alive(struct transport *t)
{
	(void)t;
	return true;
}

static const struct transport_ops mem_ops = {mem_input,   mem_output,  mem_set_reading,
                                             mem_nothing, mem_nothing, mem_alive};

static void chain_free(const void *data, size_t len, void *arg)
{
	(void)len;
	(void)arg;
	free((void *)data);
}

static void add_chain(struct evbuffer *b, const uint8_t *p, size_t n)
{
	void *copy;

	if (n == 0)
		return;
	copy = malloc(n);
	CHECK(copy);
	memcpy(copy, p, n);
	CHECK(evbuffer_add_reference(b, copy, n, chain_free, NULL) == 0);
}

/* The origin's kernel takes n bytes of what muxd wrote. */
static void origin_takes(size_t n)
{
	size_t skip = n < origin.filler ? n : origin.filler;

	evbuffer_drain(origin.out, skip);
	origin.filler -= skip;
	evbuffer_remove_buffer(origin.out, wire, n - skip);
}

/* Leave exactly `space` bytes of send space (filler where muxd wrote less). */
static void set_space(size_t space)
{
	static char filler[TRANSPORT_BUF];
	size_t len = evbuffer_get_length(origin.out), want = TRANSPORT_BUF - space;

	if (len > want) {
		origin_takes(len - want);
	} else if (len < want) {
		memset(filler, '#', want - len);
		evbuffer_prepend(origin.out, filler, want - len);
		origin.filler += want - len;
	}
}

/* The client stops reading: its output is full (of filler, at the front). */
static void client_blocks(void)
{
	static char filler[TRANSPORT_BUF];
	size_t len = evbuffer_get_length(client.out);

	if (len < TRANSPORT_BUF)
		evbuffer_prepend(client.out, filler, TRANSPORT_BUF - len);
}

/* ---- the fake client connection ---- */

static bool ex_done; /* finished or aborted: the exchange is freed */

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
	evbuffer_add_printf(client.out, "HTTP/1.1 %d muxd\r\n\r\n", status);
	evbuffer_add(client.out, body, body_len);
}

static void fake_done(struct client_stream *cs)
{
	bool keep_alive = h1_stream_keep_alive(&hs);

	(void)cs;
	(void)keep_alive;
	h1_stream_clear(&hs);
	CHECK(!ex_done);
	ex_done = true;
}

static void fake_abort(struct client_stream *cs)
{
	(void)cs;
	h1_stream_clear(&hs);
	CHECK(!ex_done);
	ex_done = true;
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

/* ---- the fake pool: one HTTP/1.1 connection over origin ---- */

static struct {
	bool waiting;
	char token;
	const struct upstream_stream_cbs *stream_cbs;
	const struct pool_wait_cbs *cbs;
	void *ctx;
} fp;
static struct upstream_conn *conn;
static struct upstream_stream *stream; /* on conn */

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
	(void)key;
	(void)fresh_only;
	CHECK(!fp.waiting);
	fp.waiting = true;
	fp.stream_cbs = stream_cbs;
	fp.cbs = cbs;
	fp.ctx = ctx;
	return (struct pool_wait *)&fp.token;
}

void __wrap_pool_wait_cancel(struct pool_wait *w)
{
	CHECK(w == (struct pool_wait *)&fp.token && fp.waiting);
	fp.waiting = false;
}

void __wrap_pool_altsvc_learned(struct pool *p, const struct pool_key *key, const char *value,
                                size_t len)
{
	(void)p;
	(void)key;
	(void)value;
	(void)len;
}

static void conn_available(void *owner, struct upstream_conn *c)
{
	(void)owner;
	conn_alive = false;
	c->ops->close(c); /* one exchange per input */
}

static void conn_closed(void *owner, struct upstream_conn *c, enum evict_reason why)
{
	(void)owner;
	(void)c;
	(void)why;
	conn_alive = false;
}

static void conn_failed(void *owner, struct upstream_conn *c, enum muxd_err err, const char *reason)
{
	(void)owner;
	(void)c;
	(void)err;
	(void)reason;
	abort(); /* HTTP/1.1 connections do not set themselves up */
}

static const struct upstream_owner_cbs owner_cbs = {conn_available, conn_closed, conn_failed};

/* What the exchange holds instead of stream: checks that no request body
 * goes beyond the send space (DESIGN.md principle 5), then forwards. */
static void g_send_head(struct upstream_stream *g, const struct upstream_request *r)
{
	(void)g;
	stream->ops->send_head(stream, r);
}

static size_t g_send_space(struct upstream_stream *g)
{
	(void)g;
	return stream->ops->send_space(stream);
}

static void g_send_body(struct upstream_stream *g, const void *data, size_t len)
{
	(void)g;
	CHECK(len > 0 && len <= stream->ops->send_space(stream));
	stream->ops->send_body(stream, data, len);
}

static void g_send_end(struct upstream_stream *g, const char *trailers)
{
	(void)g;
	stream->ops->send_end(stream, trailers);
}

static struct evbuffer *g_body(struct upstream_stream *g)
{
	(void)g;
	return stream->ops->body(stream);
}

static void g_consumed(struct upstream_stream *g)
{
	(void)g;
	stream->ops->consumed(stream);
}

static void g_cancel(struct upstream_stream *g)
{
	(void)g;
	stream->ops->cancel(stream);
}

static const struct upstream_stream_ops guard_ops = {
    g_send_head, g_send_space, g_send_body, g_send_end, g_body, g_consumed, g_cancel};
static struct upstream_stream guard = {.ops = &guard_ops};

/* The pool answers a waiting exchange: the first time with a stream on a new
 * connection, after that (a retry) with an error. */
static void pool_answers(void)
{
	if (!fp.waiting || ex_done)
		return;
	fp.waiting = false;
	if (conn) {
		fp.cbs->on_error(fp.ctx, ERR_CONNECT, "no second connection");
		return;
	}
	struct upstream_params prm;
	upstream_params_init(&prm, m.cfg);
	conn = h1_conn_new(&env, &prm, NULL, &origin.t, &owner_cbs, NULL);
	CHECK(conn);
	conn_alive = true;
	stream = conn->ops->open_stream(conn, fp.stream_cbs, fp.ctx);
	CHECK(stream);
	guard.conn = stream->conn;
	fp.cbs->on_stream(fp.ctx, &guard, false);
}

/* ---- the input ---- */

struct cursor {
	const uint8_t *p;
	size_t len, off;
};

static struct cursor take(const uint8_t **data, size_t *size)
{
	struct cursor c = {*data, 0, 0};

	if (*size >= 3) {
		c.len = (size_t)((*data)[0] | (*data)[1] << 8 | (*data)[2] << 16);
		*data += 3;
		*size -= 3;
	} else {
		*size = 0;
	}
	if (c.len > *size)
		c.len = *size;
	c.p = *data;
	*data += c.len;
	*size -= c.len;
	return c;
}

/* Up to n more bytes of c, as one chain of b. */
static size_t feed(struct cursor *c, struct evbuffer *b, size_t n)
{
	if (n > c->len - c->off)
		n = c->len - c->off;
	add_chain(b, c->p + c->off, n);
	c->off += n;
	return n;
}

/* The decoded body of a chunked or fixed-length message in p[0..n). */
struct decoded {
	struct evbuffer *data;
	bool complete;
	struct http1_chunked chunked;
};

static void decode(const uint8_t *p, size_t n, bool chunked, size_t length, struct decoded *d)
{
	memset(&d->chunked, 0, sizeof(d->chunked));
	d->complete = false;
	if (!chunked) {
		d->complete = n >= length;
		evbuffer_add(d->data, p, n < length ? n : length);
		return;
	}
	while (n > 0) {
		const char *data;
		size_t used = 0, dlen = 0;
		enum http1_chunk_event e =
		    http1_chunked_next(&d->chunked, (const char *)p, n, &used, &data, &dlen);
		if (e == HTTP1_CHUNK_DATA)
			evbuffer_add(d->data, data, dlen);
		if (e == HTTP1_CHUNK_ERROR)
			return;
		if (e == HTTP1_CHUNK_DONE) {
			d->complete = true;
			return;
		}
		p += used;
		n -= used;
	}
}

/* What reached the origin is a prefix of what the client sent, decoded. */
static void check_upstream(const struct decoded *want)
{
	size_t len = evbuffer_get_length(wire), used = 0;
	const uint8_t *p = evbuffer_pullup(wire, -1);
	struct http1_msg req;
	struct decoded got = {evbuffer_new(), false, {0}};
	size_t n, wn = evbuffer_get_length(want->data);

	CHECK(got.data);
	if (len == 0 || http1_parse_request((const char *)p, len, &req, &used) != HTTP1_OK) {
		evbuffer_free(got.data);
		return; /* no head went out (or not all of it) */
	}
	decode(p + used, len - used, req.body == HTTP1_BODY_CHUNKED, req.content_length, &got);
	n = evbuffer_get_length(got.data);
	CHECK(n <= wn);
	CHECK(n == 0 ||
	      memcmp(evbuffer_pullup(got.data, -1), evbuffer_pullup(want->data, -1), n) == 0);
	if (got.complete && req.body != HTTP1_BODY_NONE) {
		CHECK(want->complete && n == wn);
		if (req.body == HTTP1_BODY_CHUNKED) {
			/* the client's trailers, but the fields no trailer may carry */
			static struct http1_chunked allowed;

			allowed = want->chunked;
			http1_filter_trailers(allowed.trailers);
			CHECK(strcmp(got.chunked.trailers, allowed.trailers) == 0);
		}
	}
	http1_msg_free(&req);
	evbuffer_free(got.data);
}

static void init(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	log_set_level(LOG_ERROR);
	m.base = event_base_new();
	m.cfg = config_defaults();
	CHECK(m.base && m.cfg);
	env = (struct upstream_env){{.base = m.base}, &m.window_granted, NULL};
	m.env = &env;
	client.t.ops = origin.t.ops = &mem_ops;
}

/* The codec's decoded response body stays within its bound. */
static void check_bounds(void)
{
	if (conn_alive)
		CHECK(evbuffer_get_length(stream->ops->body(stream)) <= TRANSPORT_BUF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const heads[] = {
	    "GET http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n\r\n",
	    "POST http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\nContent-Length: "
	    "%zu\r\n\r\n",
	    "POST http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n",
	    "PUT http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n"
	    "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
	};
	char head[300];
	struct http1_msg req;
	struct http1_uri uri;
	struct cursor body, resp;
	struct decoded want;
	struct exchange *ex;
	size_t used = 0, length;
	bool origin_eof = false, client_eof = false;
	uint8_t flags;

	init();
	if (size < 1)
		return 0;
	flags = data[0];
	data++;
	size--;
	body = take(&data, &size);
	resp = take(&data, &size);
	/* a Content-Length of the client's byte count, from two fewer to one more */
	length = body.len + (flags >> 2 & 3);
	length = length > 2 ? length - 2 : 1;
	snprintf(head, sizeof(head), heads[flags & 3], length);

	client.in = evbuffer_new();
	client.out = evbuffer_new();
	origin.in = evbuffer_new();
	origin.out = evbuffer_new();
	origin.filler = 0;
	wire = evbuffer_new();
	want.data = evbuffer_new();
	CHECK(client.in && client.out && origin.in && origin.out && wire && want.data);
	conn = NULL;
	conn_alive = ex_done = false;
	memset(&fp, 0, sizeof(fp));

	CHECK(http1_parse_request(head, strlen(head), &req, &used) == HTTP1_OK);
	CHECK(http1_parse_absolute_uri(req.target, &uri));
	decode(body.p, body.len, req.body == HTTP1_BODY_CHUNKED,
	       req.body == HTTP1_BODY_LENGTH ? req.content_length : 0, &want);
	CHECK(h1_stream_begin(&hs, &fake_client_ops, &m, &client.t, &req));
	ex = exchange_start(&m, &hs.base, &req, &uri, NULL);
	CHECK(ex);

	/* the schedule */
	for (size_t i = 0; i < size && !ex_done; i++) {
		unsigned arg = data[i] >> 2;

		pool_answers();
		if (ex_done)
			break;
		switch (data[i] & 3) {
		case 0:
			if (!client_eof && feed(&body, client.in, arg + 1) > 0)
				exchange_client_read(ex);
			break;
		case 1:
			set_space(arg == 63 ? TRANSPORT_BUF : arg);
			if (conn_alive)
				origin.t.cbs.on_drain(origin.t.ctx);
			break;
		case 2:
			if (origin_eof || !conn_alive)
				break;
			if (arg == 63) {
				origin_eof = true;
				origin.t.cbs.on_event(origin.t.ctx, TRANSPORT_EOF, ERR_CLOSED,
				                      "closed");
			} else if (feed(&resp, origin.in, (arg + 1) * (arg + 1)) > 0) {
				origin.t.cbs.on_read(origin.t.ctx);
			}
			break;
		case 3:
			if (arg == 63 && !client_eof) {
				client_eof = true;
				hs.keep_alive = false; /* as the session does */
				exchange_client_eof(ex);
			} else if (arg == 62) {
				client_blocks();
			} else {
				evbuffer_drain(client.out, (size_t)arg * arg * 16);
				exchange_client_drain(ex);
			}
			break;
		}
		check_bounds();
	}

	/* then everything arrives, everywhere; the exchange must end */
	for (int round = 0; round < 64 && !ex_done; round++) {
		pool_answers();
		if (ex_done)
			break;
		if (!client_eof && feed(&body, client.in, body.len) > 0)
			exchange_client_read(ex);
		if (ex_done)
			break;
		set_space(TRANSPORT_BUF);
		if (conn_alive)
			origin.t.cbs.on_drain(origin.t.ctx);
		if (ex_done)
			break;
		evbuffer_drain(client.out, evbuffer_get_length(client.out));
		exchange_client_drain(ex);
		if (ex_done || !conn_alive)
			continue;
		if (feed(&resp, origin.in, resp.len) > 0) {
			origin.t.cbs.on_read(origin.t.ctx);
		} else if (!origin_eof) {
			origin_eof = true;
			origin.t.cbs.on_event(origin.t.ctx, TRANSPORT_EOF, ERR_CLOSED, "closed");
		}
	}
	CHECK(ex_done);
	CHECK(!conn_alive);

	set_space(TRANSPORT_BUF);
	check_upstream(&want);

	evbuffer_free(client.in);
	evbuffer_free(client.out);
	evbuffer_free(origin.in);
	evbuffer_free(origin.out);
	evbuffer_free(wire);
	evbuffer_free(want.data);
	return 0;
}
