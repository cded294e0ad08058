/*
 * muxd — the daemon's root state: the event loop, the current configuration,
 * the resolver, the pool, the listeners and the counters. This is the only
 * global state; every module reaches it through a pointer.
 */
#ifndef MUXD_MUXD_H
#define MUXD_MUXD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct event_base;
struct config;
struct dns;
struct pool;
struct listeners;
struct downstream;
struct tls_client_ctx;
struct local_ca;

/* Why an upstream attempt failed; decides the status a client sees. */
enum muxd_err {
	ERR_NONE = 0,
	ERR_DNS,              /* 502 */
	ERR_CONNECT,          /* 502: refused, unreachable, reset during connect */
	ERR_CONNECT_TIMEOUT,  /* 504 */
	ERR_RESPONSE_TIMEOUT, /* 504 */
	ERR_BAD_RESPONSE,     /* 502 */
	ERR_CLOSED,           /* 502: upstream closed or reset mid-exchange */
	ERR_BUDGET,           /* 503: no connection could be had */
	ERR_TLS,              /* 502: handshake or certificate failure */
	ERR_UNPROCESSED,      /* the origin did not process the request (GOAWAY above
	                         last-stream-id, REFUSED_STREAM): retry elsewhere */
};

enum proto { PROTO_H1 = 0, PROTO_H2, PROTO_H3, PROTO_TUNNEL, PROTO_COUNT };
enum evict_reason {
	EVICT_IDLE_TIMEOUT = 0,
	EVICT_LIMIT, /* idle caps, the connection budget, descriptor pressure */
	EVICT_DEAD,
	EVICT_GOAWAY,
	EVICT_AGE, /* max_connection_age or max_requests_per_connection reached */
	EVICT_COUNT
};

struct metrics {
	uint64_t requests[PROTO_COUNT];
	uint64_t upstream_opened[PROTO_COUNT];
	uint64_t upstream_reuses;
	uint64_t upstream_retries;
	uint64_t evictions[EVICT_COUNT];
	uint64_t tls_leaf_issued;
	uint64_t h3_fallbacks;
};

struct muxd {
	struct event_base *base;
	struct config *cfg; /* current; exchanges hold their own reference */
	struct dns *dns;
	struct pool *pool;
	struct listeners *listeners;
	struct metrics metrics;
	struct downstream *clients; /* open client connections */
	unsigned nclients;
	bool draining;                 /* shutting down: no new requests */
	FILE *access_log;              /* NULL when off */
	struct tls_client_ctx *tls;    /* trust stores and the session cache */
	struct local_ca *ca;           /* for interception; NULL when it is off */
	struct admin_history *history; /* admin.c: samples for the status page chart */
};

const char *proto_name(enum proto p);
const char *evict_reason_name(enum evict_reason r);
int muxd_err_status(enum muxd_err err);
/* The one-line text body for an upstream failure, naming host and reason.
 * Returns its length (< size). */
int muxd_error_body(enum muxd_err err, const char *host, unsigned port, const char *reason,
                    char *buf, size_t size);

/* A client connection closed: lets a draining daemon finish. */
void muxd_client_closed(struct muxd *m);

#endif
