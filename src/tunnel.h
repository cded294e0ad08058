/*
 * tunnel — a CONNECT tunnel: connect to host:port, answer "200 Connection
 * established" only once the upstream connection is up, then splice bytes
 * both ways with backpressure, pass half-closes along, close both sides
 * when either fails, and close an idle tunnel after tunnel_idle_timeout.
 * Owns: the upstream transport. The client transport stays the
 * downstream's; bytes the client sent after its CONNECT head are already
 * waiting in its input and are forwarded first.
 */
#ifndef MUXD_TUNNEL_H
#define MUXD_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "muxd.h"

struct tunnel;
struct downstream;

/* NULL when out of memory (the caller answers). answered: the client has
 * had its 200 already (an intercepted port carrying something other than
 * TLS), so a failure can only close the connection. */
struct tunnel *tunnel_start(struct muxd *m, struct downstream *ds, const char *host, uint16_t port,
                            bool answered);

/* Client-side events, forwarded by the downstream. */
void tunnel_client_read(struct tunnel *tn);
void tunnel_client_drain(struct tunnel *tn);
void tunnel_client_eof(struct tunnel *tn);
/* The client connection is gone: drop everything, no callbacks. */
void tunnel_abort(struct tunnel *tn);

#endif
