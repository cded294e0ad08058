/*
 * h3 — HTTP/3 upstream connections: an nghttp3 client session carrying up
 * to H3_MAX_STREAMS request/response streams behind the upstream interface,
 * on a QUIC connection of transport/quic.h (which does DNS, the handshake
 * race, TLS, packets and timers).
 * Owns: the struct quic, the nghttp3 session, and every stream's buffers
 * (request body until the origin acknowledged it, the decoded response
 * head, body and trailers).
 *
 * Set-up: until the QUIC handshake completes the connection is "warming"
 * (free_slots 0); then the HTTP/3 session starts on it. With 0-RTT (a
 * resumed QUIC session that allows it, h3_params.early_data) the session
 * starts before the handshake (quic's on_early) and the connection takes
 * streams at once, but submits only the replay-safe requests
 * (upstream_request.early_data) before the handshake; the others wait for
 * it. When the server refuses the 0-RTT, quic drops the early streams and
 * the codec re-sends them itself after the handshake on a new HTTP/3
 * session (early requests have no body, so the head is all there is to
 * send again): the exchange never notices. A set-up failure after 0-RTT
 * began fails the streams as unprocessed (the exchange retries them). Success is reported
 * as on_available, failure (DNS, ICMP refusal, TLS, no handshake in time)
 * as on_failed, after which the connection frees itself; both from the
 * deferred kick event, never from inside ngtcp2/nghttp3.
 *
 * Re-entrancy: every QUIC event runs with the connection held (quic's
 * enter/leave), so streams are freed, and the owner told about freed slots,
 * only when no callback runs. Stream operations only set flags and buffer
 * data; requests are submitted, cancels and flow-control credit applied,
 * and packets written from the kick.
 *
 * Flow control (memory stays bounded): a stream's receive window starts at
 * H3_STREAM_WINDOW and reopens only as the exchange takes bytes out of the
 * stream's body buffer (consumed); it grows (mux.c, window.h: ngtcp2's
 * own auto-tuning stays off) while the client drains it faster than the
 * origin fills it, judged by QUIC's smoothed round trip, up to
 * max_stream_window_kib. The connection window is max_conn_window_kib so
 * that one stalled stream never blocks the others; growth is stream credit
 * only, so the connection window never creeps beyond it. A request body waits in a
 * per-stream buffer of at most TRANSPORT_BUF, kept until acknowledged.
 *
 * Endings: GOAWAY makes the connection take no new streams; streams at or
 * above its id fail with ERR_UNPROCESSED, the others finish, and then the
 * connection leaves with EVICT_GOAWAY (repeated GOAWAYs that lower nothing
 * change nothing). CONNECTION_CLOSE from the origin, an idle timeout or a
 * fatal error fail the unfinished streams with ERR_CLOSED; the owner hears
 * on_closed (EVICT_DEAD when no stream ran, else EVICT_COUNT).
 *
 * Hostile origins: nghttp3 skips what carries nothing (reserved and unknown
 * frames, empty DATA, reserved stream types, repeated GOAWAYs) and reports
 * those bytes consumed, so quic opens the flow-control windows for more at
 * once: an origin could keep muxd busy at line rate while delivering
 * nothing. Such bytes (what nghttp3_conn_read_stream consumed beyond the
 * response heads and DATA frames it delivered, flood_check) are metered per
 * connection and second against h3_floods[], apart for request streams and
 * for the origin's unidirectional streams; past a limit the connection ends
 * with H3_EXCESSIVE_LOAD (requests with no response byte yet are retried on
 * a new one, as for a connection error), logged and counted in
 * env.floods. ngtcp2 keeps the origin to the 16 unidirectional streams of
 * quic_params.max_uni_streams (never extended), and resets of request
 * streams only end those streams.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp3/nghttp3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "transport/quic.h"
#include "transport/transport.h"
#include "upstream/fields.h"
#include "upstream/flood.h"
#include "upstream/mux.h"
#include "upstream/upstream.h"

#define H3_MAX_STREAMS 256           /* streams per connection, whatever the peer allows */
#define H3_STREAM_WINDOW (64 * 1024) /* per-stream receive window */
#define H3_BLOCK 16384               /* request body block */

/*
 * Flood limits: bytes an origin may send per connection in any one second
 * that deliver nothing (see "Hostile origins" above); one more ends the
 * connection with H3_EXCESSIVE_LOAD. Request streams: 16 KiB, e.g. 8192
 * empty DATA frames (an HTTP/3 DATA frame has no END_STREAM flag: an empty
 * one is never needed). Unidirectional streams: 256 KiB, SETTINGS and
 * GOAWAY being a few bytes and QPACK encoder instructions bounded by the
 * 4 KiB dynamic table muxd allows (refilled 64 times a second).
 */
