/*
 * timeutil — time conversions shared by the modules (a leaf): config values
 * and deadlines are milliseconds, libevent timers take a struct timeval.
 */
#ifndef MUXD_TIMEUTIL_H
#define MUXD_TIMEUTIL_H

#include <stdint.h>
#include <sys/time.h>

/* A libevent timeout of ms milliseconds. */
static inline struct timeval ms_to_timeval(uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	return tv;
}

#endif
