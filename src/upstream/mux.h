/*
 * mux — private to upstream/: the stream machinery the HTTP/2 and HTTP/3
 * connections (h2.c, h3.c) have in common. A struct mux_stream / mux_conn is
 * the first member of each protocol's stream / connection; struct mux_ops
 * holds what differs (freeing, resets, flow-control credit, resuming the
 * request body). Shared: stream life (user/open, detach, on_error, on_end),
 * the response head and body bookkeeping, send-space and body buffering
 * entry points, hold/release, settle, the kick's common steps, timers, and
 * the conn ops that do not depend on the protocol. Also the upstream_conn
 * initialisation that h1.c shares.
 *
 * Discipline (as before in h2.c/h3.c): the owner and the exchange are only
 * called back with the connection held; streams are freed, and the owner
 * told about freed slots, only in settle, when no callback is running.
 */
#ifndef MUXD_UPSTREAM_MUX_H
#define MUXD_UPSTREAM_MUX_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "timeutil.h"
#include "upstream/fields.h"
#include "upstream/forward.h"
#include "upstream/upstream.h"

struct mux_conn;

struct mux_stream {
	struct upstream_stream base; /* first: the stream ops receive it */
	struct mux_conn *mc;
	struct mux_stream *next;
	int64_t id; /* h2: 0, h3: -1 until the request is submitted */
	bool user;  /* the exchange still gets callbacks */
	bool open;  /* the protocol library knows the stream (submitted, not closed) */
	bool head_sent;
	bool is_head;
	bool is_connect; /* a tunnel: no response timeout once it is up */
	bool req_body;   /* request body follows the head */
	bool send_ended; /* send_end() was called */
	bool eof_sent;   /* the request's end is submitted */
	bool send_ready; /* call on_send_ready from the next write-out */
	bool got_any;    /* any response frame arrived */
	bool got_final;  /* the final (non-1xx) head arrived */
	bool remote_ended;
	bool peer_reset;  /* the origin reset the stream */
	const char *bad;  /* why the response is malformed */
	bool err_pending; /* deliver err from the kick event */
	enum muxd_err err;
	const char *err_reason;
	char reason[96];
	int status;
	unsigned interim; /* 1xx heads so far */
	struct sbuf hdrs; /* the head being received: name\0value\0... */
	size_t nhdrs;
	struct http1_msg msg;
	struct sbuf trailers;     /* response trailers */
	struct sbuf trailers_out; /* request trailers */
	struct evbuffer *body;
	size_t unconsumed;     /* body bytes not yet given back to the window */
	struct deadline timer; /* response_timeout (timer.ev NULL: out of memory) */
	/* receive-window auto-tuning (upstream/window.h): the current window,
	 * bytes consumed and the time since the last check (zero: no body yet),
	 * bytes consumed in all (for the log) */
	uint64_t win;
	uint64_t win_consumed;
	uint64_t win_total_consumed;
	struct timespec win_at;
};

struct mux_ops {
	const char *name; /* "h2", "h3": for log lines */
	size_t window;    /* per-stream receive window to start with */
	void (*conn_free)(struct mux_conn *mc);
	void (*settle)(struct mux_conn *mc); /* with exactly one hold, no callback running */
	void (*stream_free)(struct mux_stream *s);
	/* The protocol's part of detaching: reset the stream when reset, give
	 * the unconsumed bytes back (the body is drained afterwards). */
	void (*detach)(struct mux_stream *s, bool reset);
	void (*give)(struct mux_stream *s, size_t n); /* n consumed body bytes */
	void (*resume)(struct mux_stream *s);         /* more request body, or its end */
	/* The stream operations' protocol parts: send the head; request body
	 * bytes buffered, not yet acknowledged; buffer request body bytes. */
	void (*send_head)(struct mux_stream *s, const struct upstream_request *r);
	uint64_t (*send_used)(const struct mux_stream *s);
	void (*send_buffer)(struct mux_stream *s, const void *data, size_t len);
	/* Flow control: the smoothed round trip to the origin in us (0 = not
	 * known yet); open the stream's receive window to window bytes (more
	 * than now), credit for the origin beyond what it consumed. */
	uint64_t (*rtt_us)(struct mux_conn *mc);
	void (*grow)(struct mux_stream *s, uint64_t window);
};

struct mux_conn {
	struct upstream_conn base; /* first: the conn ops receive it */
	const struct mux_ops *mops;
	struct upstream_env env;       /* copied at creation */
	struct upstream_params params; /* copied at creation */
	uint64_t *granted;             /* env.window_granted, or own_granted when it is NULL */
	uint64_t own_granted;
	struct fwd_mode fwd; /* HTTP/2 to a parent proxy that forwards (off: h3) */
	struct mux_stream *streams;
	struct event *kick; /* deferred write-out, errors, on_available */
	char *name;         /* the origin, for log lines (NULL: not known; mux_set_name) */
	bool want_available;
	bool goaway;
	bool failed;  /* transport gone or session dead */
	bool told;    /* the owner was told on_closed (or closed us) */
	bool freeing; /* free when the last hold is released */
	unsigned holds;
	uint64_t win_total; /* the receive windows of its streams together */
};

