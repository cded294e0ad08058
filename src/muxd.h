/*
 * muxd — the daemon's root state: the event loop, the current configuration,
 * the resolver, the pool, the listeners and the counters, and opaque
 * pointers to the state that modules own (the client list, the admin
 * history, the access log). This is the only global state; the modules
 * above the codecs reach it through a pointer, the codecs and transport
 * layers only through what they are given (m->env, upstream_params).
 */
#ifndef MUXD_MUXD_H
#define MUXD_MUXD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "errors.h"
#include "log.h"

struct event_base;
struct event;
struct config;
struct dns;
struct pool;
struct listeners;
struct client_list;
struct tls_client_ctx;
struct local_ca;
struct access_log;
struct upstream_env;

enum proto { PROTO_H1 = 0, PROTO_H2, PROTO_H3, PROTO_TUNNEL, PROTO_COUNT };
enum evict_reason {
	EVICT_IDLE_TIMEOUT = 0,
	EVICT_LIMIT, /* idle caps, the connection budget, descriptor pressure */
	EVICT_DEAD,
	EVICT_GOAWAY,
	EVICT_AGE, /* max_connection_age or max_requests_per_connection reached */
	EVICT_COUNT
};

/* Why an HTTP/2 client connection was ended as a flood (client/h2_session.c). */
enum client_h2_flood {
	CH2_FLOOD_PING = 0,
	CH2_FLOOD_SETTINGS,
	CH2_FLOOD_RST,          /* RST_STREAM: rapid reset */
	CH2_FLOOD_WINDOW,       /* tiny WINDOW_UPDATEs */
	CH2_FLOOD_EMPTY,        /* empty DATA frames */
	CH2_FLOOD_OTHER,        /* PRIORITY, unknown frame types */
	CH2_FLOOD_CONTINUATION, /* CONTINUATION frames past nghttp2's limit */
	CH2_FLOOD_ACK,          /* PING/SETTINGS ACKs the client does not read */
	CH2_FLOOD_COUNT
};

/* Why an upstream connection was ended as a flood: muxd_upstream_flood_total{proto,kind}
 * (upstream/h3.c, upstream/h2.c; upstream_flood_proto and upstream_flood_kind name them). */
enum upstream_flood {
	UPSTREAM_FLOOD_H3_FRAMES = 0, /* HTTP/3: empty DATA or unknown frames on request streams */
	UPSTREAM_FLOOD_H3_CONTROL,    /* HTTP/3: the origin's control, QPACK and reserved streams */
	UPSTREAM_FLOOD_H2_PING,       /* HTTP/2, in the order of h2.c's enum h2_flood: */
	UPSTREAM_FLOOD_H2_SETTINGS,
	UPSTREAM_FLOOD_H2_RST,
	UPSTREAM_FLOOD_H2_WINDOW,
	UPSTREAM_FLOOD_H2_EMPTY,
	UPSTREAM_FLOOD_H2_OTHER,
	UPSTREAM_FLOOD_COUNT
};

/* Why an interceptable CONNECT became a raw tunnel (muxd_intercept_bypassed_total). */
enum bypass_reason {
	BYPASS_HOST,    /* the host matches an [intercept] bypass pattern */
	BYPASS_NOT_TLS, /* the client's first bytes are no TLS handshake */
	BYPASS_SILENT,  /* the client sent nothing while muxd peeked */
	BYPASS_SNI,     /* an SNI that TLS refuses as a server name */
	BYPASS_ALPN,    /* ALPN offered without h2 or http/1.1 */
	BYPASS_NO_SNI,  /* no SNI for a DNS name, and the route tunnels those */
	BYPASS_COUNT
};

struct metrics {
	uint64_t requests[PROTO_COUNT];
	uint64_t upstream_opened[PROTO_COUNT];
	uint64_t upstream_reuses;
	uint64_t upstream_retries;
	uint64_t evictions[EVICT_COUNT];
	uint64_t tls_leaf_issued;
	uint64_t h3_fallbacks;
	/* client/h2_session.c: HTTP/2 client connections served (and open
	 * now), those ended for a flood, by kind (enum client_h2_flood) */
	uint64_t client_h2_sessions;
	uint64_t client_h2_open;
	uint64_t client_h2_floods[CH2_FLOOD_COUNT];
	uint64_t intercept_bypassed[BYPASS_COUNT];
	uint64_t upstream_floods[UPSTREAM_FLOOD_COUNT]; /* upstream connections ended for a flood */
	uint64_t keep_warm_reconnects; /* warm connections re-opened in the background */
};

