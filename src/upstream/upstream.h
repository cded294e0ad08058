/*
 * upstream — one interface for an upstream connection and the request/
 * response streams on it, whatever the protocol (model: h2o's httpclient).
 * The exchange code talks only to this interface. A connection says how many
 * more streams it can take and whether it is idle; a stream takes a request
 * head, body data and an end, and calls back with the response head (interim
 * 1xx heads too), body data (taken from stream->body, then "consumed"), the
 * end with trailers, or an error.
 * Owns: nothing; implementations (h1.c, h2.c, h3.c over mux.c) own their
 * connections and streams.
 *
 * Calling rules (every codec keeps them; see hold.h for the guard):
 * - What a connection is given. *_conn_new takes a struct upstream_env and
 *   a struct upstream_params (below) and copies both: a connection never
 *   holds or reads a config, so a reload applies to new connections only.
 * - Ownership. A connection owns its transport (passed to *_conn_new) and
 *   its streams; the owner (the pool) holds the connection until it calls
 *   close() or hears on_closed/on_failed. A stream belongs to its user from
 *   open_stream() until on_end, on_error or the user's cancel(), whichever
 *   comes first; after any of them the user touches the stream no more.
 *   Response heads and trailers handed to a callback are the codec's, valid
 *   during the call only.
 * - When callbacks run: from the event loop, not from inside a call of the
 *   user, with one exception: consumed() goes on decoding, so it may call
 *   on_body, on_end or on_error before it returns; a user calls it last and
 *   takes the stream as possibly ended afterwards. The codec calls the user
 *   last, after its own state is settled.
 * - A callback may free the object: from inside on_head, on_body or
 *   on_send_ready the user may cancel() its stream, and from inside any
 *   callback the owner may close() the connection; the codec holds the
 *   connection around its calls out and frees it at the last release.
 * - Errors. A stream ends with exactly one of on_end or on_error (err from
 *   errors.h; nothing_received tells whether a retry is safe). close()
 *   ends streams without callbacks. on_closed (why: an evict_reason, or
 *   EVICT_COUNT for "not an eviction") and on_failed (set-up failed) tell the
 *   owner to forget the connection: it must not call the connection again;
 *   streams still open on a multiplexed connection end on their own.
 */
#ifndef MUXD_UPSTREAM_H
#define MUXD_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http1.h"
#include "muxd.h"
#include "transport/transport.h"

/* Interim (1xx) heads a response may have before its final head; one more
 * is a protocol error for that stream (502). With each head at most
 * HTTP1_MAX_HEAD bytes this bounds what an origin can queue per exchange. */
#define UPSTREAM_MAX_INTERIM 16

struct config;
struct evbuffer;
struct upstream_conn;
struct upstream_stream;

/*
 * What a codec uses of the daemon (copied at creation): the transport
 * environment (the event loop; HTTP/3 makes its own QUIC transport with
 * it), the receive-window growth granted to HTTP/2 and HTTP/3 streams of
 * all connections together (mux.c, against window_budget_kib), and the
 * counters of connections ended for a flood (enum upstream_flood).
 */
struct upstream_env {
	struct transport_env transport;
	uint64_t *window_granted;
	uint64_t *floods; /* [UPSTREAM_FLOOD_COUNT]: connections ended for a flood, or NULL */
};

/*
 * The configuration a connection runs with, copied at its creation: a
 * reload applies to connections made afterwards, and a connection never
 * holds or reads a config.
 */
struct upstream_params {
	uint64_t response_timeout_ms; /* no byte either way while a response is due */
	unsigned max_stream_window_kib, max_conn_window_kib, window_budget_kib;
};
/* The params of cfg. */
void upstream_params_init(struct upstream_params *p, const struct config *cfg);