static const struct {
	const char *what;
	uint64_t limit;
} h3_floods[UPSTREAM_FLOOD_H3_CONTROL + 1] = {
    [UPSTREAM_FLOOD_H3_FRAMES] = {"bytes of empty or unknown frames on request streams", 16384},
    [UPSTREAM_FLOOD_H3_CONTROL] = {"bytes on its control, QPACK or reserved streams", 262144},
};
/* What counts as useful of what nghttp3 consumed in one read: the header
 * of each DATA frame it delivered payload of (at most 9 bytes), and all of
 * a read in which a response head or trailers were being decoded (their
 * size is bounded per stream by fields.c: HTTP1_MAX_HEAD, HTTP1_MAX_FIELDS,
 * UPSTREAM_MAX_INTERIM). */
#define H3_CREDIT_DATA 16

/* Request body bytes; stay put (nghttp3 points at them) until acknowledged. */
struct h3_block {
	struct h3_block *next;
	size_t len;
	uint8_t data[H3_BLOCK];
};

struct h3_conn;

struct h3_stream {
	struct mux_stream ms; /* first; ms.id: -1 until the request is submitted */
	struct h3_conn *c;
	bool submit_pending;            /* send_head() was called; submit from the kick */
	bool early;                     /* replay-safe: may be submitted as 0-RTT */
	bool cancel_pending;            /* reset the stream from the kick */
	bool resume;                    /* more request body for nghttp3 */
	bool in_head;                   /* a response head or trailers are being decoded */
	struct sbuf req;                /* the request head: name\0value\0... */
	size_t nreq;                    /* fields in req */
	struct h3_block *blocks, *last; /* request body, oldest first */
	size_t blk_off;                 /* acknowledged bytes at the front of blocks */
	uint64_t queued;                /* request body bytes buffered so far (total) */
	uint64_t handed;                /* ... given to nghttp3 */
	uint64_t acked;                 /* ... acknowledged by the origin */
	size_t credit;                  /* consumed bytes to give back from the kick */
	uint64_t grown;                 /* window growth to grant from the kick */
};

struct h3_conn {
	struct mux_conn mc; /* first; mc.name: host:port for logs */
	struct quic *q;
	nghttp3_conn *h3;
	enum muxd_err fail_err; /* set-up failure, told from the kick */
	char fail_reason[512];
	bool established;
	bool early;        /* the session runs on 0-RTT: the handshake is not done */
	bool early_failed; /* set-up failed after streams were taken with 0-RTT */
	bool setup_failed; /* tell on_failed from the kick */
	int64_t goaway_id; /* the lowest GOAWAY id so far (mc.goaway) */
	/* floods: useful bytes delivered during the current read (head: a
	 * head was being decoded), the meter */
	uint64_t work;
	bool head;
	struct flood_meter flood;
	const char *flooded; /* what ended the connection as a flood */
};

#define H3S(p) ((struct h3_stream *)(p))

/* --- freeing --- */

static void stream_free(struct mux_stream *ms)
{
	struct h3_stream *s = H3S(ms);

	while (s->blocks) {
		struct h3_block *b = s->blocks;
		s->blocks = b->next;
		free(b);
	}
	free(s->req.p);
	mux_stream_free_bufs(ms);
	free(s);
}

static void conn_free(struct mux_conn *mc)
{
	struct h3_conn *c = (struct h3_conn *)mc;

	quic_free(c->q); /* CONNECTION_CLOSE first when still open */
	mux_conn_free_base(mc);
	if (c->h3)
		nghttp3_conn_del(c->h3);
	free(c);
}

/* Free finished streams (their credit goes back to the connection window);
 * close after GOAWAY; offer freed slots. Runs with exactly one hold, when
 * no callback is running. */
static void settle(struct mux_conn *mc)
{
	struct h3_conn *c = (struct h3_conn *)mc;
	unsigned live, freed;

	for (struct mux_stream *ms = mc->streams; ms; ms = ms->next)
		if (!ms->user && !ms->open && H3S(ms)->credit > 0 && !mc->failed)
			quic_extend_conn_offset(c->q, H3S(ms)->credit);
	mux_sweep(mc, &live, &freed);
	if (c->established || c->early)
		mux_settle_tail(mc, live, freed);
}

/* Detaching: reset the stream from the kick; its unconsumed bytes become
 * credit. */
static void detach(struct mux_stream *ms, bool reset)
{
	struct h3_stream *s = H3S(ms);

	s->submit_pending = false;
	if (reset)
		s->cancel_pending = true;
	s->credit += ms->unconsumed;
	ms->unconsumed = 0;
}

static void give(struct mux_stream *ms, size_t n)
{
	H3S(ms)->credit += n;
}

static uint64_t rtt_us(struct mux_conn *mc)
{
	struct h3_conn *c = (struct h3_conn *)mc;

	return c->established && !mc->failed ? quic_rtt_us(c->q) : 0;
}

