/*
 * quic — a QUIC client connection (ngtcp2, TLS 1.3 through
 * ngtcp2_crypto_gnutls) on connected UDP sockets on the libevent loop: the
 * transport under the HTTP/3 codec (upstream/h3.c). It knows nothing of
 * HTTP/3; its application (the "app") sees streams by id.
 * Owns: the DNS query, one UDP socket, ngtcp2 connection and GnuTLS session
 * per address attempt, their expiry timers, the set-up deadline, and the
 * packets in flight (a sendmmsg batch). It buffers no stream data: the app
 * keeps what it hands to quic_cbs.writev() until acked() says so.
 *
 * Set-up: quic_connect() resolves the host, then races handshakes across
 * the addresses (happy eyeballs, transport/eyeballs.h: the next address
 * starts EYEBALLS_DELAY_MS after the previous one, or at once when one
 * failed); the first handshake to complete wins and the others are dropped. TLS names and verifies
 * sni, whatever host the packets go to. The winner is announced by on_connected() (from inside
 * ngtcp2: the app opens its streams there). Failure (DNS, ICMP refusal, TLS, no handshake within
 * QUIC_HANDSHAKE_MS) is on_failed(), with the most telling reason of all attempts (TLS over timeout
 * over refusal).
 *
 * 0-RTT (quic_params.early_data): when the session cache holds a ticket for
 * the key together with the server's transport parameters (stored with the
 * ticket), the first attempt resumes with early data: right after its
 * Initial went out on_early() lets the app open streams on it (their data
 * goes in 0-RTT packets). When the handshake completes, a server that took
 * the early data keeps the streams; one that refused it (or another
 * attempt winning the race) makes quic drop them (ngtcp2_conn_early_data_
 * rejected) and call early_rejected() right before on_connected(): the app
 * forgets the streams and opens them again there. A set-up failure after
 * on_early() is still on_failed(); the deadline is then early_timeout_ms
 * from on_early() (when shorter than QUIC_HANDSHAKE_MS).
 *
 * I/O: readable → recv() loop → ngtcp2; writes pull stream data from the
 * app (writev) and go out in sendmmsg batches (a batch that meets EAGAIN
 * waits for EV_WRITE); at most QUIC_MAX_WRITE datagrams per write-out, the
 * rest from a deferred event. The ngtcp2 expiry drives a timer per attempt.
 *
 * Calling rules:
 * - Every event quic handles (socket, timers, the DNS answer) runs between
 *   enter(ctx) and leave(ctx); every other callback is called between the
 *   two, or from inside the quic_* call the app is making. leave() is the
 *   last thing quic does for the event: it may free the app, which then
 *   calls quic_free(). No callback may call quic_free(); any may call
 *   quic_shutdown() (quic then stops at the next check and calls back
 *   nothing more).
 * - ngtcp2 is never entered re-entrantly: quic_write() from inside a
 *   callback does nothing (the event in progress writes afterwards).
 * - A stream callback returning a negative value makes ngtcp2 drop the
 *   connection (the app sets the CONNECTION_CLOSE code first with
 *   quic_set_app_error()); the app then hears on_closed().
 * - Errors: on_failed() (set-up) or on_closed() (established) is called at
 *   most once, and then nothing more (except enter/leave): the connection
 *   cannot be used again; only quic_free() is left.
 */
#ifndef MUXD_TRANSPORT_QUIC_H
#define MUXD_TRANSPORT_QUIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "errors.h"

#define QUIC_HANDSHAKE_MS 10000 /* set-up deadline */

struct quic;
struct transport_env;

/* Stream data handed out for sending (the app's memory, kept until acked). */
struct quic_vec {
	uint8_t *base;
	size_t len;
};

struct quic_params {
	const char *host; /* where to send UDP */
	uint16_t port;
	const char *sni;     /* TLS name and verification (NULL or "": none) */
	const char *alpn;    /* the one ALPN protocol offered, e.g. "h3" */
	const char *ca_file; /* NULL = system store */
	bool verify;
	/* TLS resumption cache key, NULL = no resumption; quic's tickets are
	 * kept apart from TCP's under "<alpn>|<session_key>" */
	const char *session_key;
	bool early_data;           /* 0-RTT allowed when the cache has what it needs */
	uint64_t early_timeout_ms; /* the set-up deadline once on_early() ran (0: the same) */
	uint64_t stream_window;    /* receive window per stream */
	uint64_t conn_window;      /* receive window of the connection */
	uint64_t max_uni_streams;  /* unidirectional streams the peer may open */
};

