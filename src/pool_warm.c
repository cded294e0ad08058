/*
 * pool_warm — keep-warm of hot origins: the pool keeps one connection of a
 * frequently used pool key open past idle_timeout, so that the next request
 * after a quiet spell finds it ready.
 *
 * Hotness: every request (not the retries) adds to the key's exponentially
 * decayed request rate (time constant WARM_TAU_S; in requests per minute, so
 * that a steady rate of n a minute reads n). A key is hot while that rate,
 * decayed to now, is at least keep_warm_min_rate, its route verifies (never
 * with verify = off) and the pool keeps fewer than keep_warm_max connections
 * warm.
 *
 * Keeping: when a connection of a hot key becomes idle (or reaches
 * idle_timeout) and no other connection of the key is warm, it becomes the
 * key's warm connection, which idle_timeout does not close: HTTP/2 and
 * HTTP/3 connections then show the origin they are alive every
 * idle_timeout / 2 (at most WARM_PING_MAX_MS, and within half the QUIC idle
 * timeout; HTTP/2 PING, QUIC PING), HTTP/1.1 ones cannot. At each idle
 * expiry the key is judged again; a key that cooled loses its warm
 * connection then.
 *
 * Re-opening: when the origin closes (or stops answering on) the warm
 * connection, or the last, idle connection of a hot key, the pool opens a
 * new one in the background (QUIC when the Alt-Svc cache says the origin
 * has HTTP/3, else TCP) that is warm from the start; it
 * counts in muxd_keep_warm_reconnects_total once up. The first re-open is
 * at once; further ones (an origin that keeps closing, or set-ups that
 * fail) back off exponentially from WARM_BACKOFF_MIN_MS to
 * WARM_BACKOFF_MAX_MS, until a request is served on the key again. A
 * failed background set-up is nobody's error: it is logged at debug.
 * Connections the pool itself closes (limits, reload, shutdown) are not
 * re-opened.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "pool_internal.h"
#include "timeutil.h"

#define WARM_TAU_S 300.0           /* the rate's decay time constant */
#define WARM_PING_MAX_MS 30000     /* liveness interval of a warm connection, at most */
#define WARM_BACKOFF_MIN_MS 1000   /* the second re-open waits this long ... */
#define WARM_BACKOFF_MAX_MS 300000 /* ... doubling up to this */

/* e^-x for x >= 0, without libm: a Taylor polynomial on x / 2^k, squared
 * back k times (a relative error well under 1 % for a rate estimate). */
static double exp_neg(double x)
{
	unsigned k = 0;
	double t;

	if (x <= 0)
		return 1;
	if (x > 700)
		return 0;
	while (x > 0.125) {
		x /= 2;
		k++;
	}
	t = 1 - x * (1 - x / 2 * (1 - x / 3 * (1 - x / 4 * (1 - x / 5))));
	while (k-- > 0)
		t *= t;
	return t;
}

double pool_rate_decay(double rate, double elapsed_s)
{
	return rate * exp_neg(elapsed_s / WARM_TAU_S);
}

double pool_rate_hit(double rate, double elapsed_s)
{
	return pool_rate_decay(rate, elapsed_s) + 60.0 / WARM_TAU_S;
}

bool pool_warm_eligible(const struct config *cfg, const struct pool_key_packed *key, double rate,
                        unsigned nwarm)
{
	return cfg->keep_warm && key->warm_ok && strcmp(key->scheme, "tunnel") != 0 &&
	       rate >= (double)cfg->keep_warm_min_rate && nwarm < cfg->keep_warm_max;
}

uint64_t pool_warm_interval(const struct config *cfg)
{
	uint64_t ms = cfg->idle_timeout_ms / 2;

	if (ms > WARM_PING_MAX_MS)
		ms = WARM_PING_MAX_MS;
	return ms < 100 ? 100 : ms;
}

/* ---- the pool's side ---- */

/* The request rate's clock: read on every request, so the cheap one (a few
 * ms of resolution; the rate decays over seconds). */
static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void pool_warm_hit(struct pool_origin *o)
{
	double now = mono_s();

	o->rate = pool_rate_hit(o->rate, o->rate_at > 0 ? now - o->rate_at : 0);
	o->rate_at = now;
}

double pool_warm_rate(const struct pool_origin *o)
{
	return o->rate_at > 0 ? pool_rate_decay(o->rate, mono_s() - o->rate_at) : 0;
}

/* Whether o may have a warm connection (not counting one it has). */
static bool hot(const struct pool_origin *o)
{
	const struct pool *p = o->pool;
	unsigned others = p->nwarm - (o->warm ? 1 : 0);

	return !p->m->draining && pool_warm_eligible(p->m->cfg, o->key, pool_warm_rate(o), others);
}

