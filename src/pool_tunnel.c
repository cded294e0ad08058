/*
 * pool_tunnel — tunnels through the pool.
 *
 * A chain whose first hop is an https:// parent gets that hop from the pool
 * (pool_shared_hop): a CONNECT stream on the pool's connection to the
 * parent, asked for like any request's stream, so that an HTTP/2 parent
 * carries many tunnels on one connection, active while any of them lives
 * (DESIGN.md principle 6). A client tunnel (pool_open_tunnel) is an upstream
 * connection of its own kind: it waits in a FIFO for a slot under
 * max_connections (an idle connection is evicted for it when there is one;
 * else it gets 503 after connect_timeout), then builds its chain; its slot
 * is given back when its user closes it.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "pool_internal.h"
#include "route.h"
#include "timeutil.h"

/* A client tunnel: the caller's layer over its chain. */
struct pool_tunnel {
	struct transport base;
	struct pool *pool;             /* NULL once the pool is gone */
	TAILQ_ENTRY(pool_tunnel) link; /* in the pool's tunnel_waiters or tunnels */
	bool waiting;                  /* for a slot (in tunnel_waiters) */
	bool counted;                  /* has a slot (in tunnels) */
	bool up;                       /* the chain is connected */
	struct pool_key key;           /* the path ("tunnel" key) */
	struct transport *chain;       /* once it has a slot */
	struct event *budget_timer;    /* armed once blocked on the budget: then 503 */
	struct event *fail_ev;         /* reports that the chain could not be made */
	char why[200];                 /* what the 503 says */
};

/* What a chain's shared first hop asks the pool for: a stream on the
 * connection to the parent (key). */
struct hop_source {
	struct pool *p;
	struct pool_key key;
};

static void *hop_stream_start(void *arg, const struct upstream_stream_cbs *stream_cbs,
                              const struct stream_source_cbs *cbs, void *ctx)
{
	struct hop_source *hs = arg;
	struct pool_wait_cbs wcbs = {cbs->on_stream, cbs->on_error};

	return pool_start_stream(hs->p, &hs->key, false, stream_cbs, &wcbs, ctx);
}

static void hop_stream_cancel(void *w)
{
	pool_wait_cancel(w);
}

/* The first hop of a chain, an https:// parent: a CONNECT stream to
 * host:port on the pool's connection to it (HTTP/2 when it speaks it). */
static struct transport *shared_hop_open(void *arg, const struct chain_spec *sp, const char *host,
                                         uint16_t port, const struct transport_cbs *cbs, void *ctx)
{
	const struct chain_hop *h = &sp->hops[0];
	struct route r = {.verify = true,
	                  .h2 = true,
	                  .ca_file = sp->proxy_ca_file,
	                  .ca_file_id = sp->proxy_ca_file_id};
	struct hop_source hs = {.p = arg};
	struct stream_source src = {hop_stream_start, hop_stream_cancel, &hs};
	bool v6 = strchr(h->host, ':') != NULL;
	char name[300], auth[600];

	if (!pool_key_init(&hs.key, hs.p->m, "https", h->host, h->port, &r))
		return NULL;
	hs.key.warm_ok = false; /* keep-warm is for origins, not parent proxies */
	snprintf(name, sizeof(name), "%s%s%s:%u", v6 ? "[" : "", h->host, v6 ? "]" : "", h->port);
	if (h->user)
		snprintf(auth, sizeof(auth), "%s:%s", h->user, h->pass ? h->pass : "");
	return h2_tunnel_connect(hs.p->m, &src, name, host, port, h->user ? auth : NULL, cbs, ctx);
}

static struct evbuffer *tun_input(struct transport *t)
{
	return transport_input(((struct pool_tunnel *)t)->chain);
}

static struct evbuffer *tun_output(struct transport *t)
{
	return transport_output(((struct pool_tunnel *)t)->chain);
}

