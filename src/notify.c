/*
 * notify — sd_notify(3) without libsystemd: the documented protocol is one
 * AF_UNIX datagram of newline-separated VAR=value assignments sent to the
 * socket named by $NOTIFY_SOCKET (a path, or an abstract name written with a
 * leading '@'). Failures are logged at debug level and otherwise ignored: the
 * service manager may have gone away, muxd keeps serving.
 */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

static struct {
	int fd; /* -1: no service manager */
	struct sockaddr_un addr;
	socklen_t addr_len;
	uint64_t watchdog_usec;
} state = {.fd = -1};

/* A decimal number with digits only, no overflow. */
static bool parse_u64(const char *s, uint64_t *out)
{
	uint64_t n = 0;

	if (!s || !*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || n > (UINT64_MAX - 9) / 10)
			return false;
		n = n * 10 + (uint64_t)(*s - '0');
	}
	*out = n;
	return true;
}

static void init_socket(const char *path)
{
	size_t len = strlen(path);

	if (len < 2 || (path[0] != '/' && path[0] != '@') || len >= sizeof(state.addr.sun_path)) {
		log_warn("NOTIFY_SOCKET=%s: not a socket path or abstract name (ignored)", path);
		return;
	}
	state.addr.sun_family = AF_UNIX;
	memcpy(state.addr.sun_path, path, len);
	if (path[0] == '@')
		state.addr.sun_path[0] = '\0'; /* abstract: no terminating NUL counts */
	state.addr_len =
	    (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '@' ? 0 : 1));
	state.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (state.fd < 0)
		log_warn("NOTIFY_SOCKET: socket: %s", strerror(errno));
}

void notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	uint64_t n = 0, p = 0;

	if (path && *path)
		init_socket(path);
	if (usec && *usec) {
		if (!parse_u64(usec, &n) || n == 0)
			log_warn("WATCHDOG_USEC=%s: not a positive number (watchdog off)", usec);
		else if (pid && *pid && (!parse_u64(pid, &p) || p != (uint64_t)getpid()))
			log_debug("WATCHDOG_PID=%s is not this process (watchdog off)", pid);
		else
			state.watchdog_usec = n;
	}
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

bool notify_enabled(void)
{
	return state.fd >= 0;
}

uint64_t notify_watchdog_usec(void)
{
	return state.fd >= 0 ? state.watchdog_usec : 0;
}

void notify_send(const char *msg)
{
	ssize_t n;

	if (state.fd < 0)
		return;
	do
		n = sendto(state.fd, msg, strlen(msg), MSG_NOSIGNAL,
		           (const struct sockaddr *)&state.addr, state.addr_len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		log_debug("NOTIFY_SOCKET: %s", strerror(errno));
}

void notify_sendf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (state.fd < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	notify_send(buf);
}