struct muxd {
	struct event_base *base;
	struct config *cfg; /* current; exchanges hold their own reference */
	struct dns *dns;
	struct pool *pool;
	struct listeners *listeners;
	struct metrics metrics;
	/* client/h1_session.c: the open client connections (opaque; made by
	 * main.c with downstream_list_new) */
	struct client_list *clients;
	unsigned nclients;             /* how many: kept by the client sessions, read by all */
	bool draining;                 /* shutting down: no new requests */
	struct access_log *access_log; /* log.h; NULL when off */
	struct log_limit refusals;     /* log.h: lines for muxd's own answers, per status */
	struct tls_client_ctx *tls;    /* trust stores and the session cache */
	/* what transport layers and codecs are given (upstream.h): made by
	 * main.c from base, dns, tls and the counters below */
	const struct upstream_env *env;
	struct local_ca *ca;           /* for interception; NULL when it is off */
	struct admin_history *history; /* admin.c: samples for the status page chart */
	struct event *trim_timer;      /* muxd.c: memory back to the OS once idle */
	/* this instance's Via entry, "1.1 muxd-<8 hex>" (muxd_load_instance) */
	char via_token[32];
	/* random per process: keys the hash that names proxy credentials */
	uint8_t secret[32];
	/* the addresses the listeners are bound to, for loop detection by address */
	struct sockaddr_storage self[16];
	size_t nself;
	/* upstream/mux.c: receive-window growth beyond the base windows
	 * granted to HTTP/2 and HTTP/3 streams, all together (window_budget_kib) */
	uint64_t window_granted;
	/* exchange.c: one freed exchange kept for the next request (~55 KiB,
	 * malloc'd and freed per request otherwise); exchange_spare_free */
	struct exchange *spare_exchange;
	/* Set by main.c: a client connection closed below max_clients, so
	 * accepting may resume (the listeners keep their own descriptor-reserve
	 * pause). NULL: nothing to resume. */
	void (*resume_accepting)(struct muxd *m);
};

const char *proto_name(enum proto p);
const char *evict_reason_name(enum evict_reason r);
const char *client_h2_flood_name(enum client_h2_flood k);
const char *bypass_reason_name(enum bypass_reason r);
const char *upstream_flood_proto(enum upstream_flood k);
const char *upstream_flood_kind(enum upstream_flood k);

/*
 * The instance id: 16 random bytes in STATE_DIR/instance-id (hex), made on
 * first start (mode 0600, written atomically); sets m->via_token. When the
 * directory cannot be written, a random id for this process only, with a
 * message in err (true either way unless out of randomness).
 */
bool muxd_load_instance(struct muxd *m, const char *state_dir, char *err, size_t err_size);
/* Whether a Via pseudonym (as received) names this instance. */
bool muxd_via_is_self(const struct muxd *m, const char *name, size_t len);
/* Whether sa (address and port) reaches one of muxd's own listeners: equal to
 * a bound address, or a local address on the port of a wildcard listener. */
bool muxd_is_self(const struct muxd *m, const struct sockaddr *sa);
/* The same as a transport_env is_self callback (arg: the struct muxd). */
bool muxd_is_self_arg(const void *m, const struct sockaddr *sa);
/* Whether sa is a loopback address (127/8, ::1, v4-mapped 127/8). */
bool muxd_is_loopback(const struct sockaddr *sa);

/* A client connection closed: lets a draining daemon finish, or calls
 * m->resume_accepting; when it was the last one, free memory goes back to
 * the OS a moment later (glibc keeps the peak of a burst otherwise: measured
 * 20 MB -> 7.6 MB a second after 600 concurrent 1 MiB downloads over HTTP/2,
 * with 6.4 MB at idle). */
void muxd_client_closed(struct muxd *m);
/* An upstream connection left the pool: with no client connected, the same
 * trim a moment later (connections closed by idle_timeout after the last
 * client's trim would otherwise keep their freed memory: the soak measured
 * 2.3 MB above idle after 200 clients). */
void muxd_upstream_closed(struct muxd *m);
/* Frees what muxd_client_closed() set up (at exit). */
void muxd_idle_trim_free(struct muxd *m);

#endif