static void grow(struct mux_stream *ms, uint64_t window)
{
	H3S(ms)->grown += window - ms->win;
	mux_kick(ms->mc);
}

static void resume(struct mux_stream *ms)
{
	H3S(ms)->resume = true;
}

/* --- nghttp3 callbacks --- */

static int h3_acked_cb(nghttp3_conn *h, int64_t id, uint64_t len, void *ud, void *sud)
{
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	(void)ud;
	if (!s)
		return 0;
	s->acked += len;
	s->blk_off += len;
	while (s->blocks && s->blk_off >= s->blocks->len &&
	       (s->blocks->next || s->blocks->len == H3_BLOCK)) {
		struct h3_block *b = s->blocks;
		s->blk_off -= b->len;
		s->blocks = b->next;
		if (!s->blocks)
			s->last = NULL;
		free(b);
	}
	if (s->ms.user && !s->ms.send_ended && s->queued - s->acked < TRANSPORT_BUF / 2) {
		s->ms.send_ready = true;
		mux_kick(&s->c->mc); /* on_send_ready from the kick */
	}
	return 0;
}

static int h3_stream_close_cb(nghttp3_conn *h, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;
	char text[24];

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	snprintf(text, sizeof(text), "0x%llx", (unsigned long long)code);
	mux_stream_closed(&s->ms, code == NGHTTP3_H3_REQUEST_REJECTED, false, text);
	return 0;
}

static int h3_recv_data_cb(nghttp3_conn *h, int64_t id, const uint8_t *data, size_t len, void *ud,
                           void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	c->work += H3_CREDIT_DATA;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user) {
		/* nobody wants it: give the window back at once */
		quic_extend_offsets(c->q, id, len);
		return 0;
	}
	s->ms.got_any = true;
	if (len == 0)
		return 0;
	if (evbuffer_add(s->ms.body, data, len) != 0) {
		s->credit += len;
		s->ms.bad = "out of memory";
		return 0;
	}
	mux_got_body(&s->ms, len);
	return 0;
}

static int h3_deferred_consume_cb(nghttp3_conn *h, int64_t id, size_t n, void *ud, void *sud)
{
	struct h3_conn *c = ud;

	(void)h;
	(void)sud;
	quic_extend_offsets(c->q, id, n);
	return 0;
}

static int h3_begin_headers_cb(nghttp3_conn *h, int64_t id, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	c->head = true;
	if (s)
		s->in_head = true;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	mux_begin_head(&s->ms);
	return 0;
}

static int h3_recv_header_cb(nghttp3_conn *h, int64_t id, int32_t token, nghttp3_rcbuf *name,
                             nghttp3_rcbuf *value, uint8_t flags, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;
	nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);

	(void)h;
	(void)id;
	(void)token;
	(void)flags;
	c->head = true;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user || s->ms.bad)
		return 0;
	s->ms.bad = mux_head_field(&s->ms, n.base, n.len, v.base, v.len);
	return 0;
}

/* A response head (interim or final) arrived complete. */
static int h3_end_headers_cb(nghttp3_conn *h, int64_t id, int fin, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	c->head = true;
	if (s)
		s->in_head = false;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user)
		return 0;
	if (s->ms.bad || s->ms.status < 100)
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE,
		                 s->ms.bad ? s->ms.bad : "malformed response (no valid :status)",
		                 false, true);
	else
		mux_got_head(&s->ms, fin != 0);
	return 0;
}

static int h3_end_trailers_cb(nghttp3_conn *h, int64_t id, int fin, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	(void)fin;
	c->head = true;
	if (s)
		s->in_head = false;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (s && s->ms.user && s->ms.bad)
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE, s->ms.bad, false, true);
	return 0;
}

static int h3_end_stream_cb(nghttp3_conn *h, int64_t id, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user)
		return 0;
	if (!s->ms.got_final) {
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE, "response ended without a final head",
		                 !s->ms.got_any, true);
		return 0;
	}
	mux_remote_end(&s->ms);
	return 0;
}

/* STOP_SENDING or RESET_STREAM from nghttp3: stop sending on the stream. */
static int h3_shutdown_write_cb(nghttp3_conn *h, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct h3_conn *c = ud;

	(void)h;
	(void)sud;
	quic_shutdown_stream_write(c->q, id, code);
	return 0;
}

/* GOAWAY: streams at or above id were not processed and never will be. */
static int h3_shutdown_cb(nghttp3_conn *h, int64_t id, void *ud)
{
	struct h3_conn *c = ud;

	(void)h;
	if (c->mc.goaway && id >= c->goaway_id)
		return 0; /* nothing new (an id may not grow) */
	log_debug("h3: GOAWAY from %s (stream id %lld)", mux_origin(&c->mc), (long long)id);
	c->goaway_id = id;
	c->mc.goaway = true;
	c->mc.base.reusable = false;
	for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
		if (s->ms.user && (s->ms.id < 0 || s->ms.id >= id) && !s->ms.got_any) {
			s->ms.err_pending = true;
			s->ms.err = ERR_UNPROCESSED;
			s->ms.err_reason = "stream not processed by origin (GOAWAY)";
		}
	}
	mux_kick(&c->mc);
	return 0;
}

