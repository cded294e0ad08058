/*
 * Unit tests for src/upstream/h1.c: an HTTP/1.1 upstream connection over a
 * fake transport, an in-memory layer whose input the test fills (then calls
 * on_read, or on_event for EOF) and whose output the test reads and drains
 * (then calls on_drain). The test is the origin: every byte boundary is its
 * choice. Covered: interim heads (several 1xx and the final head in one
 * buffer, and split at every point), the response timer during uploads
 * (bytes moving either way restart it), the end of a body (length, chunked,
 * none), close-delimited bodies, what ends the connection, and the
 * forwarding mode (absolute form, Proxy-Authorization, a parent's 407).
 * And the cost: requests on a kept-alive connection re-arm the response
 * timer without libevent's timer heap (event_add counted by wrapping it).
 */
#include <check.h>
#include <dlfcn.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "harness.h"
#include "muxd.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

/* event_add, counted: this definition wins over libevent's for the calls
 * from the code linked into this program, and forwards to it. */
static int n_event_add;

int event_add(struct event *ev, const struct timeval *tv)
{
	static int (*real)(struct event *, const struct timeval *);

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "event_add");
	n_event_add++;
	return real(ev, tv);
}

/* ---- the fake transport ---- */

static struct fake {
	struct transport t;
	struct evbuffer *in, *out;
	bool reading, shut, closed;
} ft;

static struct evbuffer *f_input(struct transport *t)
{
	return ((struct fake *)t)->in;
}

static struct evbuffer *f_output(struct transport *t)
{
	return ((struct fake *)t)->out;
}

static void f_set_reading(struct transport *t, bool on)
{
	((struct fake *)t)->reading = on;
}

static void f_shutdown(struct transport *t)
{
	((struct fake *)t)->shut = true;
}

static void f_close(struct transport *t)
{
	struct fake *f = (struct fake *)t;

	ck_assert_msg(!f->closed, "transport closed twice");
	f->closed = true; /* the buffers stay for the test to inspect */
}

static bool f_is_alive(struct transport *t)
{
	return !((struct fake *)t)->closed;
}

static const struct transport_ops fake_ops = {f_input,    f_output, f_set_reading,
                                              f_shutdown, f_close,  f_is_alive};

static void fake_reset(void)
{
	if (ft.in)
		evbuffer_free(ft.in);
	if (ft.out)
		evbuffer_free(ft.out);
	memset(&ft, 0, sizeof(ft));
	ft.t.ops = &fake_ops;
	ft.in = evbuffer_new();
	ft.out = evbuffer_new();
	ck_assert(ft.in && ft.out);
}

/* The origin sends n bytes. */
static void feed(const void *p, size_t n)
{
	ck_assert(!ft.closed);
	if (n == 0)
		return;
	evbuffer_add(ft.in, p, n);
	ft.t.cbs.on_read(ft.t.ctx);
}

static void feed_str(const char *s)
{
	feed(s, strlen(s));
}

/* The origin closes its side. */
static void feed_eof(void)
{
	ck_assert(!ft.closed);
	ft.t.cbs.on_event(ft.t.ctx, TRANSPORT_EOF, ERR_NONE, NULL);
}

/* The kernel took n bytes of the output. */
static void drain_out(size_t n)
{
	evbuffer_drain(ft.out, n);
	if (!ft.closed && ft.t.cbs.on_drain)
		ft.t.cbs.on_drain(ft.t.ctx);
}

/* What muxd wrote to the origin so far, as a string (static buffer). */
static const char *sent(void)
{
	static char buf[4096];
	size_t n = evbuffer_get_length(ft.out);

	if (n >= sizeof(buf))
		n = sizeof(buf) - 1;
	evbuffer_copyout(ft.out, buf, n);
	buf[n] = '\0';
	return buf;
}

/* ---- the owner and the stream's user ---- */

static struct owner {
	int available, closed;
	enum evict_reason why;
} own;

static void own_available(void *owner, struct upstream_conn *c)
{
	(void)owner;
	(void)c;
	own.available++;
}

static void own_closed(void *owner, struct upstream_conn *c, enum evict_reason why)
{
	(void)owner;
	(void)c;
	own.closed++;
	own.why = why;
}

static const struct upstream_owner_cbs owner_cbs = {own_available, own_closed, NULL};

