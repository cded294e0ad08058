/*
 * Unit tests for src/upstream/h2.c: an h2 upstream connection over a tcp
 * layer on one end of a socketpair; the other end is an nghttp2 server
 * session driven by the same event loop. The server answers by path:
 *   /hello   200, "hello world", trailer x-check: ok
 *   /big     200, content-length 1 MiB of a pattern
 *   /chunky  200, 100 KiB of the pattern without content-length
 *   /early   103, then 204
 *   /reset   RST_STREAM(INTERNAL_ERROR)
 *   /upload  200, body "BYTES SUM" of the request body it received
 *   /hold    nothing until the test calls srv_respond()
 *   /407     407 Proxy Authentication Required (a parent refusing muxd)
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <malloc.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "muxd.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

#define MB (1024 * 1024)
#define MAX_SRV_STREAMS 64

static unsigned char pattern_byte(size_t i)
{
	return (unsigned char)((i * 7 + i / 251) % 251);
}

/* ---- the server ---- */

struct srv_stream {
	int32_t id;
	char path[64];
	char method[16];
	char trailer_in[128]; /* request trailers seen, "name=value;" */
	size_t req_bytes;
	uint32_t req_sum;
	bool req_done;
	bool rst_recv;
	uint32_t rst_code;
	bool closed;
	const char *body; /* fixed body, or NULL: the pattern */
	size_t resp_len;
	size_t resp_sent;
	bool trailers;
	char upload_reply[64];
	char proxy_auth[64]; /* the proxy-authorization field received */
};

static struct server {
	struct bufferevent *bev;
	nghttp2_session *s;
	struct srv_stream st[MAX_SRV_STREAMS];
	int nreq_done;
	int goaway_after; /* GOAWAY(last_stream_id=1) when this many requests ended */
	bool got_settings_ack;
	int pings;
} srv;

static struct srv_stream *srv_stream(int32_t id)
{
	if (id <= 0 || id / 2 >= MAX_SRV_STREAMS)
		return NULL;
	return &srv.st[id / 2];
}

static void srv_flush(void)
{
	const uint8_t *data;
	ssize_t n;

	while ((n = nghttp2_session_mem_send(srv.s, &data)) > 0)
		bufferevent_write(srv.bev, data, (size_t)n);
	ck_assert_int_ge(n, 0);
}

static ssize_t srv_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct srv_stream *st = source->ptr;
	size_t n = st->resp_len - st->resp_sent;

	(void)ud;
	if (n > length)
		n = length;
	for (size_t i = 0; i < n; i++)
		buf[i] = st->body ? (uint8_t)st->body[st->resp_sent + i]
		                  : pattern_byte(st->resp_sent + i);
	st->resp_sent += n;
	if (st->resp_sent == st->resp_len) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		if (st->trailers) {
			nghttp2_nv tr[] = {{(uint8_t *)"x-check", (uint8_t *)"ok", 7, 2, 0}};
			*data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
			ck_assert_int_eq(nghttp2_submit_trailer(session, stream_id, tr, 1), 0);
		}
	}
	return (ssize_t)n;
}

#define SNV(n, v)                                                                                  \
	{                                                                                          \
		(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE         \
	}

static void srv_respond(struct srv_stream *st, const char *path)
{
	nghttp2_data_provider prd = {.source.ptr = st, .read_callback = srv_read};
	char len[24];

	if (strcmp(path, "/hello") == 0) {
		nghttp2_nv nv[] = {SNV(":status", "200"), SNV("content-type", "text/plain")};
		st->body = "hello world";
		st->resp_len = 11;
		st->trailers = true;
		nghttp2_submit_response(srv.s, st->id, nv, 2, &prd);
	} else if (strcmp(path, "/big") == 0) {
		nghttp2_nv nv[] = {SNV(":status", "200"), SNV("content-length", "1048576")};
		st->resp_len = MB;
		nghttp2_submit_response(srv.s, st->id, nv, 2,
		                        strcmp(st->method, "HEAD") == 0 ? NULL : &prd);
	} else if (strcmp(path, "/chunky") == 0) {
		nghttp2_nv nv[] = {SNV(":status", "200")};
		st->resp_len = 100 * 1024;
		nghttp2_submit_response(srv.s, st->id, nv, 1, &prd);
	} else if (strcmp(path, "/early") == 0) {
		nghttp2_nv early[] = {SNV(":status", "103"), SNV("link", "</a.css>; rel=preload")};
		nghttp2_nv nv[] = {SNV(":status", "204")};
		nghttp2_submit_headers(srv.s, NGHTTP2_FLAG_NONE, st->id, NULL, early, 2, NULL);
		nghttp2_submit_response(srv.s, st->id, nv, 1, NULL);
	} else if (strcmp(path, "/407") == 0) {
		nghttp2_nv nv[] = {SNV(":status", "407"),
		                   SNV("proxy-authenticate", "Basic realm=p")};
		nghttp2_submit_response(srv.s, st->id, nv, 2, NULL);
	} else if (strcmp(path, "/reset") == 0) {
		nghttp2_submit_rst_stream(srv.s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
	} else if (strcmp(path, "/upload") == 0) {
		snprintf(st->upload_reply, sizeof(st->upload_reply), "%zu %u", st->req_bytes,
		         st->req_sum);
		snprintf(len, sizeof(len), "%zu", strlen(st->upload_reply));
		st->body = st->upload_reply;
		st->resp_len = strlen(st->upload_reply);
		{
			nghttp2_nv nv[] = {SNV(":status", "200"), SNV("content-length", len)};
			nghttp2_submit_response(srv.s, st->id, nv, 2, &prd);
		}
	}
}

static int srv_on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct srv_stream *st = srv_stream(f->hd.stream_id);

	(void)s;
	(void)ud;
	if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST && st)
		st->id = f->hd.stream_id;
	return 0;
}

