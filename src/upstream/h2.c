/*
 * h2 — HTTP/2 upstream connections: one nghttp2 client session over a
 * transport whose ALPN chose "h2", carrying up to H2_MAX_STREAMS request/
 * response streams at once behind the upstream interface.
 * Owns: the session, the transport, and every stream's buffers (request body
 * waiting for the data provider, the decoded response head, body and
 * trailers).
 *
 * 0-RTT: on a TLS layer that is up before its handshake (chain_early) the
 * connection takes streams at once, under the default settings; a
 * replay-safe request (upstream_request.early_data) submitted while all
 * output so far was safe carries Early-Data: 1 and is written out from
 * send_head together with the preface and SETTINGS, and those bytes are
 * marked safe (chain_early_safe); everything else goes after the handshake.
 *
 * I/O: bytes from the transport go through nghttp2_session_mem_recv; frames
 * go out through nghttp2_session_mem_send while the transport's output holds
 * less than TRANSPORT_BUF, and continue on on_drain. The session is never
 * entered re-entrantly: stream operations called from inside nghttp2
 * callbacks only submit frames and set flags; the write-out happens from a
 * deferred "kick" event. Streams are freed, and the owner is told about freed
 * slots, only when no callback is running (hold/release).
 *
 * Flow control (memory stays bounded): automatic WINDOW_UPDATEs are off. A
 * stream's window (65535 to start with) reopens only as the exchange takes
 * bytes out of the stream's body buffer (consumed), so a slow client leaves
 * at most one window of response body here. The window grows (mux.c,
 * window.h) while the client drains it faster than the origin can fill it,
 * judged by the round trip measured from our SETTINGS and PINGs to their
 * ACKs; up to max_stream_window_kib. The connection window is
 * max_conn_window_kib, so that one stalled stream never blocks the others.
 * A request body waits in a per-stream buffer of at most TRANSPORT_BUF
 * (send_space).
 *
 * Liveness: a connection that is handed a stream after it sat without streams
 * for H2_PING_AFTER_IDLE_MS sends a PING at once; an idle connection sends
 * one every H2_IDLE_PING_MS (more often when the pool keeps it warm). A
 * PING not acknowledged within H2_PING_TIMEOUT_MS means the origin is gone:
 * its streams fail with ERR_CLOSED (nothing received, so replayable requests
 * are retried on a fresh connection) and the connection leaves the pool as
 * EVICT_DEAD.
 *
 * Memory while idle: H2_RELEASE_AFTER_IDLE_MS into each idle period, and
 * after each idle PING's answer, the pages of nghttp2's frame buffer and of
 * its empty stream map go back to the system (h2_mem.h): an idle pooled
 * connection keeps neither.
 *
 * Endings: GOAWAY makes the connection take no new streams; streams above
 * last_stream_id fail with ERR_UNPROCESSED (nghttp2 closes them with
 * REFUSED_STREAM), the others finish, and then the connection closes with
 * EVICT_GOAWAY. EOF, a transport error or a fatal session error fails the
 * unfinished streams with ERR_CLOSED; an idle connection leaves silently
 * (EVICT_DEAD).
 *
 * Hostile origins: frames that carry no response (PING, SETTINGS,
 * RST_STREAM, small WINDOW_UPDATEs, empty DATA, PRIORITY, unknown types) are
 * counted per second against h2_floods[]; past a limit the connection ends
 * with GOAWAY ENHANCE_YOUR_CALM. nghttp2 caps queued ACKs, SETTINGS entries
 * and CONTINUATION frames. A response head over 64 KiB is a stream error
 * (fields.c), except a single field nghttp2's HPACK decoder cannot take: that
 * ends the connection, and the stream gets "response head too large".
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "transport/transport.h"
#include "upstream/fields.h"
#include "upstream/h2_mem.h"
#include "upstream/mux.h"
#include "upstream/upstream.h"

#define H2_MAX_STREAMS 256            /* streams per connection, whatever the peer allows */
#define H2_STREAM_WINDOW 65535        /* SETTINGS_INITIAL_WINDOW_SIZE */
#define H2_PING_AFTER_IDLE_MS 2000    /* idle this long: PING on the next stream */
#define H2_PING_TIMEOUT_MS 3000       /* no PING ACK by then: the connection is dead */
#define H2_IDLE_PING_MS 30000         /* PING interval while idle */
#define H2_RELEASE_AFTER_IDLE_MS 1000 /* idle this long: nghttp2's buffer pages go back */
#define H2_MAX_OUTBOUND_ACK 100       /* PING/SETTINGS ACKs queued before the peer is cut */
#define H2_SMALL_WINDOW_UPDATE 1024   /* increments below this count as flood frames */

