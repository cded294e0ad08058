/*
 * h2_session — the HTTP/2 server session of an intercepted client
 * connection whose TLS chose ALPN "h2": an nghttp2 server session over the
 * client's transport, each request stream a client_stream (session.h) with
 * an exchange of its own. The connection (h1_session.c) hands its transport
 * over after the handshake and keeps owning it; the session owns the
 * nghttp2 state, its streams and their bounded buffers (request body up to
 * one stream window, response body up to H2S_OUT_MAX per stream), and keeps
 * the client deadlines and flood limits of the connection.
 */
#ifndef MUXD_CLIENT_H2_SESSION_H
#define MUXD_CLIENT_H2_SESSION_H

#include <stdbool.h>
#include <stddef.h>

#include "http1.h"
#include "muxd.h"

struct evbuffer;
struct transport;
struct h2_session;

/* What the connection decides for the session (upward calls, handed down). */
struct h2_session_owner {
	/* A request of the session, checked and routed as the connection's own
	 * requests are (loops, the CONNECT origin): 0 with *uri and *tls_name
	 * (NULL: none; valid as long as the connection), or the status to
	 * answer with, and the answer's text in why. */
	int (*route)(void *ctx, const struct http1_msg *req, struct http1_uri *uri,
	             const char **tls_name, char *why, size_t why_size);
	/* The session is over (called from the event loop, never from inside an
	 * h2_session_* call). flush: a GOAWAY or answers still wait in the
	 * transport's output; peer_eof: the client finished sending. The owner
	 * frees the session (h2_session_free) and the transport. */
	void (*over)(void *ctx, bool flush, bool peer_eof);
};

struct h2_session_params {
	const char *peer;     /* the client's address, for logs */
	unsigned max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
	/* the socket's own buffers below TLS (NULL: none): bytes moving in them
	 * are the client's progress, for client_timeout */
	struct evbuffer *raw_in, *raw_out;
};

/* Serve HTTP/2 on t (connected; the session takes over its callbacks, not
 * its ownership). NULL when out of memory. */
struct h2_session *h2_session_new(struct muxd *m, struct transport *t,
                                  const struct h2_session_params *p,
                                  const struct h2_session_owner *owner, void *ctx);
/* Draining (shutdown, reload): GOAWAY now; the streams already open finish,
 * then the session is over. */
void h2_session_drain(struct h2_session *s);
/* No open stream: the connection may be closed without cutting a request. */
bool h2_session_idle(const struct h2_session *s);
/* Free now: every exchange is aborted, no callbacks. The transport stays
 * the owner's (its callbacks still point here: set or close it). */
void h2_session_free(struct h2_session *s);

#endif
