/*
 * h2 — HTTP/2 upstream connections: one nghttp2 client session over a
 * transport whose ALPN chose "h2", carrying up to H2_MAX_STREAMS request/
 * response streams at once behind the upstream interface.
 * Owns: the session, the transport, and every stream's buffers (request body
 * waiting for the data provider, the decoded response head, body and
 * trailers).
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
 * stream's window (65535) reopens only as the exchange takes bytes out of the
 * stream's body buffer (consumed), so a slow client leaves at most one window
 * of response body here; the connection window is 16 MiB so that one stalled
 * stream never blocks the others. A request body waits in a per-stream buffer
 * of at most TRANSPORT_BUF (send_space).
 *
 * Liveness: a connection that is handed a stream after it sat without streams
 * for H2_PING_AFTER_IDLE_MS sends a PING at once; an idle connection sends
 * one every H2_IDLE_PING_MS. A PING not acknowledged within H2_PING_TIMEOUT_MS
 * means the origin is gone: its streams fail with ERR_CLOSED (nothing
 * received, so replayable requests are retried on a fresh connection) and the
 * connection leaves the pool as EVICT_DEAD.
 *
 * Endings: GOAWAY makes the connection take no new streams; streams above
 * last_stream_id fail with ERR_UNPROCESSED (nghttp2 closes them with
 * REFUSED_STREAM), the others finish, and then the connection closes with
 * EVICT_GOAWAY. EOF, a transport error or a fatal session error fails the
 * unfinished streams with ERR_CLOSED; an idle connection leaves silently
 * (EVICT_DEAD).
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
#include "upstream/upstream.h"

#define H2_MAX_STREAMS 256                /* streams per connection, whatever the peer allows */
#define H2_STREAM_WINDOW 65535            /* SETTINGS_INITIAL_WINDOW_SIZE */
#define H2_CONN_WINDOW (16 * 1024 * 1024) /* connection-level receive window */
#define H2_PING_AFTER_IDLE_MS 2000        /* idle this long: PING on the next stream */
#define H2_PING_TIMEOUT_MS 3000           /* no PING ACK by then: the connection is dead */
#define H2_IDLE_PING_MS 30000             /* PING interval while idle */

struct h2_conn;

struct h2_stream {
	struct upstream_stream base;
	struct h2_conn *c;
	struct h2_stream *next;
	int32_t id; /* 0 until the request is submitted */
	bool user;  /* the exchange still gets callbacks */
	bool open;  /* the session knows the stream (submitted, not closed) */
	bool head_sent;
	bool is_head;
	bool is_connect; /* a tunnel: no response timeout once it is up */
	bool req_body;   /* a data provider feeds the request body */
	bool send_ended; /* send_end() was called */
	bool eof_sent;   /* the request's end is submitted */
	bool send_ready; /* call on_send_ready after this write-out */
	bool got_any;    /* any response frame arrived */
	bool got_final;  /* the final (non-1xx) head arrived */
	bool remote_ended;
	bool peer_reset;  /* RST_STREAM came from the origin */
	bool not_sent;    /* the request HEADERS never left */
	const char *bad;  /* why the response is malformed */
	bool err_pending; /* deliver err from the kick event */
	enum muxd_err err;
	const char *err_reason;
	char reason[96];
	int status;
	struct sbuf hdrs; /* the head being received: name\0value\0... */
	size_t nhdrs;
	struct http1_msg msg;
	struct sbuf trailers;     /* response trailers */
	struct sbuf trailers_out; /* request trailers */
	struct evbuffer *sendbuf;
	struct evbuffer *body;
	size_t unconsumed; /* body bytes not yet given back to the window */
	struct event *timer;
};

struct h2_conn {
	struct upstream_conn base;
	struct muxd *m;
	struct config *cfg;
	struct transport *t; /* NULL once failed */
	nghttp2_session *session;
	struct h2_stream *streams;
	struct event *kick;       /* deferred write-out, errors, on_available */
	struct event *ping_timer; /* PING ACK deadline */
	struct event *idle_timer; /* PING interval while idle */
	struct timespec idle_since;
	char authority[300]; /* for log lines */
	bool settings_seen;  /* the peer's SETTINGS arrived: its limits are known */
	bool ping_out;
	bool in_session; /* inside mem_recv or mem_send */
	bool want_available;
	bool goaway;
	bool failed;  /* transport gone or session dead */
	bool told;    /* the owner was told on_closed (or closed us) */
	bool freeing; /* free when the last hold is released */
	int holds;
};