struct quic_cbs {
	void (*enter)(void *ctx);
	void (*leave)(void *ctx); /* may free the app */
	/* A handshake completed and won: open the app's streams; 0, or -1 to
	 * fail the attempt (as a TLS failure). */
	int (*on_connected)(void *ctx);
	/* Optional (NULL: no 0-RTT). Before the handshake: the app may open
	 * streams now, as 0-RTT; 0, or -1 to open none. */
	int (*on_early)(void *ctx);
	/* The streams opened since on_early() are gone (0-RTT refused, or
	 * another attempt won): right before on_connected(). */
	void (*early_rejected)(void *ctx);
	/* Set-up failed: err is ERR_DNS, ERR_CONNECT, ERR_CONNECT_TIMEOUT or
	 * ERR_TLS; reason is only valid during the call. */
	void (*on_failed)(void *ctx, enum muxd_err err, const char *reason);
	/* The established connection is gone (origin closed it, idle
	 * timeout, fatal error); err is ERR_CLOSED. */
	void (*on_closed)(void *ctx, enum muxd_err err, const char *reason);

	/* Receiving. sud: the stream's user data (quic_open_bidi), else NULL.
	 * recv_data returns how many bytes the app consumed (the windows
	 * reopen by that much; the rest with quic_extend_offsets later). */
	int64_t (*recv_data)(void *ctx, int64_t id, const uint8_t *data, size_t len, bool fin,
	                     void *sud);
	int (*acked)(void *ctx, int64_t id, uint64_t len, void *sud);
	/* The stream is closed; code_set: code is the peer's application error. */
	int (*stream_close)(void *ctx, int64_t id, bool code_set, uint64_t code, void *sud);
	/* The peer will send no more on the stream: it reset it (reset) or
	 * asked us to stop sending (STOP_SENDING). */
	int (*read_shut)(void *ctx, int64_t id, bool reset, void *sud);
	/* The peer raised the stream's flow-control limit. */
	int (*unblocked)(void *ctx, int64_t id);
	/* The peer allows more bidirectional streams. */
	void (*more_streams)(void *ctx);

	/* Sending: the next stream data to write (a stream id, or -1 and 0
	 * vectors when none; *fin: the stream ends after it); the number of
	 * vectors, or a negative app error. */
	int (*writev)(void *ctx, int64_t *id, bool *fin, struct quic_vec *vec, size_t nvec);
	/* n bytes of stream id were packed (0 or a negative app error). */
	int (*written)(void *ctx, int64_t id, size_t n);
	/* Stream id cannot send now: flow control, or its write side is shut. */
	void (*blocked)(void *ctx, int64_t id, bool shut);
	/* Names a negative app error (for reasons). */
	const char *(*strerror)(int err);
};

/* A new connection attempt (see above); NULL when out of memory. The
 * params' strings are copied. */
struct quic *quic_connect(const struct transport_env *env, const struct quic_params *p,
                          const struct quic_cbs *cbs, void *ctx);
/* Frees everything; a connection still open says CONNECTION_CLOSE first. */
void quic_free(struct quic *q);
/* The app is done: best-effort CONNECTION_CLOSE (not from inside ngtcp2),
 * all I/O stops, nothing more is called back. */
void quic_shutdown(struct quic *q);

/* --- on the established connection (after on_connected; the stream
 * calls also between on_early and on_connected) --- */

/* Write out what is pending (packets, and stream data from writev). */
void quic_write(struct quic *q);
/* Open a stream; 0 or -1 (no stream credit, or not connected). */
int quic_open_bidi(struct quic *q, int64_t *id, void *sud);
int quic_open_uni(struct quic *q, int64_t *id);
/* How many more bidirectional streams the peer allows now. */
uint64_t quic_bidi_left(const struct quic *q);
/* Reopen the receive windows of stream id and of the connection by n
 * bytes (consumed); quic_extend_conn_offset: the connection's only. */
void quic_extend_offsets(struct quic *q, int64_t id, uint64_t n);
void quic_extend_conn_offset(struct quic *q, uint64_t n);
/* Open stream id's receive window n bytes further (window growth; the
 * connection's stays). */
void quic_extend_stream_offset(struct quic *q, int64_t id, uint64_t n);
/* The smoothed round trip in us; 0 before the first sample. */
uint64_t quic_rtt_us(const struct quic *q);
/* Reset the stream both ways / stop sending on it, with the app's code. */
void quic_shutdown_stream(struct quic *q, int64_t id, uint64_t code);
void quic_shutdown_stream_write(struct quic *q, int64_t id, uint64_t code);
/* The application error code our CONNECTION_CLOSE carries (0 until set). */
void quic_set_app_error(struct quic *q, uint64_t code);
/* Send a PING whenever the connection was quiet for ms (keep-warm), so that
 * neither side's idle timeout ends it. */
void quic_keep_alive(struct quic *q, uint64_t ms);
/* The established connection's peer address and the DER of the origin's
 * leaf certificate (borrowed, valid while q lives); false before that. */
bool quic_peer(const struct quic *q, struct sockaddr_storage *addr, const void **cert, size_t *len);

#endif