/*
 * Flood limits: frames of each kind that do no work for a response, per
 * connection in any one second. One more ends the connection with GOAWAY
 * ENHANCE_YOUR_CALM (its unanswered replayable requests go again elsewhere).
 * WINDOW_UPDATE counts only increments under H2_SMALL_WINDOW_UPDATE: an
 * origin reading a fast upload sends many, but large ones (and a window
 * cannot grow past 2^31 - 1 without a flow-control error).
 * CONTINUATION floods are nghttp2's (max_continuations, 8 a block), as are
 * oversized SETTINGS frames (max_settings, 32 entries).
 */
enum h2_flood {
	FLOOD_PING,
	FLOOD_SETTINGS,
	FLOOD_RST,
	FLOOD_WINDOW,
	FLOOD_EMPTY,
	FLOOD_OTHER,
	FLOODS
};
_Static_assert(UPSTREAM_FLOOD_H2_OTHER - UPSTREAM_FLOOD_H2_PING == FLOOD_OTHER,
               "enum upstream_flood lists the h2 kinds in this order");
static const struct {
	const char *name;
	unsigned limit;
} h2_floods[FLOODS] = {
    [FLOOD_PING] = {"PING", 100},         [FLOOD_SETTINGS] = {"SETTINGS", 100},
    [FLOOD_RST] = {"RST_STREAM", 1000},   [FLOOD_WINDOW] = {"small WINDOW_UPDATE", 10000},
    [FLOOD_EMPTY] = {"empty DATA", 1000}, [FLOOD_OTHER] = {"PRIORITY or unknown", 1000},
};

struct h2_conn;

struct h2_stream {
	struct mux_stream ms; /* first */
	struct h2_conn *c;
	bool not_sent; /* the request HEADERS never left */
	bool in_head;  /* a header block is being decoded */
	struct evbuffer *sendbuf;
};

struct h2_conn {
	struct mux_conn mc;  /* first; mc.name: the authority, for log lines */
	struct transport *t; /* NULL once failed */
	nghttp2_session *session;
	struct event *ping_timer;   /* PING ACK deadline */
	struct deadline idle_timer; /* PING interval while idle (cleared per stream: cheap) */
	struct timespec idle_since;
	uint64_t idle_ping_ms; /* PING interval while idle (shorter when kept warm) */
	bool released;         /* this idle period's h2_mem_release is done */
	bool settings_seen;    /* the peer's SETTINGS arrived: its limits are known */
	/* 0-RTT (the TLS layer is up before its handshake, chain_early): streams
	 * open at once under the default settings; the preface, SETTINGS and the
	 * replay-safe requests' HEADERS go as early data until anything else is
	 * written (early_unsafe) */
	bool early, early_unsafe;
	bool ping_out;
	bool in_session;             /* inside mem_recv or mem_send */
	struct timespec flood_since; /* the second the flood counters cover */
	unsigned flood[FLOODS];
	const char *flooded; /* which kind ended the connection */
	/* round trip: when our SETTINGS / PING left, the smoothed sample (us) */
	struct timespec settings_at, ping_at;
	uint64_t rtt_us;
	struct h2_mem mem; /* the session's allocator (h2_mem.h) */
};

#define H2S(p) ((struct h2_stream *)(p))

static void stream_free(struct mux_stream *ms)
{
	struct h2_stream *s = H2S(ms);

	mux_stream_free_bufs(ms);
	if (s->sendbuf)
		evbuffer_free(s->sendbuf);
	free(s);
}

static void conn_free(struct mux_conn *mc)
{
	struct h2_conn *c = (struct h2_conn *)mc;

	mux_conn_free_base(mc);
	if (c->session)
		nghttp2_session_del(c->session);
	if (c->ping_timer)
		event_free(c->ping_timer);
	deadline_free(&c->idle_timer);
	if (c->t)
		transport_close(c->t);
	free(c);
}

static const char *origin(const struct h2_conn *c)
{
	return mux_origin(&c->mc);
}

static uint64_t ms_since(const struct timespec *t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Idle from now: the timer's first step gives memory back (on_idle_timer). */
static void arm_idle(struct h2_conn *c)
{
	c->released = false;
	deadline_set(&c->idle_timer, c->idle_ping_ms < H2_RELEASE_AFTER_IDLE_MS
	                                 ? c->idle_ping_ms
	                                 : H2_RELEASE_AFTER_IDLE_MS);
}

/* Idle: the pages of nghttp2's frame buffer (when nothing is in flight) and
 * of its empty stream map go back to the system (h2_mem.h). Safe inside the
 * session's callbacks too: frames are only written by mem_send. */
static void release_idle(struct h2_conn *c)
{
	if (!c->t || c->mc.failed || mux_live(&c->mc) != 0)
		return;
	h2_mem_release(&c->mem, nghttp2_session_want_read(c->session) &&
	                            !nghttp2_session_want_write(c->session));
}

/* Free finished streams; close after GOAWAY; offer freed slots. Runs with
 * exactly one hold, when no callback is running. */
static void settle(struct mux_conn *mc)
{
	struct h2_conn *c = (struct h2_conn *)mc;
	unsigned live, freed;

	mux_sweep(mc, &live, &freed);
	if (live == 0 && freed > 0 && !mc->told) {
		clock_gettime(CLOCK_MONOTONIC, &c->idle_since);
		if (c->t)
			arm_idle(c);
	}
	mux_settle_tail(mc, live, freed);
}

/* Detaching: reset the stream; give bytes still held for it back to the
 * flow-control windows; drop the request body. */
static void detach(struct mux_stream *ms, bool reset)
{
	struct h2_stream *s = H2S(ms);
	nghttp2_session *session = s->c->session;

	if (reset)
		nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, (int32_t)ms->id,
		                          NGHTTP2_CANCEL);
	if (ms->unconsumed > 0 && ms->id > 0)
		nghttp2_session_consume(session, (int32_t)ms->id, ms->unconsumed);
	ms->unconsumed = 0;
	evbuffer_drain(s->sendbuf, evbuffer_get_length(s->sendbuf));
}

