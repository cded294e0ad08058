/*
 * pool — the one shared pool of upstream connections. Requests ask for a
 * stream by pool key; the pool matches them to an idle connection, to a
 * connection being set up, or opens a new one within the limits, and evicts
 * idle connections (idle timeout, per-origin and global idle caps, the
 * connection budget). Owns: every upstream connection and all waiters.
 * Keys are pool_key.h; the code is in pool.c (matchmaking, limits,
 * eviction), pool_h3.c (HTTP/3 selection, the Alt-Svc cache),
 * pool_tunnel.c (tunnels), pool_warm.c (keep-warm of hot keys) and
 * pool_coalesce.c (HTTP/2 and HTTP/3 connections shared across names),
 * which share pool_internal.h.
 */
#ifndef MUXD_POOL_H
#define MUXD_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "muxd.h"
#include "pool_key.h"
#include "upstream/upstream.h"

struct pool;
struct pool_wait;

struct pool_wait_cbs {
	/* A stream was opened for the request (reused: on a connection that had
	 * served before). */
	void (*on_stream)(void *ctx, struct upstream_stream *s, bool reused);
	/* No stream can be had: err/reason say why (the waiter is gone). */
	void (*on_error)(void *ctx, enum muxd_err err, const char *reason);
};

struct pool *pool_new(struct muxd *m);
void pool_free(struct pool *p);

/*
 * Ask for a stream; the answer always comes later from the event loop.
 * fresh_only: only a newly opened connection will do (the retry after a
 * reused connection failed). Every wait is bounded by connect_timeout: a
 * connection set-up that takes longer fails its waiters with
 * ERR_CONNECT_TIMEOUT (the reason names the step), and a waiter blocked on
 * a limit (max_connections, max_h1_per_origin, max_h2_per_origin) gets
 * ERR_BUDGET naming it.
 */
struct pool_wait *pool_start_stream(struct pool *p, const struct pool_key *key, bool fresh_only,
                                    const struct upstream_stream_cbs *stream_cbs,
                                    const struct pool_wait_cbs *cbs, void *ctx);
void pool_wait_cancel(struct pool_wait *w);

/*
 * Preconnect (`muxd warm`): make sure key has a connection that can take a
 * stream, opening one as a request would (route's chain, limits, HTTP/3 when
 * the Alt-Svc cache says so), but open no stream on it. The answer comes
 * later from the event loop, as for pool_start_stream: on_stream(ctx, NULL,
 * reused) once a connection is ready (reused: it existed before this call,
 * "already warm"), or on_error, within connect_timeout. A warmed connection
 * is idle like any other; its first request counts as a reuse (it may have
 * gone stale while idle, so that request is retried like one on a reused
 * connection). pool_wait_cancel stops waiting.
 */
struct pool_wait *pool_warm(struct pool *p, const struct pool_key *key,
                            const struct pool_wait_cbs *cbs, void *ctx);

/*
 * A client tunnel (CONNECT) to host:port along route (DESIGN's
 * pool_open_tunnel): a transport layer, returned at once, that reports
 * TRANSPORT_CONNECTED once its whole chain is up or TRANSPORT_ERROR, never
 * from inside this call. An https:// first hop is a CONNECT stream on the
 * pool's shared connection to that parent, which stays active while the
 * tunnel lives. The tunnel is an upstream connection like the others: it
 * waits for a slot under max_connections (evicting the least recently used
 * idle connection when there is one; else ERR_BUDGET after connect_timeout),
 * counts in upstream_opened[PROTO_TUNNEL] once up and as an active
 * PROTO_TUNNEL connection in pool_count while open; closing the layer gives
 * the slot back. Setting it up is bounded by connect_timeout
 * (ERR_CONNECT_TIMEOUT naming the step). Before TRANSPORT_CONNECTED only
 * close() may be called. NULL when out of memory (or a field of the route
 * does not fit a key).
 */
struct transport;
struct transport_cbs;
struct transport *pool_open_tunnel(struct pool *p, const struct route *route, const char *host,
                                   uint16_t port, const struct transport_cbs *cbs, void *ctx);

/*
 * A dedicated upstream connection for one exchange (an HTTP/1.1 Upgrade):
 * along key's route and chain like a pooled connection, but TLS offers ALPN
 * http/1.1 only (an HTTP/2- or HTTP/3-only origin then fails its handshake)
 * and the connection is never pooled: the caller puts its own codec on it
 * (h1_conn_new) and closes it when done. Otherwise as pool_open_tunnel:
 * waits for a slot under max_connections, reports TRANSPORT_CONNECTED or
 * TRANSPORT_ERROR from the loop, counts in upstream_opened[PROTO_H1] once
 * up and as an active PROTO_H1 connection while open.
 */
