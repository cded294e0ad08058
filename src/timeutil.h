/*
 * timeutil — time conversions shared by the modules (a leaf): config values
 * and deadlines are milliseconds, libevent timers take a struct timeval.
 * Also struct deadline: a timeout timer that is cheap to push later.
 */
#ifndef MUXD_TIMEUTIL_H
#define MUXD_TIMEUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

struct event;
struct event_base;

/* A libevent timeout of ms milliseconds. */
static inline struct timeval ms_to_timeval(uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	return tv;
}

/*
 * A timeout that moves later on every bit of progress (a response timeout
 * re-armed on each read, a pooled connection's idle timer set and cleared
 * with each request). Moving the deadline later, or clearing it, only
 * records it: the event stays added for the earlier time, and when that
 * comes it adds itself again for the rest, or does nothing. Re-arming then
 * costs a clock read instead of a timer-heap removal and insertion in
 * libevent (~270 instructions each). The clock is CLOCK_MONOTONIC_COARSE
 * (one tick, a few ms, of resolution): fire runs no earlier than asked and
 * at most about two ticks later.
 */
struct deadline {
	struct event *ev;
	void (*fire)(void *arg);
	void *arg;
	uint64_t due;   /* coarse ms when fire runs; 0: cleared */
	uint64_t ev_at; /* coarse ms when ev fires, while it is added */
	uint32_t tick;  /* the clock's resolution, ms (rounded up) */
	bool added;     /* ev is added */
};

/* false when out of memory; fire runs from the loop, d may be freed in it. */
bool deadline_init(struct deadline *d, struct event_base *base, void (*fire)(void *), void *arg);
/* fire runs ms from now (replacing any earlier setting). */
void deadline_set(struct deadline *d, uint64_t ms);
/* fire will not run (until set again). */
static inline void deadline_clear(struct deadline *d)
{
	d->due = 0;
}
static inline bool deadline_pending(const struct deadline *d)
{
	return d->due != 0;
}
/* Frees the event (an initialised or zeroed d). */
void deadline_free(struct deadline *d);

#endif
