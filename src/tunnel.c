/*
 * tunnel — CONNECT (and a connection that switched protocols,
 * tunnel_splice): a spliced pair of transports. Each direction moves
 * bytes only while the other side's output has room, so a tunnel holds at
 * most TRANSPORT_BUF per direction in muxd, whatever the speeds.
 */
#include "tunnel.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "timeutil.h"
#include "transport/transport.h"

struct tunnel {
	struct muxd *m;
	struct config *cfg;
	const struct tunnel_owner *owner;
	void *owner_ctx;
	struct transport *client;
	struct transport *origin; /* connecting until established */
	char host[256];
	uint16_t port;
	bool established;
	bool answered;                 /* the client already has its 200 */
	bool client_eof, origin_eof;   /* that side finished sending */
	bool client_shut, origin_shut; /* we shut our writing towards that side */
	struct event *idle;
};

static void tunnel_free(struct tunnel *tn)
{
	if (tn->origin)
		transport_close(tn->origin);
	if (tn->idle)
		event_free(tn->idle);
	config_unref(tn->cfg);
	free(tn);
}

/* End the tunnel and the client connection (flush: after sending what was
 * written to the client, such as an error answer). */
static void tunnel_end(struct tunnel *tn, bool flush)
{
	const struct tunnel_owner *owner = tn->owner;
	void *ctx = tn->owner_ctx;

	tunnel_free(tn);
	owner->done(ctx, flush);
}

/* A tunnel half-closed by one side gets this long without traffic: a peer
 * that cannot pass the half-close on (an HTTP/2 parent with an HTTP/1.1
 * backend) would otherwise keep it open for tunnel_idle_timeout. */
#define HALF_CLOSED_IDLE_MS 5000

static void touch(struct tunnel *tn)
{
	uint64_t ms = tn->cfg->tunnel_idle_timeout_ms;
	if ((tn->client_eof || tn->origin_eof) && ms > HALF_CLOSED_IDLE_MS)
		ms = HALF_CLOSED_IDLE_MS;
	struct timeval tv = ms_to_timeval(ms);
	evtimer_add(tn->idle, &tv);
}

/* Move from one side's input to the other's output while there is room;
 * pass the half-close along once the input is drained. */
static void pump(struct tunnel *tn, struct transport *from, struct transport *to, bool from_eof,
                 bool *to_shut)
{
	struct evbuffer *in = transport_input(from), *out = transport_output(to);
	size_t used = evbuffer_get_length(out), n = evbuffer_get_length(in);

	if (n > 0 && used < TRANSPORT_BUF) {
		if (n > TRANSPORT_BUF - used)
			n = TRANSPORT_BUF - used;
		evbuffer_remove_buffer(in, out, n);
		touch(tn);
	}
	if (from_eof && evbuffer_get_length(in) == 0 && !*to_shut) {
		*to_shut = true;
		to->ops->shutdown(to);
		touch(tn); /* half-closed now: a shorter idle deadline */
	}
}

static void pump_both(struct tunnel *tn)
{
	pump(tn, tn->client, tn->origin, tn->client_eof, &tn->origin_shut);
	pump(tn, tn->origin, tn->client, tn->origin_eof, &tn->client_shut);
	if (tn->origin_shut && tn->client_shut &&
	    evbuffer_get_length(transport_output(tn->client)) == 0 &&
	    evbuffer_get_length(transport_output(tn->origin)) == 0)
		tunnel_end(tn, false);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tunnel *tn = arg;
	(void)fd;
	(void)what;
	log_debug("tunnel to %s:%u idle: closing", tn->host, tn->port);
	tunnel_end(tn, false);
}

static void origin_read(void *ctx)
{
	pump_both(ctx);
}

static void origin_drain(void *ctx)
{
	pump_both(ctx);
}