static struct rec {
	int status[24];
	int nheads;
	char link[64]; /* the Link field of the last interim head */
	enum http1_body final_body;
	struct evbuffer *got;
	bool manual; /* on_body leaves the bytes in the stream's buffer */
	int bodies;  /* on_body calls */
	bool ended, errored, nothing;
	enum muxd_err err;
	char reason[128];
	char trailers[256];
	int send_ready;
	bool take_101;           /* on_head takes the transport of a 101 */
	struct transport *taken; /* ... here */
	bool taken_eof;
} rec;

static struct upstream_conn *uc;
static struct upstream_stream *us;

static void take_body(void)
{
	struct evbuffer *b = us->ops->body(us);

	evbuffer_add_buffer(rec.got, b);
	us->ops->consumed(us);
}

static void r_head(void *ctx, const struct http1_msg *h)
{
	(void)ctx;
	ck_assert_int_lt(rec.nheads, 24);
	rec.status[rec.nheads++] = h->status;
	if (h->status == 101 && rec.take_101) {
		rec.taken = h1_stream_take_transport(us, &rec.taken_eof);
		us = NULL;
		return;
	}
	if (h->status < 200) {
		const struct http1_field *f = http1_find(h, "link");
		snprintf(rec.link, sizeof(rec.link), "%s", f ? f->value : "");
	} else {
		rec.final_body = h->body;
	}
}

static void r_body(void *ctx)
{
	(void)ctx;
	rec.bodies++;
	if (!rec.manual)
		take_body();
}

static void r_end(void *ctx, const char *trailers)
{
	(void)ctx;
	ck_assert(!rec.ended && !rec.errored);
	rec.ended = true;
	snprintf(rec.trailers, sizeof(rec.trailers), "%s", trailers);
	us = NULL; /* the connection takes the stream back */
	event_base_loopbreak(m.base);
}

static void r_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	(void)ctx;
	ck_assert(!rec.ended && !rec.errored);
	rec.errored = true;
	rec.err = err;
	rec.nothing = nothing;
	snprintf(rec.reason, sizeof(rec.reason), "%s", reason);
	us = NULL;
	event_base_loopbreak(m.base);
}

static void r_send_ready(void *ctx)
{
	(void)ctx;
	rec.send_ready++;
}

static const struct upstream_stream_cbs stream_cbs = {r_head, r_body, r_end, r_error, r_send_ready};

/* ---- fixtures ---- */

static void setup(void)
{
	muxd_setup(HM_CFG);
}

static void teardown(void)
{
	if (uc && !own.closed)
		uc->ops->close(uc);
	uc = NULL;
	us = NULL;
	if (rec.got)
		evbuffer_free(rec.got);
	memset(&rec, 0, sizeof(rec));
	if (ft.in)
		evbuffer_free(ft.in);
	if (ft.out)
		evbuffer_free(ft.out);
	memset(&ft, 0, sizeof(ft));
	muxd_teardown();
}

/* A fresh connection over a fresh fake transport (response_timeout ms),
 * forwarding to a parent when fwd is set. */
static void conn_new_mode(uint64_t response_timeout_ms, const struct upstream_forward *fwd)
{
	if (uc && !own.closed)
		uc->ops->close(uc);
	if (rec.got)
		evbuffer_free(rec.got);
	memset(&rec, 0, sizeof(rec));
	memset(&own, 0, sizeof(own));
	rec.got = evbuffer_new();
	ck_assert_ptr_nonnull(rec.got);
	fake_reset();
	struct upstream_params prm;
	upstream_params_init(&prm, m.cfg);
	prm.response_timeout_ms = response_timeout_ms;
	uc = h1_conn_new(m.env, &prm, fwd, &ft.t, &owner_cbs, NULL);
	ck_assert_ptr_nonnull(uc);
	ck_assert(ft.reading);
	ck_assert(uc->ops->is_idle(uc));
	ck_assert_uint_eq(uc->ops->free_slots(uc), 1);
}

static void conn_new(uint64_t response_timeout_ms)
{
	conn_new_mode(response_timeout_ms, NULL);
}

/* Opens the stream and sends a request head; content_length -1 with a body:
 * chunked. */
