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
 * is given back when its user closes it. A dedicated connection
 * (pool_open_dedicated, an HTTP/1.1 Upgrade) is the same thing along an
 * origin's key: the exchange puts its own codec on it.
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
	enum proto proto;              /* PROTO_TUNNEL, or PROTO_H1: a dedicated connection */
	struct pool_key_packed *key;   /* the path ("tunnel" key); owned */
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

/* A CONNECT stream on a pooled connection to a parent, handed to the HTTP/2
 * tunnel layer as a struct tunnel_stream: it sends the CONNECT head and
 * passes on what the tunnel needs of the answer. Freed when the stream
 * ends, fails or is cancelled (before the user hears of it: call the user
 * last, hold.h). */
struct hop_stream {
	struct tunnel_stream base;
	struct pool_wait *wait; /* for the upstream stream */
	struct upstream_stream *s;
	struct tunnel_stream_cbs cbs;
	void *ctx;
	char authority[300];
	char auth[HTTP1_BASIC_MAX]; /* "": no Proxy-Authorization */
};

static size_t hs_send_space(struct tunnel_stream *t)
{
	struct upstream_stream *s = ((struct hop_stream *)t)->s;
	return s->ops->send_space(s);
}

static void hs_send(struct tunnel_stream *t, const void *data, size_t len)
{
	struct upstream_stream *s = ((struct hop_stream *)t)->s;
	s->ops->send_body(s, data, len);
}

static void hs_send_end(struct tunnel_stream *t)
{
	struct upstream_stream *s = ((struct hop_stream *)t)->s;
	s->ops->send_end(s, "");
}

static struct evbuffer *hs_body(struct tunnel_stream *t)
{
	struct upstream_stream *s = ((struct hop_stream *)t)->s;
	return s->ops->body(s);
}

static void hs_consumed(struct tunnel_stream *t)
{
	struct upstream_stream *s = ((struct hop_stream *)t)->s;
	s->ops->consumed(s); /* may end the stream and free t: nothing after it */
}

static void hs_cancel(struct tunnel_stream *t)
{
	struct hop_stream *h = (struct hop_stream *)t;

	if (h->wait)
		pool_wait_cancel(h->wait);
	if (h->s)
		h->s->ops->cancel(h->s);
	free(h);
}

static const struct tunnel_stream_ops hop_stream_ops = {hs_send_space, hs_send,     hs_send_end,
                                                        hs_body,       hs_consumed, hs_cancel};

static void hs_on_head(void *ctx, const struct http1_msg *m)
{
	struct hop_stream *h = ctx;

	if (m->status >= 200) /* interim answers say nothing about the tunnel */
		h->cbs.on_answer(h->ctx, m->status, m->reason);
}

static void hs_on_body(void *ctx)
{
	struct hop_stream *h = ctx;
	h->cbs.on_body(h->ctx);
}

static void hs_on_end(void *ctx, const char *trailers)
{
	struct hop_stream *h = ctx;
	struct tunnel_stream_cbs cbs = h->cbs;
	void *uctx = h->ctx;

	(void)trailers;
	free(h); /* the connection took the stream back */
	cbs.on_end(uctx);
}

static void hs_on_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct hop_stream *h = ctx;
	struct tunnel_stream_cbs cbs = h->cbs;
	void *uctx = h->ctx;

	(void)nothing;
	free(h);
	cbs.on_error(uctx, err, reason);
}

static void hs_on_send_ready(void *ctx)
{
	struct hop_stream *h = ctx;
	h->cbs.on_send_ready(h->ctx);
}

static const struct upstream_stream_cbs hop_upstream_cbs = {hs_on_head, hs_on_body, hs_on_end,
                                                            hs_on_error, hs_on_send_ready};

static void hs_wait_stream(void *ctx, struct upstream_stream *s, bool reused)
{
	struct hop_stream *h = ctx;
	struct upstream_field auth = {"Proxy-Authorization", 19, h->auth, strlen(h->auth)};
	struct upstream_request r = {
	    .method = "CONNECT",
	    .scheme = "https",
	    .authority = h->authority,
	    .path = "",
	    .fields = &auth,
	    .nfields = h->auth[0] ? 1 : 0,
	    .has_body = true,
	    .content_length = -1,
	};

	(void)reused;
	h->wait = NULL;
	h->s = s;
	upstream_stream_send_head(s, &r);
	h->cbs.on_stream(h->ctx, &h->base);
}

