/*
 * flood — a per-connection meter of what a peer sends that does no work
 * (bytes or frames that carry no response), by kind, over the current
 * second: past a kind's limit within one second the peer is flooding and
 * the codec ends the connection. Pure code, no clock of its own: the
 * caller passes the time (upstream/h3.c; tests/unit/test_flood.c).
 * Owns: nothing (the caller embeds struct flood_meter in its connection).
 */
#ifndef MUXD_UPSTREAM_FLOOD_H
#define MUXD_UPSTREAM_FLOOD_H

#include <stdbool.h>
#include <stdint.h>

#define FLOOD_KINDS 4

struct flood_meter {
	uint64_t since_ms; /* start of the second the counts cover */
	uint64_t n[FLOOD_KINDS];
	bool started;
};

/* Adds amount of kind at now_ms (a monotonic clock in milliseconds); true
 * when the kind's count within the current second is then above limit.
 * A second starts at the first addition, and again at the first addition
 * a second or more later (every count goes back to 0). */
bool flood_add(struct flood_meter *fm, uint64_t now_ms, unsigned kind, uint64_t amount,
               uint64_t limit);

#endif
