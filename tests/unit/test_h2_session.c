/*
 * Unit tests for src/client/h2_session.c, the HTTP/2 server session of
 * intercepted clients: an nghttp2 CLIENT session talks to it over an
 * in-memory transport, and the exchanges are fakes (ld --wrap, see
 * H2_SESSION_SEAMS in the Makefile) that record the request each stream
 * made and answer through its client_stream as the test says. Covered: the
 * mapping of streams to requests (pseudo-header fields to an HTTP/1.1 head,
 * cookie crumbs joined, the body and trailers both ways), RST_STREAM from the
 * client ending only its exchange, an exchange's abort resetting only its
 * stream, the PING flood limit, and the header list limit.
 */
#include "client/h2_session.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client/session.h"
#include "config.h"
#include "exchange.h"
#include "harness.h"
#include "log.h"

/* ---- the fake exchanges ---- */

#define NEX 8

struct exchange {
	struct client_stream *cs;
	struct http1_msg req;
	char body[256];
	size_t body_len;
	bool body_end;
	bool aborted;
	int reads;
};

static struct exchange exs[NEX];
static int nex;

struct exchange *__wrap_exchange_start(struct muxd *mm, struct client_stream *client,
                                       struct http1_msg *req, const struct http1_uri *uri,
                                       const char *tls_name);
void __wrap_exchange_client_read(struct exchange *ex);
void __wrap_exchange_client_drain(struct exchange *ex);
void __wrap_exchange_abort(struct exchange *ex);
bool __wrap_exchange_awaits_client(const struct exchange *ex);

/* Takes what body the stream has, as the real exchange does. */
static void take_body(struct exchange *ex)
{
	const char *data;
	size_t len;
	enum client_body e;

	do {
		e = ex->cs->ops->read_body(ex->cs, 100, &data, &len);
		if (data && len && ex->body_len + len <= sizeof(ex->body)) {
			memcpy(ex->body + ex->body_len, data, len);
			ex->body_len += len;
		}
		if (e == CLIENT_BODY_DATA || e == CLIENT_BODY_END)
			ex->cs->ops->consumed(ex->cs);
		if (e == CLIENT_BODY_END)
			ex->body_end = true;
	} while (e == CLIENT_BODY_DATA);
}

struct exchange *__wrap_exchange_start(struct muxd *mm, struct client_stream *client,
                                       struct http1_msg *req, const struct http1_uri *uri,
                                       const char *tls_name)
{
	struct exchange *ex;

	(void)mm;
	(void)uri;
	(void)tls_name;
	ck_assert_int_lt(nex, NEX);
	ex = &exs[nex++];
	memset(ex, 0, sizeof(*ex));
	ex->cs = client;
	ex->req = *req;
	memset(req, 0, sizeof(*req));
	take_body(ex);
	return ex;
}

void __wrap_exchange_client_read(struct exchange *ex)
{
	ex->reads++;
	take_body(ex);
}

void __wrap_exchange_client_drain(struct exchange *ex)
{
	(void)ex;
}

void __wrap_exchange_abort(struct exchange *ex)
{
	ex->aborted = true;
}

bool __wrap_exchange_awaits_client(const struct exchange *ex)
{
	return !ex->body_end;
}

/* ---- the owner (the connection) ---- */

static struct owner {
	int routed;
	bool over, flush;
} own;

static int route(void *ctx, const struct http1_msg *req, struct http1_uri *uri,
                 const char **tls_name, char *why, size_t why_size)
{
	(void)ctx;
	(void)req;
	(void)why;
	(void)why_size;
	own.routed++;
	memset(uri, 0, sizeof(*uri));
	strcpy(uri->scheme, "https");
	strcpy(uri->host, "origin.test");
	uri->port = 443;
	strcpy(uri->path, req->target);
	*tls_name = NULL;
	return 0;
}

static struct h2_session *sess;

static void over(void *ctx, bool flush, bool peer_eof)
{
	(void)ctx;
	(void)peer_eof;
	own.over = true;
	own.flush = flush;
}

static const struct h2_session_owner owner = {route, over};

/* ---- the in-memory transport ---- */

static struct fake_t {
	struct transport t;
	struct evbuffer *in, *out; /* in: client -> session; out: session -> client */
} ft;

static struct evbuffer *ft_input(struct transport *t)
{
	(void)t;
	return ft.in;
}