static void give(struct mux_stream *ms, size_t n)
{
	if (ms->id > 0)
		nghttp2_session_consume(H2S(ms)->c->session, (int32_t)ms->id, n);
}

static void resume(struct mux_stream *ms)
{
	if (ms->open)
		nghttp2_session_resume_data(H2S(ms)->c->session, (int32_t)ms->id);
}

/*
 * The connection cannot go on: unfinished streams fail, the owner forgets
 * it. Streams whose response is complete may still drain their body. dead:
 * always EVICT_DEAD; else EVICT_DEAD when idle, EVICT_COUNT ("not an
 * eviction") when streams were running.
 */
static void conn_fail(struct h2_conn *c, enum muxd_err err, const char *reason, bool dead)
{
	bool running;

	if (c->mc.failed || c->mc.freeing)
		return;
	running = mux_mark_failed(&c->mc);
	evtimer_del(c->ping_timer);
	deadline_clear(&c->idle_timer);
	if (c->t) {
		transport_close(c->t);
		c->t = NULL;
	}
	mux_fail_streams(&c->mc, err, reason, dead, running);
}

static void send_ping(struct h2_conn *c)
{
	if (c->ping_out || !c->t || c->mc.failed)
		return;
	if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, NULL) != 0)
		return;
	c->ping_out = true;
	clock_gettime(CLOCK_MONOTONIC, &c->ping_at);
	mux_set_timer(c->ping_timer, H2_PING_TIMEOUT_MS);
	mux_kick(&c->mc);
}

/* --- session I/O --- */

/* The session ended while a stream's header block was being decoded:
 * nghttp2 cannot decode a field over 64 KiB (HPACK state is per connection,
 * so that is a connection error in the library). That stream gets the
 * reason; the others fail with the connection (and go again when nothing of
 * theirs arrived). */
static void fail_heads(struct h2_conn *c)
{
	for (struct mux_stream *s = c->mc.streams; s && !c->mc.freeing; s = s->next)
		if (s->user && H2S(s)->in_head && !s->remote_ended)
			mux_stream_error(s, ERR_BAD_RESPONSE,
			                 "response head too large or not decodable", false, false);
}

static void check_session_over(struct h2_conn *c)
{
	bool open = false;

	if (c->mc.failed || c->mc.freeing || nghttp2_session_want_read(c->session) ||
	    nghttp2_session_want_write(c->session))
		return;
	for (struct mux_stream *s = c->mc.streams; s; s = s->next)
		open = open || s->open;
	if (c->mc.goaway && !open)
		return; /* a clean end: settle() closes when the streams drained */
	log_debug("h2: session with %s ended", origin(c));
	fail_heads(c);
	conn_fail(c, ERR_CLOSED, "HTTP/2 session ended (protocol error)", false);
}

/* nghttp2's frames into the transport's output while it has room; false
 * when the session failed (the error is the kick's to tell). */
static bool pump(struct h2_conn *c, ssize_t *err)
{
	struct evbuffer *out = transport_output(c->t);

	*err = 0;
	c->in_session = true;
	while (evbuffer_get_length(out) < TRANSPORT_BUF && !c->mc.freeing) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(c->session, &data);
		if (n < 0) {
			*err = n;
			break;
		}
		if (n == 0)
			break;
		evbuffer_add(out, data, (size_t)n);
	}
	c->in_session = false;
	return *err == 0;
}

static void flush(struct h2_conn *c)
{
	ssize_t n;

	if (!c->t || c->mc.failed || c->mc.freeing || c->in_session)
		return;
	if (!pump(c, &n)) {
		log_debug("h2: sending to %s failed: %s", origin(c), nghttp2_strerror((int)n));
		conn_fail(c, ERR_CLOSED, "HTTP/2 session error", false);
		return;
	}
	mux_send_ready(&c->mc);
	check_session_over(c);
}