static int srv_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
	struct srv_stream *st = srv_stream(f->hd.stream_id);

	(void)s;
	(void)flags;
	(void)ud;
	if (!st)
		return 0;
	if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
		if (nlen == 5 && memcmp(name, ":path", 5) == 0)
			snprintf(st->path, sizeof(st->path), "%.*s", (int)vlen, value);
		if (nlen == 7 && memcmp(name, ":method", 7) == 0)
			snprintf(st->method, sizeof(st->method), "%.*s", (int)vlen, value);
		if (nlen == 19 && memcmp(name, "proxy-authorization", 19) == 0)
			snprintf(st->proxy_auth, sizeof(st->proxy_auth), "%.*s", (int)vlen, value);
		/* names must arrive lower-cased, connection fields never */
		for (size_t i = 0; i < nlen; i++)
			ck_assert(!(name[i] >= 'A' && name[i] <= 'Z'));
		ck_assert(!(nlen == 4 && memcmp(name, "host", 4) == 0));
		ck_assert(!(nlen == 10 && memcmp(name, "connection", 10) == 0));
		if (nlen == 2 && memcmp(name, "te", 2) == 0)
			ck_assert(vlen == 8 && memcmp(value, "trailers", 8) == 0);
	} else {
		size_t used = strlen(st->trailer_in);
		snprintf(st->trailer_in + used, sizeof(st->trailer_in) - used, "%.*s=%.*s;",
		         (int)nlen, name, (int)vlen, value);
	}
	return 0;
}

static int srv_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                       size_t len, void *ud)
{
	struct srv_stream *st = srv_stream(id);

	(void)s;
	(void)flags;
	(void)ud;
	for (size_t i = 0; i < len; i++) {
		ck_assert_uint_eq(data[i], pattern_byte(st->req_bytes + i));
		st->req_sum = st->req_sum * 31 + data[i];
	}
	st->req_bytes += len;
	return 0;
}

static int srv_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct srv_stream *st = srv_stream(f->hd.stream_id);

	(void)s;
	(void)ud;
	if (f->hd.type == NGHTTP2_SETTINGS && (f->hd.flags & NGHTTP2_FLAG_ACK))
		srv.got_settings_ack = true;
	if (f->hd.type == NGHTTP2_PING && !(f->hd.flags & NGHTTP2_FLAG_ACK))
		srv.pings++;
	if (f->hd.type == NGHTTP2_RST_STREAM && st) {
		st->rst_recv = true;
		st->rst_code = f->rst_stream.error_code;
	}
	if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
	    (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && st) {
		st->req_done = true;
		srv.nreq_done++;
		if (srv.goaway_after && srv.nreq_done == srv.goaway_after) {
			nghttp2_submit_goaway(srv.s, NGHTTP2_FLAG_NONE, 1, NGHTTP2_NO_ERROR, NULL,
			                      0);
			srv_respond(srv_stream(1), "/hello");
		} else if (strcmp(st->path, "/hold") != 0) {
			srv_respond(st, st->path);
		}
	}
	return 0;
}

static int srv_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	struct srv_stream *st = srv_stream(id);

	(void)s;
	(void)code;
	(void)ud;
	if (st)
		st->closed = true;
	return 0;
}

static void srv_readcb(struct bufferevent *bev, void *arg)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len = evbuffer_get_length(in);
	ssize_t n;

	(void)arg;
	n = nghttp2_session_mem_recv(srv.s, evbuffer_pullup(in, -1), len);
	ck_assert_int_eq(n, (ssize_t)len);
	evbuffer_drain(in, len);
	srv_flush();
}

