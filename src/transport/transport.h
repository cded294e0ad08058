/*
 * transport — a byte-stream layer (model: curl's connection filters). A layer
 * owns the one below it. Readers take bytes from transport_input() and
 * writers append to transport_output(); backpressure is the size of those
 * buffers: the layer stops reading from below while its input holds
 * TRANSPORT_BUF bytes, and tells its user when its output has drained.
 * Layers: tcp (async DNS + happy eyeballs). TLS and proxy hops stack on top.
 *
 * Calling rules (every layer keeps them; see hold.h for the guard):
 * - What a layer is given. A constructor takes a struct transport_env
 *   (below) and copies it; no layer sees the daemon's state or a config.
 * - Ownership. The user owns the top layer and frees the whole stack with
 *   exactly one transport_close(). A constructor that takes a lower layer
 *   owns it from the call on: when it returns NULL (out of memory, bad
 *   arguments) it has closed lower already. Buffers stay the layer's; the
 *   user only reads from input and appends to output.
 * - When callbacks run. Never from inside a constructor or another call of
 *   the user: results, bytes and errors are reported from the event loop
 *   (deferred passes in tls, handshake and stream layers). A layer calls
 *   the user last, after its own state is settled.
 * - A callback may free the layer: the user may call transport_close()
 *   from inside on_read, on_drain or on_event; the layer then touches
 *   nothing of itself afterwards (it holds itself around its calls out,
 *   and the last release frees it).
 * - Errors. TRANSPORT_ERROR comes once, with an err (errors.h) and a reason
 *   valid only during the call; afterwards the only operation left is
 *   close(). TRANSPORT_EOF means the peer finished sending: input may still
 *   hold bytes and output may still be written (half-close).
 */
#ifndef MUXD_TRANSPORT_H
#define MUXD_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

#define TRANSPORT_BUF (64 * 1024)

struct dns;
struct evbuffer;
struct event_base;
struct sockaddr;
struct tls_client_ctx;
struct transport;

/*
 * What the layers use of the daemon, given to every constructor (which
 * copies it): the event loop, the resolver, the TLS client state (trust
 * stores, client certificates, the session cache), the loop check against
 * muxd's own listen addresses and the counter of intercepted leaves issued.
 * main.c makes one for the daemon (tests make their own); it holds nothing
 * that a reload changes, so a layer never sees configuration.
 */
struct transport_env {
	struct event_base *base;
	struct dns *dns;            /* tcp, socks5, quic: name resolution */
	struct tls_client_ctx *tls; /* tls, quic: credentials and session cache */
	/* tcp: whether sa reaches one of muxd's own listeners (ERR_LOOP); NULL:
	 * never */
	bool (*is_self)(const void *arg, const struct sockaddr *sa);
	const void *self_arg;
	uint64_t *tls_leaf_issued; /* tls_server: counts the leaves issued; NULL: not counted */
};

enum transport_event {
	TRANSPORT_CONNECTED, /* connect finished; the layer is ready for bytes */
	TRANSPORT_EOF,       /* the peer finished sending (input may still hold data) */
	TRANSPORT_ERROR,     /* failed: err and reason say why; only close() is left */
};

struct transport_cbs {
	void (*on_read)(void *ctx);  /* new bytes in transport_input() */
	void (*on_drain)(void *ctx); /* output went below TRANSPORT_BUF / 2 */
	void (*on_event)(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason);
};

struct transport_ops {
	struct evbuffer *(*input)(struct transport *t);
	struct evbuffer *(*output)(struct transport *t);
	void (*set_reading)(struct transport *t, bool on);
	void (*shutdown)(struct transport *t); /* half-close: no more writes */
	void (*close)(struct transport *t);    /* frees the layer and those below */
	bool (*is_alive)(struct transport *t);
};

struct transport {
	const struct transport_ops *ops;
	struct transport_cbs cbs;
	void *ctx;
};

static inline struct evbuffer *transport_input(struct transport *t)
{
	return t->ops->input(t);
}
static inline struct evbuffer *transport_output(struct transport *t)
{
	return t->ops->output(t);
}
static inline void transport_close(struct transport *t)
{
	t->ops->close(t);
}

/* Replace the callbacks (a pooled connection changes hands). */
void transport_set_cbs(struct transport *t, const struct transport_cbs *cbs, void *ctx);

