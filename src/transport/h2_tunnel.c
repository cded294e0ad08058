/*
 * h2_tunnel — a byte-stream layer over an upstream stream: the CONNECT tunnel
 * through an https:// parent proxy. A stream source supplies the stream (the
 * pool: on a shared HTTP/2 connection, or an HTTP/1.1 connection of its
 * own); a 2xx answer makes the layer CONNECTED; then the stream's request
 * body carries what the user writes and its response body what the user
 * reads, with the same TRANSPORT_BUF bounds as every layer. Work is done in deferred passes
 * so no callback runs inside another module's call.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hold.h"
#include "http1.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

struct h2_tunnel {
	struct transport base;
	void (*cancel)(void *wait); /* the source's */
	void *wait;                 /* for a stream, at the source */
	struct upstream_stream *s;
	struct evbuffer *in, *out; /* the tunnel's bytes: to read, to send */
	struct event *pass;        /* deferred work */
	char name[300];            /* the proxy, for messages */
	char authority[300];
	struct upstream_field fields[1];
	size_t nfields;
	char auth[HTTP1_BASIC_MAX];
	bool up, eof, failed, shut, shut_sent, reading;
	enum muxd_err err;
	char reason[400];
	bool report_connected, report_eof, report_error, report_read, report_drain;
	unsigned holds; /* hold.h */
	bool closing;
};

static void schedule(struct h2_tunnel *st)
{
	event_active(st->pass, EV_TIMEOUT, 0);
}

static void st_free(struct h2_tunnel *st)
{
	if (st->wait)
		st->cancel(st->wait);
	if (st->s)
		st->s->ops->cancel(st->s);
	if (st->in)
		evbuffer_free(st->in);
	if (st->out)
		evbuffer_free(st->out);
	if (st->pass)
		event_free(st->pass);
	free(st);
}

/* --- layer operations --- */

static struct evbuffer *t_input(struct transport *t)
{
	return ((struct h2_tunnel *)t)->in;
}

static struct evbuffer *t_output(struct transport *t)
{
	return ((struct h2_tunnel *)t)->out;
}

static void t_set_reading(struct transport *t, bool on)
{
	struct h2_tunnel *st = (struct h2_tunnel *)t;
	st->reading = on;
	schedule(st);
}

static void t_shutdown(struct transport *t)
{
	struct h2_tunnel *st = (struct h2_tunnel *)t;
	st->shut = true;
	schedule(st);
}

static void t_close(struct transport *t)
{
	struct h2_tunnel *st = (struct h2_tunnel *)t;
	if (hold_close(st->holds, &st->closing))
		st_free(st);
}

static bool t_is_alive(struct transport *t)
{
	struct h2_tunnel *st = (struct h2_tunnel *)t;
	return st->up && !st->eof && !st->failed;
}

static const struct transport_ops stream_ops = {t_input,    t_output, t_set_reading,
                                                t_shutdown, t_close,  t_is_alive};

/* --- the deferred pass: move bytes, then tell the user what happened --- */