static void request(const char *method, const char *path, bool has_body, int64_t content_length)
{
	struct upstream_request r = {
	    .method = method,
	    .scheme = "http",
	    .authority = "origin.test",
	    .path = path,
	    .has_body = has_body,
	    .content_length = content_length,
	};

	us = uc->ops->open_stream(uc, &stream_cbs, NULL);
	ck_assert_ptr_nonnull(us);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 0);
	upstream_stream_send_head(us, &r);
}

static void expect_got(const char *want)
{
	size_t n = evbuffer_get_length(rec.got);
	char *p = (char *)evbuffer_pullup(rec.got, -1);

	ck_assert_msg(n == strlen(want) && (n == 0 || memcmp(p, want, n) == 0),
	              "body %.*s, expected %s", (int)n, p ? p : "", want);
}

/* The stream ended and the connection went back to its owner, idle. */
static void expect_reusable(void)
{
	ck_assert_msg(rec.ended, "not ended (error %d: %s)", rec.err, rec.reason);
	ck_assert_int_eq(own.available, 1);
	ck_assert_int_eq(own.closed, 0);
	ck_assert(uc->ops->is_idle(uc));
	ck_assert_uint_eq(uc->ops->free_slots(uc), 1);
	ck_assert(!ft.closed);
}

/* ---- interim heads ---- */

struct interim_case {
	const char *name;
	const char *bytes; /* everything the origin sends */
	int heads[4];      /* statuses expected, 0-terminated */
	const char *link;  /* of the last interim head */
	const char *body;
	const char *trailers;
};

static const struct interim_case interim_cases[] = {
    {"100, 103, 200 with a length",
     "HTTP/1.1 100 Continue\r\n\r\n"
     "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
     {100, 103, 200, 0},
     "</a.css>; rel=preload",
     "hello",
     ""},
    {"103, 103, 204",
     "HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n"
     "HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n"
     "HTTP/1.1 204 No Content\r\n\r\n",
     {103, 103, 204, 0},
     "</b.js>",
     "",
     ""},
    {"102, 103, 200 chunked with a trailer",
     "HTTP/1.1 102 Processing\r\n\r\n"
     "HTTP/1.1 103 Early Hints\r\nLink: </c.css>\r\n\r\n"
     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
     {102, 103, 200, 0},
     "</c.css>",
     "abcde",
     "X-Sum: 5\r\n"},
};

static void expect_interim_case(const struct interim_case *ic, const char *how)
{
	int n = 0;

	while (ic->heads[n])
		n++;
	ck_assert_msg(rec.ended, "%s, %s: not ended (%d heads; error %d: %s)", ic->name, how,
	              rec.nheads, rec.err, rec.reason);
	ck_assert_msg(rec.nheads == n, "%s, %s: %d heads", ic->name, how, rec.nheads);
	for (int i = 0; i < n; i++)
		ck_assert_int_eq(rec.status[i], ic->heads[i]);
	ck_assert_str_eq(rec.link, ic->link);
	expect_got(ic->body);
	ck_assert_str_eq(rec.trailers, ic->trailers);
	expect_reusable();
}

/* Several 1xx heads and the final one in one read: each is delivered, then
 * the body (a 103 and the 200 in one segment once stalled after the 103). */
START_TEST(interim_heads_in_one_buffer)
{
	for (size_t i = 0; i < sizeof interim_cases / sizeof interim_cases[0]; i++) {
		const struct interim_case *ic = &interim_cases[i];

		conn_new(10000);
		request("GET", "/early", false, 0);
		feed_str(ic->bytes);
		expect_interim_case(ic, "one buffer");
	}
}
END_TEST

/* The same bytes split into two reads at every point, and one byte a read. */
START_TEST(interim_heads_split_everywhere)
{
	for (size_t i = 0; i < sizeof interim_cases / sizeof interim_cases[0]; i++) {
		const struct interim_case *ic = &interim_cases[i];
		size_t len = strlen(ic->bytes);
		char how[32];

		for (size_t cut = 1; cut < len; cut++) {
			conn_new(10000);
			request("GET", "/early", false, 0);
			feed(ic->bytes, cut);
			feed(ic->bytes + cut, len - cut);
			snprintf(how, sizeof(how), "cut at %zu", cut);
			expect_interim_case(ic, how);
		}
		conn_new(10000);
		request("GET", "/early", false, 0);
		for (size_t k = 0; k < len; k++)
			feed(ic->bytes + k, 1);
		expect_interim_case(ic, "a byte a read");
	}
}
END_TEST