static void stream_free(struct h2_stream *s)
{
	free(s->hdrs.p);
	free(s->trailers.p);
	free(s->trailers_out.p);
	if (s->sendbuf)
		evbuffer_free(s->sendbuf);
	if (s->body)
		evbuffer_free(s->body);
	if (s->timer)
		event_free(s->timer);
	free(s);
}

static void conn_free(struct h2_conn *c)
{
	while (c->streams) {
		struct h2_stream *s = c->streams;
		c->streams = s->next;
		stream_free(s);
	}
	if (c->session)
		nghttp2_session_del(c->session);
	if (c->kick)
		event_free(c->kick);
	if (c->ping_timer)
		event_free(c->ping_timer);
	if (c->idle_timer)
		event_free(c->idle_timer);
	if (c->t)
		transport_close(c->t);
	config_unref(c->cfg);
	free(c);
}

static const char *origin(const struct h2_conn *c)
{
	return c->authority[0] ? c->authority : "origin";
}

static void set_timer(struct event *ev, uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	evtimer_add(ev, &tv);
}

static uint64_t ms_since(const struct timespec *t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

static void kick(struct h2_conn *c)
{
	if (!c->freeing)
		event_active(c->kick, EV_TIMEOUT, 0);
}

static unsigned live_count(const struct h2_conn *c)
{
	unsigned n = 0;
	for (const struct h2_stream *s = c->streams; s; s = s->next)
		n += s->user || s->open;
	return n;
}

static void hold(struct h2_conn *c)
{
	c->holds++;
}

static void settle(struct h2_conn *c);

/* Returns false when the connection is being freed. */
static bool release(struct h2_conn *c)
{
	if (c->holds > 1) {
		c->holds--;
		return !c->freeing;
	}
	if (!c->freeing)
		settle(c); /* still held once: nested hold/release do not recurse */
	c->holds = 0;
	if (c->freeing) {
		conn_free(c);
		return false;
	}
	return true;
}

/* The owner forgets the connection; it is freed once no stream is left. */
static void tell_owner(struct h2_conn *c, enum evict_reason why)
{
	if (c->told)
		return;
	c->told = true;
	c->base.reusable = false;
	hold(c);
	c->base.owner_cbs.on_closed(c->base.owner, &c->base, why);
	release(c);
}

/* Free finished streams; close after GOAWAY; offer freed slots. Runs with
 * exactly one hold, when no callback is running. */
static void settle(struct h2_conn *c)
{
	struct h2_stream **pp = &c->streams;
	unsigned live = 0, freed = 0;

	while (*pp) {
		struct h2_stream *s = *pp;
		if (!s->user && !s->open) {
			*pp = s->next;
			stream_free(s);
			freed++;
		} else {
			live++;
			pp = &s->next;
		}
	}
	if (live == 0 && freed > 0 && !c->told) {
		clock_gettime(CLOCK_MONOTONIC, &c->idle_since);
		if (c->t)
			set_timer(c->idle_timer, H2_IDLE_PING_MS);
	}
	if (!c->told && live == 0 && (c->goaway || !c->base.reusable)) {
		log_debug("h2: connection to %s done after GOAWAY", origin(c));
		tell_owner(c, EVICT_GOAWAY);
	}
	if (c->told) {
		if (live == 0)
			c->freeing = true;
		return;
	}
	if (freed > 0 && c->base.reusable) {
		c->want_available = true;
		kick(c);
	}
}

static void arm(struct h2_stream *s)
{
	if (s->is_connect && s->got_final) {
		evtimer_del(s->timer); /* an established tunnel has its own idle timer */
		return;
	}
	if (s->c->cfg->response_timeout_ms > 0)
		set_timer(s->timer, s->c->cfg->response_timeout_ms);
}

/* Give bytes still held for the stream back to the flow-control windows. */
static void give_back(struct h2_stream *s)
{
	if (s->unconsumed > 0 && s->id > 0)
		nghttp2_session_consume(s->c->session, s->id, s->unconsumed);
	s->unconsumed = 0;
	evbuffer_drain(s->body, evbuffer_get_length(s->body));
}

/* No more callbacks for the stream; reset it when it still runs. */
static void detach(struct h2_stream *s, bool rst)
{
	struct h2_conn *c = s->c;

	s->user = false;
	evtimer_del(s->timer);
	if (rst && s->open && !(s->remote_ended && s->eof_sent))
		nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
	give_back(s);
	evbuffer_drain(s->sendbuf, evbuffer_get_length(s->sendbuf));
	kick(c);
}

static void stream_error(struct h2_stream *s, enum muxd_err err, const char *reason, bool nothing,
                         bool rst)
{
	struct upstream_stream_cbs cbs = s->base.cbs;
	void *ctx = s->base.ctx;

	if (!s->user)
		return;
	detach(s, rst);
	cbs.on_error(ctx, err, reason, nothing);
}

/* The response is complete and its body was taken: on_end. */
static void maybe_end(struct h2_stream *s)
{
	struct upstream_stream_cbs cbs = s->base.cbs;
	void *ctx = s->base.ctx;

	if (!s->user || !s->remote_ended || evbuffer_get_length(s->body) > 0)
		return;
	detach(s, true); /* resets only a request that is still being sent */
	cbs.on_end(ctx, s->trailers.p ? s->trailers.p : "");
}

/*
 * The connection cannot go on: unfinished streams fail, the owner forgets
 * it. Streams whose response is complete may still drain their body. dead:
 * always EVICT_DEAD; else EVICT_DEAD when idle, EVICT_COUNT ("not an
 * eviction") when streams were running.
 */
static void conn_fail(struct h2_conn *c, enum muxd_err err, const char *reason, bool dead)
{
	bool running = false;

	if (c->failed || c->freeing)
		return;
	c->failed = true;
	c->base.reusable = false;
	for (struct h2_stream *s = c->streams; s; s = s->next) {
		running = running || s->user || s->open;
		s->open = false; /* the session is over */
	}
	evtimer_del(c->ping_timer);
	evtimer_del(c->idle_timer);
	if (c->t) {
		transport_close(c->t);
		c->t = NULL;
	}
	hold(c);
	tell_owner(c, dead || !running ? EVICT_DEAD : EVICT_COUNT);
	for (struct h2_stream *s = c->streams; s && !c->freeing; s = s->next)
		if (s->user && !s->remote_ended)
			stream_error(s, err, reason, !s->got_any, false);
	release(c);
}

static void send_ping(struct h2_conn *c)
{
	if (c->ping_out || !c->t || c->failed)
		return;
	if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, NULL) != 0)
		return;
	c->ping_out = true;
	set_timer(c->ping_timer, H2_PING_TIMEOUT_MS);
	kick(c);
}

