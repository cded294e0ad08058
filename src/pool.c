/*
 * pool — matchmaking between requests and upstream connections.
 *
 * Per origin (pool key) there is a FIFO of waiters and a list of
 * connections. Dispatch first gives connections with a free stream slot to
 * waiters (most recently used first: the warmest), then opens connections
 * for the waiters left, within max_h1_per_origin and max_connections (the
 * latter evicting the least recently used idle connection anywhere). A
 * waiter that can get no connection because the budget or the per-origin cap
 * (max_h1_per_origin, max_h2_per_origin) is spent gets 503 after
 * connect_timeout. Setting a connection up is bounded by connect_timeout as
 * well: the transport chain's own deadline, then (HTTP/2) the wait for the
 * peer's SETTINGS; when it passes, the waiters it was for get 504 and the
 * slot is free again. Idle connections sit in one global LRU list.
 *
 * Dispatch asks pool_h3.c first whether an origin gets a QUIC connection
 * (and whether TCP waits for it); client tunnels (pool_tunnel.c) share the
 * max_connections budget counted here.
 */
#include "pool.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "config.h"
#include "hold.h"
#include "log.h"
#include "pool_internal.h"
#include "route.h"
#include "timeutil.h"
#include "transport/transport.h"

#define TRIM_DELAY_MS 250 /* surplus idle connections get this long to be reused */

/* The hash chain of a key (pool_key_hash or pool_key_packed_hash). */
static unsigned bucket(unsigned hash)
{
	return hash % POOL_BUCKETS;
}

static void trim_cb(evutil_socket_t fd, short what, void *arg);

struct pool *pool_new(struct muxd *m)
{
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->m = m;
	TAILQ_INIT(&p->idle);
	p->trim_timer = evtimer_new(m->base, trim_cb, p);
	if (!pool_tunnels_init(p) || !p->trim_timer || !pool_h3_init(p)) {
		pool_free(p);
		return NULL;
	}
	return p;
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg);

static struct pool_origin *origin_get(struct pool *p, const struct pool_key *key, bool create)
{
	unsigned h = bucket(pool_key_hash(key));
	struct pool_origin *o;

	for (o = p->buckets[h]; o; o = o->next)
		if (pool_key_packed_equal(o->key, key))
			return o;
	if (!create || !(o = calloc(1, sizeof(*o))))
		return NULL;
	o->pool = p;
	if (!(o->key = pool_key_pack(key))) {
		free(o);
		return NULL;
	}
	o->learned = key->tls ? PROTO_COUNT : PROTO_H1;
	TAILQ_INIT(&o->conns);
	TAILQ_INIT(&o->waiters);
	o->dispatch_ev = event_new(p->m->base, -1, 0, dispatch_cb, o);
	if (!o->dispatch_ev) {
		free(o->key);
		free(o);
		return NULL;
	}
	o->next = p->buckets[h];
	p->buckets[h] = o;
	return o;
}

static void origin_maybe_free(struct pool_origin *o)
{
	struct pool_origin **pp;

	if (o->nconns || o->nwaiters || o->holds || pool_warm_holds(o))
		return;
	for (pp = &o->pool->buckets[bucket(pool_key_packed_hash(o->key))]; *pp != o;
	     pp = &(*pp)->next)
		;
	*pp = o->next;
	event_free(o->dispatch_ev);
	pool_h3_origin_free(o);
	pool_warm_origin_free(o);
	pool_coalesce_origin_free(o);
	free(o->key);
	free(o);
}

void pool_origin_maybe_free(struct pool_origin *o)
{
	origin_maybe_free(o);
}

void pool_schedule(struct pool_origin *o)
{
	event_active(o->dispatch_ev, EV_TIMEOUT, 0);
}

void pool_schedule_all(struct pool *p)
{
	pool_tunnels_schedule(p);
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *o = p->buckets[i]; o; o = o->next)
			if (o->nwaiters > o->nconnecting)
				pool_schedule(o);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double since(const struct timespec *t)
{
	return now_s() - ((double)t->tv_sec + (double)t->tv_nsec / 1e9);
}