/* A header field to send; name and value need not be NUL-terminated. */
struct upstream_field {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

struct upstream_request {
	const char *method;
	const char *scheme;                  /* "http" or "https", for :scheme */
	const char *authority;               /* host[:port] for Host / :authority */
	const char *path;                    /* origin-form target */
	const struct upstream_field *fields; /* end-to-end fields only */
	size_t nfields;
	bool has_body;
	int64_t content_length; /* -1: unknown (streamed) */
	/* HTTP/1.1 only: the fields ask for a protocol switch (Upgrade). A 101
	 * then reaches on_head, and the user takes the connection's byte stream
	 * there (h1_stream_take_transport) or cancels; without it a 101 is a
	 * protocol error (502). */
	bool upgrade;
	/* HTTP/2 only: an extended CONNECT (RFC 8441) for this protocol
	 * ("websocket"; NULL: none), with method "CONNECT", scheme and path; a
	 * 2xx head means the stream carries the new protocol both ways. Only on
	 * a connection whose connect_protocol() is true. */
	const char *protocol;
	/* replay-safe and allowed by its route: may go as 0-RTT early data on a
	 * connection still in its handshake (HTTP/1.1 then adds Early-Data: 1,
	 * RFC 8470) */
	bool early_data;
};

struct upstream_stream_cbs {
	/* Response head; interim (1xx) heads come first and may repeat. The
	 * message stays valid until the next callback. */
	void (*on_head)(void *ctx, const struct http1_msg *head);
	/* Decoded body bytes are waiting in upstream_stream_body(). Take what
	 * fits, then call upstream_stream_consumed() when ready for more. */
	void (*on_body)(void *ctx);
	/* The response is complete; trailers is "name: value\r\n"... or "". */
	void (*on_end)(void *ctx, const char *trailers);
	/* The stream failed. nothing_received: no response byte arrived, so a
	 * replayable request may be retried. After this the stream is gone. */
	void (*on_error)(void *ctx, enum muxd_err err, const char *reason, bool nothing_received);
	/* More request body may be sent (upstream_stream_send_space() > 0). */
	void (*on_send_ready)(void *ctx);
};

struct upstream_stream_ops {
	void (*send_head)(struct upstream_stream *s, const struct upstream_request *req);
	size_t (*send_space)(struct upstream_stream *s);
	void (*send_body)(struct upstream_stream *s, const void *data, size_t len);
	void (*send_end)(struct upstream_stream *s, const char *trailers);
	struct evbuffer *(*body)(struct upstream_stream *s);
	void (*consumed)(struct upstream_stream *s);
	/* Drop the stream; the connection decides whether it survives. */
	void (*cancel)(struct upstream_stream *s);
};

struct upstream_stream {
	const struct upstream_stream_ops *ops;
	struct upstream_stream_cbs cbs;
	void *ctx;
	struct upstream_conn *conn;
};

struct upstream_conn_ops {
	/* Open a stream; NULL when the connection cannot take one now. */
	struct upstream_stream *(*open_stream)(struct upstream_conn *c,
	                                       const struct upstream_stream_cbs *cbs, void *ctx);
	unsigned (*free_slots)(struct upstream_conn *c);
	bool (*is_idle)(struct upstream_conn *c);
	/* Close now, whatever runs on it (streams get no callback). */
	void (*close)(struct upstream_conn *c);
	/* Streams open now; optional (NULL: 0 when idle, else 1). */
	unsigned (*streams)(struct upstream_conn *c);
	/* Optional: the pool keeps this idle connection open (keep-warm); the
	 * connection shows the origin it is alive at least every interval_ms
	 * (HTTP/2 PING, QUIC PING). */
	void (*keep_warm)(struct upstream_conn *c, uint64_t interval_ms);
	/* Optional: the address connected to and the DER of the origin's leaf
	 * certificate (borrowed, valid while the connection lives), for
	 * connection coalescing; false when not known (not TLS, not verified,
	 * through parent proxies). */
	bool (*peer)(struct upstream_conn *c, struct sockaddr_storage *addr, const void **cert,
	             size_t *cert_len);
	/* Optional: the peer allows extended CONNECT (RFC 8441
	 * SETTINGS_ENABLE_CONNECT_PROTOCOL); NULL: never. */
	bool (*connect_protocol)(struct upstream_conn *c);
};

/* Owner of connections: told when a connection becomes free, or dies. */
struct upstream_owner_cbs {
	void (*on_available)(void *owner, struct upstream_conn *c); /* a stream slot freed */
	void (*on_closed)(void *owner, struct upstream_conn *c, enum evict_reason why);
	/* Set-up failed (connections that set themselves up: HTTP/3); the
	 * connection is gone afterwards. */
	void (*on_failed)(void *owner, struct upstream_conn *c, enum muxd_err err,
	                  const char *reason);
};

struct upstream_conn {
	const struct upstream_conn_ops *ops;
	enum proto proto;
	struct upstream_owner_cbs owner_cbs;
	void *owner;       /* the pool's bookkeeping for this connection */
	uint64_t requests; /* streams opened so far */
	bool reusable;     /* false once the connection may carry no more streams */
	bool warming;      /* set up, but no streams until the peer's settings arrive */
};

static inline void upstream_stream_send_head(struct upstream_stream *s,
                                             const struct upstream_request *r)
{
	s->ops->send_head(s, r);
}

/*
 * The forwarding mode of an HTTP/1.1 or HTTP/2 connection (NULL: requests
 * go to the origin). The connection goes to an HTTP parent proxy that takes
 * the requests itself (the last hop of an http:// origin's chain): HTTP/1.1
 * writes absolute-form targets ("scheme://authority/path"; HTTP/2 names
 * them with :scheme and :authority anyway), every request carries
 * Proxy-Authorization with user and pass when user is set (encoded once, at
 * creation; the strings need to live only during the call), and the
 * parent's 407 ends the stream with ERR_CONNECT naming proxy_host:port,
 * never retried: muxd's credentials are not the client's business.
 */
struct upstream_forward {
	const char *proxy_host;
	uint16_t proxy_port;
	const char *user, *pass; /* user NULL: no credentials */
};

/* HTTP/1.1 over an established transport (takes ownership of it). */
struct upstream_conn *h1_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params,
                                  const struct upstream_forward *fwd, struct transport *t,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner);

