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
 * HTTP/3 (principle 7): when the Alt-Svc cache holds a live h3 alternative
 * for a TLS origin whose route allows it, dispatch starts a QUIC connection
 * first. TCP waits for it only h3_timeout; then both race and the first
 * ready serves the waiters. A QUIC attempt that fails, or is still not ready
 * after H3_GIVE_UP times h3_timeout, marks the alternative broken and counts
 * a fallback; the waiters never notice.
 */
#include "pool.h"

#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>

#include "altsvc.h"
#include "config.h"
#include "hold.h"
#include "log.h"
#include "route.h"
#include "timeutil.h"
#include "transport/tls.h"
#include "transport/transport.h"

#define POOL_BUCKETS 256
#define TRIM_DELAY_MS 250   /* surplus idle connections get this long to be reused */
#define H3_GIVE_UP 10       /* a QUIC attempt not ready after 10 x h3_timeout failed */
#define ALTSVC_SAVE_MS 2000 /* the cache file is written at most this often after a change */
/* ... and without fsync: the loop must not wait for the disk (durably at shutdown) */

struct pool_origin;

struct pool_conn {
	struct pool *pool;
	struct pool_origin *o;
	struct upstream_conn *uc;  /* NULL while a transport chain connects */
	bool connecting;           /* not ready for streams yet (counted in nconnecting) */
	struct transport *pending; /* the transport chain being connected */
	uint64_t serial;           /* order of creation, for fresh-only waiters */
	TAILQ_ENTRY(pool_conn) o_link;
	TAILQ_ENTRY(pool_conn) idle_link;
	bool idle;
	struct event *idle_timer;
	struct timespec created, idle_since;
	bool retired;                 /* takes no new streams; closed once idle */
	enum evict_reason retire_why; /* counted then (EVICT_COUNT: not counted) */
	struct event *age_timer;      /* max_connection_age */
	struct event *setup_timer;    /* the rest of connect_timeout while warming */
};

struct pool_wait {
	struct pool_origin *o;
	TAILQ_ENTRY(pool_wait) link;
	uint64_t min_serial; /* accepts only connections created from then on */
	struct upstream_stream_cbs stream_cbs;
	struct pool_wait_cbs cbs;
	void *ctx;
	struct event *budget_timer; /* armed once blocked on a limit: then 503 */
	char why[200];              /* the limit, for the 503 */
};

TAILQ_HEAD(pool_conn_list, pool_conn);
TAILQ_HEAD(pool_wait_list, pool_wait);

struct pool_origin {
	struct pool *pool;
	struct pool_key key;
	struct pool_origin *next; /* hash chain */
	struct pool_conn_list conns;
	struct pool_wait_list waiters;
	unsigned nconns; /* including connecting */
	unsigned nconnecting;
	unsigned nwaiters;
	unsigned nidle;
	enum proto learned; /* what ALPN chose last time (PROTO_COUNT: not known) */
	unsigned holds;     /* dispatch running: callbacks must not free the origin (hold.h) */
	struct event *dispatch_ev;
	struct pool_conn *h3_attempt; /* QUIC connection being set up */
	struct event *race_timer;     /* h3_timeout: TCP may start; later: give up */
	bool race_fired;
};

struct pool {
	struct muxd *m;
	struct pool_origin *buckets[POOL_BUCKETS];
	struct pool_conn_list idle; /* LRU first */
	struct event *trim_timer;   /* closes idle connections over the caps */
	struct altsvc_cache *altsvc;
	struct event *save_timer; /* writes the Alt-Svc cache soon after a change */
	unsigned nconns;
	unsigned nidle;
	uint64_t next_serial;
};

void pool_cred_id(const struct muxd *m, const char *user, const char *pass, char out[17])
{
	size_t ul = strlen(user), pl = pass ? strlen(pass) : 0;
	unsigned char digest[32];
	char *text = malloc(ul + pl + 1);

	memset(digest, 0, sizeof(digest));
	if (text) { /* user NUL pass: no two pairs give the same text */
		memcpy(text, user, ul);
		text[ul] = '\0';
		if (pl)
			memcpy(text + ul + 1, pass, pl);
		gnutls_hmac_fast(GNUTLS_MAC_SHA256, m->secret, sizeof(m->secret), text, ul + 1 + pl,
		                 digest);
		explicit_bzero(text, ul + pl + 1);
		free(text);
	}
	for (int i = 0; i < 8; i++)
		snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *len, size - *len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size - *len)
		return false;
	*len += (size_t)n;
	return true;
}