static void srv_start(struct event_base *base, int fd, uint32_t max_streams, bool ping_ack)
{
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams}};

	memset(&srv, 0, sizeof(srv));
	nghttp2_session_callbacks_new(&cb);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, srv_on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, srv_on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, srv_on_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_on_frame);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, srv_on_close);
	nghttp2_option_new(&opt);
	nghttp2_option_set_no_auto_ping_ack(opt, !ping_ack);
	ck_assert_int_eq(nghttp2_session_server_new2(&srv.s, cb, NULL, opt), 0);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	nghttp2_submit_settings(srv.s, NGHTTP2_FLAG_NONE, iv, 1);
	srv.bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(srv.bev, srv_readcb, NULL, NULL, NULL);
	bufferevent_enable(srv.bev, EV_READ | EV_WRITE);
	srv_flush();
}

static void srv_stop(void)
{
	if (srv.bev)
		bufferevent_free(srv.bev);
	if (srv.s)
		nghttp2_session_del(srv.s);
	srv.bev = NULL;
	srv.s = NULL;
}

/* ---- the client side ---- */

static struct muxd mx;
static struct upstream_env env;                  /* from mx */
static const struct upstream_forward *start_fwd; /* start(): forwarding to a parent */
static struct event *tick;
static struct transport *tr;
static struct upstream_conn *uc;
static size_t max_out; /* largest transport output seen */

static struct owner {
	int available;
	int closed;
	enum evict_reason why;
} own;

static void own_available(void *owner, struct upstream_conn *c)
{
	(void)owner;
	ck_assert_ptr_eq(c, uc);
	own.available++;
}

static void own_closed(void *owner, struct upstream_conn *c, enum evict_reason why)
{
	(void)owner;
	ck_assert_ptr_eq(c, uc);
	own.closed++;
	own.why = why;
	uc = NULL; /* it frees itself */
}

static const struct upstream_owner_cbs owner_cbs = {own_available, own_closed, NULL};

struct cstream {
	struct upstream_stream *s;
	int status;
	int interim;
	enum http1_body framing;
	uint64_t clen;
	bool has_ctype;
	struct evbuffer *got;
	char trailers[256];
	bool ended;
	bool errored;
	enum muxd_err err;
	char reason[128];
	bool nothing;
	bool manual; /* the test takes the body itself */
	size_t max_buffered;
	size_t upload_left; /* request body still to send */
	size_t upload_sent;
	const char *upload_trailers;
};

static void c_on_head(void *ctx, const struct http1_msg *h)
{
	struct cstream *cs = ctx;

	ck_assert_int_eq(h->version_minor, 1);
	ck_assert_str_eq(h->reason, http1_reason(h->status));
	if (h->status < 200) {
		cs->interim++;
		ck_assert_int_eq(h->body, HTTP1_BODY_NONE);
		ck_assert_ptr_nonnull(http1_find(h, "link"));
		return;
	}
	cs->status = h->status;
	cs->framing = h->body;
	cs->clen = h->content_length;
	cs->has_ctype = http1_find(h, "content-type") != NULL;
}

static void take_body(struct cstream *cs)
{
	struct evbuffer *b = cs->s->ops->body(cs->s);
	evbuffer_remove_buffer(b, cs->got, evbuffer_get_length(b));
	cs->s->ops->consumed(cs->s);
}

static void c_on_body(void *ctx)
{
	struct cstream *cs = ctx;
	size_t n = evbuffer_get_length(cs->s->ops->body(cs->s));

	if (n > cs->max_buffered)
		cs->max_buffered = n;
	if (!cs->manual)
		take_body(cs);
}

static void c_on_end(void *ctx, const char *trailers)
{
	struct cstream *cs = ctx;

	ck_assert(!cs->ended && !cs->errored);
	cs->ended = true;
	snprintf(cs->trailers, sizeof(cs->trailers), "%s", trailers);
}

static void c_on_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct cstream *cs = ctx;

	ck_assert(!cs->ended && !cs->errored);
	cs->errored = true;
	cs->err = err;
	cs->nothing = nothing;
	snprintf(cs->reason, sizeof(cs->reason), "%s", reason);
}

static void pump_upload(struct cstream *cs)
{
	static unsigned char chunk[20000];
	size_t space;

	while (cs->upload_left > 0 && (space = cs->s->ops->send_space(cs->s)) > 0) {
		size_t n = cs->upload_left < sizeof(chunk) ? cs->upload_left : sizeof(chunk);
		if (n > space)
			n = space;
		for (size_t i = 0; i < n; i++)
			chunk[i] = pattern_byte(cs->upload_sent + i);
		cs->s->ops->send_body(cs->s, chunk, n);
		cs->upload_sent += n;
		cs->upload_left -= n;
		if (cs->upload_left == 0)
			cs->s->ops->send_end(cs->s, cs->upload_trailers ? cs->upload_trailers : "");
	}
}

static void c_on_send_ready(void *ctx)
{
	pump_upload(ctx);
}