static void recv_all(struct h2_conn *c)
{
	struct evbuffer *in = transport_input(c->t);

	while (evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		ssize_t n;

		evbuffer_peek(in, -1, NULL, &v, 1);
		c->in_session = true;
		n = nghttp2_session_mem_recv(c->session, v.iov_base, v.iov_len);
		c->in_session = false;
		if (c->mc.freeing || c->mc.failed)
			return;
		if (n < 0 && c->flooded) {
			/* the GOAWAY (ENHANCE_YOUR_CALM) goes out if it can */
			const uint8_t *data;
			ssize_t k;
			while ((k = nghttp2_session_mem_send(c->session, &data)) > 0)
				evbuffer_add(transport_output(c->t), data, (size_t)k);
			conn_fail(c, ERR_CLOSED, "HTTP/2 origin flooded the connection", false);
			return;
		}
		if (n < 0) {
			log_debug("h2: error from %s: %s", origin(c), nghttp2_strerror((int)n));
			conn_fail(c, ERR_CLOSED, "HTTP/2 protocol error", false);
			return;
		}
		evbuffer_drain(in, v.iov_len);
	}
}

static void on_read(void *ctx)
{
	struct h2_conn *c = ctx;

	mux_hold(&c->mc);
	if (!c->mc.failed && !c->mc.freeing) {
		recv_all(c);
		flush(c);
	}
	mux_release(&c->mc);
}

static void on_drain(void *ctx)
{
	struct h2_conn *c = ctx;

	mux_hold(&c->mc);
	flush(c);
	mux_release(&c->mc);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct h2_conn *c = ctx;

	(void)err;
	if (ev == TRANSPORT_CONNECTED)
		return;
	mux_hold(&c->mc);
	if (ev == TRANSPORT_EOF && !c->mc.failed && !c->mc.freeing)
		recv_all(c);
	if (!c->mc.failed && !c->mc.freeing) {
		log_debug("h2: connection to %s ended: %s", origin(c), reason ? reason : "closed");
		conn_fail(c, ERR_CLOSED, reason ? reason : "connection closed", false);
	}
	mux_release(&c->mc);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct h2_conn *c = arg;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	mux_deliver_errors(&c->mc);
	if (!c->mc.freeing && !c->mc.failed && c->t &&
	    evbuffer_get_length(transport_input(c->t)) > 0)
		recv_all(c);
	flush(c);
	mux_offer(&c->mc);
	mux_release(&c->mc);
}

static void on_ping_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct h2_conn *c = arg;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	log_debug("h2: %s did not answer PING in %d ms: closing", origin(c), H2_PING_TIMEOUT_MS);
	conn_fail(c, ERR_CLOSED, "origin stopped answering PING", true);
	mux_release(&c->mc);
}

static void on_idle_timer(void *arg)
{
	struct h2_conn *c = arg;

	mux_hold(&c->mc);
	if (!c->mc.failed && mux_live(&c->mc) == 0) {
		if (!c->released) { /* the idle period's first step */
			uint64_t idle = ms_since(&c->idle_since);
			c->released = true;
			release_idle(c);
			if (idle < c->idle_ping_ms) {
				deadline_set(&c->idle_timer, c->idle_ping_ms - idle);
				mux_release(&c->mc);
				return;
			}
		}
		send_ping(c);
		deadline_set(&c->idle_timer, c->idle_ping_ms);
	}
	mux_release(&c->mc);
}

/* An ACK answered what left at t: a round-trip sample (smoothed 7/8). */
static void rtt_sample(struct h2_conn *c, const struct timespec *t)
{
	struct timespec now;
	uint64_t us;

	clock_gettime(CLOCK_MONOTONIC, &now);
	us = (uint64_t)(now.tv_sec - t->tv_sec) * 1000000 +
	     (uint64_t)((now.tv_nsec - t->tv_nsec) / 1000);
	if (us == 0)
		us = 1;
	c->rtt_us = c->rtt_us ? (c->rtt_us * 7 + us) / 8 : us;
}

/* --- nghttp2 callbacks --- */

static struct h2_stream *stream_of(nghttp2_session *session, int32_t id)
{
	return id > 0 ? nghttp2_session_get_stream_user_data(session, id) : NULL;
}

static int flood_count(struct h2_conn *c, nghttp2_session *session, enum h2_flood kind);

/* Counts the frames that carry no response; past a limit, the origin is
 * flooding us: ENHANCE_YOUR_CALM and the connection ends. */