/*
 * Open a TCP connection to host:port: resolve, then race addresses (IPv6
 * first, the next one 250 ms later or as soon as one fails; first to connect
 * wins). Ends in TRANSPORT_CONNECTED or TRANSPORT_ERROR (ERR_DNS,
 * ERR_CONNECT, ERR_CONNECT_TIMEOUT after timeout_ms; 0: no deadline of its
 * own, the caller's covers it).
 */
struct transport *tcp_connect(const struct transport_env *env, const char *host, uint16_t port,
                              uint64_t timeout_ms, const struct transport_cbs *cbs, void *ctx);
/* The address a connected TCP layer (tcp_connect) talks to; false for any
 * other layer or before it connected. */
struct sockaddr_storage;
bool tcp_peer_addr(struct transport *t, struct sockaddr_storage *addr);
/* Right after tcp_connect: refuse loopback addresses (ERR_FORBIDDEN), for a
 * direct connection to an origin under deny_loopback_targets. Every connect
 * refuses muxd's own listen addresses (ERR_LOOP). */
void tcp_deny_loopback(struct transport *t);

/*
 * SOCKS5 (RFC 1928) through a connected proxy connection lower, with
 * username/password (RFC 1929) when user is set, else no authentication.
 * remote_dns (socks5h): the host name goes to the proxy; otherwise muxd
 * resolves it first and sends the address. Takes ownership of lower. Ends
 * in TRANSPORT_CONNECTED, or TRANSPORT_ERROR ERR_CONNECT with a reason
 * naming the proxy and the reply's meaning ("SOCKS5 proxy 127.0.0.1:1080:
 * connection refused by destination host", "...: authentication failed").
 */
struct transport *socks5_connect(const struct transport_env *env, struct transport *lower,
                                 const char *proxy_name, const char *host, uint16_t port,
                                 bool remote_dns, const char *user, const char *pass,
                                 const struct transport_cbs *cbs, void *ctx);

/*
 * CONNECT host:port through an HTTP/1.1 proxy connection lower (a tunnel:
 * afterwards the layer is a plain byte stream to the origin). auth: the
 * "user:password" for Proxy-Authorization: Basic, or NULL. A non-2xx answer
 * is TRANSPORT_ERROR ERR_CONNECT with a reason naming the proxy and its
 * status line ("proxy 127.0.0.1:3128 answered 407 Proxy Authentication
 * Required"); never retried. Takes ownership of lower.
 */
struct transport *h1_connect_layer_new(const struct transport_env *env, struct transport *lower,
                                       const char *proxy_name, const char *host, uint16_t port,
                                       const char *auth, const struct transport_cbs *cbs,
                                       void *ctx);

/*
 * A whole connection path as one layer: TCP to the first hop (or the target),
 * then per parent proxy its layers (TLS to an https:// parent, then CONNECT
 * or SOCKS5 to the next hop or the target), then TLS to the target when
 * asked. Reports TRANSPORT_CONNECTED once every layer is up; errors name
 * the hop that failed. spec->timeout_ms bounds the whole build: then
 * TRANSPORT_ERROR ERR_CONNECT_TIMEOUT with a reason naming the step and its
 * peer ("TLS handshake with h:443 timed out after 10 s"). forward: stop at the last hop (an HTTP
 * parent that takes absolute-form requests itself).
 */
struct chain_hop {
	int kind; /* enum hop_kind (config.h) */
	const char *host;
	uint16_t port;
	const char *user, *pass; /* NULL: no credentials */
};
struct chain_spec;
/*
 * Who opens a first hop that is an https:// parent, so that it can be shared
 * (the pool: a CONNECT stream on its connection to that parent), given by
 * the chain's creator; the chain itself knows nothing of sharing. open
 * returns a layer carrying bytes to host:port through spec->hops[0] that
 * reports like any other (TRANSPORT_CONNECTED or TRANSPORT_ERROR, never
 * from inside open), or NULL when it cannot be made. open == NULL: the
 * chain reaches that parent on a connection of its own (TCP, TLS, CONNECT).
 */
struct chain_shared_hop {
	struct transport *(*open)(void *arg, const struct chain_spec *spec, const char *host,
	                          uint16_t port, const struct transport_cbs *cbs, void *ctx);
	void *arg;
};
struct chain_spec {
	const struct chain_hop *hops;
	size_t nhops;
	const char *proxy_ca_file; /* for https:// parents; NULL = system store */
	const char *host;          /* the target */
	uint16_t port;
	bool forward;
	bool tls; /* TLS to the target after the hops */
	const char *sni, *alpn, *ca_file, *session_key;
	bool verify;
	bool early_data;     /* TLS to the target may send 0-RTT (tls.h: tls_client_params) */
	uint64_t timeout_ms; /* connect_timeout: one deadline for the whole chain (0: none) */
	/* PEM client certificate and key presented to the target; NULL = none */
	const char *client_cert, *client_key;
	bool deny_loopback; /* no hops: the target must not be a loopback address */
	/* proxy_ca_file's identity from config load; NULL: looked up */
	const char *proxy_ca_file_id;
	struct chain_shared_hop shared_hop; /* an https:// first hop (not forward) */
};
struct transport *chain_connect(const struct transport_env *env, const struct chain_spec *spec,
                                const struct transport_cbs *cbs, void *ctx);