static void origin_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct tunnel *tn = ctx;
	char body[600];
	int n;

	if (!tn->established) {
		if (ev == TRANSPORT_CONNECTED) {
			static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
			tn->established = true;
			tn->m->metrics.requests[PROTO_TUNNEL]++;
			if (!tn->answered)
				evbuffer_add(transport_output(tn->client), ok, sizeof(ok) - 1);
			touch(tn);
			pump_both(tn); /* bytes the client sent early */
			return;
		}
		if (tn->answered) { /* else the answer is logged */
			log_info("tunnel to %s:%u failed: %s", tn->host, tn->port, reason);
			tunnel_end(tn, false);
			return;
		}
		n = muxd_error_body(err, tn->host, tn->port, reason, body, sizeof(body));
		transport_close(tn->origin);
		tn->origin = NULL;
		tn->owner->respond(tn->owner_ctx, muxd_err_status(err), "text/plain", body,
		                   (size_t)n, true);
		tunnel_end(tn, true);
		return;
	}
	if (ev == TRANSPORT_EOF) {
		tn->origin_eof = true;
		pump_both(tn);
		return;
	}
	log_debug("tunnel to %s:%u: %s", tn->host, tn->port, reason);
	tunnel_end(tn, false); /* a reset on one side resets the other */
}

struct tunnel *tunnel_start(struct muxd *m, const struct tunnel_owner *owner, void *owner_ctx,
                            const char *host, uint16_t port, bool answered)
{
	static const struct transport_cbs cbs = {origin_read, origin_drain, origin_event};
	struct tunnel *tn = calloc(1, sizeof(*tn));

	if (!tn)
		return NULL;
	tn->m = m;
	tn->cfg = config_ref(m->cfg);
	tn->owner = owner;
	tn->owner_ctx = owner_ctx;
	tn->answered = answered;
	tn->client = owner->transport(owner_ctx);
	snprintf(tn->host, sizeof(tn->host), "%s", host);
	tn->port = port;
	tn->idle = evtimer_new(m->base, idle_cb, tn);
	/* through the route's parents, if any: a CONNECT or SOCKS5 per hop; an
	 * upstream connection under the pool's budget */
	struct route route;
	route_for(tn->cfg, host, port, &route);
	if (tn->idle)
		tn->origin = pool_open_tunnel(m->pool, &route, host, port, &cbs, tn);
	if (!tn->origin) {
		tunnel_free(tn);
		return NULL;
	}
	return tn;
}

struct tunnel *tunnel_splice(struct muxd *m, const struct tunnel_owner *owner, void *owner_ctx,
                             struct transport *origin, bool origin_eof, const char *host,
                             uint16_t port)
{
	static const struct transport_cbs cbs = {origin_read, origin_drain, origin_event};
	struct tunnel *tn = calloc(1, sizeof(*tn));

	if (!tn || !(tn->idle = evtimer_new(m->base, idle_cb, tn))) {
		free(tn);
		transport_close(origin);
		return NULL;
	}
	tn->m = m;
	tn->cfg = config_ref(m->cfg);
	tn->owner = owner;
	tn->owner_ctx = owner_ctx;
	tn->established = tn->answered = true;
	tn->client = owner->transport(owner_ctx);
	tn->origin = origin;
	tn->origin_eof = origin_eof;
	snprintf(tn->host, sizeof(tn->host), "%s", host);
	tn->port = port;
	transport_set_cbs(origin, &cbs, tn);
	origin->ops->set_reading(origin, true);
	touch(tn);
	/* what is waiting already goes now; the end, if any, on the next event */
	pump(tn, tn->client, tn->origin, tn->client_eof, &tn->origin_shut);
	pump(tn, tn->origin, tn->client, tn->origin_eof, &tn->client_shut);
	return tn;
}

void tunnel_client_read(struct tunnel *tn)
{
	if (tn->established)
		pump_both(tn);
}

void tunnel_client_drain(struct tunnel *tn)
{
	if (tn->established)
		pump_both(tn);
}

void tunnel_client_eof(struct tunnel *tn)
{
	tn->client_eof = true;
	if (tn->established)
		pump_both(tn);
	else if (!tn->answered)
		tunnel_end(tn, false); /* gone before its 200: nobody to answer */
	/* else: its bytes and its half-close go through once connected */
}

void tunnel_abort(struct tunnel *tn)
{
	tunnel_free(tn);
}
