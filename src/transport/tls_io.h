/*
 * tls_io — private to the TLS transport layers (tls.c, the client, and
 * tls_server.c, the server): the record pump they share. A struct tls_io is
 * the first member of each layer's struct; it runs the GnuTLS session over
 * the buffers of the layer below and implements the transport ops. Each side
 * supplies hooks for what differs (see struct tls_io_hooks).
 */
#ifndef MUXD_TLS_IO_H
#define MUXD_TLS_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <stdbool.h>

#include "transport/transport.h"

#define TLS_IO_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

enum tls_io_state { TLS_IO_HANDSHAKE, TLS_IO_OPEN, TLS_IO_DEAD };

struct tls_io;

/* What differs between the sides. None of them calls the user, except
 * handshake_failed through tls_io_fail (its last step). */
struct tls_io_hooks {
	const char *log_name; /* "tls", "tls server" */
	/* The peer as named in a failure's log line. */
	const char *(*fail_name)(struct tls_io *io);
	/* The handshake failed with r (GNUTLS_E_AGAIN: the layer below ended
	 * during it); reports the failure with tls_io_fail. */
	void (*handshake_failed)(struct tls_io *io, int r);
	/* The handshake completed (state is TLS_IO_OPEN); runs before reading is
	 * applied and TRANSPORT_CONNECTED reported. It may refuse the session by
	 * filling io->fail_reason (reported as a TLS failure). With early data
	 * it sets io->early_accepted. */
	void (*connected)(struct tls_io *io);
	/* NULL, or runs after each gnutls_record_recv. */
	void (*after_record)(struct tls_io *io);
	/* Frees what the side owns and the struct io lives in; runs last, after
	 * the session, the buffers and the layer below are gone. */
	void (*destroy)(struct tls_io *io);
};

struct tls_io {
	struct transport base; /* first: the layer is used through its base */
	const struct tls_io_hooks *hooks;
	struct transport *lower;
	gnutls_session_t s;        /* NULL when setup failed */
	struct evbuffer *in, *out; /* plaintext */
	struct event *pass_ev;     /* runs a pass from the loop */
	enum tls_io_state state;
	const char *name;  /* the peer, for messages (owned by the side) */
	bool reading;      /* the user wants bytes */
	bool in_full;      /* decrypting stopped because in is full */
	bool lower_eof;    /* the layer below reported EOF */
	bool lower_failed; /* ... or an error (lower_err, lower_reason) */
	bool peer_eof;     /* plaintext ended (close_notify or EOF below) */
	bool eof_reported;
	bool shut_wanted; /* user asked for a half-close */
	bool shut_done;
	enum muxd_err lower_err;
	/* Reasons, made when needed (tls_io_reason; NULL: none): the layer
	 * below's error, and a failure found while setting up, reported later */
	const char *lower_reason;
	const char *fail_reason;
	enum muxd_err fail_err; /* hooks->connected's refusal: its error (ERR_NONE: ERR_TLS) */
	unsigned holds;         /* hold.h */
	bool closing;
	/* 0-RTT, client side (TLS 1.3 early data). early_max > 0 (set by the
	 * side before tls_io_start): TRANSPORT_CONNECTED comes before the
	 * handshake starts; the handshake starts in the pass after it, and the
	 * first early_safe bytes of out (at most early_max) go as early data.
	 * They stay in out until the server accepted them: when it refuses, they
	 * are sent again after the handshake. */
	size_t early_max;
	uint64_t early_timeout_ms; /* the handshake's deadline after that (0: none) */
	struct event *early_deadline;
	size_t early_safe;       /* bytes at the head of out the user marked replay-safe */
	size_t early_len;        /* handed to GnuTLS as early data */
	bool early_wait;         /* CONNECTED reported, the handshake not started */
	bool early_accepted;     /* the server took the early data (hooks->connected) */
	bool connected_reported; /* TRANSPORT_CONNECTED went to the user */
};

/* Sets io up over lower (the side's struct zeroed, io its first member).
 * False when out of memory: then the caller frees with tls_io_free. */
bool tls_io_init(struct tls_io *io, const struct tls_io_hooks *hooks, struct event_base *base,
                 struct transport *lower, const struct transport_cbs *cbs, void *ctx);
/* Installs s (set up by the side) with the push/pull functions over lower. */
void tls_io_set_session(struct tls_io *io, gnutls_session_t s);
/* Takes over lower's callbacks and schedules the first pass (the handshake,
 * or reporting the failure in io->fail_reason when io->s is NULL). */
void tls_io_start(struct tls_io *io);
/* Frees io (and, through hooks->destroy, the side's struct). */
void tls_io_free(struct tls_io *io);
/* Logs and reports a TLS failure, marking the layer dead. Returns false when
 * the user closed the layer. */
bool tls_io_fail(struct tls_io *io, const char *reason);
/* While io->early_wait: the first n bytes now in out are replay-safe (a
 * whole idempotent request) and may go as early data. */
void tls_io_early_safe(struct tls_io *io, size_t n);
/* Sets *reason (io->fail_reason, io->lower_reason) to the formatted text
 * ("out of memory" when it cannot be made); tls_io_free frees both. */
void tls_io_reason(const char **reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the ALPN protocols from a comma-separated list. */
int tls_io_set_alpn(gnutls_session_t s, const char *list, unsigned flags);

#endif
