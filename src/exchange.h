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
struct downstream;

/* Start forwarding req to uri; on success the exchange owns req and answers
 * the client itself from now on (never from inside this call). NULL when out
 * of memory: req is untouched and the caller answers. tls_name: when uri's
 * host is an address, the origin's name (SNI, verification, Host); the route
 * and the connection still go by the address. NULL: none. */
struct exchange *exchange_start(struct muxd *m, struct downstream *ds, struct http1_msg *req,
                                const struct http1_uri *uri, const char *tls_name);

/* Client-side events while the exchange runs. */
void exchange_client_read(struct exchange *ex);
void exchange_client_drain(struct exchange *ex);
void exchange_client_eof(struct exchange *ex);
/* The client connection is gone: drop everything, no callbacks. */
void exchange_abort(struct exchange *ex);
/* Whether the exchange still needs request body bytes from the client. */
bool exchange_awaits_client(const struct exchange *ex);

#endif