static void set_idle(struct pool_conn *pc, bool idle)
{
	struct pool *p = pc->pool;

	if (pc->idle == idle)
		return;
	pc->idle = idle;
	if (idle) {
		/* for the status page only: the cheap clock (since() is in seconds) */
		clock_gettime(CLOCK_MONOTONIC_COARSE, &pc->idle_since);
		TAILQ_INSERT_TAIL(&p->idle, pc, idle_link);
		p->nidle++;
		pc->o->nidle++;
		deadline_set(&pc->idle_timer, p->m->cfg->idle_timeout_ms);
	} else {
		TAILQ_REMOVE(&p->idle, pc, idle_link);
		p->nidle--;
		pc->o->nidle--;
		deadline_clear(&pc->idle_timer);
	}
}

void pool_conn_forget(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	set_idle(pc, false);
	pool_warm_forget(pc);
	pool_coalesce_forget(pc);
	TAILQ_REMOVE(&o->conns, pc, o_link);
	o->nconns--;
	pc->pool->nconns--;
	if (pc->connecting)
		o->nconnecting--;
	pool_h3_forget(pc);
	if (pc->age_timer)
		event_free(pc->age_timer);
	if (pc->setup_timer)
		event_free(pc->setup_timer);
	deadline_free(&pc->idle_timer);
	muxd_upstream_closed(pc->pool->m);
	free(pc);
	pool_schedule_all(o->pool);
	origin_maybe_free(o);
}

void pool_evict(struct pool_conn *pc, enum evict_reason why)
{
	struct upstream_conn *uc = pc->uc;

	log_debug("pool: closing %s connection to %s (%s)", proto_name(uc->proto), pc->o->key->id,
	          evict_reason_name(why));
	if (why < EVICT_COUNT)
		pc->pool->m->metrics.evictions[why]++;
	pool_conn_forget(pc);
	uc->ops->close(uc);
}

/* No new streams on pc; it leaves when its last stream has ended. */
static void retire(struct pool_conn *pc, enum evict_reason why)
{
	if (pc->retired || !pc->uc)
		return;
	pc->retired = true;
	pc->retire_why = why;
	pc->uc->reusable = false;
	if (pc->idle)
		pool_evict(pc, why);
}

static void age_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	retire(arg, EVICT_AGE);
}

/* idle_timeout passed: the connection closes, unless keep-warm keeps it
 * (then it is judged again after another idle_timeout). */
static void idle_timeout_cb(void *arg)
{
	struct pool_conn *pc = arg;

	if (pool_warm_keep(pc)) {
		deadline_set(&pc->idle_timer, pc->pool->m->cfg->idle_timeout_ms);
		return;
	}
	pool_evict(pc, EVICT_IDLE_TIMEOUT);
}

/* A request's waiter comes from the pool's spare list when it has one: a
 * keep-alive request costs no calloc and free for it (pool_internal.h). */
static struct pool_wait *waiter_new(struct pool *p)
{
	struct pool_wait *w = p->spare_waiters;

	if (!w)
		return calloc(1, sizeof(*w));
	p->spare_waiters = w->next_spare;
	p->nspare_waiters--;
	memset(w, 0, sizeof(*w));
	return w;
}

static void waiter_release(struct pool *p, struct pool_wait *w)
{
	if (p->nspare_waiters + 1 > POOL_SPARE_WAITERS) { /* (not >=: 0 under ASan) */
		free(w);
		return;
	}
	w->next_spare = p->spare_waiters;
	p->spare_waiters = w;
	p->nspare_waiters++;
}

static void waiter_free(struct pool_wait *w)
{
	struct pool_origin *o = w->o;

	TAILQ_REMOVE(&o->waiters, w, link);
	o->nwaiters--;
	if (w->budget_timer)
		event_free(w->budget_timer);
	waiter_release(o->pool, w);
}

static bool accepts(const struct pool_wait *w, const struct pool_conn *pc)
{
	return pc->serial >= w->min_serial;
}