static struct evbuffer *ft_output(struct transport *t)
{
	(void)t;
	return ft.out;
}

static void ft_set_reading(struct transport *t, bool on)
{
	(void)t;
	(void)on;
}

static void ft_nothing(struct transport *t)
{
	(void)t;
}

static bool ft_alive(struct transport *t)
{
	(void)t;
	return true;
}

static const struct transport_ops ft_ops = {ft_input,   ft_output,  ft_set_reading,
                                            ft_nothing, ft_nothing, ft_alive};

/* ---- the client: nghttp2's client session, recording what comes back ---- */

#define NSTREAM 16

static struct cli {
	nghttp2_session *ng;
	char status[NSTREAM][4];
	char body[NSTREAM][256];
	size_t body_len[NSTREAM];
	char trailer[NSTREAM][128];
	bool ended[NSTREAM];
	uint32_t reset[NSTREAM]; /* RST_STREAM code + 1; 0: none */
	bool goaway;
	uint32_t goaway_code;
	bool headers_done[NSTREAM];
} cl;

static int slot(int32_t id)
{
	return id > 0 && id / 2 < NSTREAM ? id / 2 : 0;
}

static int c_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                    const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
	int i = slot(f->hd.stream_id);

	(void)ng;
	(void)flags;
	(void)ud;
	if (nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3)
		memcpy(cl.status[i], value, 3);
	else if (cl.headers_done[i] && nlen + vlen + 3 < sizeof(cl.trailer[i]))
		snprintf(cl.trailer[i] + strlen(cl.trailer[i]),
		         sizeof(cl.trailer[i]) - strlen(cl.trailer[i]), "%.*s=%.*s;", (int)nlen,
		         (const char *)name, (int)vlen, (const char *)value);
	return 0;
}

static int c_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	int i = slot(f->hd.stream_id);

	(void)ng;
	(void)ud;
	if (f->hd.type == NGHTTP2_HEADERS && cl.status[i][0] && cl.status[i][0] != '1')
		cl.headers_done[i] = true;
	if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
	    (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		cl.ended[i] = true;
	if (f->hd.type == NGHTTP2_RST_STREAM)
		cl.reset[i] = f->rst_stream.error_code + 1;
	if (f->hd.type == NGHTTP2_GOAWAY) {
		cl.goaway = true;
		cl.goaway_code = f->goaway.error_code;
	}
	return 0;
}

static int c_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                  void *ud)
{
	int i = slot(id);

	(void)ng;
	(void)flags;
	(void)ud;
	if (cl.body_len[i] + len <= sizeof(cl.body[i])) {
		memcpy(cl.body[i] + cl.body_len[i], data, len);
		cl.body_len[i] += len;
	}
	return 0;
}

/* Moves bytes both ways and runs the loop until nothing moves. */
static void exchange_bytes(void)
{
	for (int round = 0; round < 100; round++) {
		const uint8_t *data;
		ssize_t n;
		bool moved = false;

		while ((n = nghttp2_session_mem_send(cl.ng, &data)) > 0) {
			evbuffer_add(ft.in, data, (size_t)n);
			moved = true;
		}
		if (moved && sess && !own.over)
			ft.t.cbs.on_read(ft.t.ctx);
		event_base_loop(m.base, EVLOOP_NONBLOCK);
		size_t len = evbuffer_get_length(ft.out);
		if (len > 0) {
			unsigned char *p = evbuffer_pullup(ft.out, -1);
			nghttp2_session_mem_recv(cl.ng, p, len);
			evbuffer_drain(ft.out, len);
			moved = true;
			if (sess && !own.over)
				ft.t.cbs.on_drain(ft.t.ctx);
		}
		if (!moved)
			return;
	}
}

static void setup(void)
{
	nghttp2_session_callbacks *cb;

	muxd_setup(HM_CFG);
	log_set_level(getenv("H2S_DEBUG") ? LOG_DEBUG : LOG_ERROR);
	memset(&exs, 0, sizeof(exs));
	nex = 0;
	memset(&own, 0, sizeof(own));
	memset(&cl, 0, sizeof(cl));
	ft.t.ops = &ft_ops;
	ft.in = evbuffer_new();
	ft.out = evbuffer_new();
	struct h2_session_params p = {.peer = "test", .max_streams = 10};
	sess = h2_session_new(&m, &ft.t, &p, &owner, NULL);
	ck_assert_ptr_nonnull(sess);

	ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
	nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data);
	nghttp2_option *opt;
	ck_assert_int_eq(nghttp2_option_new(&opt), 0);
	nghttp2_option_set_max_send_header_block_length(opt, 256 * 1024); /* to go over ours */
	ck_assert_int_eq(nghttp2_session_client_new2(&cl.ng, cb, NULL, opt), 0);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cb);
	ck_assert_int_eq(nghttp2_submit_settings(cl.ng, NGHTTP2_FLAG_NONE, NULL, 0), 0);
	exchange_bytes();
}

