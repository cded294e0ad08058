/*
 * pool_h3 — when the pool uses HTTP/3 (DESIGN.md principle 7), and the
 * Alt-Svc cache that tells it.
 *
 * When the cache holds a live h3 alternative for a TLS origin whose route
 * allows it, dispatch starts a QUIC connection first (one per origin). TCP
 * waits for it only h3_timeout; then both race and the first ready serves
 * the waiters. A QUIC attempt that fails, or is still not ready after
 * H3_GIVE_UP times h3_timeout, marks the alternative broken (exponential
 * backoff, in altsvc.c) and counts a fallback; the waiters never notice.
 * Alternatives come from verified TLS origins' Alt-Svc fields and are
 * written to altsvc_file soon after a change, without fsync (durably at
 * shutdown).
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "altsvc.h"
#include "config.h"
#include "log.h"
#include "pool_internal.h"
#include "timeutil.h"

#define H3_GIVE_UP 10       /* a QUIC attempt not ready after 10 x h3_timeout failed */
#define ALTSVC_SAVE_MS 2000 /* the cache file is written at most this often after a change */
/* ... and without fsync: the loop must not wait for the disk (durably at shutdown) */

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

bool pool_h3_init(struct pool *p)
{
	char path[1024];
	const char *warning = NULL;

	p->save_timer = evtimer_new(p->m->base, save_cb, p);
	p->altsvc = altsvc_cache_new(altsvc_path(p->m->cfg, path, sizeof(path)));
	if (!p->save_timer || !p->altsvc)
		return false;
	altsvc_cache_load(p->altsvc, time(NULL), &warning);
	if (warning)
		log_warn("%s: %s (ignored)", path, warning);
	return true;
}

void pool_h3_free(struct pool *p)
{
	if (p->save_timer) {
		save_altsvc(p, true); /* a last, durable write at shutdown */
		event_free(p->save_timer);
	}
	if (p->altsvc)
		altsvc_cache_free(p->altsvc);
}

bool pool_h3_holds_tcp(const struct pool_origin *o)
{
	return o->h3_attempt && !o->race_fired;
}

unsigned pool_h3_connecting(const struct pool_origin *o)
{
	return o->h3_attempt ? 1 : 0;
}

void pool_h3_ready(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	if (o->h3_attempt != pc)
		return;
	o->h3_attempt = NULL;
	evtimer_del(o->race_timer);
	altsvc_cache_mark_ok(pc->pool->altsvc, o->key->scheme, o->key->host, o->key->port);
}

void pool_h3_forget(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	if (o->h3_attempt == pc) {
		o->h3_attempt = NULL;
		evtimer_del(o->race_timer);
	}
}

void pool_h3_origin_free(struct pool_origin *o)
{
	if (o->race_timer)
		event_free(o->race_timer);
}

/* The QUIC attempt failed: TCP takes over, and the alternative is broken. */
static void h3_fallback(struct pool_origin *o, const char *reason)
{
	struct pool *p = o->pool;

	log_info("pool: HTTP/3 to %s failed (%s): using TCP", o->key->id, reason);
	p->m->metrics.h3_fallbacks++;
	altsvc_cache_mark_broken(p->altsvc, o->key->scheme, o->key->host, o->key->port, time(NULL));
	o->race_fired = true;
}

void pool_h3_failed(struct pool_conn *pc, const char *reason)
{
	/* also a QUIC connection that 0-RTT made ready before its handshake */
	if (pc->o->h3_attempt == pc || (pc->uc && pc->uc->proto == PROTO_H3))
		h3_fallback(pc->o, reason);
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
		log_debug("pool: QUIC to %s not ready after h3_timeout: racing TCP", o->key->id);
		o->race_fired = true;
		evtimer_add(o->race_timer, &tv);
		pool_schedule(o);
		return;
	}
	h3_fallback(o, "handshake timed out");
	struct upstream_conn *uc = pc->uc;
	pool_conn_forget(pc);
	uc->ops->close(uc);
}

/* Start a QUIC connection when the Alt-Svc cache says the origin has h3. */
void pool_h3_start(struct pool_origin *o)
{
	struct pool *p = o->pool;
	struct altsvc_alt alt;
	struct pool_conn *pc;
	uint64_t ms = p->m->cfg->h3_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);

	if (!o->key->h3 || o->h3_attempt || p->nconns >= p->m->cfg->max_connections)
		return;
	TAILQ_FOREACH(pc, &o->conns, o_link)
	if (pc->uc && pc->uc->proto == PROTO_H3)
		return; /* one QUIC connection per origin */
	if (!altsvc_cache_lookup(p->altsvc, o->key->scheme, o->key->host, o->key->port, time(NULL),
	                         &alt))
		return;
	if (!o->race_timer && !(o->race_timer = evtimer_new(p->m->base, race_cb, o)))
		return;
	if (!(pc = pool_conn_alloc(o)))
		return;
	struct h3_params hp = {
	    .host = alt.host[0] ? alt.host : o->key->host,
	    .port = alt.port,
	    .sni = o->key->sni,
	    .authority = o->key->id,
	    .ca_file = o->key->ca_file[0] ? o->key->ca_file : NULL,
	    .verify = o->key->verify,
	    .session_key = o->key->id,
	    .early_data = o->key->early_data,
	    /* what the pool would wait before giving QUIC up (race_cb) */
	    .early_timeout_ms = p->m->cfg->h3_timeout_ms * H3_GIVE_UP,
	};
	struct upstream_params prm;
	upstream_params_init(&prm, p->m->cfg);
	pc->uc = h3_conn_new(p->m->env, &prm, &hp, pool_owner_cbs(), pc);
	if (!pc->uc) {
		pool_conn_release(pc);
		return;
	}
	log_debug("pool: trying HTTP/3 for %s at %s:%u", o->key->id, hp.host, hp.port);
	pool_conn_add(o, pc);
	o->h3_attempt = pc;
	o->race_fired = false;
	evtimer_add(o->race_timer, &tv);
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