/* Open a stream on pc for w and hand it over; w is freed. */
static void give(struct pool_conn *pc, struct pool_wait *w)
{
	struct upstream_conn *uc = pc->uc;
	/* a connection opened ahead of need (keep-warm) may have gone stale
	 * like any other that sat idle: a failure on it is retried */
	bool reused = uc->requests > 0 || pc->warmed || pc->background;
	struct pool_wait_cbs cbs = w->cbs;
	void *ctx = w->ctx;

	if (w->warm) { /* pool_warm: the connection is enough */
		reused = pc->serial < w->warm_serial;
		pc->warmed = true;
		waiter_free(w);
		cbs.on_stream(ctx, NULL, reused);
		return;
	}
	struct upstream_stream *s = uc->ops->open_stream(uc, &w->stream_cbs, w->ctx);
	if (!s)
		return;
	set_idle(pc, false);
	pc->o->warm_backoff_ms = 0; /* in use: a re-open, if needed, goes at once */
	if (reused)
		pc->pool->m->metrics.upstream_reuses++;
	unsigned max = pc->pool->m->cfg->max_requests_per_connection;
	if (max > 0 && uc->requests >= max)
		retire(pc, EVICT_AGE);
	waiter_free(w);
	cbs.on_stream(ctx, s, reused);
}

void pool_give(struct pool_conn *pc, struct pool_wait *w)
{
	give(pc, w);
}

/* The first waiter that pc may serve, or NULL. */
static struct pool_wait *first_for(struct pool_origin *o, const struct pool_conn *pc)
{
	struct pool_wait *w;

	TAILQ_FOREACH(w, &o->waiters, link)
	if (accepts(w, pc))
		return w;
	return NULL;
}

/* A connection with a free stream slot for some waiter, and that waiter:
 * HTTP/3 when there is one, else the most recently used (the warmest).
 * While a QUIC attempt is young (h3_timeout), requests wait for it. */
static struct pool_conn *find_match(struct pool_origin *o, struct pool_wait **wp)
{
	struct pool_conn *pc, *best = NULL;
	struct pool_wait *w;
	bool wait_quic = pool_h3_holds_tcp(o);

	*wp = NULL;
	TAILQ_FOREACH(pc, &o->conns, o_link)
	{
		if (!pc->uc || pc->uc->ops->free_slots(pc->uc) == 0)
			continue;
		if (wait_quic && pc->uc->proto != PROTO_H3)
			continue;
		if (best && best->uc->proto == PROTO_H3 && pc->uc->proto != PROTO_H3)
			continue;
		if ((w = first_for(o, pc)) != NULL) {
			best = pc;
			*wp = w;
		}
	}
	return best;
}

/* An idle connection of o (to make room under the per-origin cap). */
static struct pool_conn *find_idle(struct pool_origin *o)
{
	struct pool_conn *pc;

	TAILQ_FOREACH(pc, &o->conns, o_link)
	if (pc->idle)
		return pc;
	return NULL;
}

static struct pool_conn *conn_by_serial(struct pool_origin *o, uint64_t serial)
{
	struct pool_conn *pc;

	TAILQ_FOREACH(pc, &o->conns, o_link)
	if (pc->serial == serial)
		return pc;
	return NULL;
}

static void budget_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_wait *w = arg;
	struct pool_wait_cbs cbs = w->cbs;
	void *ctx = w->ctx;
	struct pool_origin *o = w->o;
	char why[sizeof(w->why)];

	(void)fd;
	(void)what;
	snprintf(why, sizeof(why), "%s", w->why);
	waiter_free(w);
	origin_maybe_free(o);
	cbs.on_error(ctx, ERR_BUDGET, why);
}

void pool_duration(uint64_t ms, char *buf, size_t size)
{
	if (ms % 1000 == 0)
		snprintf(buf, size, "%llu s", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, size, "%llu ms", (unsigned long long)ms);
}

/* The waiters of o, but the first skip (served by connections being set up),
 * are blocked on a limit (why): each waits at most connect_timeout from now,
 * then gets 503. A waiter already waiting keeps its deadline. */
static void budget_wait(struct pool_origin *o, unsigned skip, const char *why)
{
	struct pool_wait *w;
	uint64_t ms = o->pool->m->cfg->connect_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);
	char d[32];

	pool_duration(ms, d, sizeof(d));
	TAILQ_FOREACH(w, &o->waiters, link)
	{
		if (skip > 0) {
			skip--;
			continue;
		}
		if (w->budget_timer)
			continue;
		snprintf(w->why, sizeof(w->why), "%s; waited %s", why, d);
		w->budget_timer = evtimer_new(o->pool->m->base, budget_timeout_cb, w);
		if (w->budget_timer)
			evtimer_add(w->budget_timer, &tv);
	}
}

