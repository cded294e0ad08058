/*
 * log — leveled log lines on stderr ("muxd: LEVEL: message"). The level is
 * part of the daemon's root state, set from the configuration (and -v).
 * Also the access log: lines gathered in a bounded buffer and written out
 * by a short timer (and when the buffer fills, and at reload and shutdown),
 * so that a request never waits for the disk.
 */
#ifndef MUXD_LOG_H
#define MUXD_LOG_H

#include <stdint.h>

#include "config.h"

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct event_base;
struct access_log;

#define ACCESS_LOG_BUF (64 * 1024) /* at most this much waits for the timer */
#define ACCESS_LOG_FLUSH_MS 1000   /* a line is written at most this late */

/* target: "stderr" or a path (opened for appending); NULL with a message in
 * err when it cannot be opened. */
struct access_log *access_log_open(struct event_base *base, const char *target, char *err,
                                   size_t err_size);
void access_log_line(struct access_log *al, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Write out what is buffered now. */
void access_log_flush(struct access_log *al);
/* Flush, then close (NULL: nothing). */
void access_log_close(struct access_log *al);

/*
 * A rate limit for lines of one kind under floods: at most LOG_LIMIT_BURST
 * lines per slot per second; the lines over it are counted, and the next
 * line of that slot after the second names how many were suppressed.
 */
#define LOG_LIMIT_SLOTS 12
#define LOG_LIMIT_BURST 10
struct log_limit {
	uint64_t window_ms[LOG_LIMIT_SLOTS]; /* start of the slot's current second */
	unsigned lines[LOG_LIMIT_SLOTS];     /* written in that second */
	unsigned suppressed[LOG_LIMIT_SLOTS];
};
/* Whether a line of slot may be written at now_ms; *suppressed: how many were
 * held back before it (to be named in a line of its own), else 0. */
bool log_limit_pass(struct log_limit *ll, unsigned slot, uint64_t now_ms, unsigned *suppressed);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_DEBUG))                                                        \
			log_msg(LOG_DEBUG, __VA_ARGS__);                                           \
	} while (0)

#endif