static const struct upstream_stream_cbs ccbs = {c_on_head, c_on_body, c_on_end, c_on_error,
                                                c_on_send_ready};

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (tr && uc) {
		size_t n = evbuffer_get_length(transport_output(tr));
		if (n > max_out)
			max_out = n;
	}
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

#define RUN_UNTIL(cond, ms)                                                                        \
	do {                                                                                       \
		double t0_ = now_ms();                                                             \
		while (!(cond) && now_ms() - t0_ < (ms))                                           \
			event_base_loop(mx.base, EVLOOP_ONCE);                                     \
	} while (0)

static void noop_read(void *ctx)
{
	(void)ctx;
}
static void noop_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *r)
{
	(void)ctx;
	(void)ev;
	(void)err;
	(void)r;
}

/* A connection to a fresh server, with the SETTINGS exchange done. */
static void start(uint32_t max_streams, bool ping_ack, uint64_t response_timeout_ms)
{
	static const struct transport_cbs tcbs = {noop_read, NULL, noop_event};
	struct timeval tv = {0, 5000};
	int sv[2];

	memset(&own, 0, sizeof(own));
	max_out = 0;
	mx.base = event_base_new();
	mx.cfg = config_defaults();
	ck_assert_ptr_nonnull(mx.cfg);
	mx.cfg->response_timeout_ms = response_timeout_ms;
	env = (struct upstream_env){{.base = mx.base}, &mx.window_granted, NULL};
	struct upstream_params prm;
	upstream_params_init(&prm, mx.cfg);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	evutil_make_socket_nonblocking(sv[0]);
	evutil_make_socket_nonblocking(sv[1]);
	tr = tcp_accepted(&env.transport, sv[0], &tcbs, NULL);
	ck_assert_ptr_nonnull(tr);
	srv_start(mx.base, sv[1], max_streams, ping_ack);
	uc = h2_conn_new(&env, &prm, start_fwd, tr, &owner_cbs, NULL);
	ck_assert_ptr_nonnull(uc);
	ck_assert_int_eq(uc->proto, PROTO_H2);
	ck_assert(uc->warming); /* no streams before the server's SETTINGS */
	ck_assert_uint_eq(uc->ops->free_slots(uc), 0);
	tick = event_new(mx.base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(tick, &tv);
	RUN_UNTIL(srv.got_settings_ack, 2000);
	ck_assert(srv.got_settings_ack);
	RUN_UNTIL(!uc->warming && own.available == 1, 2000);
	ck_assert(!uc->warming); /* the server's SETTINGS arrived: streams may open */
	ck_assert_int_eq(own.available, 1);
	own.available = 0;
}

static void finish(void)
{
	if (uc)
		uc->ops->close(uc);
	uc = NULL;
	tr = NULL;
	start_fwd = NULL;
	srv_stop();
	event_free(tick);
	config_unref(mx.cfg);
	event_base_free(mx.base);
}

static struct cstream *cs_new(void)
{
	struct cstream *cs = calloc(1, sizeof(*cs));
	cs->got = evbuffer_new();
	return cs;
}

static void cs_free(struct cstream *cs)
{
	evbuffer_free(cs->got);
	free(cs);
}

/* Open a stream and send a GET (or a POST with body_len bytes). */
static struct cstream *request(const char *method, const char *path, int64_t body_len)
{
	struct cstream *cs = cs_new();
	struct upstream_field fields[] = {
	    {"Accept", 6, "*/*", 3},  {"Connection", 10, "keep-alive", 10},
	    {"TE", 2, "trailers", 8}, {"Te", 2, "gzip", 4},
	    {"X-Test", 6, "yes", 3},
	};
	struct upstream_request r = {
	    .method = method,
	    .scheme = "https",
	    .authority = "example.test",
	    .path = path,
	    .fields = fields,
	    .nfields = sizeof(fields) / sizeof(fields[0]),
	    .has_body = body_len != 0,
	    .content_length = body_len,
	};

	cs->s = uc->ops->open_stream(uc, &ccbs, cs);
	ck_assert_ptr_nonnull(cs->s);
	upstream_stream_send_head(cs->s, &r);
	if (body_len != 0) {
		cs->upload_left = body_len > 0 ? (size_t)body_len : MB;
		pump_upload(cs);
	} else {
		cs->s->ops->send_end(cs->s, "");
	}
	return cs;
}

static bool body_is_pattern(struct evbuffer *b, size_t len)
{
	const unsigned char *p = evbuffer_pullup(b, -1);

	if (evbuffer_get_length(b) != len)
		return false;
	for (size_t i = 0; i < len; i++)
		if (p[i] != pattern_byte(i))
			return false;
	return true;
}

/* ---- tests ---- */

START_TEST(get_with_trailers)
{
	struct cstream *cs;

	start(100, true, 60000);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 100);
	ck_assert(uc->ops->is_idle(uc));
	cs = request("GET", "/hello", 0);
	ck_assert(!uc->ops->is_idle(uc));
	ck_assert_uint_eq(uc->ops->free_slots(uc), 99);
	ck_assert_uint_eq(uc->requests, 1);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->ended);
	ck_assert_int_eq(cs->status, 200);
	ck_assert(cs->has_ctype);
	ck_assert_int_eq(cs->framing, HTTP1_BODY_UNKNOWN); /* no content-length */
	ck_assert_int_eq(evbuffer_get_length(cs->got), 11);
	ck_assert(memcmp(evbuffer_pullup(cs->got, -1), "hello world", 11) == 0);
	ck_assert_str_eq(cs->trailers, "x-check: ok\r\n");
	ck_assert_str_eq(srv.st[0].method, "GET");
	ck_assert_str_eq(srv.st[0].path, "/hello");
	RUN_UNTIL(own.available > 0, 1000);
	ck_assert_int_eq(own.available, 1);
	ck_assert(uc->ops->is_idle(uc));
	ck_assert_uint_eq(uc->ops->free_slots(uc), 100);
	ck_assert_int_eq(own.closed, 0);
	cs_free(cs);
	finish();
}
END_TEST