static void conn_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason);
static const struct upstream_owner_cbs owner_cbs;
static void conn_ready(struct pool_conn *pc);

struct pool_conn *pool_conn_alloc(struct pool_origin *o)
{
	struct pool_conn *pc = calloc(1, sizeof(*pc));

	if (!pc)
		return NULL;
	pc->pool = o->pool;
	pc->o = o;
	if (!deadline_init(&pc->idle_timer, o->pool->m->base, idle_timeout_cb, pc)) {
		free(pc);
		return NULL;
	}
	return pc;
}

void pool_conn_release(struct pool_conn *pc)
{
	deadline_free(&pc->idle_timer);
	free(pc);
}

void pool_conn_add(struct pool_origin *o, struct pool_conn *pc)
{
	clock_gettime(CLOCK_MONOTONIC, &pc->created);
	pc->serial = o->pool->next_serial++;
	pc->connecting = true;
	TAILQ_INSERT_TAIL(&o->conns, pc, o_link);
	o->nconns++;
	o->nconnecting++;
	o->pool->nconns++;
}

static bool open_conn(struct pool_origin *o)
{
	struct pool *p = o->pool;
	struct pool_conn *pc = pool_conn_alloc(o);
	static const struct transport_cbs tcbs = {NULL, NULL, conn_event};
	struct chain_hop hops[CONFIG_MAX_HOPS];
	struct chain_spec spec;
	struct pool_key key; /* chain_connect copies what it keeps */

	if (!pc)
		return false;
	pool_key_unpack(o->key, &key);
	pool_key_chain(&key, hops, &spec, p->m->cfg->connect_timeout_ms);
	spec.shared_hop = pool_shared_hop(p);
	pc->pending = chain_connect(&p->m->env->transport, &spec, &tcbs, pc);
	if (!pc->pending) {
		pool_conn_release(pc);
		return false;
	}
	pool_conn_add(o, pc);
	return true;
}

struct pool_conn *pool_open_conn(struct pool_origin *o)
{
	/* pool_conn_add puts the new connection last */
	return open_conn(o) ? TAILQ_LAST(&o->conns, pool_conn_list) : NULL;
}

/* How many more connections the waiters of o call for now. HTTP/2 (or a
 * TLS origin whose protocol ALPN has not told yet) takes one connection at a
 * time: requests that arrive while it is being set up wait for it. */
static unsigned wanted(const struct pool_origin *o, unsigned *cap)
{
	const struct config *cfg = o->pool->m->cfg;
	bool maybe_h2 = strstr(o->key->alpn, "h2") != NULL && o->learned != PROTO_H1;

	/* TCP connections being set up (a QUIC attempt is not one of them) */
	unsigned connecting = o->nconnecting - pool_h3_connecting(o);

	if (pool_h3_holds_tcp(o))
		return 0; /* TCP waits for QUIC until h3_timeout */
	if (maybe_h2) {
		const struct pool_conn *pc;
		*cap = cfg->max_h2_per_origin;
		if (connecting > 0)
			return 0;
		TAILQ_FOREACH(pc, &o->conns, o_link)
		if (pc->uc && pc->uc->warming && pc != o->h3_attempt)
			return 0;
		return 1;
	}
	*cap = cfg->max_h1_per_origin;
	return o->nwaiters > connecting ? o->nwaiters - connecting : 0;
}

/* Every connection o may have is busy (cap of them): the waiters that no
 * connection being set up will serve wait for a free one, at most
 * connect_timeout. */
static void cap_wait(struct pool_origin *o, unsigned cap)
{
	/* as in wanted(): HTTP/2 unless ALPN said HTTP/1.1 */
	bool h2 = strstr(o->key->alpn, "h2") != NULL && o->learned != PROTO_H1;
	unsigned connecting = o->nconnecting - pool_h3_connecting(o);
	char why[160];

	snprintf(why, sizeof(why), "all %u %s connections to it are busy (%s)", cap,
	         h2 ? "HTTP/2" : "HTTP/1.1", h2 ? "max_h2_per_origin" : "max_h1_per_origin");
	budget_wait(o, connecting, why);
}