static void teardown(void)
{
	for (int i = 0; i < nex; i++)
		http1_msg_free(&exs[i].req);
	h2_session_free(sess);
	sess = NULL;
	nghttp2_session_del(cl.ng);
	evbuffer_free(ft.in);
	evbuffer_free(ft.out);
	muxd_teardown();
}

#define NVS(n, v)                                                                                  \
	{                                                                                          \
		(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE \
	}

static ssize_t body_src(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
	const char *s = src->ptr;
	size_t n = strlen(s);

	(void)ud;
	if (n > len)
		n = len;
	static nghttp2_nv tr[] = {NVS("x-req-trailer", "yes")};

	memcpy(buf, s, n);
	*flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
	ck_assert_int_eq(nghttp2_submit_trailer(ng, id, tr, 1), 0);
	return (ssize_t)n;
}

/* A request body of src->ptr, ending the stream. */
static ssize_t body_src_end(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	size_t n = strlen(src->ptr);

	(void)ng;
	(void)id;
	(void)ud;
	if (n > len)
		n = len;
	memcpy(buf, src->ptr, n);
	*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static int32_t get(const char *path)
{
	nghttp2_nv nva[] = {NVS(":method", "GET"), NVS(":scheme", "https"),
	                    NVS(":authority", "origin.test"), NVS(":path", "/x")};
	nva[3].value = (uint8_t *)path;
	nva[3].valuelen = strlen(path);
	return nghttp2_submit_request(cl.ng, NULL, nva, 4, NULL, NULL);
}

static void respond_ok(struct exchange *ex, const char *body, const char *trailers)
{
	struct http1_msg h;
	struct evbuffer *b = evbuffer_new();

	memset(&h, 0, sizeof(h));
	h.status = 200;
	h.reason = "OK";
	h.body = HTTP1_BODY_UNKNOWN;
	h.fields[0] = (struct http1_field){"Content-Type", 12, "text/plain", 10};
	h.fields[1] = (struct http1_field){"Connection", 10, "close", 5};
	h.nfields = 2;
	ex->cs->ops->send_head(ex->cs, &h, "1.1 muxd", false);
	evbuffer_add(b, body, strlen(body));
	ex->cs->ops->send_body(ex->cs, b, strlen(body));
	ex->cs->ops->send_end(ex->cs, trailers);
	ex->cs->ops->done(ex->cs);
	evbuffer_free(b);
}

START_TEST(stream_becomes_a_request_and_its_response_goes_back)
{
	static char up[] = "hello";
	nghttp2_nv nva[] = {
	    NVS(":method", "POST"), NVS(":scheme", "https"), NVS(":authority", "origin.test"),
	    NVS(":path", "/p?q=1"), NVS("cookie", "a=1"),    NVS("x-one", "1"),
	    NVS("cookie", "b=2"),   NVS("te", "trailers")};
	nghttp2_data_provider prd = {.source.ptr = up, .read_callback = body_src};
	int32_t id = nghttp2_submit_request(cl.ng, NULL, nva, 8, &prd, NULL);

	ck_assert_int_gt(id, 0);
	exchange_bytes();
	ck_assert_int_eq(nex, 1);
	ck_assert_int_eq(own.routed, 1);
	struct exchange *ex = &exs[0];
	ck_assert_str_eq(ex->req.method, "POST");
	ck_assert_str_eq(ex->req.target, "/p?q=1");
	ck_assert_str_eq(http1_find(&ex->req, "host")->value, "origin.test");
	ck_assert_str_eq(http1_find(&ex->req, "cookie")->value, "a=1; b=2");
	ck_assert_str_eq(http1_find(&ex->req, "x-one")->value, "1");
	ck_assert_int_eq(ex->req.body, HTTP1_BODY_CHUNKED); /* no length: streamed */
	ck_assert_uint_eq(ex->body_len, 5);
	ck_assert(memcmp(ex->body, "hello", 5) == 0);
	ck_assert(ex->body_end);
	ck_assert_str_eq(ex->cs->ops->trailers(ex->cs), "x-req-trailer: yes\r\n");

	respond_ok(ex, "answer", "grpc-status: 0\r\n");
	exchange_bytes();
	int i = slot(id);
	ck_assert_str_eq(cl.status[i], "200");
	ck_assert_uint_eq(cl.body_len[i], 6);
	ck_assert(memcmp(cl.body[i], "answer", 6) == 0);
	ck_assert_str_eq(cl.trailer[i], "grpc-status=0;");
	ck_assert(cl.ended[i]);
	ck_assert(!own.over);
}
END_TEST

START_TEST(client_reset_ends_only_its_exchange)
{
	int32_t a = get("/a"), b = get("/b");

	exchange_bytes();
	ck_assert_int_eq(nex, 2);
	ck_assert_int_eq(nghttp2_submit_rst_stream(cl.ng, NGHTTP2_FLAG_NONE, a, NGHTTP2_CANCEL), 0);
	exchange_bytes();
	ck_assert(exs[0].aborted);
	ck_assert(!exs[1].aborted);
	respond_ok(&exs[1], "b", "");
	exchange_bytes();
	ck_assert_str_eq(cl.status[slot(b)], "200");
	ck_assert(cl.ended[slot(b)]);
	ck_assert(!cl.goaway);
}
END_TEST

START_TEST(exchange_abort_resets_only_its_stream)
{
	int32_t a = get("/a"), b = get("/b");
	struct http1_msg h;

	exchange_bytes();
	ck_assert_int_eq(nex, 2);
	memset(&h, 0, sizeof(h));
	h.status = 200;
	h.reason = "OK";
	h.body = HTTP1_BODY_UNKNOWN;
	exs[0].cs->ops->send_head(exs[0].cs, &h, NULL, false);
	exs[0].cs->ops->abort(exs[0].cs); /* the upstream broke off after the head */
	exchange_bytes();
	ck_assert_uint_eq(cl.reset[slot(a)], NGHTTP2_INTERNAL_ERROR + 1);
	ck_assert(!cl.ended[slot(a)]);
	respond_ok(&exs[1], "b", "");
	exchange_bytes();
	ck_assert(cl.ended[slot(b)]);
	ck_assert_uint_eq(cl.reset[slot(b)], 0);
	ck_assert(!own.over);
}
END_TEST

START_TEST(ping_flood_ends_the_connection_calmly)
{
	for (int i = 0; i < 150; i++)
		nghttp2_submit_ping(cl.ng, NGHTTP2_FLAG_NONE, NULL);
	exchange_bytes();
	ck_assert(own.over);
	ck_assert(cl.goaway);
	ck_assert_uint_eq(cl.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	ck_assert_uint_eq(m.metrics.client_h2_floods[CH2_FLOOD_PING], 1);
}
END_TEST

START_TEST(pings_under_the_limit_are_fine)
{
	for (int i = 0; i < 50; i++)
		nghttp2_submit_ping(cl.ng, NGHTTP2_FLAG_NONE, NULL);
	exchange_bytes();
	ck_assert(!own.over);
	ck_assert(!cl.goaway);
}
END_TEST

START_TEST(header_list_over_the_limit_gets_431)
{
	static char big[8000];
	nghttp2_nv nva[4 + 9];
	int32_t id;

	memset(big, 'v', sizeof(big));
	nva[0] = (nghttp2_nv)NVS(":method", "GET");
	nva[1] = (nghttp2_nv)NVS(":scheme", "https");
	nva[2] = (nghttp2_nv)NVS(":authority", "origin.test");
	nva[3] = (nghttp2_nv)NVS(":path", "/");
	for (int i = 0; i < 9; i++)
		nva[4 + i] = (nghttp2_nv){(uint8_t *)"x-big", (uint8_t *)big, 5, sizeof(big),
		                          NGHTTP2_NV_FLAG_NO_INDEX};
	id = nghttp2_submit_request(cl.ng, NULL, nva, 13, NULL, NULL);
	exchange_bytes();
	ck_assert_int_eq(nex, 0);
	ck_assert_str_eq(cl.status[slot(id)], "431");
	ck_assert(cl.ended[slot(id)]);
	ck_assert(!own.over);
}
END_TEST

/* ---- RFC 8441: an extended CONNECT becomes an HTTP/1.1 WebSocket upgrade ---- */

static struct fake_o {
	struct transport t;
	struct evbuffer *in, *out; /* in: origin -> muxd; out: muxd -> origin */
	bool shut, closed;
} fo;

static struct evbuffer *fo_input(struct transport *t)
{
	(void)t;
	return fo.in;
}

static struct evbuffer *fo_output(struct transport *t)
{
	(void)t;
	return fo.out;
}

static void fo_shutdown(struct transport *t)
{
	(void)t;
	fo.shut = true;
}

static void fo_close(struct transport *t)
{
	(void)t;
	fo.closed = true;
}

static const struct transport_ops fo_ops = {fo_input,    fo_output, ft_set_reading,
                                            fo_shutdown, fo_close,  ft_alive};

static int32_t ws_connect(void)
{
	nghttp2_nv nva[] = {NVS(":method", "CONNECT"),
	                    NVS(":protocol", "websocket"),
	                    NVS(":scheme", "https"),
	                    NVS(":authority", "origin.test"),
	                    NVS(":path", "/chat?room=1"),
	                    NVS("sec-websocket-version", "13"),
	                    NVS("sec-websocket-protocol", "chat"),
	                    NVS("sec-websocket-key", "dGhlIGNsaWVudCdzIG93bg==")};

	/* HEADERS without END_STREAM: the stream stays open for the new protocol */
	return nghttp2_submit_headers(cl.ng, NGHTTP2_FLAG_NONE, -1, NULL, nva,
	                              sizeof(nva) / sizeof(nva[0]), NULL);
}

static unsigned count_fields(const struct http1_msg *h, const char *name)
{
	unsigned n = 0;

	for (size_t i = 0; i < h->nfields; i++)
		n += strcasecmp(h->fields[i].name, name) == 0;
	return n;
}

/* The 101 of an origin; accept: its Sec-WebSocket-Accept (NULL: the right one). */
static void switch_to_ws(struct exchange *ex, const char *accept)
{
	const struct http1_field *key = http1_find(&ex->req, "sec-websocket-key");
	char in[128], good[32];
	unsigned char sha[20];
	struct http1_msg h;

	ck_assert_ptr_nonnull(key);
	snprintf(in, sizeof(in), "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)key->value_len,
	         key->value);
	ck_assert_int_eq(gnutls_hash_fast(GNUTLS_DIG_SHA1, in, strlen(in), sha), 0);
	http1_base64(sha, sizeof(sha), good);
	memset(&h, 0, sizeof(h));
	h.status = 101;
	h.reason = "Switching Protocols";
	h.body = HTTP1_BODY_NONE;
	h.fields[0] = (struct http1_field){"Upgrade", 7, "websocket", 9};
	h.fields[1] = (struct http1_field){"Connection", 10, "Upgrade", 7};
	h.fields[2] = (struct http1_field){"Sec-WebSocket-Accept", 20, accept ? accept : good,
	                                   strlen(accept ? accept : good)};
	h.fields[3] = (struct http1_field){"Sec-WebSocket-Protocol", 22, "chat", 4};
	h.nfields = 4;
	memset(&fo, 0, sizeof(fo));
	fo.t.ops = &fo_ops;
	fo.in = evbuffer_new();
	fo.out = evbuffer_new();
	struct client_upgrade u = {&h, "1.1 muxd", &fo.t, false, "origin.test", 443};
	ex->cs->ops->upgrade(ex->cs, &u);
}

static void fo_free(void)
{
	evbuffer_free(fo.in);
	evbuffer_free(fo.out);
}

START_TEST(extended_connect_becomes_a_websocket_upgrade)
{
	int32_t id = ws_connect();
	int i = slot(id);

	ck_assert_int_gt(id, 0);
	exchange_bytes();
	ck_assert_int_eq(nex, 1);
	struct exchange *ex = &exs[0];
	ck_assert_str_eq(ex->req.method, "GET");
	ck_assert_str_eq(ex->req.target, "/chat?room=1");
	ck_assert_int_eq(ex->req.body, HTTP1_BODY_NONE);
	ck_assert(http1_upgrade_requested(&ex->req, "websocket"));
	ck_assert_str_eq(http1_find(&ex->req, "host")->value, "origin.test");
	ck_assert_str_eq(http1_find(&ex->req, "sec-websocket-version")->value, "13");
	ck_assert_str_eq(http1_find(&ex->req, "sec-websocket-protocol")->value, "chat");
	/* muxd's own key, not the client's */
	ck_assert_uint_eq(count_fields(&ex->req, "sec-websocket-key"), 1);
	ck_assert_uint_eq(http1_find(&ex->req, "sec-websocket-key")->value_len, 24);
	ck_assert_str_ne(http1_find(&ex->req, "sec-websocket-key")->value,
	                 "dGhlIGNsaWVudCdzIG93bg==");

	switch_to_ws(ex, NULL);
	exchange_bytes();
	ck_assert_str_eq(cl.status[i], "200");
	ck_assert(!cl.ended[i]);
	ck_assert_uint_eq(cl.reset[i], 0);
	/* origin -> client */
	evbuffer_add(fo.in, "from origin", 11);
	fo.t.cbs.on_read(fo.t.ctx);
	exchange_bytes();
	ck_assert_uint_eq(cl.body_len[i], 11);
	ck_assert(memcmp(cl.body[i], "from origin", 11) == 0);
	/* client -> origin, then its END_STREAM: the origin's half-close */
	static char up[] = "from client";
	nghttp2_data_provider prd = {.source.ptr = up, .read_callback = body_src_end};
	ck_assert_int_eq(nghttp2_submit_data(cl.ng, NGHTTP2_FLAG_END_STREAM, id, &prd), 0);
	exchange_bytes();
	ck_assert_uint_eq(evbuffer_get_length(fo.out), 11);
	ck_assert(memcmp(evbuffer_pullup(fo.out, -1), "from client", 11) == 0);
	ck_assert(fo.shut);
	/* the origin ends too: END_STREAM, no reset */
	fo.t.cbs.on_event(fo.t.ctx, TRANSPORT_EOF, ERR_NONE, NULL);
	exchange_bytes();
	ck_assert(cl.ended[i]);
	ck_assert_uint_eq(cl.reset[i], 0);
	ck_assert(fo.closed);
	ck_assert(!own.over);
	fo_free();
}
END_TEST

START_TEST(client_reset_closes_the_websocket_origin)
{
	int32_t id = ws_connect();

	exchange_bytes();
	ck_assert_int_eq(nex, 1);
	switch_to_ws(&exs[0], NULL);
	exchange_bytes();
	ck_assert_str_eq(cl.status[slot(id)], "200");
	ck_assert(!fo.closed);
	ck_assert_int_eq(nghttp2_submit_rst_stream(cl.ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL),
	                 0);
	exchange_bytes();
	ck_assert(fo.closed);
	ck_assert(!own.over);
	fo_free();
}
END_TEST

START_TEST(wrong_websocket_accept_gets_502)
{
	int32_t id = ws_connect();

	exchange_bytes();
	ck_assert_int_eq(nex, 1);
	switch_to_ws(&exs[0], "bm90IHRoZSByaWdodCBvbmU=");
	exchange_bytes();
	ck_assert_str_eq(cl.status[slot(id)], "502");
	ck_assert(fo.closed);
	fo_free();
}
END_TEST

START_TEST(websocket_answered_2xx_without_switching_gets_502)
{
	int32_t id = ws_connect();

	exchange_bytes();
	ck_assert_int_eq(nex, 1);
	respond_ok(&exs[0], "a plain page", "");
	exchange_bytes();
	ck_assert_str_eq(cl.status[slot(id)], "502");
	ck_assert(cl.ended[slot(id)]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("h2_session");
	TCase *tc = tcase_create("session");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, stream_becomes_a_request_and_its_response_goes_back);
	tcase_add_test(tc, client_reset_ends_only_its_exchange);
	tcase_add_test(tc, exchange_abort_resets_only_its_stream);
	tcase_add_test(tc, ping_flood_ends_the_connection_calmly);
	tcase_add_test(tc, pings_under_the_limit_are_fine);
	tcase_add_test(tc, header_list_over_the_limit_gets_431);
	tcase_add_test(tc, extended_connect_becomes_a_websocket_upgrade);
	tcase_add_test(tc, client_reset_closes_the_websocket_origin);
	tcase_add_test(tc, wrong_websocket_accept_gets_502);
	tcase_add_test(tc, websocket_answered_2xx_without_switching_gets_502);
	suite_add_tcase(s, tc);
	return run_suite(s) ? 1 : 0;
}