/* A 1xx then EOF: the response is incomplete, an error, never an empty end. */
START_TEST(interim_head_then_eof)
{
	conn_new(10000);
	request("GET", "/early", false, 0);
	feed_str("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
	ck_assert_int_eq(rec.nheads, 1);
	feed_eof();
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_CLOSED);
	ck_assert(!rec.nothing);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
}
END_TEST

/* UPSTREAM_MAX_INTERIM 1xx heads are relayed; one more is a protocol error
 * for the stream (502), and the connection ends (the origin would go on). */
START_TEST(too_many_interim_heads)
{
	struct evbuffer *b = evbuffer_new();

	conn_new(10000);
	request("GET", "/early", false, 0);
	for (int i = 0; i < UPSTREAM_MAX_INTERIM; i++)
		evbuffer_add_printf(b, "HTTP/1.1 103 Early Hints\r\nLink: </%d>\r\n\r\n", i);
	evbuffer_add_printf(b, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	feed(evbuffer_pullup(b, -1), evbuffer_get_length(b));
	ck_assert_int_eq(rec.nheads, UPSTREAM_MAX_INTERIM + 1);
	expect_got("ok");
	expect_reusable();

	conn_new(10000);
	request("GET", "/early", false, 0);
	evbuffer_drain(b, evbuffer_get_length(b));
	for (int i = 0; i <= UPSTREAM_MAX_INTERIM; i++)
		evbuffer_add_printf(b, "HTTP/1.1 103 Early Hints\r\nLink: </%d>\r\n\r\n", i);
	feed(evbuffer_pullup(b, -1), evbuffer_get_length(b));
	ck_assert_int_eq(rec.nheads, UPSTREAM_MAX_INTERIM);
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_BAD_RESPONSE);
	ck_assert_msg(strstr(rec.reason, "interim"), "reason %s", rec.reason);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
	evbuffer_free(b);
}
END_TEST

/* 101 to a request that asked for no upgrade is a bad response. */
START_TEST(unexpected_101)
{
	conn_new(10000);
	request("GET", "/", false, 0);
	feed_str("HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n");
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_BAD_RESPONSE);
	ck_assert_int_eq(own.closed, 1);
}
END_TEST

/* An upgrade request: the 101 is reported, and on_head takes the transport
 * with the bytes after the head; the connection goes without a word. */
static void upgrade_request(bool take)
{
	struct upstream_field f[] = {{"Upgrade", 7, "websocket", 9},
	                             {"Connection", 10, "upgrade", 7}};
	struct upstream_request r = {.method = "GET",
	                             .scheme = "http",
	                             .authority = "origin.test",
	                             .path = "/ws",
	                             .fields = f,
	                             .nfields = 2,
	                             .upgrade = true};

	conn_new(10000);
	rec.take_101 = take;
	us = uc->ops->open_stream(uc, &stream_cbs, NULL);
	ck_assert_ptr_nonnull(us);
	upstream_stream_send_head(us, &r);
	ck_assert_msg(strstr(sent(), "\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"), "%s",
	              sent());
}

START_TEST(upgrade_101_taken)
{
	upgrade_request(true);
	feed_str("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n"
	         "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe bytes");
	ck_assert_int_eq(rec.nheads, 2);
	ck_assert_int_eq(rec.status[1], 101);
	ck_assert_ptr_eq(rec.taken, &ft.t);
	ck_assert(!rec.taken_eof);
	uc = NULL; /* gone with the switch */
	ck_assert(!rec.errored && !rec.ended);
	ck_assert_int_eq(own.closed + own.available, 0);
	ck_assert(!ft.closed);
	char rest[32] = "";
	evbuffer_copyout(ft.in, rest, sizeof(rest) - 1);
	ck_assert_str_eq(rest, "frame bytes");
	transport_close(&ft.t); /* the taker's now */
}
END_TEST

START_TEST(upgrade_101_after_eof)
{
	upgrade_request(true);
	const char *h = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
	evbuffer_add(ft.in, h, strlen(h));
	feed_eof(); /* the 101 and the origin's end in one read */
	ck_assert_ptr_eq(rec.taken, &ft.t);
	ck_assert(rec.taken_eof);
	uc = NULL;
	ck_assert(!ft.closed);
	transport_close(&ft.t);
}
END_TEST