static void dispatch(struct pool_origin *o)
{
	struct pool *p = o->pool;
	struct pool_wait *w;
	struct pool_conn *pc;
	unsigned cap;

	hold_take(&o->holds); /* give() runs callbacks that may close connections */
	/* 0. an origin known to speak HTTP/3 gets a QUIC connection first */
	if (o->nwaiters > 0 && !p->m->draining)
		pool_h3_start(o);
	/* 1. free stream slots on existing connections */
	while ((pc = find_match(o, &w)) != NULL)
		give(pc, w);
	/* 1b. no connection of its own: one made for another name may do */
	if (pool_coalesce(o)) {
		hold_release(&o->holds);
		origin_maybe_free(o);
		return; /* back when the name is resolved */
	}
	/* 2. new connections for the waiters left */
	while (o->nwaiters > 0 && wanted(o, &cap) > 0 && !p->m->draining) {
		if (o->nconns >= cap) {
			pc = find_idle(o); /* idle, yet no waiter may use it: make room */
			if (!pc) {
				cap_wait(o, cap);
				break;
			}
			pool_evict(pc, EVICT_LIMIT);
			continue;
		}
		if (p->nconns >= p->m->cfg->max_connections) {
			if (TAILQ_EMPTY(&p->idle)) {
				budget_wait(o, 0, "upstream connection limit reached");
				break;
			}
			pool_evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
			continue;
		}
		if (!open_conn(o)) {
			budget_wait(o, 0, "upstream connection limit reached");
			break;
		}
	}
	hold_release(&o->holds);
	origin_maybe_free(o);
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	dispatch(arg);
}

/* A connection has free stream slots: give them to the waiters that take
 * it; park it idle when nothing runs on it. */
static void conn_available(void *owner, struct upstream_conn *uc)
{
	struct pool_conn *pc = owner;
	struct pool_origin *o = pc->o;
	struct pool *p = pc->pool;
	uint64_t serial = pc->serial;
	struct pool_wait *w;

	if (pc->connecting) /* a connection that set itself up (HTTP/3) is ready */
		conn_ready(pc);
	if (pc->setup_timer && !uc->warming)
		evtimer_del(pc->setup_timer);
	hold_take(&o->holds);
	while ((pc = conn_by_serial(o, serial)) && uc->ops->free_slots(uc) > 0 &&
	       (w = first_for(o, pc)))
		give(pc, w);
	hold_release(&o->holds);
	if (!pc || !uc->ops->is_idle(uc)) {
		if (o->nwaiters)
			pool_schedule(o); /* more waiters than this connection's slots */
		origin_maybe_free(o);
		return;
	}
	if (p->m->draining) {
		pool_conn_forget(pc);
		uc->ops->close(uc);
		return;
	}
	if (pc->retired) {
		pool_evict(pc, pc->retire_why);
		return;
	}
	set_idle(pc, true);
	pool_warm_idle(pc);
	if ((o->nidle > p->m->cfg->max_idle_per_origin || p->nidle > p->m->cfg->max_idle) &&
	    !evtimer_pending(p->trim_timer, NULL)) {
		struct timeval tv = ms_to_timeval(TRIM_DELAY_MS);
		evtimer_add(p->trim_timer, &tv);
	}
}

/* Close the least recently used idle connections over max_idle_per_origin
 * and max_idle. Deferred by TRIM_DELAY_MS so that a burst of requests does
 * not churn connections that the next moment would have reused. */
static void trim_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool *p = arg;
	const struct config *cfg = p->m->cfg;
	struct pool_conn *pc, *next;

	(void)fd;
	(void)what;
	for (pc = TAILQ_FIRST(&p->idle); pc; pc = next) {
		next = TAILQ_NEXT(pc, idle_link);
		if (pc->o->nidle > cfg->max_idle_per_origin || p->nidle > cfg->max_idle) {
			pool_evict(pc, EVICT_LIMIT);
		}
	}
}

