/*
 * mux — the stream machinery shared by the HTTP/2 and HTTP/3 upstream
 * connections (see mux.h): stream life and callbacks, hold/release and
 * settle, the kick's common steps, timers. Protocol specifics come through
 * struct mux_ops.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hold.h"
#include "log.h"
#include "timeutil.h"
#include "transport/transport.h"
#include "upstream/mux.h"
#include "upstream/window.h"

void upstream_conn_init(struct upstream_conn *b, const struct upstream_conn_ops *ops,
                        enum proto proto, const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	b->ops = ops;
	b->proto = proto;
	b->owner_cbs = *owner_cbs;
	b->owner = owner;
	b->reusable = true;
}

void mux_set_timer(struct event *ev, uint64_t ms)
{
	struct timeval tv = ms_to_timeval(ms);
	evtimer_add(ev, &tv);
}

/* --- connection --- */

bool mux_conn_init(struct mux_conn *mc, const struct upstream_env *env,
                   const struct upstream_params *params, const struct mux_ops *mops,
                   const struct upstream_conn_ops *ops, enum proto proto,
                   const struct upstream_owner_cbs *owner_cbs, void *owner,
                   event_callback_fn on_kick)
{
	mc->env = *env;
	mc->params = *params;
	mc->granted = env->window_granted ? env->window_granted : &mc->own_granted;
	mc->mops = mops;
	upstream_conn_init(&mc->base, ops, proto, owner_cbs, owner);
	mc->base.warming = true;
	mc->kick = event_new(env->transport.base, -1, 0, on_kick, mc);
	return mc->kick != NULL;
}

/* --- receive windows --- */

static uint64_t us_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t->tv_sec) * 1000000 +
	       (uint64_t)((now.tv_nsec - t->tv_nsec) / 1000);
}

/* The stream is gone: its window growth goes back to the budgets. */
static void win_release(struct mux_stream *s)
{
	uint64_t grown = s->win > s->mc->mops->window ? s->win - s->mc->mops->window : 0;

	*s->mc->granted -= grown < *s->mc->granted ? grown : *s->mc->granted;
	s->mc->win_total -= s->win < s->mc->win_total ? s->win : s->mc->win_total;
	s->win = 0;
}

/* n more body bytes were consumed: half a window consumed is a check
 * (window.h), which may open the window further. */
static void win_consumed(struct mux_stream *s, size_t n)
{
	struct mux_conn *mc = s->mc;
	const struct upstream_params *prm = &mc->params;
	uint64_t conn_max = (uint64_t)prm->max_conn_window_kib * 1024;
	uint64_t budget = (uint64_t)prm->window_budget_kib * 1024;
	struct window_in in;
	uint64_t w;

	s->win_consumed += n;
	s->win_total_consumed += n;
	if (s->win_consumed < s->win / 2 || (s->win_at.tv_sec == 0 && s->win_at.tv_nsec == 0))
		return;
	in.rtt_us = mc->mops->rtt_us(mc);
	in.elapsed_us = us_since(&s->win_at);
	in.consumed = s->win_consumed;
	in.window = s->win;
	in.max = (uint64_t)prm->max_stream_window_kib * 1024;
	in.budget_left = budget > *mc->granted ? budget - *mc->granted : 0;
	if (conn_max < mc->win_total + in.budget_left)
		in.budget_left = conn_max > mc->win_total ? conn_max - mc->win_total : 0;
	w = window_next(&in);
	if (w > s->win) {
		*mc->granted += w - s->win;
		mc->win_total += w - s->win;
		log_debug("%s: stream %lld to %s: receive window %llu KiB after %llu KiB (rtt %llu "
		          "us, %llu KiB drained in %llu us)",
		          mc->mops->name, (long long)s->id, mux_origin(mc),
		          (unsigned long long)(w / 1024),
		          (unsigned long long)(s->win_total_consumed / 1024),
		          (unsigned long long)in.rtt_us, (unsigned long long)(in.consumed / 1024),
		          (unsigned long long)in.elapsed_us);
		mc->mops->grow(s, w);
		s->win = w;
	}
	s->win_consumed = 0;
	clock_gettime(CLOCK_MONOTONIC, &s->win_at);
}