START_TEST(interim_and_no_body)
{
	struct cstream *cs;

	start(100, true, 60000);
	cs = request("GET", "/early", 0);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->ended);
	ck_assert_int_eq(cs->interim, 1);
	ck_assert_int_eq(cs->status, 204);
	ck_assert_int_eq(cs->framing, HTTP1_BODY_NONE);
	ck_assert_str_eq(cs->trailers, "");
	cs_free(cs);
	/* HEAD: no body whatever content-length says */
	cs = request("HEAD", "/big", 0);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->ended);
	ck_assert_int_eq(cs->status, 200);
	ck_assert_int_eq(cs->framing, HTTP1_BODY_NONE);
	cs_free(cs);
	finish();
}
END_TEST

/* To a parent that forwards (the codec's mode): every request carries the
 * parent's credentials, and its 407 ends the stream with an error naming
 * it; the connection stays for the other streams. */
START_TEST(forward_mode_407)
{
	struct upstream_forward fwd = {"parent.test", 3128, "carol", "n0t-it"};
	struct cstream *cs;

	start_fwd = &fwd;
	start(100, true, 60000);
	cs = request("GET", "/407", 0);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->errored);
	ck_assert_int_eq(cs->err, ERR_CONNECT);
	ck_assert(!cs->nothing);
	ck_assert_str_eq(cs->reason, "proxy parent.test:3128: proxy authentication required "
	                             "(it refused the configured credentials)");
	ck_assert_int_eq(cs->status, 0); /* never relayed */
	ck_assert_str_eq(srv.st[0].proxy_auth, "Basic Y2Fyb2w6bjB0LWl0");
	cs_free(cs);
	cs = request("GET", "/hello", 0);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->ended);
	ck_assert_str_eq(srv.st[1].proxy_auth, "Basic Y2Fyb2w6bjB0LWl0");
	ck_assert_int_eq(own.closed, 0);
	cs_free(cs);
	finish();
}
END_TEST

/* To an origin: no credentials, and its 407 is an answer like any other. */
START_TEST(origin_mode_relays_407)
{
	struct cstream *cs;

	start(100, true, 60000);
	cs = request("GET", "/407", 0);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	ck_assert(cs->ended);
	ck_assert_int_eq(cs->status, 407);
	ck_assert_str_eq(srv.st[0].proxy_auth, "");
	cs_free(cs);
	finish();
}
END_TEST

START_TEST(concurrent_streams)
{
	struct cstream *cs[20];
	bool done;

	start(100, true, 60000);
	for (int i = 0; i < 20; i++)
		cs[i] = request("GET", i % 2 ? "/big" : "/chunky", 0);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 80);
	ck_assert_uint_eq(uc->requests, 20);
	do {
		event_base_loop(mx.base, EVLOOP_ONCE);
		done = true;
		for (int i = 0; i < 20; i++)
			done = done && (cs[i]->ended || cs[i]->errored);
	} while (!done);
	for (int i = 0; i < 20; i++) {
		ck_assert(cs[i]->ended);
		ck_assert(body_is_pattern(cs[i]->got, i % 2 ? MB : 100 * 1024));
		ck_assert_int_eq(cs[i]->framing, i % 2 ? HTTP1_BODY_LENGTH : HTTP1_BODY_UNKNOWN);
		if (i % 2)
			ck_assert_uint_eq(cs[i]->clen, MB);
		cs_free(cs[i]);
	}
	RUN_UNTIL(uc->ops->is_idle(uc) && own.available > 0, 1000);
	ck_assert(uc->ops->is_idle(uc));
	ck_assert_uint_eq(uc->ops->free_slots(uc), 100);
	finish();
}
END_TEST