/* A new connection can carry streams. */
static void conn_ready(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;
	struct pool *p = pc->pool;

	pc->connecting = false;
	o->nconnecting--;
	p->m->metrics.upstream_opened[pc->uc->proto]++;
	uint64_t age = p->m->cfg->max_connection_age_ms;
	if (age > 0 && (pc->age_timer = evtimer_new(p->m->base, age_cb, pc)) != NULL) {
		struct timeval tv = ms_to_timeval(age);
		evtimer_add(pc->age_timer, &tv);
	}
	log_debug("pool: new %s connection to %s", proto_name(pc->uc->proto), o->key->id);
	pool_h3_ready(pc);
	pool_warm_ready(pc);
	pool_coalesce_ready(pc);
}

static void conn_failed(void *owner, struct upstream_conn *uc, enum muxd_err err,
                        const char *reason)
{
	struct pool_conn *pc = owner;

	(void)uc;
	(void)err;
	pool_h3_failed(pc, reason);
	pool_warm_setup_failed(pc, reason);
	pool_conn_forget(pc); /* the connection frees itself */
}

static void conn_closed(void *owner, struct upstream_conn *uc, enum evict_reason why)
{
	struct pool_conn *pc = owner;

	if (pc->retired)
		why = pc->retire_why; /* it left because the pool retired it */
	if (why < EVICT_COUNT) {
		pc->pool->m->metrics.evictions[why]++;
		log_debug("pool: %s connection to %s left the pool (%s)", proto_name(uc->proto),
		          pc->o->key->id, evict_reason_name(why));
	}
	pool_warm_lost(pc); /* a hot origin gets another one in the background */
	pool_conn_forget(pc);
}

static const struct upstream_owner_cbs owner_cbs = {conn_available, conn_closed, conn_failed};

const struct upstream_owner_cbs *pool_owner_cbs(void)
{
	return &owner_cbs;
}

/* Setting pc up failed. The waiters that coalesced on it learn why; with
 * HTTP/1.1 each waiter has its own attempt, so only the first fails and the
 * others go on. pc is forgotten (its slot is free again) and uc, when given,
 * closed before anyone hears of it. */
static void fail_setup(struct pool_conn *pc, struct upstream_conn *uc, enum muxd_err err,
                       const char *why)
{
	struct pool_origin *o = pc->o;
	bool coalesced = strstr(o->key->alpn, "h2") != NULL && o->learned != PROTO_H1;
	struct pool_wait_list failed;
	struct pool_wait *w, *next;

	TAILQ_INIT(&failed);
	for (w = TAILQ_FIRST(&o->waiters); w; w = next) {
		next = TAILQ_NEXT(w, link);
		if (!accepts(w, pc))
			continue;
		TAILQ_REMOVE(&o->waiters, w, link);
		o->nwaiters--;
		TAILQ_INSERT_TAIL(&failed, w, link);
		if (!coalesced)
			break;
	}
	hold_take(&o->holds); /* o outlives pc while its waiters hear about it */
	pool_warm_setup_failed(pc, why);
	pool_conn_forget(pc);
	if (uc)
		uc->ops->close(uc);
	while ((w = TAILQ_FIRST(&failed)) != NULL) {
		struct pool_wait_cbs cbs = w->cbs;
		void *wctx = w->ctx;
		TAILQ_REMOVE(&failed, w, link);
		if (w->budget_timer)
			event_free(w->budget_timer);
		waiter_release(o->pool, w);
		cbs.on_error(wctx, err, why);
	}
	hold_release(&o->holds);
	origin_maybe_free(o);
}

/* An HTTP/2 connection is up but its peer's SETTINGS never came within
 * connect_timeout: the waiters get 504, the slot is free again. */
static void setup_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_conn *pc = arg;
	struct upstream_conn *uc = pc->uc;
	const struct pool_key_packed *k = pc->o->key;
	const struct pool_packed_hop *last = k->forward ? &k->hops[k->nhops - 1] : NULL;
	const char *host = last ? last->host : k->host;
	bool v6 = strchr(host, ':') != NULL;
	char why[400], d[32];

	(void)fd;
	(void)what;
	pool_duration(pc->pool->m->cfg->connect_timeout_ms, d, sizeof(d));
	snprintf(why, sizeof(why), "HTTP/2 SETTINGS from %s%s%s%s:%u timed out after %s",
	         last ? "proxy " : "", v6 ? "[" : "", host, v6 ? "]" : "",
	         last ? last->port : k->port, d);
	log_info("pool: %s: %s", k->id, why);
	fail_setup(pc, uc, ERR_CONNECT_TIMEOUT, why);
}

