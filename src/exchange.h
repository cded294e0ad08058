/*
 * exchange — one proxied request/response: routes the request to a pool
 * key, gets a stream from the pool, relays the request body upstream and the
 * response back with bounded buffers both ways (DESIGN.md principle 5),
 * retries once on a fresh connection when a reused one failed before any
 * response byte and the request is replayable, and writes the access log.
 * Owns: the parsed request, its upstream stream or pool waiter.
 */
#ifndef MUXD_EXCHANGE_H
#define MUXD_EXCHANGE_H

#include "http1.h"
#include "muxd.h"

struct exchange;
struct transport;

/* What the exchange uses of its owner, the client connection (called through
 * this table, never by name; ctx is the owner's). done and abort come last:
 * the exchange is already freed when they run, and either may free the
 * owner. */
struct exchange_owner {
	/* The client connection's transport: request bytes in, response out. */
	struct transport *(*transport)(void *ctx);
	/* The client's address, for logs. */
	const char *(*peer)(void *ctx);
	/* Write a complete response of muxd's own (no head went out yet).
	 * close: the connection ends after it. */
	void (*respond)(void *ctx, int status, const char *content_type, const char *body,
	                size_t body_len, bool close);
	/* The exchange finished; keep_alive: the connection may carry the next
	 * request. */
	void (*done)(void *ctx, bool keep_alive);
	/* The exchange failed after its response head went out, or the client
	 * vanished mid-request: close abruptly. */
	void (*abort)(void *ctx);
};

/* Start forwarding req to uri; on success the exchange owns req and answers
 * the client itself from now on (never from inside this call), calling
 * owner (with owner_ctx) back. NULL when out of memory: req is untouched and
 * the caller answers. tls_name: when uri's host is an address, the origin's
 * name (SNI, verification, Host); the route and the connection still go by
 * the address. NULL: none. */
struct exchange *exchange_start(struct muxd *m, const struct exchange_owner *owner, void *owner_ctx,
                                struct http1_msg *req, const struct http1_uri *uri,
                                const char *tls_name);

/* Client-side events while the exchange runs. */
void exchange_client_read(struct exchange *ex);
void exchange_client_drain(struct exchange *ex);
void exchange_client_eof(struct exchange *ex);
/* The client connection is gone: drop everything, no callbacks. */
void exchange_abort(struct exchange *ex);
/* Whether the exchange still needs request body bytes from the client. */
bool exchange_awaits_client(const struct exchange *ex);

#endif