/* --- the QUIC connection's callbacks --- */

static void q_enter(void *ctx)
{
	mux_hold(&((struct h3_conn *)ctx)->mc);
}

static void q_leave(void *ctx)
{
	mux_release(&((struct h3_conn *)ctx)->mc);
}

/* The HTTP/3 session starts: at the handshake, or before it with 0-RTT. */
static int start_session(struct h3_conn *c)
{
	static const nghttp3_callbacks cb = {
	    .acked_stream_data = h3_acked_cb,
	    .stream_close = h3_stream_close_cb,
	    .recv_data = h3_recv_data_cb,
	    .deferred_consume = h3_deferred_consume_cb,
	    .begin_headers = h3_begin_headers_cb,
	    .recv_header = h3_recv_header_cb,
	    .end_headers = h3_end_headers_cb,
	    .begin_trailers = h3_begin_headers_cb,
	    .recv_trailer = h3_recv_header_cb,
	    .end_trailers = h3_end_trailers_cb,
	    .stop_sending = h3_shutdown_write_cb,
	    .end_stream = h3_end_stream_cb,
	    .reset_stream = h3_shutdown_write_cb,
	    .shutdown = h3_shutdown_cb,
	};
	nghttp3_settings st;
	int64_t ctrl, qenc, qdec;

	nghttp3_settings_default(&st);
	st.qpack_max_dtable_capacity = 4096;
	st.qpack_blocked_streams = 100;
	if (nghttp3_conn_client_new(&c->h3, &cb, &st, nghttp3_mem_default(), c) != 0) {
		c->h3 = NULL;
		return -1;
	}
	if (quic_open_uni(c->q, &ctrl) != 0 || nghttp3_conn_bind_control_stream(c->h3, ctrl) != 0 ||
	    quic_open_uni(c->q, &qenc) != 0 || quic_open_uni(c->q, &qdec) != 0 ||
	    nghttp3_conn_bind_qpack_streams(c->h3, qenc, qdec) != 0) {
		nghttp3_conn_del(c->h3);
		c->h3 = NULL;
		return -1;
	}
	c->mc.base.warming = false;
	c->mc.want_available = true;
	mux_kick(&c->mc);
	return 0;
}

/* The handshake completed: the HTTP/3 session starts on it (or goes on,
 * when it began with 0-RTT that the server took). */
static int q_connected(void *ctx)
{
	struct h3_conn *c = ctx;

	if (!c->h3 && start_session(c) != 0)
		return -1;
	c->established = true;
	c->early = false;
	c->mc.want_available = true;
	mux_kick(&c->mc);
	return 0;
}

/* 0-RTT: the session starts before the handshake. */
static int q_early(void *ctx)
{
	struct h3_conn *c = ctx;

	if (start_session(c) != 0)
		return -1;
	c->early = true;
	log_debug("h3: %s: 0-RTT: safe requests go before the handshake", mux_origin(&c->mc));
	return 0;
}

/* The 0-RTT streams are gone (the server refused them): the session starts
 * again at the handshake, and every stream submitted early goes again. */
static void q_early_rejected(void *ctx)
{
	struct h3_conn *c = ctx;

	if (c->h3)
		nghttp3_conn_del(c->h3);
	c->h3 = NULL;
	c->early = false;
	for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
		if (s->ms.id < 0)
			continue;
		s->ms.id = -1;
		s->ms.open = false;
		s->cancel_pending = s->resume = false;
		s->credit = s->grown = 0;
		s->submit_pending = s->ms.user; /* a detached one is just freed */
	}
}

static void q_failed(void *ctx, enum muxd_err err, const char *reason)
{
	struct h3_conn *c = ctx;

	if (c->early) {
		/* the pool took the connection as up: its streams were never
		 * processed, and fail (to go again elsewhere) once the owner
		 * heard of the failure */
		c->early = false;
		c->early_failed = true;
	}

	c->fail_err = err;
	snprintf(c->fail_reason, sizeof(c->fail_reason), "%s", reason);
	c->setup_failed = true;
	mux_kick(&c->mc);
}

static void q_closed(void *ctx, enum muxd_err err, const char *reason)
{
	struct h3_conn *c = ctx;
	bool running;

	if (c->mc.failed || c->mc.freeing)
		return;
	running = mux_mark_failed(&c->mc);
	mux_fail_streams(&c->mc, err, c->flooded ? "HTTP/3 origin flooded the connection" : reason,
	                 false, running);
}