/* The ALPN protocol of the TLS to the target ("" when none). */
const char *chain_alpn(struct transport *t);
/* 0-RTT on the TLS to the target (tls.h: tls_early, tls_early_safe): t
 * reported TRANSPORT_CONNECTED before that handshake started, and the first
 * n bytes now in its output are replay-safe. Any layer may be asked: false
 * and nothing for those that are not a chain ending in such TLS. */
bool chain_early(struct transport *t);
void chain_early_safe(struct transport *t, size_t n);
/* A direct chain (no parent proxies) with TLS to the target, once up: the
 * address it connected to and the DER of the target's leaf certificate
 * (borrowed, valid while the chain lives). False otherwise. */
bool chain_peer(struct transport *t, struct sockaddr_storage *addr, const void **cert,
                size_t *cert_len);

/*
 * A tunnel to host:port as a CONNECT stream that src supplies (the pool: on
 * its connection to an https:// parent; with HTTP/2 many tunnels share one
 * connection, which stays active while any of them lives, DESIGN.md
 * principle 6; with HTTP/1.1 the tunnel takes a connection of its own).
 * src->start is called once, before h2_tunnel_connect returns (src and
 * src->arg need to live only that long): it asks for a CONNECT to authority
 * (proxy_auth: the Proxy-Authorization value, or NULL; both copied) and
 * answers later, from the event loop, through cbs with ctx: on_stream once
 * the request went out on a stream, or on_error, unless src->cancel(handle)
 * came first. It returns that handle, NULL when it cannot ask. proxy_name
 * names the parent in messages; auth: "user:password" for
 * Proxy-Authorization, or NULL.
 *
 * The stream is a byte stream both ways with a head on the way back: the
 * parent's final answer (on_answer, interim ones are not reported), then
 * its bytes in body(), taken and then acknowledged with consumed() (which
 * may report on_end or on_error before it returns), until on_end (the
 * parent finished) or on_error (the stream failed). Bytes go out with send,
 * at most send_space() of them, and send_end half-closes. After on_end,
 * on_error or cancel() the stream is gone; from inside on_answer, on_body
 * or on_send_ready the user may cancel() it.
 */
struct tunnel_stream;
struct tunnel_stream_ops {
	size_t (*send_space)(struct tunnel_stream *s);
	void (*send)(struct tunnel_stream *s, const void *data, size_t len);
	void (*send_end)(struct tunnel_stream *s);
	struct evbuffer *(*body)(struct tunnel_stream *s);
	void (*consumed)(struct tunnel_stream *s);
	void (*cancel)(struct tunnel_stream *s);
};
struct tunnel_stream {
	const struct tunnel_stream_ops *ops;
};
struct tunnel_stream_cbs {
	void (*on_stream)(void *ctx, struct tunnel_stream *s);
	void (*on_answer)(void *ctx, int status, const char *reason);
	void (*on_body)(void *ctx);
	void (*on_end)(void *ctx);
	/* before on_stream: no stream could be had; after: the stream failed */
	void (*on_error)(void *ctx, enum muxd_err err, const char *reason);
	void (*on_send_ready)(void *ctx); /* send_space() > 0 again */
};
struct stream_source {
	void *(*start)(void *arg, const char *authority, const char *proxy_auth,
	               const struct tunnel_stream_cbs *cbs, void *ctx);
	void (*cancel)(void *handle); /* only before on_stream or on_error */
	void *arg;
};
struct transport *h2_tunnel_connect(const struct transport_env *env,
                                    const struct stream_source *src, const char *proxy_name,
                                    const char *host, uint16_t port, const char *auth,
                                    const struct transport_cbs *cbs, void *ctx);

/* Wrap an accepted socket (client side); fd must be non-blocking (the
 * listener's accept4 makes it so). */
struct transport *tcp_accepted(const struct transport_env *env, int fd,
                               const struct transport_cbs *cbs, void *ctx);

#endif
