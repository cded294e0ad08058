/*
 * notify — the systemd service manager notification protocol (sd_notify(3)),
 * spoken directly: one datagram per message to $NOTIFY_SOCKET. Does nothing
 * when muxd does not run under a service manager that asked for it.
 */
#ifndef MUXD_NOTIFY_H
#define MUXD_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Read $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID, then unset them so
 * that child processes do not inherit them. Call once, at startup. */
void notify_init(void);
/* Send state (e.g. "READY=1\nSTATUS=..."), when a socket was given. */
void notify_send(const char *state);
/* printf-style notify_send. */
void notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True when a service manager listens. */
bool notify_enabled(void);
/* The watchdog interval asked for in microseconds, 0 when none. */
uint64_t notify_watchdog_usec(void);

#endif