/* Trust anchors (and client certificates and keys) by file identity: the same
 * path with new contents is another key. The identity is the one the route
 * took at config load (no stat per request); a route made by hand has none,
 * and then the file is examined now. */
static bool append_file_id(char *buf, size_t size, size_t *len, const char *name, const char *path,
                           const char *id)
{
	char now[1200];

	if (!path || !*path)
		return append(buf, size, len, " %s=system", name);
	if (!id) {
		if (!config_file_id(path, now, sizeof(now)))
			return false;
		id = now;
	}
	return append(buf, size, len, " %s=%s", name, id);
}

bool pool_key_init(struct pool_key *key, const struct muxd *m, const char *scheme, const char *host,
                   uint16_t port, const struct route *route)
{
	return pool_key_init_sni(key, m, scheme, host, port, NULL, route);
}

bool pool_key_init_sni(struct pool_key *key, const struct muxd *m, const char *scheme,
                       const char *host, uint16_t port, const char *sni, const struct route *route)
{
	static const char *const kinds[] = {"http", "https", "socks5", "socks5h"};
	bool v6 = strchr(host, ':') != NULL, ok = true;
	size_t len = 0;

	memset(key, 0, sizeof(*key));
	snprintf(key->scheme, sizeof(key->scheme), "%s", scheme);
	snprintf(key->host, sizeof(key->host), "%s", host);
	snprintf(key->sni, sizeof(key->sni), "%s", sni ? sni : host);
	key->port = port;
	key->tls = strcmp(scheme, "https") == 0;
	if (route->nhops > sizeof(key->hops) / sizeof(key->hops[0]))
		return false;
	for (size_t i = 0; i < route->nhops; i++) {
		const struct config_hop *h = &route->hops[i];
		struct pool_hop *k = &key->hops[i];
		k->kind = h->kind;
		snprintf(k->host, sizeof(k->host), "%s", h->host);
		k->port = h->port;
		k->auth = h->user != NULL;
		if (h->user &&
		    ((size_t)snprintf(k->user, sizeof(k->user), "%s", h->user) >= sizeof(k->user) ||
		     (size_t)snprintf(k->pass, sizeof(k->pass), "%s", h->pass) >= sizeof(k->pass)))
			return false;
	}
	key->nhops = route->nhops;
	if (route->proxy_ca_file)
		snprintf(key->proxy_ca_file, sizeof(key->proxy_ca_file), "%s",
		         route->proxy_ca_file);
	if (route->proxy_ca_file_id)
		snprintf(key->proxy_ca_file_id, sizeof(key->proxy_ca_file_id), "%s",
		         route->proxy_ca_file_id);
	key->forward = !key->tls && key->nhops > 0 &&
	               (key->hops[key->nhops - 1].kind == HOP_HTTP ||
	                key->hops[key->nhops - 1].kind == HOP_HTTPS);
	key->deny_loopback = route->deny_loopback && key->nhops == 0;

	/* forwarding to an HTTP parent shares the parent's connections across
	 * all http:// origins */
	if (key->forward)
		ok = append(key->id, sizeof(key->id), &len, "http-forward");
	else
		ok = append(key->id, sizeof(key->id), &len, "%s://%s%s%s:%u", scheme, v6 ? "[" : "",
		            host, v6 ? "]" : "", port);
	if (ok && key->tls) {
		key->verify = route->verify;
		/* QUIC does not pass through parents. The HTTP/3 layer presents no client
		 * certificate: a route with one stays on TCP, so that what the origin sees
		 * (and what it grants) is the same whatever the transport. */
		key->h3 = route->h3 && key->nhops == 0 && !route->client_cert;
		snprintf(key->alpn, sizeof(key->alpn), "%s",
		         route->h2 ? "h2,http/1.1" : "http/1.1");
		if (route->ca_file && (size_t)snprintf(key->ca_file, sizeof(key->ca_file), "%s",
		                                       route->ca_file) >= sizeof(key->ca_file))
			return false;
		if (route->client_cert &&
		    ((size_t)snprintf(key->client_cert, sizeof(key->client_cert), "%s",
		                      route->client_cert) >= sizeof(key->client_cert) ||
		     (size_t)snprintf(key->client_key, sizeof(key->client_key), "%s",
		                      route->client_key ? route->client_key : "") >=
		         sizeof(key->client_key)))
			return false;
		ok = append(key->id, sizeof(key->id), &len, " sni=%s alpn=%s%s verify=%d", key->sni,
		            key->alpn, key->h3 ? ",h3" : "", key->verify) &&
		     append_file_id(key->id, sizeof(key->id), &len, "ca", key->ca_file,
		                    route->ca_file_id);
		/* connections with different client certificates are never shared */
		if (ok && key->client_cert[0])
			ok = append_file_id(key->id, sizeof(key->id), &len, "cert",
			                    key->client_cert, route->client_cert_id) &&
			     append_file_id(key->id, sizeof(key->id), &len, "key", key->client_key,
			                    route->client_key_id);
	}
	/* made before deny_loopback_targets came on: not for requests after it */
	if (ok && key->deny_loopback)
		ok = append(key->id, sizeof(key->id), &len, " lo=deny");
	for (size_t i = 0; ok && i < key->nhops; i++) {
		const struct pool_hop *h = &key->hops[i];
		ok = append(key->id, sizeof(key->id), &len, " via=%s://%s%s%s:%u", kinds[h->kind],
		            strchr(h->host, ':') ? "[" : "", h->host,
		            strchr(h->host, ':') ? "]" : "", h->port);
		if (ok && h->auth) {
			char cred[17];
			pool_cred_id(m, h->user, h->pass, cred);
			ok = append(key->id, sizeof(key->id), &len, "#%s", cred);
		}
		if (ok && h->kind == HOP_HTTPS)
			ok = append_file_id(key->id, sizeof(key->id), &len, "proxy_ca",
			                    key->proxy_ca_file, route->proxy_ca_file_id);
	}
	return ok;
}

