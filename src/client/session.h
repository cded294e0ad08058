/*
 * client session — one interface for the client side of an exchange,
 * whatever the protocol the client speaks: the mirror of upstream.h. A
 * server session (HTTP/1.1 today: h1_session.c; HTTP/2 next) turns the
 * client's bytes into requests, one client_stream each, and writes the
 * responses in its own wire format. The exchange knows only this interface
 * on the client side.
 *
 * A stream produces a request: its head (handed to exchange_start), body
 * pieces (read_body, then consumed: backpressure), the trailers and the end
 * (read_body says CLIENT_BODY_END), or an abort (exchange_client_eof,
 * exchange_abort). It accepts a response: interim heads, the head, body
 * bytes while send_space allows, the end with trailers, or a reset.
 *
 * Calling rules:
 * - The session owns the stream and everything it points to; the exchange
 *   owns the request head it was given and never frees the stream.
 * - The session calls the exchange (exchange.h) when request bytes arrive,
 *   when the client drains, when it half-closes, and when it is gone
 *   (exchange_abort: no callback follows).
 * - done, abort, upgrade and respond+done end the exchange's use of the stream:
 *   the exchange frees itself first and calls done or abort last; either
 *   may free the session. No other operation frees anything.
 * - Errors: a client that breaks its framing makes read_body return
 *   CLIENT_BODY_ERROR (the session has already given up keep-alive); the
 *   exchange then answers with respond or, once a head went out, abort.
 */
#ifndef MUXD_CLIENT_SESSION_H
#define MUXD_CLIENT_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http1.h"

struct evbuffer;
struct client_stream;
struct transport;

/* A protocol switch the origin accepted (client_stream_ops.upgrade). */
struct client_upgrade {
	const struct http1_msg *head; /* the origin's 101, valid during the call */
	const char *via;              /* the Via entry to add (NULL: none) */
	struct transport *origin;     /* the dedicated upstream connection, past the 101 */
	bool origin_eof;              /* ... whose origin has finished sending */
	const char *host;             /* the origin, for logs */
	uint16_t port;
};

enum client_body {
	CLIENT_BODY_NONE,  /* nothing waiting now: exchange_client_read comes next */
	CLIENT_BODY_DATA,  /* a piece (possibly empty); more may follow */
	CLIENT_BODY_END,   /* a piece (possibly empty); the body is complete */
	CLIENT_BODY_ERROR, /* the client broke its framing: no more body */
};

struct client_stream_ops {
	/* --- the request, from the client --- */
	/* The next piece of request body, at most max (> 0) bytes, at
	 * *data, *len; valid until consumed(), which must follow before the
	 * next call. */
	enum client_body (*read_body)(struct client_stream *s, size_t max, const char **data,
	                              size_t *len);
	void (*consumed)(struct client_stream *s);
	/* After CLIENT_BODY_END: the request's trailers, "name: value\r\n"...
	 * or "" (hop-by-hop fields already filtered). */
	const char *(*trailers)(struct client_stream *s);

	/* --- the response, to the client --- */
	/* An interim (1xx) head; via: the Via entry to add (NULL: none). A
	 * client that cannot take interim heads (HTTP/1.0) does not get it. */
	void (*send_interim)(struct client_stream *s, const struct http1_msg *head,
	                     const char *via);
	/* Muxd's own 100 Continue for the request's Expect; false when the
	 * client gets none (HTTP/1.0, no body). */
	bool (*send_continue)(struct client_stream *s);
	/* The final head. want_trailers: trailers may follow a body of known
	 * length and the client asked for them. */
	void (*send_head)(struct client_stream *s, const struct http1_msg *head, const char *via,
	                  bool want_trailers);
	/* How many body bytes the client side can take now (0: wait for
	 * exchange_client_drain). */
	size_t (*send_space)(struct client_stream *s);
	/* Move n (<= send_space) bytes from body to the client. */
	void (*send_body)(struct client_stream *s, struct evbuffer *body, size_t n);
	/* The response body is complete; trailers as in read_body's. */
	void (*send_end)(struct client_stream *s, const char *trailers);
	/* A complete response of muxd's own, before any head went out. The
	 * session decides whether the connection survives it. */
	void (*respond)(struct client_stream *s, int status, const char *content_type,
	                const char *body, size_t body_len);

	/* --- the end (the exchange is already freed; may free the session) --- */
	/* The response is complete (or respond was called). */
	void (*done)(struct client_stream *s);
	/* Reset: the response is cut short after its head, or the client
	 * vanished mid-request; the client must not take it for whole. */
	void (*abort)(struct client_stream *s);

	/* The client's address, for logs. */
	const char *(*peer)(const struct client_stream *s);

	/* The origin accepted the request's Upgrade (u->head is its 101):
	 * send the switch to the client (u->head with its Upgrade), then
	 * splice the client's bytes with u->origin both ways (tunnel_splice)
	 * until either side ends. Ends the exchange's use of the stream like
	 * done (the exchange is already freed; may free the session); the
	 * session owns u->origin from the call on. NULL: the session cannot
	 * switch protocols, and the exchange strips Upgrade as hop-by-hop. */
	void (*upgrade)(struct client_stream *s, const struct client_upgrade *u);
};

struct client_stream {
	const struct client_stream_ops *ops;
};

#endif