/* The transport chain is up, the codec is not ready yet (HTTP/2 waits for
 * the peer's SETTINGS): what is left of connect_timeout bounds that wait. */
static void arm_setup_timer(struct pool_conn *pc)
{
	uint64_t ms = pc->pool->m->cfg->connect_timeout_ms;
	double spent_ms = since(&pc->created) * 1000;

	if (ms == 0 || !(pc->setup_timer = evtimer_new(pc->pool->m->base, setup_timeout_cb, pc)))
		return;
	ms = spent_ms >= (double)ms ? 1 : ms - (uint64_t)spent_ms;
	struct timeval tv = ms_to_timeval(ms);
	evtimer_add(pc->setup_timer, &tv);
}

static void conn_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct pool_conn *pc = ctx;
	struct pool_origin *o = pc->o;
	struct pool *p = pc->pool;
	struct transport *t = pc->pending;
	char why[700];

	pc->pending = NULL;
	if (ev == TRANSPORT_CONNECTED) {
		bool h2 = strcmp(chain_alpn(t), "h2") == 0;
		struct upstream_params prm;
		struct upstream_forward fwd_buf;
		struct pool_key key; /* the codecs copy what they keep of fwd */
		const struct upstream_forward *fwd = NULL;
		if (o->key->forward) {
			pool_key_unpack(o->key, &key);
			fwd = pool_key_forward(&key, &fwd_buf);
		}
		upstream_params_init(&prm, p->m->cfg);
		pc->uc = h2 ? h2_conn_new(p->m->env, &prm, fwd, t, &owner_cbs, pc)
		            : h1_conn_new(p->m->env, &prm, fwd, t, &owner_cbs, pc);
		if (pc->uc) {
			o->learned = pc->uc->proto;
			conn_ready(pc);
			if (pc->uc->warming)
				arm_setup_timer(pc);
			conn_available(pc, pc->uc);
			return;
		}
		err = ERR_CONNECT;
		reason = "out of memory";
	}
	if (err == ERR_BUDGET) /* out of descriptors: give some back */
		pool_relieve(p);
	snprintf(why, sizeof(why), "%s", reason ? reason : "connect failed");
	if (t)
		transport_close(t);
	fail_setup(pc, NULL, err, why);
}

struct pool_wait *pool_start_stream(struct pool *p, const struct pool_key *key, bool fresh_only,
                                    const struct upstream_stream_cbs *stream_cbs,
                                    const struct pool_wait_cbs *cbs, void *ctx)
{
	struct pool_origin *o = origin_get(p, key, true);
	struct pool_wait *w;

	if (!o)
		return NULL;
	w = waiter_new(p);
	if (!w) {
		origin_maybe_free(o);
		return NULL;
	}
	w->o = o;
	w->min_serial = fresh_only ? p->next_serial : 0;
	w->stream_cbs = *stream_cbs;
	w->cbs = *cbs;
	w->ctx = ctx;
	TAILQ_INSERT_TAIL(&o->waiters, w, link);
	o->nwaiters++;
	if (!fresh_only)
		pool_warm_hit(o); /* retries are the same request */
	pool_schedule(o);
	return w;
}

struct pool_wait *pool_warm(struct pool *p, const struct pool_key *key,
                            const struct pool_wait_cbs *cbs, void *ctx)
{
	static const struct upstream_stream_cbs none;
	struct pool_wait *w = pool_start_stream(p, key, false, &none, cbs, ctx);

	if (w) {
		w->warm = true;
		w->warm_serial = p->next_serial;
	}
	return w;
}

void pool_wait_cancel(struct pool_wait *w)
{
	struct pool_origin *o = w->o;

	waiter_free(w);
	origin_maybe_free(o);
}

void pool_reconfigured(struct pool *p)
{
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *o = p->buckets[i], *next; o; o = next) {
			struct route r;
			struct pool_key k;
			struct pool_conn *pc, *pnext;
			next = o->next;
			route_for(p->m->cfg, o->key->host, o->key->port, &r);
			if (pool_key_init_sni(&k, p->m, o->key->scheme, o->key->host, o->key->port,
			                      o->key->sni, &r) &&
			    strcmp(k.id, o->key->id) == 0)
				continue;
			/* no route leads here any more: drain what serves it */
			o->nconns++; /* keep o while its idle connections go */
			for (pc = TAILQ_FIRST(&o->conns); pc; pc = pnext) {
				pnext = TAILQ_NEXT(pc, o_link);
				retire(pc, EVICT_COUNT);
			}
			o->nconns--;
			origin_maybe_free(o);
		}
}