/* What nghttp3 consumed of a read beyond what it delivered (work):
 * waste, metered on the kind of stream id (client-initiated bidirectional:
 * a request; else one of the origin's unidirectional streams). True when
 * it is a flood: the connection is to end with H3_EXCESSIVE_LOAD. */
static bool flood_check(struct h3_conn *c, int64_t id, uint64_t consumed, bool in_head)
{
	enum upstream_flood kind =
	    (id & 0x2) ? UPSTREAM_FLOOD_H3_CONTROL : UPSTREAM_FLOOD_H3_FRAMES;
	uint64_t waste = consumed > c->work ? consumed - c->work : 0;
	struct timespec ts;

	if (in_head || c->head)
		waste = 0; /* a head's bytes: bounded per stream (fields.c) */
	c->work = 0;
	c->head = false;
	if (waste == 0)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (!flood_add(&c->flood, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000, kind,
	               waste, h3_floods[kind].limit))
		return false;
	log_info("h3: %s sent more than %llu %s in a second (a flood): closing the connection",
	         mux_origin(&c->mc), (unsigned long long)h3_floods[kind].limit,
	         h3_floods[kind].what);
	c->flooded = h3_floods[kind].what;
	if (c->mc.env.floods)
		c->mc.env.floods[kind]++;
	quic_set_app_error(c->q, NGHTTP3_H3_EXCESSIVE_LOAD);
	return true;
}

static int64_t q_recv_data(void *ctx, int64_t id, const uint8_t *data, size_t len, bool fin,
                           void *sud)
{
	struct h3_conn *c = ctx;
	struct h3_stream *s = sud;
	bool in_head = s && s->in_head;
	nghttp3_ssize n;

	c->work = 0;
	c->head = false;
	n = nghttp3_conn_read_stream(c->h3, id, data, len, fin);
	if (c->mc.freeing)
		return -1;
	if (n < 0) {
		log_debug("h3: %s: nghttp3_conn_read_stream: %s", mux_origin(&c->mc),
		          nghttp3_strerror((int)n));
		quic_set_app_error(c->q, nghttp3_err_infer_quic_app_error_code((int)n));
		return -1;
	}
	if (flood_check(c, id, (uint64_t)n, in_head))
		return -1;
	return n;
}

static int q_acked(void *ctx, int64_t id, uint64_t len, void *sud)
{
	(void)sud;
	return nghttp3_conn_add_ack_offset(((struct h3_conn *)ctx)->h3, id, len) == 0 ? 0 : -1;
}

static int q_stream_close(void *ctx, int64_t id, bool code_set, uint64_t code, void *sud)
{
	struct h3_conn *c = ctx;
	int r;

	(void)sud;
	r = nghttp3_conn_close_stream(c->h3, id, code_set ? code : NGHTTP3_H3_NO_ERROR);
	if (r != 0 && r != NGHTTP3_ERR_STREAM_NOT_FOUND)
		return -1;
	return c->mc.freeing ? -1 : 0;
}

/* The origin will send no more on stream id (reset, or STOP_SENDING). */
static int q_read_shut(void *ctx, int64_t id, bool reset, void *sud)
{
	struct h3_stream *s = sud;

	if (reset && s)
		s->ms.peer_reset = true;
	return nghttp3_conn_shutdown_stream_read(((struct h3_conn *)ctx)->h3, id) == 0 ? 0 : -1;
}

static int q_unblocked(void *ctx, int64_t id)
{
	return nghttp3_conn_unblock_stream(((struct h3_conn *)ctx)->h3, id) == 0 ? 0 : -1;
}

static void q_more_streams(void *ctx)
{
	struct h3_conn *c = ctx;

	if (c->established) {
		c->mc.want_available = true;
		mux_kick(&c->mc);
	}
}

static int q_writev(void *ctx, int64_t *id, bool *fin, struct quic_vec *vec, size_t nvec)
{
	nghttp3_vec v[16];
	int f = 0;
	nghttp3_ssize n = nghttp3_conn_writev_stream(((struct h3_conn *)ctx)->h3, id, &f, v,
	                                             nvec < 16 ? nvec : 16);

	if (n < 0)
		return (int)n;
	for (nghttp3_ssize i = 0; i < n; i++)
		vec[i] = (struct quic_vec){v[i].base, v[i].len};
	*fin = f != 0;
	return (int)n;
}

static int q_written(void *ctx, int64_t id, size_t n)
{
	return nghttp3_conn_add_write_offset(((struct h3_conn *)ctx)->h3, id, n);
}

static void q_blocked(void *ctx, int64_t id, bool shut)
{
	struct h3_conn *c = ctx;

	if (shut)
		nghttp3_conn_shutdown_stream_write(c->h3, id);
	else
		nghttp3_conn_block_stream(c->h3, id);
}

static const char *q_strerror(int err)
{
	return nghttp3_strerror(err);
}