struct transport *pool_open_dedicated(struct pool *p, const struct pool_key *key,
                                      const struct transport_cbs *cbs, void *ctx);
/* An HTTP/2 connection of key is open, takes streams and its origin allows
 * extended CONNECT (RFC 8441): an upgrade may go as a stream on it
 * (pool_start_stream) instead of a dedicated connection. */
bool pool_connect_protocol(struct pool *p, const struct pool_key *key);

/* A verified TLS origin's Alt-Svc field value, from a response. */
void pool_altsvc_learned(struct pool *p, const struct pool_key *key, const char *value, size_t len);
/* Origins with a live HTTP/3 alternative (muxd_altsvc_entries). */
size_t pool_altsvc_count(struct pool *p);

/* The configuration changed (SIGHUP): connections whose key no route makes
 * any more take no new streams and close once idle. */
void pool_reconfigured(struct pool *p);
/* Descriptor pressure: close half of the idle connections (LRU first). */
void pool_relieve(struct pool *p);

/* Close every idle connection (shutdown, reload of pool limits). */
void pool_close_idle(struct pool *p);

/* Connections that are up, by protocol; client tunnels are PROTO_TUNNEL. */
struct pool_counts {
	unsigned active[PROTO_COUNT];
	unsigned idle[PROTO_COUNT];
};
void pool_count(struct pool *p, struct pool_counts *out);

/* Keep-warm (pool_warm.c). An exponentially decayed request rate, in
 * requests per minute: rate after elapsed_s more seconds, and after a
 * request that came elapsed_s seconds after the last one. */
double pool_rate_decay(double rate, double elapsed_s);
double pool_rate_hit(double rate, double elapsed_s);
/* Whether a key with this rate may have a warm connection when nwarm other
 * keys have one (keep_warm on, its route verifies, rate at least
 * keep_warm_min_rate, nwarm under keep_warm_max). */
struct config;
bool pool_warm_eligible(const struct config *cfg, const struct pool_key_packed *key, double rate,
                        unsigned nwarm);
/* How often a warm HTTP/2 or HTTP/3 connection shows it is alive (ms). */
uint64_t pool_warm_interval(const struct config *cfg);
/* Connections kept warm now (muxd_keep_warm_connections). */
unsigned pool_keep_warm_count(struct pool *p);

/* Coalescing (pool_coalesce.c; RFC 9113 9.1.1, RFC 9114 3.3). Whether a
 * connection made for key conn may carry requests of key req as far as the
 * keys tell (direct, verified TLS, equal but for the host); whether the DER
 * certificate covers host; whether peer's address is among addrs. */
bool pool_key_coalescable(const struct pool_key_packed *conn, const struct pool_key_packed *req);
bool pool_cert_covers(const void *der, size_t len, const char *host);
/* A connection's certificate as the pool keeps it (DER and its names; NULL
 * when der is no certificate or memory runs out), and whether it covers
 * host (pool_cert_covers, tried only when one of its names may). */
struct pool_cert;
struct pool_cert *pool_cert_new(const void *der, size_t len);
void pool_cert_free(struct pool_cert *cert);
bool pool_cert_serves(const struct pool_cert *cert, const char *host);
bool pool_addr_listed(const struct sockaddr_storage *peer, const struct sockaddr_storage *addrs,
                      size_t n);
/* A 421 Misdirected Request came on stream s for a request of key: when s's
 * connection was made for another name, that pair is never coalesced again
 * and true says "retry on a connection of the request's own name"; false
 * (the request's own connection): the 421 is the answer. */
bool pool_misdirected(struct pool *p, const struct pool_key *key, struct upstream_stream *s);

/* One upstream connection, for the status page. */
struct pool_conn_info {
	const char *key;  /* the pool key id (credentials only as a hash) */
	const char *host; /* origin host and port */
	uint16_t port;
	enum proto proto;  /* PROTO_COUNT while connecting (not known yet) */
	const char *state; /* "connecting", "active" or "idle" */
	unsigned streams;  /* open now */
	uint64_t requests; /* served so far */
	double age_s;
	double idle_s;     /* 0 unless idle */
	bool warm;         /* kept open past idle_timeout (keep-warm) */
	const char *hosts; /* the hosts it serves, space-separated (coalescing) */
};
void pool_foreach_conn(struct pool *p, void (*fn)(void *arg, const struct pool_conn_info *c),
                       void *arg);
/* Call fn for each live Alt-Svc entry. */
void pool_foreach_altsvc(struct pool *p,
                         void (*fn)(void *arg, const char *origin, const char *alt_host,
                                    uint16_t alt_port, long expires_in_s, long broken_for_s),
                         void *arg);

#endif