/* --- session I/O --- */

static void check_session_over(struct h2_conn *c)
{
	bool open = false;

	if (c->failed || c->freeing || nghttp2_session_want_read(c->session) ||
	    nghttp2_session_want_write(c->session))
		return;
	for (struct h2_stream *s = c->streams; s; s = s->next)
		open = open || s->open;
	if (c->goaway && !open)
		return; /* a clean end: settle() closes when the streams drained */
	log_debug("h2: session with %s ended", origin(c));
	conn_fail(c, ERR_CLOSED, "HTTP/2 session ended (protocol error)", false);
}

static void flush(struct h2_conn *c)
{
	struct evbuffer *out;

	if (!c->t || c->failed || c->freeing || c->in_session)
		return;
	out = transport_output(c->t);
	c->in_session = true;
	while (evbuffer_get_length(out) < TRANSPORT_BUF && !c->freeing) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(c->session, &data);
		if (n < 0) {
			c->in_session = false;
			log_debug("h2: sending to %s failed: %s", origin(c),
			          nghttp2_strerror((int)n));
			conn_fail(c, ERR_CLOSED, "HTTP/2 session error", false);
			return;
		}
		if (n == 0)
			break;
		evbuffer_add(out, data, (size_t)n);
	}
	c->in_session = false;
	for (struct h2_stream *s = c->streams; s && !c->freeing; s = s->next) {
		if (!s->send_ready)
			continue;
		s->send_ready = false;
		if (s->user && !s->send_ended && s->base.cbs.on_send_ready)
			s->base.cbs.on_send_ready(s->base.ctx);
	}
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
		if (c->freeing || c->failed)
			return;
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

	hold(c);
	if (!c->failed && !c->freeing) {
		recv_all(c);
		flush(c);
	}
	release(c);
}