static const struct quic_cbs h3_quic_cbs = {
    .enter = q_enter,
    .leave = q_leave,
    .on_connected = q_connected,
    .on_early = q_early,
    .early_rejected = q_early_rejected,
    .on_failed = q_failed,
    .on_closed = q_closed,
    .recv_data = q_recv_data,
    .acked = q_acked,
    .stream_close = q_stream_close,
    .read_shut = q_read_shut,
    .unblocked = q_unblocked,
    .more_streams = q_more_streams,
    .writev = q_writev,
    .written = q_written,
    .blocked = q_blocked,
    .strerror = q_strerror,
};

/* --- stream operations --- */

static bool add_field(struct sbuf *b, size_t *n, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
	size_t at = b->len;

	if (!sbuf_add(b, name, nlen) || !sbuf_add(b, "", 1) || !sbuf_add(b, value, vlen) ||
	    !sbuf_add(b, "", 1))
		return false;
	for (size_t k = at; k < at + nlen; k++)
		if (b->p[k] >= 'A' && b->p[k] <= 'Z')
			b->p[k] = (char)(b->p[k] - 'A' + 'a');
	(*n)++;
	return true;
}

/* nv array over a name\0value\0... list (values may hold no NUL). */
static nghttp3_nv *nv_list(const struct sbuf *b, size_t n)
{
	nghttp3_nv *nv = calloc(n ? n : 1, sizeof(*nv));
	const char *p = b->p;

	if (!nv)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(p), vl = strlen(p + nl + 1);
		nv[i] =
		    (nghttp3_nv){(uint8_t *)p, (uint8_t *)p + nl + 1, nl, vl, NGHTTP3_NV_FLAG_NONE};
		p += nl + vl + 2;
	}
	return nv;
}

static void submit_trailers(struct h3_stream *s)
{
	struct sbuf tb = {0};
	size_t n = 0;
	char *p = s->ms.trailers_out.p, *name, *v;
	nghttp3_nv *nv;

	while (n < HTTP1_MAX_FIELDS && (p = fields_next_line(p, &name, &v)))
		if (name && !fields_dropped(name, strlen(name), v, strlen(v)))
			add_field(&tb, &n, name, strlen(name), v, strlen(v));
	if (n > 0 && (nv = nv_list(&tb, n))) {
		nghttp3_conn_submit_trailers(s->c->h3, s->ms.id, nv, n);
		free(nv);
	}
	free(tb.p);
}

/* The request body: what send_body() buffered, then the end (and trailers).
 * Handed-out bytes stay in their blocks until acknowledged. */
static nghttp3_ssize read_data(nghttp3_conn *h, int64_t id, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *ud, void *sud)
{
	struct h3_stream *s = sud;
	uint64_t skip = s->handed - s->acked + s->blk_off; /* into the block list */
	size_t nv = 0;

	(void)h;
	(void)id;
	(void)ud;
	for (struct h3_block *b = s->blocks; b && nv < veccnt; b = b->next) {
		if (skip >= b->len) {
			skip -= b->len;
			continue;
		}
		vec[nv].base = b->data + skip;
		vec[nv].len = b->len - (size_t)skip;
		s->handed += vec[nv].len;
		skip = 0;
		nv++;
	}
	if (nv > 0 && s->ms.user && !s->ms.remote_ended)
		mux_arm(&s->ms);
	if (s->handed == s->queued && s->ms.send_ended) {
		*pflags |= NGHTTP3_DATA_FLAG_EOF;
		s->ms.eof_sent = true;
		if (s->ms.trailers_out.len > 0) {
			*pflags |= NGHTTP3_DATA_FLAG_NO_END_STREAM;
			submit_trailers(s);
		}
		return (nghttp3_ssize)nv;
	}
	if (nv == 0)
		return NGHTTP3_ERR_WOULDBLOCK;
	return (nghttp3_ssize)nv;
}

/* Submit the request built by send_head (from the kick). */
static void submit(struct h3_stream *s)
{
	struct h3_conn *c = s->c;
	nghttp3_data_reader dr = {read_data};
	nghttp3_nv *nv;
	int64_t id;
	int r;

	s->submit_pending = false;
	r = quic_open_bidi(c->q, &id, s);
	if (r != 0) {
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot open an HTTP/3 stream");
		mux_kick(&c->mc);
		return;
	}
	nv = nv_list(&s->req, s->nreq);
	if (nv)
		r = nghttp3_conn_submit_request(c->h3, id, nv, s->nreq, s->ms.req_body ? &dr : NULL,
		                                s);
	free(nv);
	if (!nv || r != 0) {
		quic_shutdown_stream(c->q, id, NGHTTP3_H3_REQUEST_CANCELLED);
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot submit the HTTP/3 request");
		mux_kick(&c->mc);
		return;
	}
	s->ms.id = id;
	s->ms.open = true;
	mux_arm(&s->ms);
}

