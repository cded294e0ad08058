/*
 * h1_stream — the client_stream (session.h) of an HTTP/1.1 server session:
 * one request at a time on the client's transport. Decodes the request body
 * (fixed length or chunked) into pieces, frames the response for the
 * client's HTTP version (http1_relay_framing: Content-Length, chunked, or
 * the end of the connection) and decides whether the connection survives.
 * Owns: the request body decoder. The transport and the connection stay the
 * session's (h1_session.c), which also implements respond, done, abort and
 * peer and composes the operations table.
 */
#ifndef MUXD_CLIENT_H1_STREAM_H
#define MUXD_CLIENT_H1_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "client/session.h"
#include "http1.h"
#include "muxd.h"

struct transport;

struct h1_stream {
	struct client_stream base;
	struct muxd *m;
	struct transport *t;
	int version_minor; /* the request's HTTP/1.<minor> */
	char method[24];   /* the request's (cut: long methods are neither HEAD nor CONNECT) */
	enum http1_body body;
	uint64_t remaining;            /* fixed-length body bytes still to come */
	struct http1_chunked *chunked; /* the decoder of a chunked body */
	size_t drain;                  /* input bytes the last piece took */
	bool body_done;                /* the whole request body was read */
	bool keep_alive;               /* the connection survives this request */
	bool chunk_out;                /* the response goes chunked */
	enum http1_framing framing;    /* of the final response */
};

/* Start a request on s (ops: the session's table, see h1_session.c) over
 * t. False when out of memory (s is left cleared). */
bool h1_stream_begin(struct h1_stream *s, const struct client_stream_ops *ops, struct muxd *m,
                     struct transport *t, const struct http1_msg *req);
/* The request is over: free its decoder (idempotent). */
void h1_stream_clear(struct h1_stream *s);
/* Whether the connection may carry the next request once this one is over
 * (settles it: later calls say the same). */
bool h1_stream_keep_alive(struct h1_stream *s);

/* The client_stream operations h1_stream implements (session.h). */
enum client_body h1_stream_read_body(struct client_stream *cs, size_t max, const char **data,
                                     size_t *len);
void h1_stream_consumed(struct client_stream *cs);
const char *h1_stream_trailers(struct client_stream *cs);
void h1_stream_send_interim(struct client_stream *cs, const struct http1_msg *head,
                            const char *via);
bool h1_stream_send_continue(struct client_stream *cs);
void h1_stream_send_head(struct client_stream *cs, const struct http1_msg *head, const char *via,
                         bool want_trailers);
size_t h1_stream_send_space(struct client_stream *cs);
void h1_stream_send_body(struct client_stream *cs, struct evbuffer *body, size_t n);
void h1_stream_send_end(struct client_stream *cs, const char *trailers);
/* The origin's 101 to the request's Upgrade, with its Upgrade field and
 * Connection: upgrade; no request follows on the connection. */
void h1_stream_send_switch(struct h1_stream *s, const struct http1_msg *head, const char *via);

#endif