static int cb_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *ud)
{
	struct h2_conn *c = ud;
	enum h2_flood kind;

	switch (hd->type) {
	case NGHTTP2_PING:
		kind = FLOOD_PING;
		break;
	case NGHTTP2_SETTINGS:
		kind = FLOOD_SETTINGS;
		break;
	case NGHTTP2_RST_STREAM:
		kind = FLOOD_RST;
		break;
	case NGHTTP2_WINDOW_UPDATE: /* counted by increment: cb_frame_recv */
		return 0;
	case NGHTTP2_DATA:
		if (hd->length > 0 || (hd->flags & NGHTTP2_FLAG_END_STREAM))
			return 0;
		kind = FLOOD_EMPTY;
		break;
	case NGHTTP2_HEADERS:
	case NGHTTP2_CONTINUATION:
	case NGHTTP2_GOAWAY:
	case NGHTTP2_PUSH_PROMISE:
		return 0;
	default:
		kind = FLOOD_OTHER;
		break;
	}
	return flood_count(c, session, kind);
}

/* One more frame of a kind: 0, or past the limit NGHTTP2_ERR_CALLBACK_FAILURE
 * with the session terminated (ENHANCE_YOUR_CALM). */
static int flood_count(struct h2_conn *c, nghttp2_session *session, enum h2_flood kind)
{
	if (ms_since(&c->flood_since) >= 1000) {
		clock_gettime(CLOCK_MONOTONIC, &c->flood_since);
		memset(c->flood, 0, sizeof(c->flood));
	}
	if (++c->flood[kind] <= h2_floods[kind].limit)
		return 0;
	log_info("h2: %s sent more than %u %s frames in a second (a flood): closing the connection",
	         origin(c), h2_floods[kind].limit, h2_floods[kind].name);
	c->flooded = h2_floods[kind].name;
	if (c->mc.env.floods) /* muxd_upstream_flood_total{proto="h2"} */
		c->mc.env.floods[UPSTREAM_FLOOD_H2_PING + kind]++;
	nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
	return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int cb_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t len,
                    void *ud)
{
	struct h2_conn *c = ud;

	(void)session;
	log_debug("h2: %s: %.*s (%s)", origin(c), (int)len, msg, nghttp2_strerror(lib_error_code));
	return 0;
}

static int cb_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s;

	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (frame->hd.type != NGHTTP2_HEADERS || !(s = stream_of(session, frame->hd.stream_id)))
		return 0;
	mux_begin_head(&s->ms);
	s->in_head = true;
	return 0;
}

static int cb_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s;
	const char *bad = NULL;

	(void)flags;
	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (frame->hd.type != NGHTTP2_HEADERS || !(s = stream_of(session, frame->hd.stream_id)) ||
	    !s->ms.user)
		return 0;
	if ((bad = mux_head_field(&s->ms, name, namelen, value, valuelen))) {
		s->ms.bad = bad;
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	return 0;
}

/* A response head (interim or final) arrived complete. */
static void got_head(struct h2_conn *c, struct h2_stream *s, bool end)
{
	if (s->ms.status < 100) {
		nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, (int32_t)s->ms.id,
		                          NGHTTP2_PROTOCOL_ERROR);
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE, "malformed response (no valid :status)",
		                 false, false);
		mux_kick(&c->mc);
		return;
	}
	mux_got_head(&s->ms, end);
}

static int cb_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, frame->hd.stream_id);
	bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;

	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		if (s)
			s->in_head = false;
		if (!s || !s->ms.user)
			break;
		if (!s->ms.got_final) {
			got_head(c, s, end);
		} else if (end) { /* trailers */
			mux_remote_end(&s->ms);
		}
		break;
	case NGHTTP2_DATA:
		if (s && s->ms.user && end)
			mux_remote_end(&s->ms);
		break;
	case NGHTTP2_RST_STREAM:
		if (s)
			s->ms.peer_reset = true;
		break;
	case NGHTTP2_WINDOW_UPDATE:
		/* a peer reading our upload opens windows by many KiB at a time;
		 * tiny increments in bulk are a flood */
		if (frame->window_update.window_size_increment < H2_SMALL_WINDOW_UPDATE)
			return flood_count(c, session, FLOOD_WINDOW);
		break;
	case NGHTTP2_SETTINGS:
		/* the origin's limits are known: streams may be opened now */
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->settings_seen) {
			c->settings_seen = true;
			c->mc.base.warming = false;
			c->mc.want_available = true;
			mux_kick(&c->mc);
		}
		if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->settings_at.tv_sec) {
			rtt_sample(c, &c->settings_at);
			c->settings_at.tv_sec = 0;
		}
		break;
	case NGHTTP2_GOAWAY:
		log_debug("h2: GOAWAY from %s last_stream_id=%d error=%s", origin(c),
		          frame->goaway.last_stream_id,
		          nghttp2_http2_strerror(frame->goaway.error_code));
		c->mc.goaway = true;
		c->mc.base.reusable = false;
		break;
	case NGHTTP2_PING:
		if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->ping_out) {
			rtt_sample(c, &c->ping_at);
			c->ping_out = false;
			evtimer_del(c->ping_timer);
			if (c->released)
				release_idle(c); /* the PING wrote to the frame buffer again */
		}
		break;
	default:
		break;
	}
	return 0;
}