/* The connection path of a key, for chain_connect. */
static void key_chain(const struct pool_key *key, struct chain_hop *hops, struct chain_spec *sp,
                      uint64_t timeout_ms)
{
	for (size_t i = 0; i < key->nhops; i++)
		hops[i] =
		    (struct chain_hop){key->hops[i].kind, key->hops[i].host, key->hops[i].port,
		                       key->hops[i].auth ? key->hops[i].user : NULL,
		                       key->hops[i].auth ? key->hops[i].pass : NULL};
	*sp = (struct chain_spec){
	    .hops = hops,
	    .nhops = key->nhops,
	    .proxy_ca_file = key->proxy_ca_file[0] ? key->proxy_ca_file : NULL,
	    .proxy_ca_file_id = key->proxy_ca_file_id[0] ? key->proxy_ca_file_id : NULL,
	    .host = key->host,
	    .port = key->port,
	    .forward = key->forward,
	    .tls = key->tls,
	    .sni = key->sni,
	    .alpn = key->alpn,
	    .ca_file = key->ca_file[0] ? key->ca_file : NULL,
	    .client_cert = key->client_cert[0] ? key->client_cert : NULL,
	    .client_key = key->client_key[0] ? key->client_key : NULL,
	    .session_key = key->id,
	    .verify = key->verify,
	    .timeout_ms = timeout_ms,
	    .deny_loopback = key->deny_loopback,
	};
}

static unsigned hash(const char *s)
{
	unsigned h = 2166136261u;
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % POOL_BUCKETS;
}

static void trim_cb(evutil_socket_t fd, short what, void *arg);

/* The Alt-Svc cache file: [pool] altsvc_file, relative to state_dir. */
static const char *altsvc_path(const struct config *cfg, char *buf, size_t size)
{
	if (!cfg->altsvc_file)
		return NULL;
	if (cfg->altsvc_file[0] == '/')
		snprintf(buf, size, "%s", cfg->altsvc_file);
	else
		snprintf(buf, size, "%s/%s", cfg->state_dir, cfg->altsvc_file);
	return buf;
}

static void save_altsvc(struct pool *p, bool durable)
{
	char path[1024];

	if (!p->altsvc || !altsvc_path(p->m->cfg, path, sizeof(path)) ||
	    !altsvc_cache_dirty(p->altsvc))
		return;
	mkdir(p->m->cfg->state_dir, 0700);
	if (!altsvc_cache_write(p->altsvc, time(NULL), durable))
		log_warn("cannot write the Alt-Svc cache %s", path);
}

static void save_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	save_altsvc(arg, false);
}

