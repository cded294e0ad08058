/*
 * quic_int — private to transport/quic*.c: the state of a QUIC connection
 * and of its address attempts ("paths"), shared by quic.c (the connection's
 * life: the race, events, ngtcp2 callbacks, failures, the API of quic.h)
 * and quic_path.c (one path's machinery: its GnuTLS session and ngtcp2
 * connection, packets out in sendmmsg batches, naming TLS failures).
 * Nothing outside transport/quic*.c includes it.
 */
#ifndef MUXD_TRANSPORT_QUIC_INT_H
#define MUXD_TRANSPORT_QUIC_INT_H

#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>

#include "transport/quic.h"
#include "transport/transport.h"

#define QUIC_IDLE_TIMEOUT_MS 30000 /* max_idle_timeout */
#define QUIC_PKT_MAX 1500          /* largest UDP payload we send */
#define QUIC_BATCH 16              /* datagrams per sendmmsg */
#define QUIC_MAX_WRITE 256         /* datagrams per write-out before yielding to the loop */
#define QUIC_MAX_READ 128          /* datagrams per readable event */
#define QUIC_RX_BATCH 32           /* datagrams per recvmmsg */
#define QUIC_RX_SLOT 2048          /* receive slot = max_udp_payload_size we announce */
#define QUIC_RCVBUF (2 << 20)      /* SO_RCVBUF asked for (the kernel doubles it) */
#define QUIC_NVEC 16               /* stream data vectors per packet */
#define QUIC_SCID_LEN 18
#define QUIC_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE"

/* One QUIC connection attempt to one address; the winner carries the
 * connection. */
struct quic_path {
	struct quic *q;
	struct quic_path *next;
	size_t index; /* in the address list (the race's name for it) */
	int fd;
	struct event *io;
	struct event *expiry;
	ngtcp2_conn *conn;
	gnutls_session_t tls;
	ngtcp2_crypto_conn_ref ref;
	struct sockaddr_storage local, remote;
	socklen_t local_len, remote_len;
	char addr[64];
	bool handshake_done;
	bool dead;
	bool early; /* resumes with 0-RTT: early_tp holds the server's params */
	ngtcp2_transport_params early_tp;
	bool want_write; /* EV_WRITE armed: a batch waits */
	bool gro;        /* UDP_GRO on: a sender's GSO burst arrives as one buffer */
	uint8_t (*batch)[QUIC_PKT_MAX];
	size_t batch_len[QUIC_BATCH];
	size_t nbatch, batch_sent;
};

struct quic {
	struct transport_env env; /* base, dns, tls */
	struct quic_cbs cbs;
	void *ctx;
	struct quic_params p; /* strings owned */
	char name[300];       /* host:port, for logs and reasons */
	struct dns_query *dq;
	struct eyeballs *race;   /* starts the attempts */
	struct quic_path *paths; /* attempts while warming */
	struct quic_path *a;     /* the established path */
	struct quic_path *ea;    /* the attempt carrying 0-RTT streams (on_early) */
	struct event *deadline;  /* set-up deadline */
	struct event *more;      /* continue a long write-out */
	enum muxd_err fail_err;  /* the most telling set-up failure so far */
	char fail_reason[512];
	uint64_t app_err; /* application error code for our CONNECTION_CLOSE */
	bool established;
	bool early;        /* the app opened streams on ea before the handshake */
	bool early_tried;  /* one attempt per connection tries 0-RTT */
	bool setup_failed; /* on_failed was called (or is due: fail_now) */
	bool fail_now;     /* the deadline event reports fail_err at once */
	bool failed;       /* the established connection is gone */
	bool stopped;      /* quic_shutdown(): nothing more */
	bool in_lib;       /* inside ngtcp2 */
	bool session_stored;
	uint32_t ticket_lifetime; /* of the last NewSessionTicket (0: none seen) */
	bool close_sent;
	bool silent; /* idled out: no CONNECTION_CLOSE */
};

static inline ngtcp2_tstamp quic_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NGTCP2_SECONDS + (uint64_t)ts.tv_nsec;
}

/* --- quic_path.c --- */

void qpath_free(struct quic_path *a);
/* The GnuTLS session, then the ngtcp2 client connection of a path whose
 * socket is connected; false with reason filled on failure. */
bool qpath_tls_setup(struct quic_path *a, char *reason, size_t len);
bool qpath_conn_new(struct quic_path *a, const ngtcp2_callbacks *cb, char *reason, size_t len);
/* Why a handshake failed, from the certificate check or the TLS alert. */
void qpath_tls_failure(struct quic_path *a, char *buf, size_t len);
/* Keeps the established path's session ticket for resumption (once), with
 * the server's transport parameters (for 0-RTT). */
void qpath_store_session(struct quic *q);
void qpath_addr_name(const struct sockaddr_storage *ss, char *buf, size_t len);
/*
 * Write packets until ngtcp2 has nothing more (or the socket is full),
 * pulling stream data from the app on the established path. Returns a
 * negative ngtcp2 error, a positive errno from the socket, or 0; *app: the
 * error came from the app's callbacks.
 */
int qpath_write_pkts(struct quic_path *a, bool *app);
void qpath_schedule_expiry(struct quic_path *a);

/* --- quic.c --- */

/* (Re)arms the path's socket event: readable, and writable while a batch
 * waits. */
void qpath_io_update(struct quic_path *a);

#endif