void pool_relieve(struct pool *p)
{
	unsigned n = (p->nidle + 1) / 2;

	while (n-- > 0 && !TAILQ_EMPTY(&p->idle))
		pool_evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
}

void pool_close_idle(struct pool *p)
{
	while (!TAILQ_EMPTY(&p->idle))
		pool_evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
}

void pool_count(struct pool *p, struct pool_counts *out)
{
	memset(out, 0, sizeof(*out));
	out->active[PROTO_TUNNEL] = pool_tunnels_up(p, PROTO_TUNNEL);
	out->active[PROTO_H1] = pool_tunnels_up(p, PROTO_H1); /* dedicated */
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *o = p->buckets[i]; o; o = o->next) {
			struct pool_conn *pc;
			TAILQ_FOREACH(pc, &o->conns, o_link)
			{
				if (!pc->uc || pc->connecting)
					continue;
				if (pc->idle)
					out->idle[pc->uc->proto]++;
				else
					out->active[pc->uc->proto]++;
			}
		}
}

void pool_foreach_conn(struct pool *p, void (*fn)(void *arg, const struct pool_conn_info *c),
                       void *arg)
{
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *o = p->buckets[i]; o; o = o->next) {
			struct pool_conn *pc;
			TAILQ_FOREACH(pc, &o->conns, o_link)
			{
				struct upstream_conn *uc = pc->uc;
				struct pool_conn_info c = {
				    .key = o->key->id,
				    .host = o->key->host,
				    .port = o->key->port,
				    .proto = uc ? uc->proto : PROTO_COUNT,
				    .state = pc->connecting ? "connecting"
				             : pc->idle     ? "idle"
				                            : "active",
				    .streams = !uc || pc->connecting  ? 0
				               : uc->ops->streams     ? uc->ops->streams(uc)
				               : uc->ops->is_idle(uc) ? 0
				                                      : 1,
				    .requests = uc ? uc->requests : 0,
				    .age_s = since(&pc->created),
				    .idle_s = pc->idle ? since(&pc->idle_since) : 0,
				    .warm = pc->warm,
				    .hosts = pc->hosts && pc->hosts[0] ? pc->hosts : o->key->host,
				};
				fn(arg, &c);
			}
		}
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	pool_tunnels_free(p);
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		while (p->buckets[i]) {
			struct pool_origin *o = p->buckets[i];
			struct pool_wait *w;
			struct pool_conn *pc;
			while ((w = TAILQ_FIRST(&o->waiters)))
				waiter_free(w);
			o->nwaiters = 0;
			if (o->warm_timer)
				evtimer_del(o->warm_timer); /* no more re-opens */
			o->nconns++; /* keep the origin alive while emptying it */
			while ((pc = TAILQ_FIRST(&o->conns))) {
				struct upstream_conn *uc = pc->uc;
				struct transport *t = pc->pending;
				pool_conn_forget(pc);
				if (uc)
					uc->ops->close(uc);
				else if (t)
					transport_close(t);
			}
			o->nconns--;
			origin_maybe_free(o);
		}
	if (p->trim_timer)
		event_free(p->trim_timer);
	pool_h3_free(p);
	while (p->spare_waiters) {
		struct pool_wait *w = p->spare_waiters;
		p->spare_waiters = w->next_spare;
		free(w);
	}
	free(p);
}

bool pool_connect_protocol(struct pool *p, const struct pool_key *key)
{
	struct pool_origin *o = origin_get(p, key, false);
	struct pool_conn *pc;

	if (!o)
		return false;
	TAILQ_FOREACH(pc, &o->conns, o_link)
	{
		struct upstream_conn *uc = pc->uc;
		if (uc && !pc->connecting && !pc->retired && uc->ops->connect_protocol &&
		    uc->ops->free_slots(uc) > 0 && uc->ops->connect_protocol(uc))
			return true;
	}
	return false;
}