static void tun_set_reading(struct transport *t, bool on)
{
	struct transport *c = ((struct pool_tunnel *)t)->chain;
	if (c)
		c->ops->set_reading(c, on);
}

static void tun_shutdown(struct transport *t)
{
	struct transport *c = ((struct pool_tunnel *)t)->chain;
	if (c)
		c->ops->shutdown(c);
}

/* Gives the slot back (or leaves the queue) and frees the tunnel. */
static void tun_close(struct transport *t)
{
	struct pool_tunnel *pt = (struct pool_tunnel *)t;
	struct pool *p = pt->pool;

	if (pt->chain)
		transport_close(pt->chain);
	if (p && pt->waiting) {
		TAILQ_REMOVE(&p->tunnel_waiters, pt, link);
	} else if (p && pt->counted) {
		TAILQ_REMOVE(&p->tunnels, pt, link);
		p->nconns--;
		pool_schedule_all(p);
	}
	if (pt->budget_timer)
		event_free(pt->budget_timer);
	if (pt->fail_ev)
		event_free(pt->fail_ev);
	free(pt);
}

static bool tun_is_alive(struct transport *t)
{
	struct pool_tunnel *pt = (struct pool_tunnel *)t;
	return pt->chain && pt->chain->ops->is_alive(pt->chain);
}

static const struct transport_ops tunnel_ops = {tun_input,    tun_output, tun_set_reading,
                                                tun_shutdown, tun_close,  tun_is_alive};

static void tun_read(void *ctx)
{
	struct pool_tunnel *pt = ctx;
	if (pt->base.cbs.on_read)
		pt->base.cbs.on_read(pt->base.ctx);
}

static void tun_drain(void *ctx)
{
	struct pool_tunnel *pt = ctx;
	if (pt->base.cbs.on_drain)
		pt->base.cbs.on_drain(pt->base.ctx);
}

static void tun_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct pool_tunnel *pt = ctx;

	if (ev == TRANSPORT_CONNECTED && !pt->up && pt->pool) {
		pt->up = true;
		pt->pool->m->metrics.upstream_opened[PROTO_TUNNEL]++;
		log_debug("pool: new tunnel %s", pt->key.id);
	}
	pt->base.cbs.on_event(pt->base.ctx, ev, err, reason); /* may close pt */
}

/* The chain could not be made (out of memory). */
static void tun_fail_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_tunnel *pt = arg;

	(void)fd;
	(void)what;
	pt->base.cbs.on_event(pt->base.ctx, TRANSPORT_ERROR, ERR_CONNECT, "out of memory");
}

/* The budget stayed spent for connect_timeout: 503. */
static void tun_budget_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_tunnel *pt = arg;

	(void)fd;
	(void)what;
	TAILQ_REMOVE(&pt->pool->tunnel_waiters, pt, link);
	pt->waiting = false;
	pt->base.cbs.on_event(pt->base.ctx, TRANSPORT_ERROR, ERR_BUDGET, pt->why);
}

/* Waiting tunnels get slots in order while the budget allows, an idle
 * connection evicted for each when it is spent; those left wait, at most
 * connect_timeout from when they were first blocked. */