/* Sets what every upstream connection starts with (reusable). */
void upstream_conn_init(struct upstream_conn *b, const struct upstream_conn_ops *ops,
                        enum proto proto, const struct upstream_owner_cbs *owner_cbs, void *owner);

void mux_set_timer(struct event *ev, uint64_t ms);

/* --- connection --- */

/* Initialises mc (warming) with its kick event (on_kick(mc)); false when
 * out of memory (mux_conn_free_base() then frees what was made). */
bool mux_conn_init(struct mux_conn *mc, const struct upstream_env *env,
                   const struct upstream_params *params, const struct mux_ops *mops,
                   const struct upstream_conn_ops *ops, enum proto proto,
                   const struct upstream_owner_cbs *owner_cbs, void *owner,
                   event_callback_fn on_kick);
/* Frees the streams and the kick event; forgets fwd's credentials. */
void mux_conn_free_base(struct mux_conn *mc);
const char *mux_origin(const struct mux_conn *mc);
/* Names the origin (formatted, at most 299 bytes kept); out of memory: unnamed. */
void mux_set_name(struct mux_conn *mc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mux_kick(struct mux_conn *mc);
unsigned mux_live(const struct mux_conn *mc);
void mux_hold(struct mux_conn *mc);
/* Settles on the last release; returns false when the connection was freed. */
bool mux_release(struct mux_conn *mc);
/* Frees finished streams; counts the live ones and those freed. */
void mux_sweep(struct mux_conn *mc, unsigned *live, unsigned *freed);
/* After the sweep: close after GOAWAY, free when told and empty, offer freed
 * slots. */
void mux_settle_tail(struct mux_conn *mc, unsigned live, unsigned freed);
/* The connection cannot go on: marks it failed, closes the streams in the
 * library; returns whether any was running. */
bool mux_mark_failed(struct mux_conn *mc);
/* Tells the owner (dead or idle: EVICT_DEAD, else EVICT_COUNT) and fails
 * every unfinished stream. */
void mux_fail_streams(struct mux_conn *mc, enum muxd_err err, const char *reason, bool dead,
                      bool running);
/* The kick's common steps: errors from calls, on_send_ready, on_available. */
void mux_deliver_errors(struct mux_conn *mc);
void mux_send_ready(struct mux_conn *mc);
void mux_offer(struct mux_conn *mc);
/* upstream_conn_ops.close: the streams get no more callbacks; frees now, or
 * on the last release. */
void mux_close(struct mux_conn *mc);
bool mux_is_idle(struct upstream_conn *uc);
unsigned mux_streams(struct upstream_conn *uc);

/* --- streams --- */

/* A new stream (size bytes, a mux_stream first) with its body and timer
 * (either may be NULL when out of memory), and the stream operations, which
 * reach the protocol through mux_ops; NULL when out of memory. Not linked
 * yet: see mux_stream_link(). */
struct mux_stream *mux_stream_new(struct mux_conn *mc, size_t size,
                                  const struct upstream_stream_cbs *cbs, void *ctx);
void mux_stream_link(struct mux_stream *s);
void mux_stream_free_bufs(struct mux_stream *s);
/* The response timeout (re)starts; an established tunnel has none. */
void mux_arm(struct mux_stream *s);
void mux_stream_error(struct mux_stream *s, enum muxd_err err, const char *reason, bool nothing,
                      bool rst);
/* The response ended (END_STREAM, or its last frame). */
void mux_remote_end(struct mux_stream *s);
/* A head (or trailers) block begins; a field of it arrives (returns NULL,
 * or why the response is malformed). */
void mux_begin_head(struct mux_stream *s);
const char *mux_head_field(struct mux_stream *s, const void *name, size_t nlen, const void *value,
                           size_t vlen);
/* A valid head (status >= 100) arrived complete: on_head. */
void mux_got_head(struct mux_stream *s, bool end);
/* len body bytes were added to s->body: on_body. */
void mux_got_body(struct mux_stream *s, size_t len);
/*
 * The library closed the stream: unless it was detached or is complete
 * (the body drains), it fails: refused (never processed), malformed (the
 * library saw a protocol error), else reset or closed, code saying how.
 */
void mux_stream_closed(struct mux_stream *s, bool refused, bool malformed, const char *code);
/* Reports err from the kick: the caller is still in its call. */
void mux_fail_later(struct mux_stream *s, enum muxd_err err, const char *reason);

#endif