static void move_bytes(struct h2_tunnel *st)
{
	struct upstream_stream *s = st->s;

	if (!s || !st->up)
		return;
	/* user -> stream */
	while (evbuffer_get_length(st->out) > 0 && s->ops->send_space(s) > 0) {
		size_t n = evbuffer_get_length(st->out), room = s->ops->send_space(s);
		struct evbuffer_iovec v;
		evbuffer_peek(st->out, -1, NULL, &v, 1);
		n = v.iov_len < room ? v.iov_len : room;
		s->ops->send_body(s, v.iov_base, n);
		evbuffer_drain(st->out, n);
		st->report_drain = true;
	}
	if (st->shut && !st->shut_sent && evbuffer_get_length(st->out) == 0) {
		st->shut_sent = true;
		s->ops->send_end(s, "");
	}
	/* stream -> user */
	struct evbuffer *body = s->ops->body(s);
	size_t have = evbuffer_get_length(st->in), n = evbuffer_get_length(body);
	if (n > 0 && have < TRANSPORT_BUF) {
		if (n > TRANSPORT_BUF - have)
			n = TRANSPORT_BUF - have;
		evbuffer_remove_buffer(body, st->in, n);
		st->report_read = true;
		s->ops->consumed(s); /* may end the stream: see on_end */
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct h2_tunnel *st = arg;
	const struct transport_cbs *cbs = &st->base.cbs;

	(void)fd;
	(void)what;
	hold_take(&st->holds);
	move_bytes(st);
	if (st->report_connected && !st->closing) {
		st->report_connected = false;
		cbs->on_event(st->base.ctx, TRANSPORT_CONNECTED, ERR_NONE, NULL);
	}
	if (st->report_read && !st->closing && cbs->on_read) {
		st->report_read = false;
		cbs->on_read(st->base.ctx);
	}
	if (st->report_drain && !st->closing && cbs->on_drain &&
	    evbuffer_get_length(st->out) < TRANSPORT_BUF / 2) {
		st->report_drain = false;
		cbs->on_drain(st->base.ctx);
	}
	if (st->report_eof && !st->closing && evbuffer_get_length(st->in) == 0) {
		st->report_eof = false;
		cbs->on_event(st->base.ctx, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
	if (st->report_error && !st->closing) {
		st->report_error = false;
		cbs->on_event(st->base.ctx, TRANSPORT_ERROR, st->err, st->reason);
	}
	if (hold_release(&st->holds) && st->closing)
		st_free(st);
}

/* --- stream callbacks --- */

static void on_head(void *ctx, const struct http1_msg *h)
{
	struct h2_tunnel *st = ctx;

	if (h->status < 200)
		return;
	if (h->status < 300) {
		st->up = true;
		st->report_connected = true;
	} else {
		snprintf(st->reason, sizeof(st->reason), "proxy %s%s%d %s%s", st->name,
		         h->status == 407 ? ": proxy authentication required (" : " answered ",
		         h->status, h->reason, h->status == 407 ? ")" : "");
		st->err = ERR_CONNECT;
		st->failed = true;
		st->report_error = true;
		st->s->ops->cancel(st->s); /* a refused tunnel: its answer's body is not wanted */
		st->s = NULL;
	}
	schedule(st);
}

static void on_body(void *ctx)
{
	schedule(ctx);
}

static void on_end(void *ctx, const char *trailers)
{
	struct h2_tunnel *st = ctx;

	(void)trailers;
	st->s = NULL; /* the connection takes it back */
	if (!st->up && !st->failed) {
		snprintf(st->reason, sizeof(st->reason), "proxy %s ended the tunnel", st->name);
		st->err = ERR_CONNECT;
		st->failed = st->report_error = true;
	} else if (st->up) {
		st->eof = st->report_eof = true;
	}
	schedule(st);
}

static void on_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct h2_tunnel *st = ctx;

	(void)nothing;
	st->s = NULL;
	st->failed = st->report_error = true;
	st->err = st->up ? err : ERR_CONNECT;
	snprintf(st->reason, sizeof(st->reason), "%s%s%s", st->up ? "" : "proxy ",
	         st->up ? "" : st->name, st->up ? reason : "");
	if (!st->up)
		snprintf(st->reason + strlen(st->reason), sizeof(st->reason) - strlen(st->reason),
		         ": %s", reason);
	schedule(st);
}

static void on_send_ready(void *ctx)
{
	schedule(ctx);
}

static const struct upstream_stream_cbs stream_cbs = {on_head, on_body, on_end, on_error,
                                                      on_send_ready};

static void wait_stream(void *ctx, struct upstream_stream *s, bool reused)
{
	struct h2_tunnel *st = ctx;
	struct upstream_request r = {
	    .method = "CONNECT",
	    .scheme = "https",
	    .authority = st->authority,
	    .path = "",
	    .fields = st->fields,
	    .nfields = st->nfields,
	    .has_body = true,
	    .content_length = -1,
	};

	(void)reused;
	st->wait = NULL;
	st->s = s;
	upstream_stream_send_head(s, &r);
}

static void wait_error(void *ctx, enum muxd_err err, const char *reason)
{
	struct h2_tunnel *st = ctx;

	st->wait = NULL;
	st->failed = st->report_error = true;
	st->err = err == ERR_CONNECT_TIMEOUT ? err : ERR_CONNECT;
	snprintf(st->reason, sizeof(st->reason), "proxy %s: %s", st->name, reason);
	schedule(st);
}

static const struct stream_source_cbs wait_cbs = {wait_stream, wait_error};

static void out_added(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	if (info->n_added > 0)
		schedule(arg);
}

static void in_drained(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	if (info->n_deleted > 0)
		schedule(arg);
}

struct transport *h2_tunnel_connect(const struct transport_env *env,
                                    const struct stream_source *src, const char *proxy_name,
                                    const char *host, uint16_t port, const char *auth,
                                    const struct transport_cbs *cbs, void *ctx)
{
	struct h2_tunnel *st = calloc(1, sizeof(*st));
	bool v6 = strchr(host, ':') != NULL;

	if (!st)
		return NULL;
	st->base.ops = &stream_ops;
	transport_set_cbs(&st->base, cbs, ctx);
	st->reading = true;
	snprintf(st->name, sizeof(st->name), "%s", proxy_name);
	snprintf(st->authority, sizeof(st->authority), "%s%s%s:%u", v6 ? "[" : "", host,
	         v6 ? "]" : "", port);
	if (auth && http1_basic_credentials(auth, st->auth, sizeof(st->auth)))
		st->fields[st->nfields++] =
		    (struct upstream_field){"Proxy-Authorization", 19, st->auth, strlen(st->auth)};
	st->in = evbuffer_new();
	st->out = evbuffer_new();
	st->pass = event_new(env->base, -1, 0, pass_cb, st);
	if (st->in && st->out && st->pass) {
		evbuffer_add_cb(st->out, out_added, st); /* the user's writes go in a pass */
		evbuffer_add_cb(st->in, in_drained, st); /* room to read more */
		st->cancel = src->cancel;
		st->wait = src->start(src->arg, &stream_cbs, &wait_cbs, st);
	}
	if (!st->wait) {
		st_free(st);
		return NULL;
	}
	return &st->base;
}