START_TEST(max_concurrent_streams)
{
	struct cstream *a, *b;
	struct upstream_stream *none;

	start(2, true, 60000);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 2);
	a = request("GET", "/hold", 0);
	b = request("GET", "/hello", 0);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 0);
	none = uc->ops->open_stream(uc, &ccbs, NULL);
	ck_assert_ptr_null(none);
	RUN_UNTIL(b->ended, 2000);
	ck_assert(b->ended);
	RUN_UNTIL(own.available > 0, 1000);
	ck_assert_int_eq(own.available, 1);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 1);
	ck_assert(!uc->ops->is_idle(uc));
	srv_respond(&srv.st[0], "/hello");
	srv_flush();
	RUN_UNTIL(a->ended, 2000);
	ck_assert(a->ended);
	RUN_UNTIL(uc->ops->free_slots(uc) == 2, 1000);
	ck_assert(uc->ops->is_idle(uc));
	cs_free(a);
	cs_free(b);
	finish();
}
END_TEST

START_TEST(cancel_one_stream)
{
	struct cstream *a, *b, *c;
	int32_t a_id;

	start(100, true, 60000);
	a = request("GET", "/big", 0);
	a->manual = true;
	b = request("GET", "/hold", 0);
	RUN_UNTIL(a->max_buffered > 0, 2000);
	ck_assert_int_eq(a->status, 200);
	a_id = 1;
	a->s->ops->cancel(a->s);
	RUN_UNTIL(srv.st[a_id / 2].rst_recv, 2000);
	ck_assert(srv.st[a_id / 2].rst_recv);
	ck_assert_uint_eq(srv.st[a_id / 2].rst_code, NGHTTP2_CANCEL);
	ck_assert(!a->ended && !a->errored); /* no callback after cancel */
	srv_respond(&srv.st[1], "/hello");
	srv_flush();
	RUN_UNTIL(b->ended || b->errored, 2000);
	ck_assert(b->ended);
	ck_assert_int_eq(own.closed, 0);
	/* the connection still carries new streams, its window intact */
	c = request("GET", "/big", 0);
	RUN_UNTIL(c->ended || c->errored, 5000);
	ck_assert(c->ended);
	ck_assert(body_is_pattern(c->got, MB));
	ck_assert(!a->ended && !a->errored);
	cs_free(a);
	cs_free(b);
	cs_free(c);
	finish();
}
END_TEST

START_TEST(server_reset)
{
	struct cstream *a, *b;

	start(100, true, 60000);
	a = request("GET", "/reset", 0);
	b = request("GET", "/hello", 0);
	RUN_UNTIL((a->ended || a->errored) && (b->ended || b->errored), 2000);
	ck_assert(a->errored);
	ck_assert_int_eq(a->err, ERR_CLOSED);
	ck_assert(!a->nothing); /* the origin's answer: never retried */
	ck_assert_ptr_nonnull(strstr(a->reason, "stream reset by origin"));
	ck_assert_ptr_nonnull(strstr(a->reason, "INTERNAL_ERROR"));
	ck_assert(b->ended);
	ck_assert_int_eq(b->status, 200);
	ck_assert_int_eq(own.closed, 0);
	RUN_UNTIL(uc->ops->is_idle(uc), 1000);
	ck_assert(uc->ops->is_idle(uc));
	cs_free(a);
	cs_free(b);
	finish();
}
END_TEST

START_TEST(goaway)
{
	struct cstream *cs[3];

	start(100, true, 60000);
	srv.goaway_after = 3;
	for (int i = 0; i < 3; i++)
		cs[i] = request("GET", "/hold", 0);
	RUN_UNTIL(own.closed, 2000);
	ck_assert(cs[0]->ended);
	ck_assert_int_eq(cs[0]->status, 200);
	ck_assert_int_eq(evbuffer_get_length(cs[0]->got), 11);
	for (int i = 1; i < 3; i++) {
		ck_assert(cs[i]->errored);
		ck_assert_int_eq(cs[i]->err, ERR_UNPROCESSED);
		ck_assert(cs[i]->nothing);
	}
	ck_assert_int_eq(own.closed, 1);
	ck_assert_int_eq(own.why, EVICT_GOAWAY);
	ck_assert_ptr_null(uc);
	for (int i = 0; i < 3; i++)
		cs_free(cs[i]);
	finish();
}
END_TEST