START_TEST(upgrade_101_not_taken)
{
	upgrade_request(false);
	feed_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_BAD_RESPONSE);
	ck_assert_msg(strstr(rec.reason, "not taken"), "reason %s", rec.reason);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
}
END_TEST

/* ---- the response timer during uploads ---- */

static struct uploader {
	struct event *tick;
	int left;         /* ticks to go */
	size_t per_tick;  /* body bytes sent per tick (0: drain instead) */
	size_t drain;     /* output bytes the kernel takes per tick */
	bool end_at_zero; /* send_end after the last tick */
} up;

static void upload_tick(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = {0, 100 * 1000};
	static char bytes[4096];
	(void)fd;
	(void)what;
	(void)arg;

	if (!us || up.left == 0)
		return;
	up.left--;
	if (up.per_tick) {
		memset(bytes, 'u', sizeof(bytes));
		ck_assert_uint_ge(us->ops->send_space(us), up.per_tick);
		us->ops->send_body(us, bytes, up.per_tick);
	}
	if (up.drain)
		drain_out(up.drain);
	if (up.left == 0) {
		if (up.end_at_zero)
			us->ops->send_end(us, NULL);
		event_base_loopbreak(m.base);
		return;
	}
	evtimer_add(up.tick, &tv);
}

static void upload_start(int ticks, size_t per_tick, size_t drain, bool end_at_zero)
{
	struct timeval tv = {0, 100 * 1000};

	up.tick = evtimer_new(m.base, upload_tick, NULL);
	ck_assert_ptr_nonnull(up.tick);
	up.left = ticks;
	up.per_tick = per_tick;
	up.drain = drain;
	up.end_at_zero = end_at_zero;
	evtimer_add(up.tick, &tv);
}

static void upload_stop(void)
{
	event_free(up.tick);
	memset(&up, 0, sizeof(up));
}

/* A slow upload (a byte every 100 ms for 1.2 s) under a 300 ms response
 * timeout: each byte sent restarts the timer, so the response arrives. */
START_TEST(upload_progress_restarts_timer)
{
	conn_new(300);
	request("POST", "/slow", true, 12);
	upload_start(12, 1, 0, true);
	ck_assert(!loop_run(3000)); /* broken by the last tick (or by an error) */
	ck_assert_msg(!rec.errored, "upload cut: %d %s", rec.err, rec.reason);
	ck_assert_int_eq(up.left, 0);
	ck_assert_ptr_nonnull(strstr(sent(), "Content-Length: 12\r\n\r\n"));
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	expect_got("ok");
	expect_reusable();
	upload_stop();
}
END_TEST

/* The same with a chunked upload. */
START_TEST(chunked_upload_progress_restarts_timer)
{
	conn_new(300);
	request("POST", "/slow", true, -1);
	upload_start(12, 1, 0, true);
	ck_assert(!loop_run(3000));
	ck_assert_msg(!rec.errored, "upload cut: %d %s", rec.err, rec.reason);
	ck_assert_ptr_nonnull(strstr(sent(), "Transfer-Encoding: chunked\r\n\r\n1\r\n"));
	ck_assert_ptr_nonnull(strstr(sent(), "\r\n0\r\n\r\n"));
	feed_str("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
	ck_assert_int_eq(rec.status[0], 201);
	expect_reusable();
	upload_stop();
}
END_TEST

/* The origin taking the body slowly (the output draining) is progress too:
 * the output is full, nothing more is sent, the kernel takes a little every
 * 100 ms for 1.2 s. Once it stops taking, the timer fires. */
START_TEST(upload_drain_restarts_timer)
{
	static char big[TRANSPORT_BUF];

	conn_new(300);
	request("POST", "/slow", true, (int64_t)sizeof(big));
	drain_out(evbuffer_get_length(ft.out)); /* the head went out */
	us->ops->send_body(us, big, sizeof(big));
	ck_assert_uint_eq(us->ops->send_space(us), 0);
	upload_start(12, 0, 4096, false);
	ck_assert(!loop_run(3000));
	ck_assert_msg(!rec.errored, "upload cut: %d %s", rec.err, rec.reason);
	ck_assert_int_eq(up.left, 0);
	ck_assert_int_ge(rec.send_ready, 1);
	/* now nothing moves either way */
	loop_run(2000);
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_RESPONSE_TIMEOUT);
	ck_assert(rec.nothing);
	ck_assert_int_eq(own.closed, 1);
	upload_stop();
}
END_TEST

