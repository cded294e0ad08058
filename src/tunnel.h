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
struct transport;

/* What the tunnel uses of its owner, the client connection (called through
 * this table, never by name; ctx is the owner's). */
struct tunnel_owner {
	/* The client connection's transport, spliced with the origin's. */
	struct transport *(*transport)(void *ctx);
	/* Write a complete response of muxd's own (the tunnel failed before
	 * its 200). close: the connection ends after it. */
	void (*respond)(void *ctx, int status, const char *content_type, const char *body,
	                size_t body_len, bool close);
	/* The tunnel ended and is already freed: the connection closes, after
	 * flushing what was written to it when flush is set (an error answer).
	 * Comes last; may free the owner. */
	void (*done)(void *ctx, bool flush);
};

/* NULL when out of memory (the caller answers). answered: the client has
 * had its 200 already (an intercepted port carrying something other than
 * TLS), so a failure can only close the connection. owner (with owner_ctx)
 * is called back from then on. */
struct tunnel *tunnel_start(struct muxd *m, const struct tunnel_owner *owner, void *owner_ctx,
                            const char *host, uint16_t port, bool answered);

/*
 * Splice a connection that switched protocols (an HTTP/1.1 Upgrade, or an
 * RFC 8441 extended CONNECT of an HTTP/2 session): owner's
 * transport is the client side, any byte stream (a client socket, a TLS
 * session, a stream of a multiplexed session as a transport layer); origin
 * is the dedicated upstream connection, whose origin already answered
 * (origin_eof: it has finished sending). The tunnel owns origin from the
 * call on (closed at once when NULL is returned: out of memory) and works
 * as an established CONNECT tunnel: bytes both ways within TRANSPORT_BUF
 * each, half-closes passed along, tunnel_idle_timeout. Bytes already waiting
 * in either input go first. Never calls the owner from inside this call;
 * the owner forwards its client events as for tunnel_start. host and port
 * name the origin in logs.
 */
struct tunnel *tunnel_splice(struct muxd *m, const struct tunnel_owner *owner, void *owner_ctx,
                             struct transport *origin, bool origin_eof, const char *host,
                             uint16_t port);

/* Client-side events, forwarded by the downstream. */
void tunnel_client_read(struct tunnel *tn);
void tunnel_client_drain(struct tunnel *tn);
void tunnel_client_eof(struct tunnel *tn);
/* The client connection is gone: drop everything, no callbacks. */
void tunnel_abort(struct tunnel *tn);

#endif