static int cb_invalid_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                                 int lib_error_code, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, frame->hd.stream_id);

	(void)lib_error_code;
	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (s && !s->ms.bad)
		s->ms.bad = frame->hd.type == NGHTTP2_DATA ? "malformed response body"
		                                           : "malformed response head";
	return 0;
}

static int cb_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, stream_id);

	(void)flags;
	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user) {
		nghttp2_session_consume(session, stream_id, len); /* nobody wants it */
		return 0;
	}
	s->ms.got_any = true;
	if (len == 0)
		return 0;
	if (evbuffer_add(s->ms.body, data, len) != 0) {
		nghttp2_session_consume(session, stream_id, len);
		s->ms.bad = "out of memory";
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	mux_got_body(&s->ms, len);
	return 0;
}

static int cb_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t code, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, stream_id);

	if (c->mc.freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	mux_stream_closed(&s->ms, code == NGHTTP2_REFUSED_STREAM || s->not_sent,
	                  code == NGHTTP2_PROTOCOL_ERROR, nghttp2_http2_strerror(code));
	return 0;
}

static int cb_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int err,
                             void *ud)
{
	struct h2_stream *s = stream_of(session, frame->hd.stream_id);

	(void)err;
	(void)ud;
	if (s && frame->hd.type == NGHTTP2_HEADERS && !s->ms.got_any)
		s->not_sent = true;
	return 0;
}

/* The request body: what send_body() buffered, then the end (and trailers). */
static ssize_t data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct h2_stream *s = source->ptr;
	size_t have = evbuffer_get_length(s->sendbuf);
	size_t n = have < length ? have : length;

	(void)ud;
	if (n > 0) {
		evbuffer_remove(s->sendbuf, buf, n);
		if (s->ms.user && !s->ms.send_ended && have - n < TRANSPORT_BUF / 2)
			s->ms.send_ready = true;
		if (s->ms.user && !s->ms.remote_ended)
			mux_arm(&s->ms);
	}
	if (n == have && s->ms.send_ended) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		s->ms.eof_sent = true;
		if (s->ms.trailers_out.len > 0) {
			nghttp2_nv nv[HTTP1_MAX_FIELDS];
			size_t nnv = 0;
			char *p = s->ms.trailers_out.p, *n, *v;
			while (nnv < HTTP1_MAX_FIELDS && (p = fields_next_line(p, &n, &v))) {
				if (!n || fields_dropped(n, strlen(n), v, strlen(v)))
					continue;
				for (char *q = n; *q; q++)
					if (*q >= 'A' && *q <= 'Z')
						*q = (char)(*q - 'A' + 'a');
				nv[nnv++] = (nghttp2_nv){(uint8_t *)n, (uint8_t *)v, strlen(n),
				                         strlen(v), NGHTTP2_NV_FLAG_NONE};
			}
			if (nnv > 0 && nghttp2_submit_trailer(session, stream_id, nv, nnv) == 0)
				*data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
		}
		return (ssize_t)n;
	}
	if (n == 0)
		return NGHTTP2_ERR_DEFERRED;
	return (ssize_t)n;
}

/* --- stream operations --- */

#define NV(n, nl, v, vl)                                                                           \
	((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), (nl), (vl), NGHTTP2_NV_FLAG_NONE})