/*
 * From inside on_head with a 101 answering an upgrade request: take the
 * connection's transport, positioned after the 101 head (bytes the origin
 * sent after it wait in its input); *eof: the origin has already finished
 * sending (no TRANSPORT_EOF follows). The caller sets its own callbacks at
 * once and owns the transport; the stream ends and the connection goes
 * away with no further callback to its owner. NULL when s is not there.
 */
struct transport *h1_stream_take_transport(struct upstream_stream *s, bool *eof);

/* HTTP/2 (nghttp2 client session) over an established transport whose ALPN
 * chose "h2" (takes ownership of it). */
struct upstream_conn *h2_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params,
                                  const struct upstream_forward *fwd, struct transport *t,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner);

/* HTTP/3 over QUIC (ngtcp2 + nghttp3). The connection sets itself up:
 * resolve host, race the addresses (happy eyeballs), QUIC handshake with
 * TLS for sni. It reports on_available once streams can be opened, or
 * on_failed. While setting up, free_slots() is 0 and warming is true. */
struct h3_params {
	const char *host;      /* where to send UDP (the alt-authority host) */
	uint16_t port;         /* the alternative's UDP port */
	const char *sni;       /* the origin's host: TLS name and verification */
	const char *authority; /* unused by the connection; for logs */
	const char *ca_file;   /* NULL = system store */
	bool verify;
	const char *session_key; /* resumption cache key */
	bool early_data;         /* 0-RTT for replay-safe requests on a resumed session */
	/* with 0-RTT the owner takes the connection as up before the handshake,
	 * which then has this deadline instead of QUIC's own (0: that one) */
	uint64_t early_timeout_ms;
};
struct upstream_conn *h3_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params, const struct h3_params *p,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner);

#endif