START_TEST(goaway_stops_new_streams)
{
	struct cstream *a;

	start(100, true, 60000);
	a = request("GET", "/hold", 0);
	RUN_UNTIL(srv.nreq_done == 1, 2000);
	nghttp2_submit_goaway(srv.s, NGHTTP2_FLAG_NONE, 1, NGHTTP2_NO_ERROR, NULL, 0);
	srv_flush();
	RUN_UNTIL(!uc->reusable, 2000);
	ck_assert(!uc->reusable);
	ck_assert_uint_eq(uc->ops->free_slots(uc), 0);
	ck_assert_ptr_null(uc->ops->open_stream(uc, &ccbs, NULL));
	srv_respond(&srv.st[0], "/hello");
	srv_flush();
	RUN_UNTIL(own.closed, 2000);
	ck_assert(a->ended);
	ck_assert_int_eq(own.why, EVICT_GOAWAY);
	ck_assert_int_eq(own.available, 0);
	cs_free(a);
	finish();
}
END_TEST

START_TEST(upload_1mb)
{
	struct cstream *cs;
	char expect[64];
	uint32_t sum = 0;

	start(100, true, 60000);
	cs = request("POST", "/upload", MB);
	RUN_UNTIL(cs->ended || cs->errored, 20000); /* a hang guard: generous for loaded machines */
	ck_assert(cs->ended);
	ck_assert_uint_eq(srv.st[0].req_bytes, MB);
	for (size_t i = 0; i < MB; i++)
		sum = sum * 31 + pattern_byte(i);
	snprintf(expect, sizeof(expect), "%d %u", MB, sum);
	ck_assert_int_eq(evbuffer_get_length(cs->got), strlen(expect));
	ck_assert(memcmp(evbuffer_pullup(cs->got, -1), expect, strlen(expect)) == 0);
	/* buffering stayed bounded: one TRANSPORT_BUF plus at most a frame */
	ck_assert_uint_le(max_out, TRANSPORT_BUF + 16384 + 9);
	cs_free(cs);
	finish();
}
END_TEST

START_TEST(upload_unknown_length_with_trailers)
{
	struct cstream *cs = cs_new();
	struct upstream_request r = {
	    .method = "POST",
	    .scheme = "https",
	    .authority = "example.test",
	    .path = "/upload",
	    .has_body = true,
	    .content_length = -1,
	};

	start(100, true, 60000);
	cs->upload_left = 100000;
	cs->upload_trailers = "X-Sum: 42\r\nConnection: x\r\n";
	cs->s = uc->ops->open_stream(uc, &ccbs, cs);
	upstream_stream_send_head(cs->s, &r);
	pump_upload(cs);
	RUN_UNTIL(cs->ended || cs->errored, 5000);
	ck_assert(cs->ended);
	ck_assert_uint_eq(srv.st[0].req_bytes, 100000);
	ck_assert_ptr_nonnull(strstr(srv.st[0].trailer_in, "x-sum=42;"));
	cs_free(cs);
	finish();
}
END_TEST

START_TEST(slow_consumer)
{
	struct cstream *cs, *other;

	start(100, true, 60000);
	cs = request("GET", "/big", 0);
	cs->manual = true;
	RUN_UNTIL(false, 300);
	ck_assert(!cs->ended);
	ck_assert_uint_gt(cs->max_buffered, 0);
	ck_assert_uint_le(cs->max_buffered, 65535);
	ck_assert_uint_le(srv.st[0].resp_sent, 65535 + 16384);
	/* the stalled stream does not stall the connection */
	other = request("GET", "/big", 0);
	RUN_UNTIL(other->ended || other->errored, 5000);
	ck_assert(other->ended);
	ck_assert(body_is_pattern(other->got, MB));
	ck_assert_uint_le(cs->max_buffered, 65535);
	/* consuming reopens the window */
	cs->manual = false;
	take_body(cs);
	RUN_UNTIL(cs->ended || cs->errored, 5000);
	ck_assert(cs->ended);
	ck_assert(body_is_pattern(cs->got, MB));
	ck_assert_uint_le(cs->max_buffered, 65535);
	cs_free(cs);
	cs_free(other);
	finish();
}
END_TEST

START_TEST(response_timeout)
{
	struct cstream *a, *b;

	start(100, true, 200);
	a = request("GET", "/hold", 0);
	b = request("GET", "/hello", 0);
	RUN_UNTIL(a->errored || a->ended, 2000);
	ck_assert(a->errored);
	ck_assert_int_eq(a->err, ERR_RESPONSE_TIMEOUT);
	ck_assert(a->nothing);
	ck_assert(b->ended);
	RUN_UNTIL(srv.st[0].rst_recv, 1000);
	ck_assert_uint_eq(srv.st[0].rst_code, NGHTTP2_CANCEL);
	ck_assert_int_eq(own.closed, 0);
	cs_free(a);
	cs_free(b);
	finish();
}
END_TEST

START_TEST(peer_closes_idle)
{
	start(100, true, 60000);
	srv_stop();
	RUN_UNTIL(own.closed, 2000);
	ck_assert_int_eq(own.closed, 1);
	ck_assert_int_eq(own.why, EVICT_DEAD);
	finish();
}
END_TEST