static void tunnel_dispatch(struct pool *p)
{
	static const struct transport_cbs cbs = {tun_read, tun_drain, tun_event};
	struct pool_tunnel *pt;

	while ((pt = TAILQ_FIRST(&p->tunnel_waiters)) != NULL) {
		if (p->nconns >= p->m->cfg->max_connections) {
			if (!TAILQ_EMPTY(&p->idle)) {
				pool_evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
				continue;
			}
			uint64_t ms = p->m->cfg->connect_timeout_ms;
			struct timeval tv = ms_to_timeval(ms);
			char d[32];
			pool_duration(ms, d, sizeof(d));
			TAILQ_FOREACH(pt, &p->tunnel_waiters, link)
			{
				if (pt->budget_timer)
					continue;
				log_debug("pool: %s waits for a connection slot (max_connections)",
				          pt->key.id);
				snprintf(pt->why, sizeof(pt->why),
				         "upstream connection limit reached; waited %s", d);
				pt->budget_timer = evtimer_new(p->m->base, tun_budget_cb, pt);
				if (pt->budget_timer)
					evtimer_add(pt->budget_timer, &tv);
			}
			return;
		}
		TAILQ_REMOVE(&p->tunnel_waiters, pt, link);
		TAILQ_INSERT_TAIL(&p->tunnels, pt, link);
		pt->waiting = false;
		pt->counted = true;
		p->nconns++;
		if (pt->budget_timer) {
			event_free(pt->budget_timer);
			pt->budget_timer = NULL;
		}
		struct chain_hop hops[CONFIG_MAX_HOPS];
		struct chain_spec spec;
		pool_key_chain(&pt->key, hops, &spec, p->m->cfg->connect_timeout_ms);
		spec.shared_hop = pool_shared_hop(p);
		pt->chain = chain_connect(p->m, &spec, &cbs, pt);
		if (!pt->chain)
			event_active(pt->fail_ev, EV_TIMEOUT, 0);
	}
}

static void tunnel_dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tunnel_dispatch(arg);
}

struct transport *pool_open_tunnel(struct pool *p, const struct route *route, const char *host,
                                   uint16_t port, const struct transport_cbs *cbs, void *ctx)
{
	struct pool_tunnel *pt = calloc(1, sizeof(*pt));

	if (!pt)
		return NULL;
	pt->base.ops = &tunnel_ops;
	transport_set_cbs(&pt->base, cbs, ctx);
	pt->pool = p;
	pt->fail_ev = event_new(p->m->base, -1, 0, tun_fail_cb, pt);
	if (!pt->fail_ev || !pool_key_init(&pt->key, p->m, "tunnel", host, port, route)) {
		if (pt->fail_ev)
			event_free(pt->fail_ev);
		free(pt);
		return NULL;
	}
	pt->waiting = true;
	TAILQ_INSERT_TAIL(&p->tunnel_waiters, pt, link);
	event_active(p->tunnel_ev, EV_TIMEOUT, 0);
	return &pt->base;
}

struct chain_shared_hop pool_shared_hop(struct pool *p)
{
	return (struct chain_shared_hop){shared_hop_open, p};
}

bool pool_tunnels_init(struct pool *p)
{
	TAILQ_INIT(&p->tunnels);
	TAILQ_INIT(&p->tunnel_waiters);
	p->tunnel_ev = event_new(p->m->base, -1, 0, tunnel_dispatch_cb, p);
	return p->tunnel_ev != NULL;
}

void pool_tunnels_schedule(struct pool *p)
{
	if (!TAILQ_EMPTY(&p->tunnel_waiters))
		event_active(p->tunnel_ev, EV_TIMEOUT, 0);
}

unsigned pool_tunnels_up(struct pool *p)
{
	struct pool_tunnel *pt;
	unsigned n = 0;

	TAILQ_FOREACH(pt, &p->tunnels, link)
	if (pt->up)
		n++;
	return n;
}

void pool_tunnels_free(struct pool *p)
{
	struct pool_tunnel_list *lists[] = {&p->tunnels, &p->tunnel_waiters};

	for (int i = 0; i < 2; i++) {
		struct pool_tunnel *pt;
		while ((pt = TAILQ_FIRST(lists[i])) != NULL) {
			TAILQ_REMOVE(lists[i], pt, link);
			if (pt->chain)
				transport_close(pt->chain);
			pt->chain = NULL;
			pt->pool = NULL;
			pt->waiting = pt->counted = false;
			if (pt->budget_timer)
				event_del(pt->budget_timer);
			event_del(pt->fail_ev);
		}
	}
	if (p->tunnel_ev)
		event_free(p->tunnel_ev);
}