static void on_drain(void *ctx)
{
	struct h2_conn *c = ctx;

	hold(c);
	flush(c);
	release(c);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct h2_conn *c = ctx;

	(void)err;
	if (ev == TRANSPORT_CONNECTED)
		return;
	hold(c);
	if (ev == TRANSPORT_EOF && !c->failed && !c->freeing)
		recv_all(c);
	if (!c->failed && !c->freeing) {
		log_debug("h2: connection to %s ended: %s", origin(c), reason ? reason : "closed");
		conn_fail(c, ERR_CLOSED, reason ? reason : "connection closed", false);
	}
	release(c);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct h2_conn *c = arg;

	(void)fd;
	(void)what;
	hold(c);
	for (struct h2_stream *s = c->streams; s && !c->freeing; s = s->next) {
		if (s->err_pending) {
			s->err_pending = false;
			stream_error(s, s->err, s->err_reason, true, true);
		}
	}
	if (!c->freeing && !c->failed && c->t && evbuffer_get_length(transport_input(c->t)) > 0)
		recv_all(c);
	flush(c);
	if (c->want_available && !c->freeing) {
		c->want_available = false;
		if (!c->told && c->base.ops->free_slots(&c->base) > 0)
			c->base.owner_cbs.on_available(c->base.owner, &c->base);
	}
	release(c);
}

static void on_ping_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct h2_conn *c = arg;

	(void)fd;
	(void)what;
	hold(c);
	log_debug("h2: %s did not answer PING in %d ms: closing", origin(c), H2_PING_TIMEOUT_MS);
	conn_fail(c, ERR_CLOSED, "origin stopped answering PING", true);
	release(c);
}

static void on_idle_timer(evutil_socket_t fd, short what, void *arg)
{
	struct h2_conn *c = arg;

	(void)fd;
	(void)what;
	hold(c);
	if (!c->failed && live_count(c) == 0) {
		send_ping(c);
		set_timer(c->idle_timer, H2_IDLE_PING_MS);
	}
	release(c);
}

static void on_stream_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct h2_stream *s = arg;
	struct h2_conn *c = s->c;

	(void)fd;
	(void)what;
	hold(c);
	log_debug("h2: stream %d to %s: no response in time", s->id, origin(c));
	stream_error(s, ERR_RESPONSE_TIMEOUT, "no response in time", !s->got_any, true);
	release(c);
}

/* --- nghttp2 callbacks --- */

static struct h2_stream *stream_of(nghttp2_session *session, int32_t id)
{
	return id > 0 ? nghttp2_session_get_stream_user_data(session, id) : NULL;
}

static int cb_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s;

	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (frame->hd.type != NGHTTP2_HEADERS || !(s = stream_of(session, frame->hd.stream_id)))
		return 0;
	s->got_any = true;
	s->hdrs.len = 0;
	s->nhdrs = 0;
	s->status = 0;
	return 0;
}

static int cb_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s;
	const char *bad = NULL;

	(void)flags;
	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (frame->hd.type != NGHTTP2_HEADERS || !(s = stream_of(session, frame->hd.stream_id)) ||
	    !s->user)
		return 0;
	if (s->got_final) {
		bad = fields_add_trailer(&s->trailers, name, namelen, value, valuelen);
	} else if (namelen > 0 && name[0] == ':') {
		if (namelen == 7 && memcmp(name, ":status", 7) == 0)
			s->status = fields_status(value, valuelen);
	} else {
		bad = fields_add_head(&s->hdrs, &s->nhdrs, name, namelen, value, valuelen);
	}
	if (bad) {
		s->bad = bad;
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	return 0;
}

/* A response head (interim or final) arrived complete. */
static void got_head(struct h2_conn *c, struct h2_stream *s, bool end)
{
	bool interim = s->status < 200;

	if (s->status < 100) {
		nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id,
		                          NGHTTP2_PROTOCOL_ERROR);
		stream_error(s, ERR_BAD_RESPONSE, "malformed response (no valid :status)", false,
		             false);
		kick(c);
		return;
	}
	fields_msg(&s->msg, s->hdrs.p, s->hdrs.len, s->nhdrs, s->status, s->is_head || end);
	if (!interim)
		s->got_final = true;
	if (end) {
		s->remote_ended = true;
		evtimer_del(s->timer);
	} else {
		arm(s);
	}
	s->base.cbs.on_head(s->base.ctx, &s->msg);
	if (end && !c->freeing)
		maybe_end(s);
}