/* No progress at all after the request: 504 material, within the timeout. */
START_TEST(no_response_times_out)
{
	conn_new(200);
	request("GET", "/never", false, 0);
	ck_assert(!loop_run(2000));
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_RESPONSE_TIMEOUT);
	ck_assert(rec.nothing);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
}
END_TEST

/* A stalled upload (the client sends nothing more) times out as well. */
START_TEST(stalled_upload_times_out)
{
	conn_new(300);
	request("POST", "/stall", true, 100);
	upload_start(3, 1, 0, false); /* 3 bytes, then silence */
	ck_assert(!loop_run(3000));
	ck_assert(!rec.errored);
	loop_run(2000);
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_RESPONSE_TIMEOUT);
	upload_stop();
}
END_TEST

/* Response bytes arriving slowly keep the response alive. */
START_TEST(slow_response_body_restarts_timer)
{
	static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n";
	conn_new(300);
	request("GET", "/drip", false, 0);
	feed(head, sizeof(head) - 1);
	for (int i = 0; i < 6; i++) {
		ck_assert(loop_run(150));
		ck_assert(!rec.errored);
		feed("x", 1);
	}
	expect_got("xxxxxx");
	expect_reusable();
}
END_TEST

/* ---- the end of a body ---- */

START_TEST(length_body_ends_exactly)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	ck_assert_str_eq(sent(), "GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n");
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
	ck_assert(!rec.ended);
	feed_str("56789");
	expect_got("0123456789");
	ck_assert_int_eq(rec.final_body, HTTP1_BODY_LENGTH);
	expect_reusable();
	/* the connection takes the next request */
	evbuffer_drain(ft.out, evbuffer_get_length(ft.out));
	evbuffer_drain(rec.got, evbuffer_get_length(rec.got));
	rec.ended = false;
	own.available = 0;
	request("HEAD", "/b", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
	expect_got("");
	expect_reusable();
	ck_assert_uint_eq(uc->requests, 2);
}
END_TEST

/* The response timer is armed for the head, on each read and cleared at the
 * end: after the first request, the next ones add no timer event (the one
 * added first is still pending for an earlier time; see timeutil.h). */
START_TEST(keep_alive_requests_add_no_timer)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	expect_reusable();
	for (int i = 0; i < 3; i++) {
		evbuffer_drain(ft.out, evbuffer_get_length(ft.out));
		evbuffer_drain(rec.got, evbuffer_get_length(rec.got));
		rec.ended = false;
		own.available = 0;
		n_event_add = 0;
		request("GET", "/b", false, 0);
		feed_str("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
		feed_str("cd");
		expect_got("abcd");
		expect_reusable();
		ck_assert_int_eq(n_event_add, 0);
	}
}
END_TEST

/* Bytes after the end of a response on an idle connection kill it. */
START_TEST(extra_bytes_after_body)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
	ck_assert(rec.ended);
	expect_got("ok");
	ck_assert_int_eq(own.available, 0);
	ck_assert_int_eq(own.closed, 1);
}
END_TEST

START_TEST(chunked_body_with_trailers)
{
	conn_new(10000);
	request("GET", "/c", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
	ck_assert(!rec.ended);
	feed_str("6\r\n world\r\n0\r\nX-A: 1\r\n\r\n");
	expect_got("hello world");
	ck_assert_str_eq(rec.trailers, "X-A: 1\r\n");
	expect_reusable();
}
END_TEST

/* The body waits in the stream's buffer until the user takes it: the end
 * comes only after the last byte was consumed. */
START_TEST(end_waits_for_consumer)
{
	conn_new(10000);
	rec.manual = true;
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
	ck_assert_int_eq(rec.bodies, 1);
	ck_assert(!rec.ended);
	rec.manual = false;
	take_body();
	expect_got("abc");
	expect_reusable();
}
END_TEST

START_TEST(connection_close_is_not_reused)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz");
	ck_assert(rec.ended);
	expect_got("z");
	ck_assert_int_eq(own.available, 0);
	ck_assert_int_eq(own.closed, 1);
	ck_assert_int_eq(own.why, EVICT_COUNT);
	ck_assert(ft.closed);
}
END_TEST