void mux_conn_free_base(struct mux_conn *mc)
{
	while (mc->streams) {
		struct mux_stream *s = mc->streams;
		mc->streams = s->next;
		win_release(s);
		mc->mops->stream_free(s);
	}
	if (mc->kick)
		event_free(mc->kick);
	fwd_mode_clear(&mc->fwd);
	free(mc->name);
	mc->name = NULL;
}

const char *mux_origin(const struct mux_conn *mc)
{
	return mc->name && mc->name[0] ? mc->name : "origin";
}

void mux_set_name(struct mux_conn *mc, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (s && strlen(s) > 299)
		s[299] = '\0';
	free(mc->name);
	mc->name = s;
}

void mux_kick(struct mux_conn *mc)
{
	if (!mc->freeing)
		event_active(mc->kick, EV_TIMEOUT, 0);
}

unsigned mux_live(const struct mux_conn *mc)
{
	unsigned n = 0;
	for (const struct mux_stream *s = mc->streams; s; s = s->next)
		n += s->user || s->open;
	return n;
}

void mux_hold(struct mux_conn *mc)
{
	hold_take(&mc->holds);
}

bool mux_release(struct mux_conn *mc)
{
	if (mc->holds == 1 && !mc->freeing)
		mc->mops->settle(mc); /* still held once: nested hold/release do not recurse */
	if (hold_release(&mc->holds) && mc->freeing) {
		mc->mops->conn_free(mc);
		return false;
	}
	return !mc->freeing;
}

/* The owner forgets the connection; it is freed once no stream is left. */
static void mux_tell_owner(struct mux_conn *mc, enum evict_reason why)
{
	if (mc->told)
		return;
	mc->told = true;
	mc->base.reusable = false;
	mux_hold(mc);
	mc->base.owner_cbs.on_closed(mc->base.owner, &mc->base, why);
	mux_release(mc);
}

void mux_sweep(struct mux_conn *mc, unsigned *live, unsigned *freed)
{
	struct mux_stream **pp = &mc->streams;

	*live = *freed = 0;
	while (*pp) {
		struct mux_stream *s = *pp;
		if (!s->user && !s->open) {
			*pp = s->next;
			win_release(s);
			mc->mops->stream_free(s);
			(*freed)++;
		} else {
			(*live)++;
			pp = &s->next;
		}
	}
}

void mux_settle_tail(struct mux_conn *mc, unsigned live, unsigned freed)
{
	if (!mc->told && live == 0 && (mc->goaway || !mc->base.reusable)) {
		log_debug("%s: connection to %s done after GOAWAY", mc->mops->name, mux_origin(mc));
		mux_tell_owner(mc, EVICT_GOAWAY);
	}
	if (mc->told) {
		if (live == 0)
			mc->freeing = true;
		return;
	}
	if (freed > 0 && mc->base.reusable) {
		mc->want_available = true;
		mux_kick(mc);
	}
}

bool mux_mark_failed(struct mux_conn *mc)
{
	bool running = false;

	mc->failed = true;
	mc->base.reusable = false;
	for (struct mux_stream *s = mc->streams; s; s = s->next) {
		running = running || s->user || s->open;
		s->open = false; /* the session is over */
	}
	return running;
}

void mux_fail_streams(struct mux_conn *mc, enum muxd_err err, const char *reason, bool dead,
                      bool running)
{
	mux_hold(mc);
	mux_tell_owner(mc, dead || !running ? EVICT_DEAD : EVICT_COUNT);
	for (struct mux_stream *s = mc->streams; s && !mc->freeing; s = s->next)
		if (s->user && !s->remote_ended)
			mux_stream_error(s, err, reason, !s->got_any, false);
	mux_release(mc);
}

