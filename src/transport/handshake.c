/*
 * handshake — the part of a proxy handshake layer (CONNECT, SOCKS5) that is
 * not the protocol: the private buffers before CONNECTED, the pass-through to
 * the layer below afterwards, the lower layer's callbacks, deferred reports,
 * hold/release. See handshake.h. Owns: the layer below, the deferred event,
 * the private buffers, the proxy's name.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hold.h"
#include "muxd.h"
#include "transport/handshake.h"

void handshake_free(struct handshake *h)
{
	if (h->ops && h->ops->fini)
		h->ops->fini(h);
	if (h->pass_ev)
		event_free(h->pass_ev);
	if (h->early_in)
		evbuffer_free(h->early_in);
	if (h->early_out)
		evbuffer_free(h->early_out);
	if (h->lower)
		transport_close(h->lower);
	free(h->name);
	free(h);
}

void handshake_hold(struct handshake *h)
{
	hold_take(&h->holds);
}

bool handshake_release(struct handshake *h)
{
	if (hold_release(&h->holds) && h->closing) {
		handshake_free(h);
		return false;
	}
	return !h->closing;
}

static void schedule(struct handshake *h)
{
	if (h->pass_ev && h->state != HANDSHAKE_DEAD && !h->closing)
		event_active(h->pass_ev, EV_TIMEOUT, 0);
}

bool handshake_report(struct handshake *h, enum transport_event ev, enum muxd_err err,
                      const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		h->state = HANDSHAKE_DEAD;
		if (h->ops->dead)
			h->ops->dead(h);
		if (h->pass_ev)
			event_del(h->pass_ev);
	}
	h->base.cbs.on_event(h->base.ctx, ev, err, reason);
	return !h->closing;
}

void handshake_fail(struct handshake *h, enum muxd_err err, const char *reason)
{
	h->ops->log_failure(h, reason);
	handshake_report(h, TRANSPORT_ERROR, err, reason);
}

void handshake_fail_later(struct handshake *h, enum muxd_err err, const char *reason)
{
	h->fail_err = err;
	snprintf(h->fail_reason, sizeof(h->fail_reason), "%s", reason);
	event_active(h->pass_ev, EV_TIMEOUT, 0);
}

/* The handshake succeeded: hand the stream to the user. Caller holds h. */
static void become_open(struct handshake *h)
{
	struct evbuffer *in = transport_input(h->lower);

	h->opened = true;
	if (evbuffer_get_length(h->early_out) > 0)
		evbuffer_add_buffer(transport_output(h->lower), h->early_out);
	if (h->shut_wanted)
		h->lower->ops->shutdown(h->lower);
	h->lower->ops->set_reading(h->lower, h->reading);
	if (!handshake_report(h, TRANSPORT_CONNECTED, ERR_NONE, NULL) || h->state != HANDSHAKE_OPEN)
		return;
	if (h->reading && evbuffer_get_length(in) > 0 && h->base.cbs.on_read) {
		h->base.cbs.on_read(h->base.ctx);
		if (h->closing || h->state != HANDSHAKE_OPEN)
			return;
	}
	if (h->lower_failed) {
		handshake_report(h, TRANSPORT_ERROR, h->lower_err, h->lower_reason);
	} else if (h->lower_eof && !h->peer_eof) {
		h->peer_eof = true;
		handshake_report(h, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
}

/* One round of work. Caller holds h. */
static void run_pass(struct handshake *h)
{
	char reason[600];

	if (h->state == HANDSHAKE_DEAD)
		return;
	if (h->fail_err != ERR_NONE) {
		handshake_fail(h, h->fail_err, h->fail_reason);
		return;
	}
	if (h->state == HANDSHAKE_OPEN) {
		/* resumed reading, or bytes that came with the handshake's end */
		if (h->reading && evbuffer_get_length(transport_input(h->lower)) > 0 &&
		    h->base.cbs.on_read)
			h->base.cbs.on_read(h->base.ctx);
		return;
	}
	if (!h->ops->step(h))
		return;
	if (h->state == HANDSHAKE_OPEN) {
		become_open(h);
		return;
	}
	if (h->lower_eof || h->lower_failed) {
		snprintf(reason, sizeof(reason),
		         "%sproxy %s closed the connection during the handshake", h->ops->label,
		         h->name);
		handshake_fail(h, ERR_CONNECT, reason);
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct handshake *h = arg;

	(void)fd;
	(void)what;
	handshake_hold(h);
	run_pass(h);
	handshake_release(h);
}

static void lower_on_read(void *ctx)
{
	struct handshake *h = ctx;

	if (h->state == HANDSHAKE_OPEN) {
		handshake_hold(h);
		if (h->base.cbs.on_read)
			h->base.cbs.on_read(h->base.ctx);
		handshake_release(h);
		return;
	}
	pass_cb(-1, 0, h);
}

static void lower_on_drain(void *ctx)
{
	struct handshake *h = ctx;

	if (h->state != HANDSHAKE_OPEN || !h->base.cbs.on_drain)
		return;
	handshake_hold(h);
	h->base.cbs.on_drain(h->base.ctx);
	handshake_release(h);
}

static void lower_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct handshake *h = ctx;

	if (ev == TRANSPORT_CONNECTED || h->state == HANDSHAKE_DEAD)
		return; /* lower was connected already */
	if (h->state == HANDSHAKE_OPEN) {
		handshake_hold(h);
		if (ev == TRANSPORT_EOF)
			h->peer_eof = true;
		handshake_report(h, ev, err, reason);
		handshake_release(h);
		return;
	}
	if (ev == TRANSPORT_EOF) {
		h->lower_eof = true;
	} else {
		h->lower_failed = true;
		h->lower_err = err;
		snprintf(h->lower_reason, sizeof(h->lower_reason), "%s",
		         reason ? reason : "connection error");
	}
	pass_cb(-1, 0, h);
}

static struct evbuffer *hs_input(struct transport *base)
{
	struct handshake *h = (struct handshake *)base;

	return h->opened ? transport_input(h->lower) : h->early_in;
}

static struct evbuffer *hs_output(struct transport *base)
{
	struct handshake *h = (struct handshake *)base;

	return h->opened ? transport_output(h->lower) : h->early_out;
}

static void hs_set_reading(struct transport *base, bool on)
{
	struct handshake *h = (struct handshake *)base;

	if (h->reading == on)
		return;
	h->reading = on;
	if (h->state != HANDSHAKE_OPEN)
		return; /* the handshake always reads; applied when it ends */
	h->lower->ops->set_reading(h->lower, on);
	if (on && evbuffer_get_length(transport_input(h->lower)) > 0)
		schedule(h);
}

static void hs_shutdown(struct transport *base)
{
	struct handshake *h = (struct handshake *)base;

	if (h->state == HANDSHAKE_OPEN)
		h->lower->ops->shutdown(h->lower);
	else
		h->shut_wanted = true;
}

static void hs_close(struct transport *base)
{
	struct handshake *h = (struct handshake *)base;

	if (!hold_close(h->holds, &h->closing)) {
		if (h->pass_ev)
			event_del(h->pass_ev);
		return;
	}
	handshake_free(h);
}

static bool hs_is_alive(struct transport *base)
{
	struct handshake *h = (struct handshake *)base;

	return h->state == HANDSHAKE_OPEN && !h->peer_eof && h->lower->ops->is_alive(h->lower);
}

static const struct transport_ops hs_ops = {
    .input = hs_input,
    .output = hs_output,
    .set_reading = hs_set_reading,
    .shutdown = hs_shutdown,
    .close = hs_close,
    .is_alive = hs_is_alive,
};

bool handshake_init(struct handshake *h, struct event_base *base, struct transport *lower,
                    const struct handshake_ops *ops, const char *proxy_name,
                    const struct transport_cbs *cbs, void *ctx)
{
	h->base.ops = &hs_ops;
	transport_set_cbs(&h->base, cbs, ctx);
	h->ops = ops;
	h->lower = lower;
	h->reading = true;
	h->name = strdup(proxy_name ? proxy_name : "");
	h->early_in = evbuffer_new();
	h->early_out = evbuffer_new();
	h->pass_ev = event_new(base, -1, 0, pass_cb, h);
	return h->name && h->early_in && h->early_out && h->pass_ev;
}

void handshake_attach(struct handshake *h)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};

	transport_set_cbs(h->lower, &lower_cbs, h);
	h->lower->ops->set_reading(h->lower, true);
}
