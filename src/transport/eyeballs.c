/*
 * eyeballs — the happy-eyeballs race (see eyeballs.h).
 */
#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>

#include "timeutil.h"
#include "transport/eyeballs.h"

enum attempt_state { IDLE, RUNNING, FAILED, DONE };

struct eyeballs {
	struct event *timer;
	uint64_t delay_ms;
	struct eyeballs_cbs cbs;
	void *ctx;
	struct dns_addrs addrs;
	size_t next;                        /* the next address to start */
	unsigned char state[DNS_MAX_ADDRS]; /* enum attempt_state */
	bool starting;                      /* inside start_next() */
	bool again;                         /* an attempt failed meanwhile: go on at once */
	bool over;                          /* won, failed or stopped */
};

static bool any_running(const struct eyeballs *e)
{
	for (size_t i = 0; i < e->addrs.n; i++)
		if (e->state[i] == RUNNING)
			return true;
	return false;
}

/* Start addresses until one runs (then wait for the timer) or none is
 * left; fails the race when nothing runs any more. */
static void start_next(struct eyeballs *e)
{
	if (e->starting) {
		e->again = true;
		return;
	}
	e->starting = true;
	evtimer_del(e->timer);
	while (!e->over && e->next < e->addrs.n) {
		size_t i = e->next++;
		const struct sockaddr_storage *ss = &e->addrs.addr[i];
		socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		                                          : sizeof(struct sockaddr_in);
		enum eyeballs_start r;

		e->again = false;
		e->state[i] = RUNNING;
		r = e->cbs.start(e->ctx, i, (const struct sockaddr *)ss, len);
		if (r != EYEBALLS_RUNNING)
			e->state[i] = FAILED;
		if (r == EYEBALLS_STOP)
			e->next = e->addrs.n;
		if (r == EYEBALLS_RUNNING && e->state[i] == RUNNING && !e->again) {
			if (e->next < e->addrs.n) {
				struct timeval tv = ms_to_timeval(e->delay_ms);
				evtimer_add(e->timer, &tv);
			}
			break;
		}
	}
	e->starting = false;
	if (!e->over && e->next >= e->addrs.n && !any_running(e)) {
		e->over = true;
		e->cbs.failed(e->ctx); /* last: may free e */
	}
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct eyeballs *e = arg;
	void (*leave)(void *) = e->cbs.leave;
	void *ctx = e->ctx;

	(void)fd;
	(void)what;
	if (e->cbs.enter)
		e->cbs.enter(ctx);
	start_next(e); /* may free e */
	if (leave)
		leave(ctx);
}

struct eyeballs *eyeballs_new(struct event_base *base, uint64_t delay_ms,
                              const struct eyeballs_cbs *cbs, void *ctx)
{
	struct eyeballs *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->delay_ms = delay_ms;
	e->cbs = *cbs;
	e->ctx = ctx;
	e->timer = evtimer_new(base, on_timer, e);
	if (!e->timer) {
		free(e);
		return NULL;
	}
	return e;
}

void eyeballs_run(struct eyeballs *e, const struct dns_addrs *addrs)
{
	e->addrs = *addrs;
	if (e->addrs.n > DNS_MAX_ADDRS)
		e->addrs.n = DNS_MAX_ADDRS;
	e->next = 0;
	start_next(e);
}

void eyeballs_failed(struct eyeballs *e, size_t i)
{
	if (i >= e->addrs.n || e->state[i] != RUNNING)
		return;
	e->state[i] = FAILED;
	if (!e->over)
		start_next(e);
}

void eyeballs_won(struct eyeballs *e, size_t i)
{
	e->over = true;
	evtimer_del(e->timer);
	if (i < e->addrs.n)
		e->state[i] = DONE;
	for (size_t j = 0; j < e->addrs.n; j++) {
		if (e->state[j] == RUNNING) {
			e->state[j] = DONE;
			e->cbs.cancel(e->ctx, j);
		}
	}
}

void eyeballs_stop(struct eyeballs *e)
{
	e->over = true;
	evtimer_del(e->timer);
}

void eyeballs_free(struct eyeballs *e)
{
	if (!e)
		return;
	event_free(e->timer);
	free(e);
}