void pool_altsvc_learned(struct pool *p, const struct pool_key *key, const char *value, size_t len)
{
	struct altsvc_parsed parsed;
	struct timeval tv = ms_to_timeval(ALTSVC_SAVE_MS);

	/* only what a verified TLS origin says about itself counts */
	if (!key->tls || !key->verify || !altsvc_parse(value, len, &parsed))
		return;
	altsvc_cache_update(p->altsvc, key->scheme, key->host, key->port, &parsed, time(NULL));
	if (altsvc_cache_dirty(p->altsvc) && !evtimer_pending(p->save_timer, NULL))
		evtimer_add(p->save_timer, &tv);
}

size_t pool_altsvc_count(struct pool *p)
{
	return altsvc_cache_count(p->altsvc, time(NULL));
}

struct pool *pool_new(struct muxd *m)
{
	char path[1024];
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->m = m;
	TAILQ_INIT(&p->idle);
	p->trim_timer = evtimer_new(m->base, trim_cb, p);
	p->save_timer = evtimer_new(m->base, save_cb, p);
	p->altsvc = altsvc_cache_new(altsvc_path(m->cfg, path, sizeof(path)));
	if (!p->trim_timer || !p->save_timer || !p->altsvc) {
		pool_free(p);
		return NULL;
	}
	const char *warning = NULL;
	altsvc_cache_load(p->altsvc, time(NULL), &warning);
	if (warning)
		log_warn("%s: %s (ignored)", path, warning);
	return p;
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg);

static struct pool_origin *origin_get(struct pool *p, const struct pool_key *key, bool create)
{
	unsigned h = hash(key->id);
	struct pool_origin *o;

	for (o = p->buckets[h]; o; o = o->next)
		if (strcmp(o->key.id, key->id) == 0)
			return o;
	if (!create || !(o = calloc(1, sizeof(*o))))
		return NULL;
	o->pool = p;
	o->key = *key;
	o->learned = key->tls ? PROTO_COUNT : PROTO_H1;
	TAILQ_INIT(&o->conns);
	TAILQ_INIT(&o->waiters);
	o->dispatch_ev = event_new(p->m->base, -1, 0, dispatch_cb, o);
	if (!o->dispatch_ev) {
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

	if (o->nconns || o->nwaiters || o->holds)
		return;
	for (pp = &o->pool->buckets[hash(o->key.id)]; *pp != o; pp = &(*pp)->next)
		;
	*pp = o->next;
	event_free(o->dispatch_ev);
	if (o->race_timer)
		event_free(o->race_timer);
	free(o);
}

static void schedule(struct pool_origin *o)
{
	event_active(o->dispatch_ev, EV_TIMEOUT, 0);
}

static void schedule_all(struct pool *p)
{
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *o = p->buckets[i]; o; o = o->next)
			if (o->nwaiters > o->nconnecting)
				schedule(o);
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
	clock_gettime(CLOCK_MONOTONIC, &pc->idle_since);
	if (idle) {
		uint64_t ms = p->m->cfg->idle_timeout_ms;
		struct timeval tv = ms_to_timeval(ms);
		TAILQ_INSERT_TAIL(&p->idle, pc, idle_link);
		p->nidle++;
		pc->o->nidle++;
		evtimer_add(pc->idle_timer, &tv);
	} else {
		TAILQ_REMOVE(&p->idle, pc, idle_link);
		p->nidle--;
		pc->o->nidle--;
		evtimer_del(pc->idle_timer);
	}
}

/* Forget a connection (already closed or about to be). */
static void conn_forget(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	set_idle(pc, false);
	TAILQ_REMOVE(&o->conns, pc, o_link);
	o->nconns--;
	pc->pool->nconns--;
	if (pc->connecting)
		o->nconnecting--;
	if (o->h3_attempt == pc) {
		o->h3_attempt = NULL;
		evtimer_del(o->race_timer);
	}
	if (pc->age_timer)
		event_free(pc->age_timer);
	if (pc->setup_timer)
		event_free(pc->setup_timer);
	event_free(pc->idle_timer);
	free(pc);
	schedule_all(o->pool);
	origin_maybe_free(o);
}

static void evict(struct pool_conn *pc, enum evict_reason why)
{
	struct upstream_conn *uc = pc->uc;

	log_debug("pool: closing %s connection to %s (%s)", proto_name(uc->proto), pc->o->key.id,
	          evict_reason_name(why));
	if (why < EVICT_COUNT)
		pc->pool->m->metrics.evictions[why]++;
	conn_forget(pc);
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
		evict(pc, why);
}

