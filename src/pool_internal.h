/*
 * pool_internal — the pool's private parts, shared by its files and
 * included by nothing else: pool.c (matchmaking, limits and eviction: the
 * origins, their connections and waiters), pool_h3.c (HTTP/3 selection and
 * the Alt-Svc cache), pool_tunnel.c (CONNECT streams on pooled parents,
 * client tunnels), pool_warm.c (keep-warm) and pool_coalesce.c (connections
 * shared across names). It declares the structures and the calls between those
 * files; the rules of each are in its file.
 */
#ifndef MUXD_POOL_INTERNAL_H
#define MUXD_POOL_INTERNAL_H

#include <gnutls/x509.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include "pool.h"
#include "timeutil.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

#define POOL_BUCKETS 256
#define POOL_MISDIRECTED 256 /* (connection, name) pairs never coalesced again */
#define POOL_HOSTS_MAX 512   /* pool_conn.hosts, with its NUL */

struct pool_origin;

struct pool_conn {
	struct pool *pool;
	struct pool_origin *o;
	struct upstream_conn *uc;  /* NULL while a transport chain connects */
	bool connecting;           /* not ready for streams yet (counted in nconnecting) */
	struct transport *pending; /* the transport chain being connected */
	uint64_t serial;           /* order of creation, for fresh-only waiters */
	TAILQ_ENTRY(pool_conn) o_link;
	TAILQ_ENTRY(pool_conn) idle_link;
	bool idle;
	struct deadline idle_timer; /* idle_timeout, set and cleared with each stream */
	struct timespec created, idle_since;
	bool retired;                 /* takes no new streams; closed once idle */
	enum evict_reason retire_why; /* counted then (EVICT_COUNT: not counted) */
	struct event *age_timer;      /* max_connection_age */
	struct event *setup_timer;    /* the rest of connect_timeout while warming */
	bool warmed;                  /* pool_warm asked for it: its first request is a reuse */
	bool warm;                    /* kept open past idle_timeout (pool_warm.c) */
	bool background;              /* opened by keep-warm, not for a request */
	/* coalescing (pool_coalesce.c): the peer's address and leaf certificate
	 * (NULL: not shareable with other names), the names served (space-
	 * separated, at most POOL_HOSTS_MAX bytes; NULL: only its origin's) */
	struct sockaddr_storage peer;
	struct pool_cert *cert;
	char *hosts;
};

struct pool_wait {
	struct pool_origin *o;
	TAILQ_ENTRY(pool_wait) link;
	uint64_t min_serial; /* accepts only connections created from then on */
	struct upstream_stream_cbs stream_cbs;
	struct pool_wait_cbs cbs;
	void *ctx;
	struct event *budget_timer; /* armed once blocked on a limit: then 503 */
	char why[200];              /* the limit, for the 503 */
	bool warm;                  /* pool_warm: a connection is wanted, not a stream */
	uint64_t warm_serial;       /* pool_warm: connections from this serial on are new */
	/* the next in the pool's spare list, once freed */
	struct pool_wait *next_spare;
};

/* Freed waiters the pool keeps for the next requests: at most this many
 * (bounded whatever the traffic; ~350 bytes each). None under
 * AddressSanitizer, so that a waiter used after its free is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_SPARE_WAITERS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_SPARE_WAITERS 0
#endif
#endif
#ifndef POOL_SPARE_WAITERS
#define POOL_SPARE_WAITERS 16
#endif

TAILQ_HEAD(pool_conn_list, pool_conn);
TAILQ_HEAD(pool_wait_list, pool_wait);

struct pool_origin {
	struct pool *pool;
	struct pool_key_packed *key; /* owned */
	struct pool_origin *next;    /* hash chain */
	struct pool_conn_list conns;
	struct pool_wait_list waiters;
	unsigned nconns; /* including connecting */
	unsigned nconnecting;
	unsigned nwaiters;
	unsigned nidle;
	enum proto learned; /* what ALPN chose last time (PROTO_COUNT: not known) */
	unsigned holds;     /* dispatch running: callbacks must not free the origin */
	struct event *dispatch_ev;
	struct pool_conn *h3_attempt; /* QUIC connection being set up */
	struct event *race_timer;     /* h3_timeout: TCP may start; later: give up */
	bool race_fired;
	/* keep-warm (pool_warm.c): the decayed request rate (per minute) as of
	 * rate_at (monotonic seconds; 0: no request yet), the warm connection,
	 * the background re-open and its backoff */
	double rate, rate_at;
	struct pool_conn *warm;
	struct event *warm_timer;
	uint64_t warm_backoff_ms;
	/* coalescing: the host's addresses, looked up once a connection of
	 * another name might serve it */
	enum { POOL_CO_NONE, POOL_CO_RESOLVING, POOL_CO_KNOWN } co_state;
	struct dns_query *co_query;
	struct dns_addrs *co_addrs; /* NULL: no answer */
};

struct pool_tunnel; /* pool_tunnel.c */
TAILQ_HEAD(pool_tunnel_list, pool_tunnel);