static void send_head(struct mux_stream *ms, const struct upstream_request *r)
{
	struct h2_stream *s = H2S(ms);
	struct h2_conn *c = s->c;
	nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
	size_t names = 0, nnv = 0;
	char clen[24], *lower = NULL;
	nghttp2_nv *nva = NULL;
	int32_t id = -1;
	bool early = false;

	mux_hold(&c->mc);
	if (!s->ms.user || s->ms.head_sent)
		goto out;
	s->ms.head_sent = true;
	s->ms.is_head = strcmp(r->method, "HEAD") == 0;
	s->ms.is_connect = strcmp(r->method, "CONNECT") == 0;
	if (!c->mc.name)
		mux_set_name(&c->mc, "%s", r->authority);
	for (size_t i = 0; i < r->nfields; i++)
		names += r->fields[i].name_len;
	nva = calloc(r->nfields + 7, sizeof(*nva));
	lower = malloc(names + 1);
	if (!nva || !lower || c->mc.failed)
		goto fail;
	nva[nnv++] = NV(":method", 7, r->method, strlen(r->method));
	if (s->ms.is_connect && r->protocol) /* extended CONNECT (RFC 8441 4) */
		nva[nnv++] = NV(":protocol", 9, r->protocol, strlen(r->protocol));
	/* a plain CONNECT names only the authority (RFC 9113 8.5) */
	if (!s->ms.is_connect || r->protocol)
		nva[nnv++] = NV(":scheme", 7, r->scheme, strlen(r->scheme));
	nva[nnv++] = NV(":authority", 10, r->authority, strlen(r->authority));
	if (!s->ms.is_connect || r->protocol)
		nva[nnv++] = NV(":path", 5, r->path, strlen(r->path));
	names = 0;
	for (size_t i = 0; i < r->nfields; i++) {
		const struct upstream_field *f = &r->fields[i];
		char *n = lower + names;
		if (fields_dropped(f->name, f->name_len, f->value, f->value_len))
			continue;
		for (size_t k = 0; k < f->name_len; k++) {
			char ch = f->name[k];
			n[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
		}
		names += f->name_len;
		nva[nnv++] = NV(n, f->name_len, f->value, f->value_len);
	}
	if (c->mc.fwd.has_auth) /* to a parent that forwards it (forward.h) */
		nva[nnv++] = NV("proxy-authorization", 19, c->mc.fwd.auth, strlen(c->mc.fwd.auth));
	if (r->has_body && r->content_length >= 0) {
		int len = snprintf(clen, sizeof(clen), "%lld", (long long)r->content_length);
		nva[nnv++] = NV("content-length", 14, clen, (size_t)len);
	}
	/* 0-RTT: a replay-safe request while everything before it was safe too
	 * goes as early data, saying so (RFC 8470) */
	early = c->early && !c->early_unsafe && c->t && chain_early(c->t) && r->early_data &&
	        !r->has_body;
	if (early)
		nva[nnv++] = NV("early-data", 10, "1", 1);
	else if (c->early)
		c->early_unsafe = true;
	s->ms.req_body = r->has_body;
	s->ms.eof_sent = !r->has_body;
	id = nghttp2_submit_request(c->session, NULL, nva, nnv, r->has_body ? &prd : NULL, s);
fail:
	free(nva);
	free(lower);
	if (id < 0) {
		/* reported from the kick event: the caller is still in its call */
		if (c->mc.failed)
			mux_fail_later(&s->ms, ERR_CLOSED, "connection closed");
		else
			mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot open an HTTP/2 stream");
		if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
			c->mc.base.reusable = false;
	} else {
		s->ms.id = id;
		s->ms.open = true;
		mux_arm(&s->ms);
		ssize_t err;
		/* out now (the TLS layer takes early data in this event only),
		 * without calling anyone back: a failure is the kick's */
		if (early && c->t && !c->mc.failed && !c->in_session && pump(c, &err))
			chain_early_safe(c->t, evbuffer_get_length(transport_output(c->t)));
	}
	mux_kick(&c->mc);
out:
	mux_release(&c->mc);
}

static uint64_t send_used(const struct mux_stream *ms)
{
	return evbuffer_get_length(H2S(ms)->sendbuf);
}

static void send_buffer(struct mux_stream *ms, const void *data, size_t len)
{
	evbuffer_add(H2S(ms)->sendbuf, data, len);
}

static uint64_t rtt_us(struct mux_conn *mc)
{
	return ((struct h2_conn *)mc)->rtt_us;
}

static void grow(struct mux_stream *ms, uint64_t window)
{
	if (ms->id > 0 && window <= INT32_MAX)
		nghttp2_session_set_local_window_size(H2S(ms)->c->session, NGHTTP2_FLAG_NONE,
		                                      (int32_t)ms->id, (int32_t)window);
}

static const struct mux_ops h2_mux_ops = {
    .name = "h2",
    .window = H2_STREAM_WINDOW,
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

static unsigned h2_free_slots(struct upstream_conn *uc)
{
	struct h2_conn *c = (struct h2_conn *)uc;
	uint32_t max;
	unsigned live;

	if (!uc->reusable || c->mc.goaway || c->mc.failed || c->mc.told || c->mc.freeing ||
	    (!c->settings_seen && !c->early))
		return 0;
	max = nghttp2_session_get_remote_settings(c->session,
	                                          NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
	if (max > H2_MAX_STREAMS)
		max = H2_MAX_STREAMS;
	live = mux_live(&c->mc);
	return live < max ? max - live : 0;
}

static struct upstream_stream *h2_open_stream(struct upstream_conn *uc,
                                              const struct upstream_stream_cbs *cbs, void *ctx)
{
	struct h2_conn *c = (struct h2_conn *)uc;
	struct h2_stream *s;
	bool was_idle;

	if (h2_free_slots(uc) == 0)
		return NULL;
	if (!(s = H2S(mux_stream_new(&c->mc, sizeof(*s), cbs, ctx))))
		return NULL;
	s->sendbuf = evbuffer_new();
	if (!s->ms.body || !s->sendbuf || !s->ms.timer.ev) {
		stream_free(&s->ms);
		return NULL;
	}
	s->c = c;
	was_idle = mux_live(&c->mc) == 0;
	mux_stream_link(&s->ms);
	if (was_idle) {
		deadline_clear(&c->idle_timer);
		if (ms_since(&c->idle_since) >= H2_PING_AFTER_IDLE_MS)
			send_ping(c); /* is the origin still there? */
	}
	return &s->ms.base;
}

static void h2_close(struct upstream_conn *uc)
{
	mux_close((struct mux_conn *)uc);
}

/* Kept warm: PING at least every interval_ms while idle, so that the
 * origin's idle limit never passes (and a dead origin is noticed). */
static void h2_keep_warm(struct upstream_conn *uc, uint64_t interval_ms)
{
	struct h2_conn *c = (struct h2_conn *)uc;

	if (interval_ms == 0 || interval_ms >= c->idle_ping_ms)
		return;
	c->idle_ping_ms = interval_ms;
	if (c->t && !c->mc.failed && mux_live(&c->mc) == 0)
		deadline_set(&c->idle_timer, c->idle_ping_ms);
}

static bool h2_peer(struct upstream_conn *uc, struct sockaddr_storage *addr, const void **cert,
                    size_t *cert_len)
{
	struct h2_conn *c = (struct h2_conn *)uc;

	return c->t && !c->mc.failed && chain_peer(c->t, addr, cert, cert_len);
}

/* The origin's SETTINGS allow extended CONNECT (RFC 8441 3). */
static bool h2_connect_protocol(struct upstream_conn *uc)
{
	struct h2_conn *c = (struct h2_conn *)uc;

	return c->settings_seen && !c->mc.failed && !c->mc.goaway &&
	       nghttp2_session_get_remote_settings(c->session,
	                                           NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1;
}

static const struct upstream_conn_ops h2_conn_ops = {
    .open_stream = h2_open_stream,
    .free_slots = h2_free_slots,
    .is_idle = mux_is_idle,
    .close = h2_close,
    .streams = mux_streams,
    .keep_warm = h2_keep_warm,
    .peer = h2_peer,
    .connect_protocol = h2_connect_protocol,
};

static bool session_new(struct h2_conn *c)
{
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	uint64_t conn_window = (uint64_t)c->mc.params.max_conn_window_kib * 1024;
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
	    /* advisory: a larger response head is a stream error here */
	    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HTTP1_MAX_HEAD},
	};
	int rv;

	if (nghttp2_session_callbacks_new(&cb) != 0)
		return false;
	if (nghttp2_option_new(&opt) != 0) {
		nghttp2_session_callbacks_del(cb);
		return false;
	}
	nghttp2_session_callbacks_set_on_begin_frame_callback(cb, cb_begin_frame);
	nghttp2_session_callbacks_set_error_callback2(cb, cb_error);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
	nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, cb_invalid_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
	nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, cb_frame_not_send);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_peer_max_concurrent_streams(opt, H2_MAX_STREAMS);
	nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
	nghttp2_option_set_max_settings(opt, 32);
	nghttp2_option_set_max_continuations(opt, 8);
	h2_mem_init(&c->mem);
	rv = nghttp2_session_client_new3(&c->session, cb, c, opt, h2_mem_nghttp2(&c->mem));
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	if (rv != 0) {
		c->session = NULL;
		return false;
	}
	h2_mem_mark_frames(&c->mem);
	return nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv,
	                               sizeof(iv) / sizeof(iv[0])) == 0 &&
	       nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
	                                             conn_window < INT32_MAX ? (int32_t)conn_window
	                                                                     : INT32_MAX) == 0;
}