START_TEST(eof_inside_length_body)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
	feed_eof();
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_CLOSED);
	ck_assert(!rec.nothing);
	ck_assert_int_eq(own.closed, 1);
}
END_TEST

START_TEST(eof_before_response)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_eof();
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_CLOSED);
	ck_assert(rec.nothing); /* a replayable request may go again */
}
END_TEST

/* A Content-Length beyond what a signed 64-bit length holds is malformed. */
START_TEST(huge_content_length_is_bad)
{
	conn_new(10000);
	request("GET", "/a", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n");
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_BAD_RESPONSE);
	ck_assert_int_eq(rec.nheads, 0);
}
END_TEST

/* ---- close-delimited bodies ---- */

START_TEST(close_delimited_body)
{
	conn_new(10000);
	request("GET", "/stream", false, 0);
	feed_str("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ");
	ck_assert_int_eq(rec.final_body, HTTP1_BODY_CLOSE);
	feed_str("second ");
	feed_str("third");
	ck_assert(!rec.ended);
	feed_eof();
	expect_got("first second third");
	ck_assert(rec.ended);
	ck_assert_str_eq(rec.trailers, "");
	ck_assert_int_eq(own.available, 0);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
}
END_TEST

/* HTTP/1.0 without a length: the same, with the EOF in the head's read. */
START_TEST(close_delimited_http10)
{
	conn_new(10000);
	request("GET", "/old", false, 0);
	evbuffer_add_printf(ft.in, "HTTP/1.0 200 OK\r\n\r\nold body");
	feed_eof();
	expect_got("old body");
	ck_assert(rec.ended);
	ck_assert_int_eq(own.closed, 1);
}
END_TEST

/* A close-delimited body that the user takes slowly: the end waits for it,
 * and the buffer stays bounded. */
START_TEST(close_delimited_bounded)
{
	static char chunk[16384];

	memset(chunk, 'b', sizeof(chunk));
	conn_new(10000);
	rec.manual = true;
	request("GET", "/big", false, 0);
	feed_str("HTTP/1.1 200 OK\r\n\r\n");
	for (int i = 0; i < 8; i++)
		feed(chunk, sizeof(chunk));
	feed_eof();
	ck_assert(!rec.ended);
	ck_assert_uint_le(evbuffer_get_length(us->ops->body(us)), TRANSPORT_BUF);
	rec.manual = false;
	while (!rec.ended && !rec.errored)
		take_body();
	ck_assert(rec.ended);
	ck_assert_uint_eq(evbuffer_get_length(rec.got), 8 * sizeof(chunk));
}
END_TEST

/* ---- forwarding to a parent proxy (the codec's mode) ---- */

/* To a parent that forwards: the absolute-form target and the parent's
 * credentials, encoded once at creation (the strings it was given may go). */
START_TEST(forward_absolute_form_with_credentials)
{
	char user[] = "carol", pass[] = "n0t-it";
	struct upstream_forward fwd = {"parent.test", 3128, user, pass};

	conn_new_mode(10000, &fwd);
	memset(user, 'x', strlen(user));
	memset(pass, 'x', strlen(pass));
	request("GET", "/x?y=1", false, 0);
	ck_assert_str_eq(sent(), "GET http://origin.test/x?y=1 HTTP/1.1\r\nHost: origin.test\r\n"
	                         "Proxy-Authorization: Basic Y2Fyb2w6bjB0LWl0\r\n\r\n");
	feed_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
	expect_got("ok");
	expect_reusable();
	/* every request on the connection carries them */
	evbuffer_drain(ft.out, evbuffer_get_length(ft.out));
	request("POST", "/u", true, 3);
	ck_assert_str_eq(sent(), "POST http://origin.test/u HTTP/1.1\r\nHost: origin.test\r\n"
	                         "Proxy-Authorization: Basic Y2Fyb2w6bjB0LWl0\r\n"
	                         "Content-Length: 3\r\n\r\n");
}
END_TEST

/* The parent's 407 is its refusal of muxd's credentials: an error naming
 * it (502 for the client), never relayed and never retried; the
 * connection goes. */