static void mark(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	pc->warm = true;
	o->warm = pc;
	pc->pool->nwarm++;
	if (pc->uc && pc->uc->ops->keep_warm)
		pc->uc->ops->keep_warm(pc->uc, pool_warm_interval(pc->pool->m->cfg));
}

void pool_warm_forget(struct pool_conn *pc)
{
	if (!pc->warm)
		return;
	pc->warm = false;
	pc->o->warm = NULL;
	pc->pool->nwarm--;
}

void pool_warm_idle(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	if (pc->warm || o->warm || pc->retired || !pc->uc || !hot(o))
		return;
	mark(pc);
	log_debug("pool: keeping a %s connection to %s warm (%.1f requests/min)",
	          proto_name(pc->uc->proto), o->key->id, pool_warm_rate(o));
}

bool pool_warm_keep(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;

	if (pc->retired || !pc->uc || (o->warm && o->warm != pc) || !hot(o)) {
		if (pc->warm)
			log_debug("pool: %s cooled down: its warm connection closes", o->key->id);
		pool_warm_forget(pc);
		return false;
	}
	if (!pc->warm) {
		mark(pc);
		log_debug("pool: keeping a %s connection to %s warm (%.1f requests/min)",
		          proto_name(pc->uc->proto), o->key->id, pool_warm_rate(o));
	}
	return true;
}

static void reopen_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_origin *o = arg;
	struct pool *p = o->pool;
	struct pool_conn *pc;

	(void)fd;
	(void)what;
	if (o->nconns == 0 && !o->warm && hot(o) && p->nconns < p->m->cfg->max_connections) {
		/* over QUIC when the Alt-Svc cache says so, else over TCP */
		pool_h3_start(o);
		pc = o->h3_attempt ? o->h3_attempt : pool_open_conn(o);
		if (pc) {
			pc->background = true;
			mark(pc);
			log_debug("pool: re-opening a warm connection to %s in the background",
			          o->key->id);
		}
	}
	pool_origin_maybe_free(o);
}

/* A re-open of o after the current backoff, which then grows. */
static void reopen_later(struct pool_origin *o)
{
	struct timeval tv = ms_to_timeval(o->warm_backoff_ms);

	if (!o->warm_timer && !(o->warm_timer = evtimer_new(o->pool->m->base, reopen_cb, o)))
		return;
	if (evtimer_pending(o->warm_timer, NULL))
		return;
	evtimer_add(o->warm_timer, &tv);
	o->warm_backoff_ms = o->warm_backoff_ms == 0 ? WARM_BACKOFF_MIN_MS : 2 * o->warm_backoff_ms;
	if (o->warm_backoff_ms > WARM_BACKOFF_MAX_MS)
		o->warm_backoff_ms = WARM_BACKOFF_MAX_MS;
}

void pool_warm_lost(struct pool_conn *pc)
{
	struct pool_origin *o = pc->o;
	bool last_idle = pc->idle && o->nconns == 1;

	if (pc->retired || pc->connecting || !(pc->warm || last_idle))
		return;
	pool_warm_forget(pc);
	if (hot(o))
		reopen_later(o);
}

void pool_warm_ready(struct pool_conn *pc)
{
	if (!pc->background)
		return;
	pc->pool->m->metrics.keep_warm_reconnects++;
	if (pc->warm && pc->uc->ops->keep_warm)
		pc->uc->ops->keep_warm(pc->uc, pool_warm_interval(pc->pool->m->cfg));
}

void pool_warm_setup_failed(struct pool_conn *pc, const char *why)
{
	struct pool_origin *o = pc->o;

	if (!pc->background)
		return;
	log_debug(
	    "pool: background connection to %s failed: %s (next try in %llu ms)", o->key->id, why,
	    (unsigned long long)(o->warm_backoff_ms ? o->warm_backoff_ms : WARM_BACKOFF_MIN_MS));
	pool_warm_forget(pc);
	if (o->warm_backoff_ms == 0)
		o->warm_backoff_ms = WARM_BACKOFF_MIN_MS;
	if (hot(o))
		reopen_later(o);
}

bool pool_warm_holds(const struct pool_origin *o)
{
	return o->warm_timer && evtimer_pending(o->warm_timer, NULL);
}

void pool_warm_origin_free(struct pool_origin *o)
{
	if (o->warm_timer)
		event_free(o->warm_timer);
}

unsigned pool_keep_warm_count(struct pool *p)
{
	return p->nwarm;
}
