/*
 * window — the receive-window auto-tuning rule shared by the HTTP/2 and
 * HTTP/3 upstream streams (and so by CONNECT tunnels on an HTTP/2 parent):
 * a pure function, no state of its own. The callers (upstream/mux.c)
 * keep per stream the current window, the bytes consumed and the time since
 * the last check, and the budgets it may grow within.
 *
 * Rule: a check happens each time the client consumed half a window (when
 * the window update goes out). The client's drain rate since the last
 * check (consumed / elapsed) times WINDOW_GROW_RTTS round trips is the
 * window it could use. When that is more than the window, the origin was
 * held back by the window, not by the client: the window goes to that
 * target at once (at least doubling), up to the stream's maximum and within
 * what the connection and the global budget can still grant. The first
 * check comes after half of the first window, which arrives as one burst at
 * the path's rate, so a fast client gets the bandwidth-delay product (x2)
 * at its first check, while the first window is still arriving: the origin
 * sends at the path's rate from the second round trip on, instead of after
 * doubling from 64 KiB for log2(BDP / 64 KiB) round trips. A client slower
 * than the origin drains less than the window in WINDOW_GROW_RTTS round
 * trips, so its window stays where it is (about WINDOW_GROW_RTTS round trips
 * of the client's drain rate): windows only open as fast as the client
 * consumes (DESIGN principle 5). Until the socket buffers toward a slow
 * client fill, it looks fast: behind a long round trip its window may reach
 * the maximum at the first check, so the maximum bounds what muxd holds.
 */
#ifndef MUXD_UPSTREAM_WINDOW_H
#define MUXD_UPSTREAM_WINDOW_H

#include <stdint.h>

#define WINDOW_GROW_RTTS 2

struct window_in {
	uint64_t rtt_us;      /* smoothed round trip to the sender; 0 = not known yet */
	uint64_t elapsed_us;  /* since the last check */
	uint64_t consumed;    /* bytes the client consumed since the last check */
	uint64_t window;      /* the current window */
	uint64_t max;         /* the stream's maximum window */
	uint64_t budget_left; /* growth still grantable (connection and global budget) */
};

/* The window after this check: in->window, or more (never less). */
uint64_t window_next(const struct window_in *in);

#endif