void mux_deliver_errors(struct mux_conn *mc)
{
	for (struct mux_stream *s = mc->streams; s && !mc->freeing; s = s->next) {
		if (s->err_pending) {
			s->err_pending = false;
			mux_stream_error(s, s->err, s->err_reason, true, true);
		}
	}
}

void mux_send_ready(struct mux_conn *mc)
{
	for (struct mux_stream *s = mc->streams; s && !mc->freeing; s = s->next) {
		if (!s->send_ready)
			continue;
		s->send_ready = false;
		if (s->user && !s->send_ended && s->base.cbs.on_send_ready)
			s->base.cbs.on_send_ready(s->base.ctx);
	}
}

void mux_offer(struct mux_conn *mc)
{
	if (mc->want_available && !mc->freeing) {
		mc->want_available = false;
		if (!mc->told && mc->base.ops->free_slots(&mc->base) > 0)
			mc->base.owner_cbs.on_available(mc->base.owner, &mc->base);
	}
}

void mux_close(struct mux_conn *mc)
{
	mc->told = true;
	mc->base.reusable = false;
	for (struct mux_stream *s = mc->streams; s; s = s->next)
		s->user = false;
	if (hold_close(mc->holds, &mc->freeing))
		mc->mops->conn_free(mc);
}

bool mux_is_idle(struct upstream_conn *uc)
{
	return mux_live((struct mux_conn *)uc) == 0;
}

unsigned mux_streams(struct upstream_conn *uc)
{
	return mux_live((struct mux_conn *)uc);
}

/* --- streams --- */

void mux_stream_link(struct mux_stream *s)
{
	s->user = true;
	s->next = s->mc->streams;
	s->mc->streams = s;
	s->mc->base.requests++;
	s->win = s->mc->mops->window;
	s->mc->win_total += s->win;
}

void mux_stream_free_bufs(struct mux_stream *s)
{
	free(s->hdrs.p);
	free(s->trailers.p);
	free(s->trailers_out.p);
	if (s->body)
		evbuffer_free(s->body);
	deadline_free(&s->timer);
}

void mux_arm(struct mux_stream *s)
{
	if (s->is_connect && s->got_final) {
		deadline_clear(&s->timer); /* an established tunnel has its own idle timer */
		return;
	}
	if (s->mc->params.response_timeout_ms > 0) /* on every read: cheap (timeutil.h) */
		deadline_set(&s->timer, s->mc->params.response_timeout_ms);
}

/* No more callbacks for the stream; reset it when it still runs. */
static void mux_detach(struct mux_stream *s, bool rst)
{
	s->user = false;
	deadline_clear(&s->timer);
	s->mc->mops->detach(s, rst && s->open && !(s->remote_ended && s->eof_sent));
	evbuffer_drain(s->body, evbuffer_get_length(s->body));
	mux_kick(s->mc);
}

void mux_stream_error(struct mux_stream *s, enum muxd_err err, const char *reason, bool nothing,
                      bool rst)
{
	struct upstream_stream_cbs cbs = s->base.cbs;
	void *ctx = s->base.ctx;

	if (!s->user)
		return;
	mux_detach(s, rst);
	cbs.on_error(ctx, err, reason, nothing);
}

/* The response is complete and its body was taken: on_end. */
static void mux_maybe_end(struct mux_stream *s)
{
	struct upstream_stream_cbs cbs = s->base.cbs;
	void *ctx = s->base.ctx;

	if (!s->user || !s->remote_ended || evbuffer_get_length(s->body) > 0)
		return;
	mux_detach(s, true); /* resets only a request that is still being sent */
	cbs.on_end(ctx, s->trailers.p ? s->trailers.p : "");
}

void mux_remote_end(struct mux_stream *s)
{
	s->remote_ended = true;
	deadline_clear(&s->timer);
	mux_maybe_end(s);
}

