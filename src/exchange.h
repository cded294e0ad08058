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
struct client_stream;

/* Start forwarding req to uri for client, a request of a client session
 * (client/session.h: the exchange talks to the client only through it); on
 * success the exchange owns req and answers through client from now on
 * (never from inside this call). NULL when out of memory: req is untouched
 * and the caller answers. tls_name: when uri's host is an address, the
 * origin's name (SNI, verification, Host); the route and the connection still
 * go by the address. NULL: none. */
struct exchange *exchange_start(struct muxd *m, struct client_stream *client, struct http1_msg *req,
                                const struct http1_uri *uri, const char *tls_name);

/* Client-side events while the exchange runs, from the client session:
 * request body bytes arrived, the client drained, it half-closed. */
void exchange_client_read(struct exchange *ex);
void exchange_client_drain(struct exchange *ex);
void exchange_client_eof(struct exchange *ex);
/* The client connection is gone: drop everything, no callbacks. */
void exchange_abort(struct exchange *ex);
/* Whether the exchange still needs request body bytes from the client. */
bool exchange_awaits_client(const struct exchange *ex);

/* Frees the exchange kept for reuse (m->spare_exchange), at exit. */
void exchange_spare_free(struct muxd *m);

#endif