static void hs_wait_error(void *ctx, enum muxd_err err, const char *reason)
{
	struct hop_stream *h = ctx;
	struct tunnel_stream_cbs cbs = h->cbs;
	void *uctx = h->ctx;

	free(h); /* the waiter is gone */
	cbs.on_error(uctx, err, reason);
}

static const struct pool_wait_cbs hop_wait_cbs = {hs_wait_stream, hs_wait_error};

static void *hop_stream_start(void *arg, const char *authority, const char *proxy_auth,
                              const struct tunnel_stream_cbs *cbs, void *ctx)
{
	struct hop_source *src = arg;
	struct hop_stream *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->base.ops = &hop_stream_ops;
	h->cbs = *cbs;
	h->ctx = ctx;
	snprintf(h->authority, sizeof(h->authority), "%s", authority);
	snprintf(h->auth, sizeof(h->auth), "%s", proxy_auth ? proxy_auth : "");
	h->wait = pool_start_stream(src->p, &src->key, false, &hop_upstream_cbs, &hop_wait_cbs, h);
	if (!h->wait) {
		free(h);
		return NULL;
	}
	return h;
}

static void hop_stream_cancel(void *handle)
{
	hs_cancel(handle);
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
	return h2_tunnel_connect(&hs.p->m->env->transport, &src, name, host, port,
	                         h->user ? auth : NULL, cbs, ctx);
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
	free(pt->key);
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
		pt->pool->m->metrics.upstream_opened[pt->proto]++;
		log_debug("pool: new %s %s",
		          pt->proto == PROTO_TUNNEL ? "tunnel" : "dedicated connection",
		          pt->key->id);
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
				          pt->key->id);
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
		struct pool_key key; /* chain_connect copies what it keeps */
		pool_key_unpack(pt->key, &key);
		pool_key_chain(&key, hops, &spec, p->m->cfg->connect_timeout_ms);
		spec.shared_hop = pool_shared_hop(p);
		pt->chain = chain_connect(&p->m->env->transport, &spec, &cbs, pt);
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

/* A tunnel of proto along key (NULL: a "tunnel" key from route, host and
 * port), queued for a slot. */
static struct transport *open_tunnel(struct pool *p, enum proto proto, const struct pool_key *key,
                                     const struct route *route, const char *host, uint16_t port,
                                     const struct transport_cbs *cbs, void *ctx)
{
	struct pool_tunnel *pt = calloc(1, sizeof(*pt));
	struct pool_key k;

	if (!pt)
		return NULL;
	pt->base.ops = &tunnel_ops;
	transport_set_cbs(&pt->base, cbs, ctx);
	pt->pool = p;
	pt->proto = proto;
	if (!key && pool_key_init(&k, p->m, "tunnel", host, port, route))
		key = &k;
	pt->key = key ? pool_key_pack(key) : NULL;
	pt->fail_ev = event_new(p->m->base, -1, 0, tun_fail_cb, pt);
	if (!pt->fail_ev || !pt->key) {
		if (pt->fail_ev)
			event_free(pt->fail_ev);
		free(pt->key);
		free(pt);
		return NULL;
	}
	pt->waiting = true;
	TAILQ_INSERT_TAIL(&p->tunnel_waiters, pt, link);
	event_active(p->tunnel_ev, EV_TIMEOUT, 0);
	return &pt->base;
}

struct transport *pool_open_tunnel(struct pool *p, const struct route *route, const char *host,
                                   uint16_t port, const struct transport_cbs *cbs, void *ctx)
{
	return open_tunnel(p, PROTO_TUNNEL, NULL, route, host, port, cbs, ctx);
}

struct transport *pool_open_dedicated(struct pool *p, const struct pool_key *key,
                                      const struct transport_cbs *cbs, void *ctx)
{
	struct pool_key k = *key;
	size_t len = strlen(k.id);

	/* HTTP/1.1 only; and a key of its own, so that neither its TLS session
	 * nor anything else of it is taken for a pooled connection's */
	if (k.tls)
		snprintf(k.alpn, sizeof(k.alpn), "http/1.1");
	k.h3 = false;
	if ((size_t)snprintf(k.id + len, sizeof(k.id) - len, " dedicated alpn=http/1.1") >=
	    sizeof(k.id) - len)
		return NULL;
	return open_tunnel(p, PROTO_H1, &k, NULL, NULL, 0, cbs, ctx);
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

unsigned pool_tunnels_up(struct pool *p, enum proto proto)
{
	struct pool_tunnel *pt;
	unsigned n = 0;

	TAILQ_FOREACH(pt, &p->tunnels, link)
	if (pt->up && pt->proto == proto)
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