void mux_begin_head(struct mux_stream *s)
{
	s->got_any = true;
	s->hdrs.len = 0;
	s->nhdrs = 0;
	s->status = 0;
}

const char *mux_head_field(struct mux_stream *s, const void *name, size_t nlen, const void *value,
                           size_t vlen)
{
	const char *n = name;

	if (s->got_final)
		return fields_add_trailer(&s->trailers, name, nlen, value, vlen);
	if (nlen > 0 && n[0] == ':') {
		if (nlen == 7 && memcmp(n, ":status", 7) == 0)
			s->status = fields_status(value, vlen);
		return NULL;
	}
	return fields_add_head(&s->hdrs, &s->nhdrs, name, nlen, value, vlen);
}

void mux_got_head(struct mux_stream *s, bool end)
{
	bool interim = s->status < 200;

	if (interim && ++s->interim > UPSTREAM_MAX_INTERIM) {
		log_debug("%s: stream %lld to %s: more than %d interim responses",
		          s->mc->mops->name, (long long)s->id, mux_origin(s->mc),
		          UPSTREAM_MAX_INTERIM);
		mux_stream_error(s, ERR_BAD_RESPONSE, "too many interim (1xx) responses", false,
		                 true);
		return;
	}
	if (!interim && s->status == 407 && s->mc->fwd.on && !s->is_connect) {
		char why[400];
		fwd_refused(&s->mc->fwd, why, sizeof(why));
		mux_stream_error(s, ERR_CONNECT, why, false, true);
		return;
	}
	fields_msg(&s->msg, s->hdrs.p ? s->hdrs.p : "", s->hdrs.len, s->nhdrs, s->status,
	           s->is_head || end);
	if (!interim)
		s->got_final = true;
	if (end) {
		s->remote_ended = true;
		deadline_clear(&s->timer);
	} else {
		mux_arm(s);
	}
	s->base.cbs.on_head(s->base.ctx, &s->msg);
	if (end && !s->mc->freeing)
		mux_maybe_end(s);
}

void mux_got_body(struct mux_stream *s, size_t len)
{
	s->unconsumed += len;
	if (s->win_at.tv_sec == 0 && s->win_at.tv_nsec == 0)
		clock_gettime(CLOCK_MONOTONIC, &s->win_at); /* the first window starts */
	if (s->unconsumed >= s->win)
		deadline_clear(&s->timer); /* the origin waits for us now */
	else
		mux_arm(s);
	s->base.cbs.on_body(s->base.ctx);
}

void mux_stream_closed(struct mux_stream *s, bool refused, bool malformed, const char *code)
{
	s->open = false;
	if (!s->user || s->remote_ended)
		return; /* detached, or complete: the body drains */
	if (refused) {
		mux_stream_error(s, ERR_UNPROCESSED, "stream refused by origin", true, false);
	} else if (s->bad) {
		mux_stream_error(s, ERR_BAD_RESPONSE, s->bad, !s->got_any, false);
	} else if (s->peer_reset) {
		/* the origin acted on this stream: its reset is its answer, not a
		 * stale connection, so it is never retried */
		snprintf(s->reason, sizeof(s->reason), "stream reset by origin (%s)", code);
		mux_stream_error(s, ERR_CLOSED, s->reason, false, false);
	} else if (malformed) {
		mux_stream_error(s, ERR_BAD_RESPONSE, "malformed response", !s->got_any, false);
	} else {
		snprintf(s->reason, sizeof(s->reason), "stream closed (%s)", code);
		mux_stream_error(s, ERR_CLOSED, s->reason, !s->got_any, false);
	}
}

void mux_fail_later(struct mux_stream *s, enum muxd_err err, const char *reason)
{
	s->err_pending = true;
	s->err = err;
	s->err_reason = reason;
}

/* --- stream operations --- */

static void s_send_head(struct upstream_stream *us, const struct upstream_request *r)
{
	struct mux_stream *s = (struct mux_stream *)us;

	s->mc->mops->send_head(s, r);
}