static int cb_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, frame->hd.stream_id);
	bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;

	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		if (!s || !s->user)
			break;
		if (!s->got_final) {
			got_head(c, s, end);
		} else if (end) { /* trailers */
			s->remote_ended = true;
			evtimer_del(s->timer);
			maybe_end(s);
		}
		break;
	case NGHTTP2_DATA:
		if (s && s->user && end) {
			s->remote_ended = true;
			evtimer_del(s->timer);
			maybe_end(s);
		}
		break;
	case NGHTTP2_RST_STREAM:
		if (s)
			s->peer_reset = true;
		break;
	case NGHTTP2_SETTINGS:
		/* the origin's limits are known: streams may be opened now */
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->settings_seen) {
			c->settings_seen = true;
			c->base.warming = false;
			c->want_available = true;
			kick(c);
		}
		break;
	case NGHTTP2_GOAWAY:
		log_debug("h2: GOAWAY from %s last_stream_id=%d error=%s", origin(c),
		          frame->goaway.last_stream_id,
		          nghttp2_http2_strerror(frame->goaway.error_code));
		c->goaway = true;
		c->base.reusable = false;
		break;
	case NGHTTP2_PING:
		if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
			c->ping_out = false;
			evtimer_del(c->ping_timer);
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
	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (s && !s->bad)
		s->bad = frame->hd.type == NGHTTP2_DATA ? "malformed response body"
		                                        : "malformed response head";
	return 0;
}

static int cb_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, stream_id);

	(void)flags;
	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (!s || !s->user) {
		nghttp2_session_consume(session, stream_id, len); /* nobody wants it */
		return 0;
	}
	s->got_any = true;
	if (len == 0)
		return 0;
	if (evbuffer_add(s->body, data, len) != 0) {
		nghttp2_session_consume(session, stream_id, len);
		s->bad = "out of memory";
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	s->unconsumed += len;
	if (s->unconsumed >= H2_STREAM_WINDOW)
		evtimer_del(s->timer); /* the origin waits for us now */
	else
		arm(s);
	s->base.cbs.on_body(s->base.ctx);
	return 0;
}

static int cb_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t code, void *ud)
{
	struct h2_conn *c = ud;
	struct h2_stream *s = stream_of(session, stream_id);

	if (c->freeing)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	s->open = false;
	if (!s->user || s->remote_ended)
		return 0; /* detached, or complete: the body drains */
	if (code == NGHTTP2_REFUSED_STREAM || s->not_sent) {
		stream_error(s, ERR_UNPROCESSED, "stream refused by origin", true, false);
	} else if (s->bad) {
		stream_error(s, ERR_BAD_RESPONSE, s->bad, !s->got_any, false);
	} else if (s->peer_reset) {
		/* the origin acted on this stream: its reset is its answer, not a
		 * stale connection, so it is never retried */
		snprintf(s->reason, sizeof(s->reason), "stream reset by origin (%s)",
		         nghttp2_http2_strerror(code));
		stream_error(s, ERR_CLOSED, s->reason, false, false);
	} else if (code == NGHTTP2_PROTOCOL_ERROR) {
		stream_error(s, ERR_BAD_RESPONSE, "malformed response", !s->got_any, false);
	} else {
		snprintf(s->reason, sizeof(s->reason), "stream closed (%s)",
		         nghttp2_http2_strerror(code));
		stream_error(s, ERR_CLOSED, s->reason, !s->got_any, false);
	}
	return 0;
}

