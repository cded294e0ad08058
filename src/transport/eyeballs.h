/*
 * eyeballs — the happy-eyeballs race (RFC 8305) over a resolved address
 * list, shared by the TCP and QUIC transports. It only decides when each
 * attempt starts: the first at once, each next one delay_ms after the
 * previous one started, or at once when a running attempt fails. The first
 * attempt that the caller declares the winner ends the race; the others are
 * cancelled. When every address has failed, the caller hears failed().
 * Owns: its copy of the address list and one timer. The attempts are the
 * caller's; the race knows them by their index in the list.
 *
 * Calling rules:
 * - start() is called from eyeballs_run(), eyeballs_failed() or the timer,
 *   in list order. It may call eyeballs_failed() for the attempt it is
 *   starting (the race then moves on at once).
 * - cancel() is called from eyeballs_won() for every other running attempt.
 * - failed() is called at most once, as the race's last act: it may free
 *   the race. start() and cancel() must not free it.
 * - The timer's event runs between enter() and leave() when they are set
 *   (leave() is its last act and may free the race).
 */
#ifndef MUXD_TRANSPORT_EYEBALLS_H
#define MUXD_TRANSPORT_EYEBALLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns.h"

#define EYEBALLS_DELAY_MS 250 /* RFC 8305's recommended Connection Attempt Delay */

struct event_base;
struct eyeballs;

enum eyeballs_start {
	EYEBALLS_RUNNING, /* the attempt is under way: report how it ends */
	EYEBALLS_SKIP,    /* it failed at once: the next address starts now */
	EYEBALLS_STOP,    /* it failed, and so would every other: start no more */
};

struct eyeballs_cbs {
	enum eyeballs_start (*start)(void *ctx, size_t i, const struct sockaddr *addr,
	                             socklen_t len);
	void (*cancel)(void *ctx, size_t i);
	void (*failed)(void *ctx); /* every attempt failed; none is left */
	void (*enter)(void *ctx);  /* optional */
	void (*leave)(void *ctx);  /* optional */
};

/* NULL when out of memory. */
struct eyeballs *eyeballs_new(struct event_base *base, uint64_t delay_ms,
                              const struct eyeballs_cbs *cbs, void *ctx);
/* Starts the race over addrs (copied); an empty list fails at once. */
void eyeballs_run(struct eyeballs *e, const struct dns_addrs *addrs);
/* Running attempt i failed. */
void eyeballs_failed(struct eyeballs *e, size_t i);
/* Attempt i won: the others are cancelled, nothing more starts. */
void eyeballs_won(struct eyeballs *e, size_t i);
/* Start nothing more, call back nothing more (the caller gave up). */
void eyeballs_stop(struct eyeballs *e);
void eyeballs_free(struct eyeballs *e);

#endif