static size_t s_send_space(struct upstream_stream *us)
{
	struct mux_stream *s = (struct mux_stream *)us;
	uint64_t used;

	if (!s->user || s->send_ended)
		return 0;
	used = s->mc->mops->send_used(s);
	return used >= TRANSPORT_BUF ? 0 : TRANSPORT_BUF - (size_t)used;
}

static void s_send_body(struct upstream_stream *us, const void *data, size_t len)
{
	struct mux_stream *s = (struct mux_stream *)us;

	if (!s->user || s->send_ended || !s->req_body || len == 0)
		return;
	s->mc->mops->send_buffer(s, data, len);
	s->mc->mops->resume(s);
	mux_kick(s->mc);
}

static void s_send_end(struct upstream_stream *us, const char *trailers)
{
	struct mux_stream *s = (struct mux_stream *)us;

	if (!s->user || s->send_ended)
		return;
	s->send_ended = true;
	if (!s->req_body)
		return; /* the end went with the head */
	if (trailers && *trailers)
		sbuf_add(&s->trailers_out, trailers, strlen(trailers));
	s->mc->mops->resume(s);
	mux_kick(s->mc);
}

static struct evbuffer *s_body(struct upstream_stream *us)
{
	return ((struct mux_stream *)us)->body;
}

static void s_consumed(struct upstream_stream *us)
{
	struct mux_stream *s = (struct mux_stream *)us;
	struct mux_conn *mc = s->mc;
	size_t left = evbuffer_get_length(s->body);

	if (!s->user)
		return;
	mux_hold(mc);
	if (s->unconsumed > left) {
		size_t n = s->unconsumed - left;
		mc->mops->give(s, n);
		s->unconsumed = left;
		if (!s->remote_ended)
			win_consumed(s, n);
		mux_kick(mc);
	}
	if (s->remote_ended)
		mux_maybe_end(s);
	else if (s->unconsumed < s->win && !deadline_pending(&s->timer))
		mux_arm(s); /* the window is open again: wait for the origin */
	mux_release(mc);
}

static void s_cancel(struct upstream_stream *us)
{
	struct mux_stream *s = (struct mux_stream *)us;
	struct mux_conn *mc = s->mc;

	if (!s->user)
		return;
	mux_hold(mc);
	mux_detach(s, true);
	mux_release(mc);
}

static void on_stream_timeout(void *arg)
{
	struct mux_stream *s = arg;
	struct mux_conn *mc = s->mc;

	mux_hold(mc);
	log_debug("%s: stream %lld to %s: no response in time", mc->mops->name, (long long)s->id,
	          mux_origin(mc));
	mux_stream_error(s, ERR_RESPONSE_TIMEOUT, "no response in time", !s->got_any, true);
	mux_release(mc);
}

static const struct upstream_stream_ops mux_stream_ops = {
    .send_head = s_send_head,
    .send_space = s_send_space,
    .send_body = s_send_body,
    .send_end = s_send_end,
    .body = s_body,
    .consumed = s_consumed,
    .cancel = s_cancel,
};

struct mux_stream *mux_stream_new(struct mux_conn *mc, size_t size,
                                  const struct upstream_stream_cbs *cbs, void *ctx)
{
	/* zeroed but the response head's field array (4 KiB, written as
	 * fields arrive): calloc of it all was the largest cost of a stream */
	struct mux_stream *s = malloc(size);
	size_t at = offsetof(struct mux_stream, msg.fields), end = at + sizeof(s->msg.fields);

	if (!s)
		return NULL;
	memset(s, 0, at);
	memset((char *)s + end, 0, size - end);
	s->body = evbuffer_new();
	deadline_init(&s->timer, mc->env.transport.base, on_stream_timeout,
	              s); /* NULL ev: failed */
	s->base.ops = &mux_stream_ops;
	s->base.cbs = *cbs;
	s->base.ctx = ctx;
	s->base.conn = &mc->base;
	s->mc = mc;
	return s;
}