static int cb_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int err,
                             void *ud)
{
	struct h2_stream *s = stream_of(session, frame->hd.stream_id);

	(void)err;
	(void)ud;
	if (s && frame->hd.type == NGHTTP2_HEADERS && !s->got_any)
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
		if (s->user && !s->send_ended && have - n < TRANSPORT_BUF / 2)
			s->send_ready = true;
		if (s->user && !s->remote_ended)
			arm(s);
	}
	if (n == have && s->send_ended) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		s->eof_sent = true;
		if (s->trailers_out.len > 0) {
			nghttp2_nv nv[HTTP1_MAX_FIELDS];
			size_t nnv = 0;
			char *p = s->trailers_out.p, *n, *v;
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

static void s_send_head(struct upstream_stream *us, const struct upstream_request *r)
{
	struct h2_stream *s = (struct h2_stream *)us;
	struct h2_conn *c = s->c;
	nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
	size_t names = 0, nnv = 0;
	char clen[24], *lower = NULL;
	nghttp2_nv *nva = NULL;
	int32_t id = -1;

	hold(c);
	if (!s->user || s->head_sent)
		goto out;
	s->head_sent = true;
	s->is_head = strcmp(r->method, "HEAD") == 0;
	s->is_connect = strcmp(r->method, "CONNECT") == 0;
	if (!c->authority[0])
		snprintf(c->authority, sizeof(c->authority), "%s", r->authority);
	for (size_t i = 0; i < r->nfields; i++)
		names += r->fields[i].name_len;
	nva = calloc(r->nfields + 5, sizeof(*nva));
	lower = malloc(names + 1);
	if (!nva || !lower || c->failed)
		goto fail;
	nva[nnv++] = NV(":method", 7, r->method, strlen(r->method));
	if (!s->is_connect) /* CONNECT names only the authority (RFC 9113 8.5) */
		nva[nnv++] = NV(":scheme", 7, r->scheme, strlen(r->scheme));
	nva[nnv++] = NV(":authority", 10, r->authority, strlen(r->authority));
	if (!s->is_connect)
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
	if (r->has_body && r->content_length >= 0) {
		int len = snprintf(clen, sizeof(clen), "%lld", (long long)r->content_length);
		nva[nnv++] = NV("content-length", 14, clen, (size_t)len);
	}
	s->req_body = r->has_body;
	s->eof_sent = !r->has_body;
	id = nghttp2_submit_request(c->session, NULL, nva, nnv, r->has_body ? &prd : NULL, s);
fail:
	free(nva);
	free(lower);
	if (id < 0) {
		/* reported from the kick event: the caller is still in its call */
		s->err_pending = true;
		s->err = c->failed ? ERR_CLOSED : ERR_UNPROCESSED;
		s->err_reason = c->failed ? "connection closed" : "cannot open an HTTP/2 stream";
		if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
			c->base.reusable = false;
	} else {
		s->id = id;
		s->open = true;
		arm(s);
	}
	kick(c);
out:
	release(c);
}

static size_t s_send_space(struct upstream_stream *us)
{
	struct h2_stream *s = (struct h2_stream *)us;
	size_t used = evbuffer_get_length(s->sendbuf);

	if (!s->user || s->send_ended)
		return 0;
	return used >= TRANSPORT_BUF ? 0 : TRANSPORT_BUF - used;
}

static void s_send_body(struct upstream_stream *us, const void *data, size_t len)
{
	struct h2_stream *s = (struct h2_stream *)us;

	if (!s->user || s->send_ended || !s->req_body || len == 0)
		return;
	evbuffer_add(s->sendbuf, data, len);
	if (s->open)
		nghttp2_session_resume_data(s->c->session, s->id);
	kick(s->c);
}

static void s_send_end(struct upstream_stream *us, const char *trailers)
{
	struct h2_stream *s = (struct h2_stream *)us;

	if (!s->user || s->send_ended)
		return;
	s->send_ended = true;
	if (!s->req_body)
		return; /* END_STREAM went with the HEADERS */
	if (trailers && *trailers)
		sbuf_add(&s->trailers_out, trailers, strlen(trailers));
	if (s->open)
		nghttp2_session_resume_data(s->c->session, s->id);
	kick(s->c);
}

static struct evbuffer *s_body(struct upstream_stream *us)
{
	return ((struct h2_stream *)us)->body;
}

static void s_consumed(struct upstream_stream *us)
{
	struct h2_stream *s = (struct h2_stream *)us;
	struct h2_conn *c = s->c;
	size_t left = evbuffer_get_length(s->body);

	if (!s->user)
		return;
	hold(c);
	if (s->unconsumed > left) {
		if (s->id > 0)
			nghttp2_session_consume(c->session, s->id, s->unconsumed - left);
		s->unconsumed = left;
		kick(c);
	}
	if (s->remote_ended)
		maybe_end(s);
	else if (s->unconsumed < H2_STREAM_WINDOW && !evtimer_pending(s->timer, NULL))
		arm(s); /* the window is open again: wait for the origin */
	release(c);
}

static void s_cancel(struct upstream_stream *us)
{
	struct h2_stream *s = (struct h2_stream *)us;
	struct h2_conn *c = s->c;

	if (!s->user)
		return;
	hold(c);
	detach(s, true);
	release(c);
}

static const struct upstream_stream_ops h2_stream_ops = {
    .send_head = s_send_head,
    .send_space = s_send_space,
    .send_body = s_send_body,
    .send_end = s_send_end,
    .body = s_body,
    .consumed = s_consumed,
    .cancel = s_cancel,
};

/* --- connection operations --- */

static unsigned h2_free_slots(struct upstream_conn *uc)
{
	struct h2_conn *c = (struct h2_conn *)uc;
	uint32_t max;
	unsigned live;

	if (!uc->reusable || c->goaway || c->failed || c->told || c->freeing || !c->settings_seen)
		return 0;
	max = nghttp2_session_get_remote_settings(c->session,
	                                          NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
	if (max > H2_MAX_STREAMS)
		max = H2_MAX_STREAMS;
	live = live_count(c);
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
	if (!(s = calloc(1, sizeof(*s))))
		return NULL;
	s->body = evbuffer_new();
	s->sendbuf = evbuffer_new();
	s->timer = evtimer_new(c->m->base, on_stream_timeout, s);
	if (!s->body || !s->sendbuf || !s->timer) {
		stream_free(s);
		return NULL;
	}
	s->base.ops = &h2_stream_ops;
	s->base.cbs = *cbs;
	s->base.ctx = ctx;
	s->base.conn = uc;
	s->c = c;
	s->user = true;
	was_idle = live_count(c) == 0;
	s->next = c->streams;
	c->streams = s;
	uc->requests++;
	if (was_idle) {
		evtimer_del(c->idle_timer);
		if (ms_since(&c->idle_since) >= H2_PING_AFTER_IDLE_MS)
			send_ping(c); /* is the origin still there? */
	}
	return &s->base;
}

static bool h2_is_idle(struct upstream_conn *uc)
{
	return live_count((struct h2_conn *)uc) == 0;
}

static void h2_close(struct upstream_conn *uc)
{
	struct h2_conn *c = (struct h2_conn *)uc;

	c->told = true;
	c->base.reusable = false;
	for (struct h2_stream *s = c->streams; s; s = s->next)
		s->user = false;
	if (c->holds > 0)
		c->freeing = true;
	else
		conn_free(c);
}

static unsigned h2_streams(struct upstream_conn *uc)
{
	return live_count((struct h2_conn *)uc);
}

static const struct upstream_conn_ops h2_conn_ops = {
    .open_stream = h2_open_stream,
    .free_slots = h2_free_slots,
    .is_idle = h2_is_idle,
    .close = h2_close,
    .streams = h2_streams,
};

static bool session_new(struct h2_conn *c)
{
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
	};
	int rv;

	if (nghttp2_session_callbacks_new(&cb) != 0)
		return false;
	if (nghttp2_option_new(&opt) != 0) {
		nghttp2_session_callbacks_del(cb);
		return false;
	}
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
	nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, cb_invalid_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
	nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, cb_frame_not_send);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_peer_max_concurrent_streams(opt, H2_MAX_STREAMS);
	rv = nghttp2_session_client_new2(&c->session, cb, c, opt);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	if (rv != 0) {
		c->session = NULL;
		return false;
	}
	return nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv,
	                               sizeof(iv) / sizeof(iv[0])) == 0 &&
	       nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
	                                             H2_CONN_WINDOW) == 0;
}

struct upstream_conn *h2_conn_new(struct muxd *m, struct transport *t,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	static const struct transport_cbs tcbs = {on_read, on_drain, on_event};
	struct h2_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->m = m;
	c->cfg = config_ref(m->cfg);
	c->base.ops = &h2_conn_ops;
	c->base.proto = PROTO_H2;
	c->base.owner_cbs = *owner_cbs;
	c->base.owner = owner;
	c->base.reusable = true;
	c->base.warming = true;
	c->kick = event_new(m->base, -1, 0, on_kick, c);
	c->ping_timer = evtimer_new(m->base, on_ping_timeout, c);
	c->idle_timer = evtimer_new(m->base, on_idle_timer, c);
	if (!c->kick || !c->ping_timer || !c->idle_timer || !session_new(c)) {
		conn_free(c); /* c->t is still NULL: the caller keeps the transport */
		return NULL;
	}
	c->t = t;
	clock_gettime(CLOCK_MONOTONIC, &c->idle_since);
	set_timer(c->idle_timer, H2_IDLE_PING_MS);
	transport_set_cbs(t, &tcbs, c);
	t->ops->set_reading(t, true);
	kick(c); /* the preface and SETTINGS */
	return &c->base;
}