static void age_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	retire(arg, EVICT_AGE);
}

static void idle_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	evict(arg, EVICT_IDLE_TIMEOUT);
}

static void waiter_free(struct pool_wait *w)
{
	struct pool_origin *o = w->o;

	TAILQ_REMOVE(&o->waiters, w, link);
	o->nwaiters--;
	if (w->budget_timer)
		event_free(w->budget_timer);
	free(w);
}

static bool accepts(const struct pool_wait *w, const struct pool_conn *pc)
{
	return pc->serial >= w->min_serial;
}

/* Open a stream on pc for w and hand it over; w is freed. */
static void give(struct pool_conn *pc, struct pool_wait *w)
{
	struct upstream_conn *uc = pc->uc;
	bool reused = uc->requests > 0;
	struct upstream_stream *s = uc->ops->open_stream(uc, &w->stream_cbs, w->ctx);
	struct pool_wait_cbs cbs = w->cbs;
	void *ctx = w->ctx;

	if (!s)
		return;
	set_idle(pc, false);
	if (reused)
		pc->pool->m->metrics.upstream_reuses++;
	unsigned max = pc->pool->m->cfg->max_requests_per_connection;
	if (max > 0 && uc->requests >= max)
		retire(pc, EVICT_AGE);
	waiter_free(w);
	cbs.on_stream(ctx, s, reused);
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
	bool wait_quic = o->h3_attempt && !o->race_fired;

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

/* connect_timeout as "10 s" or "1500 ms", for messages. */
static void duration(uint64_t ms, char *buf, size_t size)
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

	duration(ms, d, sizeof(d));
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
static void maybe_start_h3(struct pool_origin *o);

static void add_conn(struct pool_origin *o, struct pool_conn *pc)
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
	struct pool_conn *pc = calloc(1, sizeof(*pc));
	static const struct transport_cbs tcbs = {NULL, NULL, conn_event};

	if (!pc)
		return false;
	pc->pool = p;
	pc->o = o;
	pc->idle_timer = evtimer_new(p->m->base, idle_timeout_cb, pc);
	struct chain_hop hops[4];
	struct chain_spec spec;
	key_chain(&o->key, hops, &spec, p->m->cfg->connect_timeout_ms);
	if (pc->idle_timer)
		pc->pending = chain_connect(p->m, &spec, &tcbs, pc);
	if (!pc->pending) {
		if (pc->idle_timer)
			event_free(pc->idle_timer);
		free(pc);
		return false;
	}
	add_conn(o, pc);
	return true;
}

/* How many more connections the waiters of o call for now. HTTP/2 (or a
 * TLS origin whose protocol ALPN has not told yet) takes one connection at a
 * time: requests that arrive while it is being set up wait for it. */