START_TEST(forward_407_is_an_error_naming_the_parent)
{
	struct upstream_forward fwd = {"::1", 3128, "carol", "n0t-it"};

	conn_new_mode(10000, &fwd);
	request("GET", "/x", false, 0);
	feed_str("HTTP/1.1 407 Proxy Authentication Required\r\n"
	         "Proxy-Authenticate: Basic realm=\"p\"\r\nContent-Length: 0\r\n\r\n");
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_CONNECT);
	ck_assert(!rec.nothing);
	ck_assert_str_eq(rec.reason, "proxy [::1]:3128: proxy authentication required "
	                             "(it refused the configured credentials)");
	ck_assert_int_eq(rec.nheads, 0);
	ck_assert_int_eq(own.closed, 1);
	ck_assert(ft.closed);
}
END_TEST

/* Without credentials: no Proxy-Authorization, and the 407 says so. */
START_TEST(forward_without_credentials)
{
	struct upstream_forward fwd = {"parent.test", 8080, NULL, NULL};

	conn_new_mode(10000, &fwd);
	request("GET", "/", false, 0);
	ck_assert_str_eq(sent(), "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n");
	feed_str("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
	ck_assert(rec.errored);
	ck_assert_int_eq(rec.err, ERR_CONNECT);
	ck_assert_str_eq(rec.reason, "proxy parent.test:8080: proxy authentication required");
}
END_TEST

/* To an origin: origin form, and a 407 is the origin's answer to relay. */
START_TEST(origin_mode_relays_407)
{
	conn_new(10000);
	request("GET", "/x", false, 0);
	ck_assert_str_eq(sent(), "GET /x HTTP/1.1\r\nHost: origin.test\r\n\r\n");
	feed_str("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
	ck_assert(rec.ended);
	ck_assert_int_eq(rec.nheads, 1);
	ck_assert_int_eq(rec.status[0], 407);
}
END_TEST

static Suite *h1_suite(void)
{
	Suite *s = suite_create("h1 upstream");
	TCase *heads = tcase_create("interim heads");
	TCase *timer = tcase_create("response timer");
	TCase *body = tcase_create("body");
	TCase *fwd = tcase_create("forwarding");

	tcase_add_checked_fixture(heads, setup, teardown);
	tcase_add_test(heads, interim_heads_in_one_buffer);
	tcase_add_test(heads, interim_heads_split_everywhere);
	tcase_add_test(heads, interim_head_then_eof);
	tcase_add_test(heads, too_many_interim_heads);
	tcase_add_test(heads, unexpected_101);
	tcase_add_test(heads, upgrade_101_taken);
	tcase_add_test(heads, upgrade_101_after_eof);
	tcase_add_test(heads, upgrade_101_not_taken);
	suite_add_tcase(s, heads);
	tcase_add_checked_fixture(timer, setup, teardown);
	tcase_set_timeout(timer, 20);
	tcase_add_test(timer, upload_progress_restarts_timer);
	tcase_add_test(timer, chunked_upload_progress_restarts_timer);
	tcase_add_test(timer, upload_drain_restarts_timer);
	tcase_add_test(timer, no_response_times_out);
	tcase_add_test(timer, stalled_upload_times_out);
	tcase_add_test(timer, slow_response_body_restarts_timer);
	tcase_add_test(timer, keep_alive_requests_add_no_timer);
	suite_add_tcase(s, timer);
	tcase_add_checked_fixture(body, setup, teardown);
	tcase_add_test(body, length_body_ends_exactly);
	tcase_add_test(body, extra_bytes_after_body);
	tcase_add_test(body, chunked_body_with_trailers);
	tcase_add_test(body, end_waits_for_consumer);
	tcase_add_test(body, connection_close_is_not_reused);
	tcase_add_test(body, eof_inside_length_body);
	tcase_add_test(body, eof_before_response);
	tcase_add_test(body, huge_content_length_is_bad);
	tcase_add_test(body, close_delimited_body);
	tcase_add_test(body, close_delimited_http10);
	tcase_add_test(body, close_delimited_bounded);
	tcase_add_checked_fixture(fwd, setup, teardown);
	tcase_add_test(fwd, forward_absolute_form_with_credentials);
	tcase_add_test(fwd, forward_407_is_an_error_naming_the_parent);
	tcase_add_test(fwd, forward_without_credentials);
	tcase_add_test(fwd, origin_mode_relays_407);
	suite_add_tcase(s, body);
	suite_add_tcase(s, fwd);
	return s;
}

int main(void)
{
	return run_suite(h1_suite()) ? 1 : 0;
}