struct pool {
	struct muxd *m;
	struct pool_origin *buckets[POOL_BUCKETS];
	struct pool_conn_list idle; /* LRU first */
	struct event *trim_timer;   /* closes idle connections over the caps */
	struct altsvc_cache *altsvc;
	struct event *save_timer; /* writes the Alt-Svc cache soon after a change */
	unsigned nconns;          /* including client tunnels with a slot */
	unsigned nidle;
	uint64_t next_serial;
	struct pool_tunnel_list tunnels;        /* client tunnels with a slot */
	struct pool_tunnel_list tunnel_waiters; /* ... waiting for one, FIFO */
	struct event *tunnel_ev;                /* serves the tunnel waiters */
	unsigned nwarm;                         /* warm connections (keep_warm_max) */
	uint64_t misdirected[POOL_MISDIRECTED]; /* pairs that got 421, as pair ids */
	unsigned nmisdirected, misdirected_next;
	/* freed waiters kept for the next requests, at most POOL_SPARE_WAITERS */
	struct pool_wait *spare_waiters;
	unsigned nspare_waiters;
};

/* ---- pool.c ---- */

/* A connection of o, not in o yet (pool_conn_add); NULL when out of memory. */
struct pool_conn *pool_conn_alloc(struct pool_origin *o);
/* Frees a connection that pool_conn_add never took. */
void pool_conn_release(struct pool_conn *pc);
/* pc joins o as a connection being set up (counted in the budget). */
void pool_conn_add(struct pool_origin *o, struct pool_conn *pc);
/* Forget a connection (already closed or about to be); frees pc. */
void pool_conn_forget(struct pool_conn *pc);
/* Close an idle connection (why is counted unless EVICT_COUNT). */
void pool_evict(struct pool_conn *pc, enum evict_reason why);
/* The owner callbacks of every pooled upstream connection (owner: its pc). */
const struct upstream_owner_cbs *pool_owner_cbs(void);
/* Dispatch o from the loop; every origin with waiters that may use a slot. */
void pool_schedule(struct pool_origin *o);
void pool_schedule_all(struct pool *p);
/* A duration as "10 s" or "1500 ms", for messages. */
void pool_duration(uint64_t ms, char *buf, size_t size);
/* Open a stream on pc for w and hand it over; w is freed. */
void pool_give(struct pool_conn *pc, struct pool_wait *w);
/* Open a connection for o (set-up under way); NULL when it cannot. */
struct pool_conn *pool_open_conn(struct pool_origin *o);
/* Free o unless something still needs it. */
void pool_origin_maybe_free(struct pool_origin *o);

/* ---- pool_coalesce.c ---- */

/* pc can carry streams: what it serves, and whether other names may share
 * it (its peer address and certificate, kept); pc goes. */
void pool_coalesce_ready(struct pool_conn *pc);
void pool_coalesce_forget(struct pool_conn *pc);
/* Give o's waiters streams on other names' connections that may serve them;
 * true while o's host is being resolved for that (dispatch waits). */
bool pool_coalesce(struct pool_origin *o);
void pool_coalesce_origin_free(struct pool_origin *o);

/* ---- pool_warm.c ---- */

/* A request for o (its rate goes up); o's rate decayed to now. */
void pool_warm_hit(struct pool_origin *o);
double pool_warm_rate(const struct pool_origin *o);
/* pc became idle: o's warm connection when o is hot and has none. */
void pool_warm_idle(struct pool_conn *pc);
/* pc reached idle_timeout: true when it stays open as o's warm connection
 * (the caller re-arms the timer), false when it is to close. */
bool pool_warm_keep(struct pool_conn *pc);
/* pc leaves the pool: it is warm no more. */
void pool_warm_forget(struct pool_conn *pc);
/* The origin closed pc (before pool_conn_forget): re-open in the background
 * when pc was warm, or o's last idle connection, and o is hot. */
void pool_warm_lost(struct pool_conn *pc);
/* A background connection is up, or its set-up failed (why). */
void pool_warm_ready(struct pool_conn *pc);
void pool_warm_setup_failed(struct pool_conn *pc, const char *why);
/* A re-open of o is pending: o must stay. */
bool pool_warm_holds(const struct pool_origin *o);
void pool_warm_origin_free(struct pool_origin *o);

/* ---- pool_h3.c ---- */

bool pool_h3_init(struct pool *p); /* the Alt-Svc cache, loaded from its file */
void pool_h3_free(struct pool *p); /* a last, durable write of the cache; frees it */
/* Start a QUIC connection for o when the Alt-Svc cache says it has h3. */
void pool_h3_start(struct pool_origin *o);
/* TCP waits: a QUIC attempt of o is younger than h3_timeout. */
bool pool_h3_holds_tcp(const struct pool_origin *o);
/* Connections of o being set up that are QUIC (0 or 1). */
unsigned pool_h3_connecting(const struct pool_origin *o);
/* pc is ready, failed (the alternative is broken), or goes away. */
void pool_h3_ready(struct pool_conn *pc);
void pool_h3_failed(struct pool_conn *pc, const char *reason);
void pool_h3_forget(struct pool_conn *pc);
void pool_h3_origin_free(struct pool_origin *o);

/* ---- pool_tunnel.c ---- */

bool pool_tunnels_init(struct pool *p);
/* Tunnels still open lose their chains (their users close them later). */
void pool_tunnels_free(struct pool *p);
/* Slots may be free: serve the waiting tunnels from the loop. */
void pool_tunnels_schedule(struct pool *p);
/* Client tunnels (PROTO_TUNNEL) or dedicated connections (PROTO_H1) that
 * are up. */
unsigned pool_tunnels_up(struct pool *p, enum proto proto);
/* The opener of chains' shared first hops: streams on p's connections. */
struct chain_shared_hop pool_shared_hop(struct pool *p);

#endif