START_TEST(peer_closes_busy)
{
	struct cstream *a;

	start(100, true, 60000);
	a = request("GET", "/hold", 0);
	RUN_UNTIL(srv.nreq_done == 1, 2000);
	srv_stop();
	RUN_UNTIL(own.closed && a->errored, 2000);
	ck_assert(a->errored);
	ck_assert_int_eq(a->err, ERR_CLOSED);
	ck_assert(a->nothing);
	ck_assert_int_eq(own.why, EVICT_COUNT);
	cs_free(a);
	finish();
}
END_TEST

START_TEST(ping_after_idle)
{
	struct cstream *a;

	start(100, false, 60000); /* the server never answers PING */
	RUN_UNTIL(false, 2100);
	ck_assert_int_eq(srv.pings, 0);
	a = request("GET", "/hold", 0);
	RUN_UNTIL(srv.pings > 0, 1000);
	ck_assert_int_eq(srv.pings, 1);
	RUN_UNTIL(a->errored, 4000);
	ck_assert(a->errored);
	ck_assert_int_eq(a->err, ERR_CLOSED);
	ck_assert_str_eq(a->reason, "origin stopped answering PING");
	ck_assert(a->nothing);
	ck_assert_int_eq(own.closed, 1);
	ck_assert_int_eq(own.why, EVICT_DEAD);
	cs_free(a);
	finish();
}
END_TEST

START_TEST(ping_answered)
{
	struct cstream *a;

	start(100, true, 60000);
	RUN_UNTIL(false, 2100);
	a = request("GET", "/hello", 0);
	RUN_UNTIL(a->ended, 1000);
	ck_assert_int_eq(srv.pings, 1);
	RUN_UNTIL(false, 3200);
	ck_assert_int_eq(own.closed, 0);
	ck_assert(a->ended);
	cs_free(a);
	finish();
}
END_TEST

/* calloc is wrapped in this binary (the Makefile's -Wl,--wrap=calloc for
 * test_h2): the largest block zeroed since the last reset. */
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
static size_t calloc_max;

void *__wrap_calloc(size_t n, size_t size)
{
	if (size != 0 && n <= SIZE_MAX / size && n * size > calloc_max)
		calloc_max = n * size;
	return __real_calloc(n, size);
}

/* A stream zeroes no 4 KiB head field array when it starts (calloc of the
 * whole stream was its largest cost), and nothing relies on it being zero:
 * with malloc's memory poisoned (M_PERTURB) the response still arrives
 * whole, head, body and trailers. */
START_TEST(stream_start_zeroes_no_head)
{
	struct cstream *cs;

	start(100, true, 60000);
	mallopt(M_PERTURB, 0x5a);
	calloc_max = 0;
	cs = request("GET", "/hello", 0);
	ck_assert_uint_lt(calloc_max, 2048);
	RUN_UNTIL(cs->ended || cs->errored, 2000);
	mallopt(M_PERTURB, 0);
	ck_assert(cs->ended);
	ck_assert_int_eq(cs->status, 200);
	ck_assert(cs->has_ctype);
	ck_assert_int_eq(evbuffer_get_length(cs->got), 11);
	ck_assert(memcmp(evbuffer_pullup(cs->got, -1), "hello world", 11) == 0);
	ck_assert_str_eq(cs->trailers, "x-check: ok\r\n");
	cs_free(cs);
	finish();
}
END_TEST

static Suite *h2_suite(void)
{
	Suite *s = suite_create("h2");
	TCase *tc = tcase_create("core");
	TCase *slow = tcase_create("ping");

	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, get_with_trailers);
	tcase_add_test(tc, stream_start_zeroes_no_head);
	tcase_add_test(tc, interim_and_no_body);
	tcase_add_test(tc, concurrent_streams);
	tcase_add_test(tc, max_concurrent_streams);
	tcase_add_test(tc, cancel_one_stream);
	tcase_add_test(tc, server_reset);
	tcase_add_test(tc, goaway);
	tcase_add_test(tc, goaway_stops_new_streams);
	tcase_add_test(tc, upload_1mb);
	tcase_add_test(tc, upload_unknown_length_with_trailers);
	tcase_add_test(tc, slow_consumer);
	tcase_add_test(tc, response_timeout);
	tcase_add_test(tc, peer_closes_idle);
	tcase_add_test(tc, peer_closes_busy);
	tcase_add_test(tc, forward_mode_407);
	tcase_add_test(tc, origin_mode_relays_407);
	tcase_set_timeout(tc, 30); /* Check's default of 4 s is short on a loaded 2-core machine */
	suite_add_tcase(s, tc);
	tcase_set_timeout(slow, 30);
	tcase_add_test(slow, ping_after_idle);
	tcase_add_test(slow, ping_answered);
	suite_add_tcase(s, slow);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(h2_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