struct upstream_conn *h2_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params,
                                  const struct upstream_forward *fwd, struct transport *t,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	static const struct transport_cbs tcbs = {on_read, on_drain, on_event};
	struct h2_conn *c = calloc(1, sizeof(*c));
	bool ok;

	if (!c)
		return NULL;
	ok = mux_conn_init(&c->mc, env, params, &h2_mux_ops, &h2_conn_ops, PROTO_H2, owner_cbs,
	                   owner, on_kick) &&
	     fwd_mode_init(&c->mc.fwd, fwd);
	c->ping_timer = evtimer_new(env->transport.base, on_ping_timeout, c);
	if (!deadline_init(&c->idle_timer, env->transport.base, on_idle_timer, c) || !ok ||
	    !c->ping_timer || !session_new(c)) {
		conn_free(&c->mc); /* c->t is still NULL: the caller keeps the transport */
		return NULL;
	}
	c->t = t;
	c->idle_ping_ms = H2_IDLE_PING_MS;
	clock_gettime(CLOCK_MONOTONIC, &c->idle_since);
	c->flood_since = c->idle_since;
	c->settings_at = c->idle_since; /* SETTINGS leave with the preface */
	arm_idle(c);
	transport_set_cbs(t, &tcbs, c);
	t->ops->set_reading(t, true);
	if (chain_early(t)) { /* 0-RTT: streams before the origin's SETTINGS */
		c->early = true;
		c->mc.base.warming = false;
	}
	mux_kick(&c->mc); /* the preface and SETTINGS */
	return &c->mc.base;
}