static unsigned wanted(const struct pool_origin *o, unsigned *cap)
{
	const struct config *cfg = o->pool->m->cfg;
	bool maybe_h2 = strstr(o->key.alpn, "h2") != NULL && o->learned != PROTO_H1;

	/* TCP connections being set up (a QUIC attempt is not one of them) */
	unsigned connecting = o->nconnecting - (o->h3_attempt ? 1 : 0);

	if (o->h3_attempt && !o->race_fired)
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
	bool h2 = strstr(o->key.alpn, "h2") != NULL && o->learned != PROTO_H1;
	unsigned connecting = o->nconnecting - (o->h3_attempt ? 1 : 0);
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
		maybe_start_h3(o);
	/* 1. free stream slots on existing connections */
	while ((pc = find_match(o, &w)) != NULL)
		give(pc, w);
	/* 2. new connections for the waiters left */
	while (o->nwaiters > 0 && wanted(o, &cap) > 0 && !p->m->draining) {
		if (o->nconns >= cap) {
			pc = find_idle(o); /* idle, yet no waiter may use it: make room */
			if (!pc) {
				cap_wait(o, cap);
				break;
			}
			evict(pc, EVICT_LIMIT);
			continue;
		}
		if (p->nconns >= p->m->cfg->max_connections) {
			if (TAILQ_EMPTY(&p->idle)) {
				budget_wait(o, 0, "upstream connection limit reached");
				break;
			}
			evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
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
			schedule(o); /* more waiters than this connection's slots */
		origin_maybe_free(o);
		return;
	}
	if (p->m->draining) {
		conn_forget(pc);
		uc->ops->close(uc);
		return;
	}
	if (pc->retired) {
		evict(pc, pc->retire_why);
		return;
	}
	set_idle(pc, true);
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
			evict(pc, EVICT_LIMIT);
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
	log_debug("pool: new %s connection to %s", proto_name(pc->uc->proto), o->key.id);
	if (o->h3_attempt == pc) {
		o->h3_attempt = NULL;
		evtimer_del(o->race_timer);
		altsvc_cache_mark_ok(p->altsvc, o->key.scheme, o->key.host, o->key.port);
	}
}

/* The QUIC attempt failed: TCP takes over, and the alternative is broken. */
static void h3_fallback(struct pool_origin *o, const char *reason)
{
	struct pool *p = o->pool;

	log_info("pool: HTTP/3 to %s failed (%s): using TCP", o->key.id, reason);
	p->m->metrics.h3_fallbacks++;
	altsvc_cache_mark_broken(p->altsvc, o->key.scheme, o->key.host, o->key.port, time(NULL));
	o->race_fired = true;
}

static void conn_failed(void *owner, struct upstream_conn *uc, enum muxd_err err,
                        const char *reason)
{
	struct pool_conn *pc = owner;

	(void)uc;
	(void)err;
	if (pc->o->h3_attempt == pc)
		h3_fallback(pc->o, reason);
	conn_forget(pc); /* the connection frees itself */
}

/* h3_timeout passed without QUIC being ready: TCP may start now. Much
 * later, a QUIC attempt still not ready is given up. */
static void race_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_origin *o = arg;
	struct pool_conn *pc = o->h3_attempt;
	uint64_t ms = o->pool->m->cfg->h3_timeout_ms * (H3_GIVE_UP - 1);
	struct timeval tv = ms_to_timeval(ms);

	(void)fd;
	(void)what;
	if (!pc)
		return;
	if (!o->race_fired) {
		log_debug("pool: QUIC to %s not ready after h3_timeout: racing TCP", o->key.id);
		o->race_fired = true;
		evtimer_add(o->race_timer, &tv);
		schedule(o);
		return;
	}
	h3_fallback(o, "handshake timed out");
	struct upstream_conn *uc = pc->uc;
	conn_forget(pc);
	uc->ops->close(uc);
}

/* Start a QUIC connection when the Alt-Svc cache says the origin has h3. */
static void maybe_start_h3(struct pool_origin *o)
{
	struct pool *p = o->pool;
	struct altsvc_alt alt;
	struct pool_conn *pc;
	uint64_t ms = p->m->cfg->h3_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);

	if (!o->key.h3 || o->h3_attempt || p->nconns >= p->m->cfg->max_connections)
		return;
	TAILQ_FOREACH(pc, &o->conns, o_link)
	if (pc->uc && pc->uc->proto == PROTO_H3)
		return; /* one QUIC connection per origin */
	if (!altsvc_cache_lookup(p->altsvc, o->key.scheme, o->key.host, o->key.port, time(NULL),
	                         &alt))
		return;
	if (!o->race_timer && !(o->race_timer = evtimer_new(p->m->base, race_cb, o)))
		return;
	if (!(pc = calloc(1, sizeof(*pc))))
		return;
	pc->pool = p;
	pc->o = o;
	pc->idle_timer = evtimer_new(p->m->base, idle_timeout_cb, pc);
	struct h3_params hp = {
	    .host = alt.host[0] ? alt.host : o->key.host,
	    .port = alt.port,
	    .sni = o->key.sni,
	    .authority = o->key.id,
	    .ca_file = o->key.ca_file[0] ? o->key.ca_file : NULL,
	    .verify = o->key.verify,
	    .session_key = o->key.id,
	};
	if (pc->idle_timer)
		pc->uc = h3_conn_new(p->m, &hp, &owner_cbs, pc);
	if (!pc->uc) {
		if (pc->idle_timer)
			event_free(pc->idle_timer);
		free(pc);
		return;
	}
	log_debug("pool: trying HTTP/3 for %s at %s:%u", o->key.id, hp.host, hp.port);
	add_conn(o, pc);
	o->h3_attempt = pc;
	o->race_fired = false;
	evtimer_add(o->race_timer, &tv);
}