static void send_head(struct mux_stream *ms, const struct upstream_request *r)
{
	struct h3_stream *s = H3S(ms);
	struct h3_conn *c = s->c;
	char clen[24];
	bool ok;

	if (!s->ms.user || s->ms.head_sent)
		return;
	s->ms.head_sent = true;
	s->ms.is_head = strcmp(r->method, "HEAD") == 0;
	s->early = r->early_data && !r->has_body;
	ok = add_field(&s->req, &s->nreq, ":method", 7, r->method, strlen(r->method)) &&
	     add_field(&s->req, &s->nreq, ":scheme", 7, r->scheme, strlen(r->scheme)) &&
	     add_field(&s->req, &s->nreq, ":authority", 10, r->authority, strlen(r->authority)) &&
	     add_field(&s->req, &s->nreq, ":path", 5, r->path, strlen(r->path));
	for (size_t i = 0; ok && i < r->nfields; i++) {
		const struct upstream_field *f = &r->fields[i];
		if (fields_dropped(f->name, f->name_len, f->value, f->value_len) ||
		    memchr(f->value, '\0', f->value_len))
			continue;
		ok = add_field(&s->req, &s->nreq, f->name, f->name_len, f->value, f->value_len);
	}
	if (ok && r->has_body && r->content_length >= 0) {
		int len = snprintf(clen, sizeof(clen), "%lld", (long long)r->content_length);
		ok = add_field(&s->req, &s->nreq, "content-length", 14, clen, (size_t)len);
	}
	s->ms.req_body = r->has_body;
	s->ms.eof_sent = !r->has_body;
	if (c->mc.failed)
		mux_fail_later(&s->ms, ERR_CLOSED, "connection closed");
	else if (!ok)
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot open an HTTP/3 stream");
	else
		s->submit_pending = true;
	mux_kick(&c->mc);
}

static uint64_t send_used(const struct mux_stream *ms)
{
	return H3S(ms)->queued - H3S(ms)->acked;
}

static void send_buffer(struct mux_stream *ms, const void *data, size_t len)
{
	struct h3_stream *s = H3S(ms);
	const uint8_t *p = data;

	while (len > 0) {
		struct h3_block *b = s->last;
		size_t n;
		if (!b || b->len == H3_BLOCK) {
			if (!(b = malloc(sizeof(*b))))
				break;
			b->next = NULL;
			b->len = 0;
			if (s->last)
				s->last->next = b;
			else
				s->blocks = b;
			s->last = b;
		}
		n = H3_BLOCK - b->len < len ? H3_BLOCK - b->len : len;
		memcpy(b->data + b->len, p, n);
		b->len += n;
		s->queued += n;
		p += n;
		len -= n;
	}
}

/* Submit, cancel, resume and credit what the streams asked for; write out. */
static void flush(struct h3_conn *c)
{
	if ((c->established || c->early) && !c->mc.failed && !c->mc.freeing) {
		for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
			/* before the handshake only what is safe to replay */
			if (s->submit_pending && s->ms.user && (c->established || s->early))
				submit(s);
			if (s->cancel_pending && s->ms.open && s->ms.id >= 0) {
				s->cancel_pending = false;
				nghttp3_conn_shutdown_stream_read(c->h3, s->ms.id);
				quic_shutdown_stream(c->q, s->ms.id, NGHTTP3_H3_REQUEST_CANCELLED);
			}
			if (s->resume && s->ms.open && s->ms.id >= 0) {
				s->resume = false;
				nghttp3_conn_resume_stream(c->h3, s->ms.id);
			}
			if (s->credit > 0 && s->ms.id >= 0) /* consumed bytes reopen the windows */
				quic_extend_offsets(c->q, s->ms.id, s->credit);
			s->credit = 0;
			if (s->grown > 0 && s->ms.open && s->ms.id >= 0)
				quic_extend_stream_offset(c->q, s->ms.id, s->grown);
			s->grown = 0;
		}
		quic_write(c->q);
	}
}

/* --- the kick --- */

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct h3_conn *c = arg;
	bool early;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	if (c->setup_failed && !c->mc.told) {
		c->mc.told = true;
		c->mc.base.reusable = false;
		log_debug("h3: set-up for %s failed: %s", mux_origin(&c->mc), c->fail_reason);
		c->mc.base.owner_cbs.on_failed(c->mc.base.owner, &c->mc.base,
		                               c->fail_err ? c->fail_err : ERR_CONNECT,
		                               c->fail_reason);
		if (c->early_failed && !c->mc.freeing) /* the owner is told: no more */
			mux_fail_streams(&c->mc, ERR_UNPROCESSED, c->fail_reason, false,
			                 mux_mark_failed(&c->mc));
		c->mc.freeing = true;
		mux_release(&c->mc);
		return;
	}
	mux_deliver_errors(&c->mc);
	/* 0-RTT: after the offer, so that the requests it brings go out in
	 * the first flight (later packets wait for pacing) */
	early = c->early;
	if (!early)
		flush(c);
	mux_send_ready(&c->mc);
	mux_offer(&c->mc);
	if (early)
		flush(c);
	mux_release(&c->mc);
}

