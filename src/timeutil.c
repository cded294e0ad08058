/* timeutil — see timeutil.h. */
#include "timeutil.h"

#include <event2/event.h>
#include <time.h>

static uint64_t coarse_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void add_for(struct deadline *d, uint64_t now, uint64_t due)
{
	struct timeval tv = ms_to_timeval(due - now);

	event_add(d->ev, &tv);
	d->added = true;
	d->ev_at = due;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct deadline *d = arg;
	uint64_t now;

	(void)fd;
	(void)what;
	d->added = false;
	if (d->due == 0)
		return; /* cleared since */
	now = coarse_now();
	if (now < d->due) { /* moved later since: the rest */
		add_for(d, now, d->due);
		return;
	}
	d->due = 0;
	d->fire(d->arg); /* last: it may free d */
}

bool deadline_init(struct deadline *d, struct event_base *base, void (*fire)(void *), void *arg)
{
	struct timespec res = {0, 0};

	*d = (struct deadline){.fire = fire, .arg = arg};
	if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) < 0 || res.tv_sec > 0)
		res.tv_nsec = 10 * 1000000;
	d->tick = (uint32_t)((res.tv_nsec + 999999) / 1000000);
	d->ev = evtimer_new(base, on_timer, d);
	return d->ev != NULL;
}

void deadline_set(struct deadline *d, uint64_t ms)
{
	uint64_t now = coarse_now();
	/* the coarse clock lags the true time by up to a tick: count from the
	 * tick's end so that fire never runs early */
	uint64_t due = now + d->tick + ms;

	d->due = due;
	if (d->added && d->ev_at <= due)
		return; /* the event comes first and adds itself for the rest */
	add_for(d, now, due);
}

void deadline_free(struct deadline *d)
{
	if (d->ev)
		event_free(d->ev);
	d->ev = NULL;
	d->added = false;
	d->due = 0;
}
