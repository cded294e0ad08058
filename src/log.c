/* log — leveled log lines on stderr, and the buffered access log. */
#include "log.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "timeutil.h"

static enum log_level current_level = LOG_INFO;

void log_set_level(enum log_level level)
{
	current_level = level;
}

bool log_enabled(enum log_level level)
{
	return level <= current_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	char line[2048];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "muxd: %s: %s\n", names[level], line);
}

bool log_limit_pass(struct log_limit *ll, unsigned slot, uint64_t now_ms, unsigned *suppressed)
{
	*suppressed = 0;
	if (slot >= LOG_LIMIT_SLOTS)
		slot = LOG_LIMIT_SLOTS - 1;
	if (now_ms - ll->window_ms[slot] >= 1000 || ll->lines[slot] == 0) {
		*suppressed = ll->suppressed[slot];
		ll->suppressed[slot] = 0;
		ll->window_ms[slot] = now_ms;
		ll->lines[slot] = 0;
	}
	if (ll->lines[slot] >= LOG_LIMIT_BURST) {
		ll->suppressed[slot]++;
		return false;
	}
	ll->lines[slot]++;
	return true;
}

struct access_log {
	int fd;
	bool own_fd; /* a file of ours, not stderr */
	struct event *timer;
	size_t len;
	char buf[ACCESS_LOG_BUF];
};

void access_log_flush(struct access_log *al)
{
	size_t off = 0;

	if (!al)
		return;
	while (off < al->len) {
		ssize_t n = write(al->fd, al->buf + off, al->len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* a full disk loses lines, never the daemon */
		off += (size_t)n;
	}
	al->len = 0;
	if (al->timer)
		evtimer_del(al->timer);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	access_log_flush(arg);
}

struct access_log *access_log_open(struct event_base *base, const char *target, char *err,
                                   size_t err_size)
{
	struct access_log *al = calloc(1, sizeof(*al));

	if (!al) {
		snprintf(err, err_size, "access_log %s: out of memory", target);
		return NULL;
	}
	if (strcmp(target, "stderr") == 0) {
		al->fd = STDERR_FILENO;
	} else {
		al->fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (al->fd < 0) {
			snprintf(err, err_size, "access_log %s: %s", target, strerror(errno));
			free(al);
			return NULL;
		}
		al->own_fd = true;
	}
	al->timer = evtimer_new(base, flush_cb, al);
	if (!al->timer) {
		snprintf(err, err_size, "access_log %s: out of memory", target);
		access_log_close(al);
		return NULL;
	}
	return al;
}

void access_log_line(struct access_log *al, const char *fmt, ...)
{
	struct timeval tv = ms_to_timeval(ACCESS_LOG_FLUSH_MS);
	char line[ACCESS_LOG_BUF / 4];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) { /* cut short, still one line */
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (al->len + (size_t)n > sizeof(al->buf))
		access_log_flush(al);
	memcpy(al->buf + al->len, line, (size_t)n);
	al->len += (size_t)n;
	if (!evtimer_pending(al->timer, NULL))
		evtimer_add(al->timer, &tv);
}

void access_log_close(struct access_log *al)
{
	if (!al)
		return;
	access_log_flush(al);
	if (al->timer)
		event_free(al->timer);
	if (al->own_fd)
		close(al->fd);
	free(al);
}