static void conn_closed(void *owner, struct upstream_conn *uc, enum evict_reason why)
{
	struct pool_conn *pc = owner;

	if (pc->retired)
		why = pc->retire_why; /* it left because the pool retired it */
	if (why < EVICT_COUNT) {
		pc->pool->m->metrics.evictions[why]++;
		log_debug("pool: %s connection to %s left the pool (%s)", proto_name(uc->proto),
		          pc->o->key.id, evict_reason_name(why));
	}
	conn_forget(pc);
}

static const struct upstream_owner_cbs owner_cbs = {conn_available, conn_closed, conn_failed};

/* Setting pc up failed. The waiters that coalesced on it learn why; with
 * HTTP/1.1 each waiter has its own attempt, so only the first fails and the
 * others go on. pc is forgotten (its slot is free again) and uc, when given,
 * closed before anyone hears of it. */
static void fail_setup(struct pool_conn *pc, struct upstream_conn *uc, enum muxd_err err,
                       const char *why)
{
	struct pool_origin *o = pc->o;
	bool coalesced = strstr(o->key.alpn, "h2") != NULL && o->learned != PROTO_H1;
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
	conn_forget(pc);
	if (uc)
		uc->ops->close(uc);
	while ((w = TAILQ_FIRST(&failed)) != NULL) {
		struct pool_wait_cbs cbs = w->cbs;
		void *wctx = w->ctx;
		TAILQ_REMOVE(&failed, w, link);
		if (w->budget_timer)
			event_free(w->budget_timer);
		free(w);
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
	const struct pool_key *k = &pc->o->key;
	const struct pool_hop *last = k->forward ? &k->hops[k->nhops - 1] : NULL;
	const char *host = last ? last->host : k->host;
	bool v6 = strchr(host, ':') != NULL;
	char why[400], d[32];

	(void)fd;
	(void)what;
	duration(pc->pool->m->cfg->connect_timeout_ms, d, sizeof(d));
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
		pc->uc = h2 ? h2_conn_new(p->m, t, &owner_cbs, pc)
		            : h1_conn_new(p->m, t, &owner_cbs, pc);
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
	w = calloc(1, sizeof(*w));
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
	schedule(o);
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
			route_for(p->m->cfg, o->key.host, o->key.port, &r);
			if (pool_key_init_sni(&k, p->m, o->key.scheme, o->key.host, o->key.port,
			                      o->key.sni, &r) &&
			    strcmp(k.id, o->key.id) == 0)
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
		evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
}

void pool_close_idle(struct pool *p)
{
	while (!TAILQ_EMPTY(&p->idle))
		evict(TAILQ_FIRST(&p->idle), EVICT_LIMIT);
}

void pool_count(struct pool *p, struct pool_counts *out)
{
	memset(out, 0, sizeof(*out));
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
				    .key = o->key.id,
				    .host = o->key.host,
				    .port = o->key.port,
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
				};
				fn(arg, &c);
			}
		}
}

struct altsvc_visit {
	void (*fn)(void *arg, const char *origin, const char *alt_host, uint16_t alt_port,
	           long expires_in_s, long broken_for_s);
	void *arg;
	time_t now;
};

static void visit_alt(void *arg, const char *origin, const struct altsvc_alt *alt, time_t expires,
                      time_t broken_until)
{
	struct altsvc_visit *v = arg;
	v->fn(v->arg, origin, alt->host, alt->port, (long)(expires - v->now),
	      broken_until > v->now ? (long)(broken_until - v->now) : 0);
}

void pool_foreach_altsvc(struct pool *p,
                         void (*fn)(void *arg, const char *origin, const char *alt_host,
                                    uint16_t alt_port, long expires_in_s, long broken_for_s),
                         void *arg)
{
	struct altsvc_visit v = {fn, arg, time(NULL)};
	altsvc_cache_foreach(p->altsvc, v.now, visit_alt, &v);
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		while (p->buckets[i]) {
			struct pool_origin *o = p->buckets[i];
			struct pool_wait *w;
			struct pool_conn *pc;
			while ((w = TAILQ_FIRST(&o->waiters)))
				waiter_free(w);
			o->nwaiters = 0;
			o->nconns++; /* keep the origin alive while emptying it */
			while ((pc = TAILQ_FIRST(&o->conns))) {
				struct upstream_conn *uc = pc->uc;
				struct transport *t = pc->pending;
				conn_forget(pc);
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
	if (p->save_timer) {
		save_altsvc(p, true); /* a last, durable write at shutdown */
		event_free(p->save_timer);
	}
	if (p->altsvc)
		altsvc_cache_free(p->altsvc);
	free(p);
}