static const struct mux_ops h3_mux_ops = {
    .name = "h3",
    .window = H3_STREAM_WINDOW,
    .conn_free = conn_free,
    .settle = settle,
    .stream_free = stream_free,
    .detach = detach,
    .give = give,
    .resume = resume,
    .send_head = send_head,
    .send_used = send_used,
    .send_buffer = send_buffer,
    .rtt_us = rtt_us,
    .grow = grow,
};

/* --- connection operations --- */

static unsigned h3_free_slots(struct upstream_conn *uc)
{
	struct h3_conn *c = (struct h3_conn *)uc;
	uint64_t left;
	unsigned live = 0, unsubmitted = 0;

	if (!uc->reusable || !(c->established || c->early) || c->mc.goaway || c->mc.failed ||
	    c->mc.told || c->mc.freeing)
		return 0;
	for (const struct mux_stream *s = c->mc.streams; s; s = s->next) {
		live += s->user || s->open;
		unsubmitted += s->user && s->id < 0;
	}
	left = quic_bidi_left(c->q);
	left = left > unsubmitted ? left - unsubmitted : 0;
	if (live >= H3_MAX_STREAMS)
		return 0;
	if (left > H3_MAX_STREAMS - live)
		left = H3_MAX_STREAMS - live;
	return (unsigned)left;
}

static struct upstream_stream *h3_open_stream(struct upstream_conn *uc,
                                              const struct upstream_stream_cbs *cbs, void *ctx)
{
	struct h3_conn *c = (struct h3_conn *)uc;
	struct h3_stream *s;

	if (h3_free_slots(uc) == 0)
		return NULL;
	if (!(s = H3S(mux_stream_new(&c->mc, sizeof(*s), cbs, ctx))))
		return NULL;
	if (!s->ms.body || !s->ms.timer.ev) {
		stream_free(&s->ms);
		return NULL;
	}
	s->c = c;
	s->ms.id = -1;
	mux_stream_link(&s->ms);
	return &s->ms.base;
}

static void h3_close(struct upstream_conn *uc)
{
	struct h3_conn *c = (struct h3_conn *)uc;

	quic_shutdown(c->q); /* CONNECTION_CLOSE unless inside ngtcp2 */
	mux_close(&c->mc);
}

/* Kept warm: QUIC PINGs while idle (the idle timeout of either side never
 * passes). */
static void h3_keep_warm(struct upstream_conn *uc, uint64_t interval_ms)
{
	struct h3_conn *c = (struct h3_conn *)uc;

	if (c->q && !c->mc.failed)
		quic_keep_alive(c->q, interval_ms);
}

static bool h3_peer(struct upstream_conn *uc, struct sockaddr_storage *addr, const void **cert,
                    size_t *cert_len)
{
	struct h3_conn *c = (struct h3_conn *)uc;

	return c->q && c->established && !c->mc.failed && quic_peer(c->q, addr, cert, cert_len);
}

static const struct upstream_conn_ops h3_conn_ops = {
    .open_stream = h3_open_stream,
    .free_slots = h3_free_slots,
    .is_idle = mux_is_idle,
    .close = h3_close,
    .keep_warm = h3_keep_warm,
    .peer = h3_peer,
};

struct upstream_conn *h3_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params, const struct h3_params *p,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	struct h3_conn *c = calloc(1, sizeof(*c));
	bool v6 = p->host && strchr(p->host, ':');
	struct quic_params qp = {
	    .host = p->host,
	    .port = p->port,
	    .sni = p->sni ? p->sni : p->host,
	    .alpn = "h3",
	    .ca_file = p->ca_file,
	    .verify = p->verify,
	    .session_key = p->session_key,
	    .early_data = p->early_data,
	    .early_timeout_ms = p->early_timeout_ms,
	    .stream_window = H3_STREAM_WINDOW,
	    .conn_window = (uint64_t)params->max_conn_window_kib * 1024,
	    .max_uni_streams = 16,
	};
	bool ok;

	if (!c)
		return NULL;
	ok = mux_conn_init(&c->mc, env, params, &h3_mux_ops, &h3_conn_ops, PROTO_H3, owner_cbs,
	                   owner, on_kick);
	mux_set_name(&c->mc, v6 ? "[%s]:%u" : "%s:%u", p->host ? p->host : "", (unsigned)p->port);
	if (ok && p->host)
		c->q = quic_connect(&env->transport, &qp, &h3_quic_cbs, c);
	if (!c->q) {
		conn_free(&c->mc);
		return NULL;
	}
	quic_set_app_error(c->q, NGHTTP3_H3_NO_ERROR);
	return &c->mc.base;
}
