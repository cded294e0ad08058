/*
 * tls — the TLS client transport layer: GnuTLS over the layer below it
 * (custom push/pull functions on that layer's buffers, never a socket).
 * TLS 1.2 and 1.3 only, SNI, ALPN, certificate and host name verification
 * against the system trust store or a CA file, verification off on request,
 * and session resumption through a cache keyed by the pool key.
 * Owns: the GnuTLS session and the layer below.
 */
#ifndef MUXD_TLS_H
#define MUXD_TLS_H

#include <gnutls/gnutls.h>
#include <stdbool.h>

#include "transport/transport.h"

struct tls_client_ctx;

/* Process-wide TLS client state: credentials per (trust store, verify, client
 * certificate), session cache. */
struct tls_client_ctx *tls_client_ctx_new(void);
void tls_client_ctx_free(struct tls_client_ctx *ctx);

struct tls_client_params {
	const char *sni;     /* host name for SNI and verification; IP literals: no SNI */
	const char *alpn;    /* comma-separated protocol ids, e.g. "http/1.1" or "h2,http/1.1" */
	const char *ca_file; /* PEM trust anchors; NULL = the system trust store */
	bool verify;         /* false: no certificate or host name check */
	const char *session_key; /* resumption cache key (the pool key id); NULL = none */
};

/*
 * Start a TLS handshake over lower (connected; ownership moves to the new
 * layer, also on failure). Ends in TRANSPORT_CONNECTED or TRANSPORT_ERROR
 * with ERR_TLS and a reason naming what failed, e.g. "certificate signed by
 * unknown authority", "certificate name does not match", "handshake failed:
 * <GnuTLS error>". Returns NULL only when out of memory (lower is closed).
 */
struct transport *tls_client_new(struct muxd *m, struct transport *lower,
                                 const struct tls_client_params *p, const struct transport_cbs *cbs,
                                 void *ctx);
/*
 * The same, also presenting a client certificate when the server asks for one
 * (and names the certificate's issuer, or no issuer at all): PEM files, the
 * certificate and its unencrypted private key; NULL: none. A session made with
 * one client certificate is never resumed with another.
 */
struct transport *tls_client_new_cert(struct muxd *m, struct transport *lower,
                                      const struct tls_client_params *p, const char *client_cert,
                                      const char *client_key, const struct transport_cbs *cbs,
                                      void *ctx);

/* After TRANSPORT_CONNECTED: the ALPN protocol chosen ("" when none) and
 * whether the session was resumed. */
const char *tls_alpn(struct transport *t);
bool tls_resumed(struct transport *t);
/* After TRANSPORT_CONNECTED: the DER of the peer's leaf certificate
 * (borrowed from the session, valid while the layer lives), and the layer
 * below. */
bool tls_peer_cert(struct transport *t, const void **der, size_t *len);
struct transport *tls_lower(struct transport *t);

/* --- for layers that run their own GnuTLS session (HTTP/3 over QUIC) --- */

/* The shared credentials for a trust store (ca_file NULL: the system store;
 * !verify: no trust anchors), loaded on first use and owned by ctx. NULL on
 * failure, with reason filled. */
gnutls_certificate_credentials_t tls_client_creds(struct tls_client_ctx *ctx, const char *ca_file,
                                                  bool verify, char *reason, size_t reason_len);
/* The context's priority cache (TLS 1.2 and 1.3). */
gnutls_priority_t tls_client_priority(struct tls_client_ctx *ctx);
/* Session resumption data cached under key: borrowed, valid until the next
 * tls_session_put or the next TLS layer's handshake. */
bool tls_session_get(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t *data);
/* Store session data under key; takes ownership of data.data (gnutls_malloc). */
void tls_session_put(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data);

/* --- server side, for interception (tls_server.c) --- */

struct local_ca;

struct tls_server_params {
	struct local_ca *ca; /* issues the leaf */
	/* the CONNECT host: the leaf's name, whatever the client's SNI says, except
	 * that when it is an IP literal a DNS name in the SNI names the leaf (muxd
	 * then verifies the origin for that name); NULL: the leaf names the SNI */
	const char *default_host;
	const char *alpn; /* protocols to accept, e.g. "http/1.1" */
};

/*
 * Terminate a client's TLS over lower (connected; ownership moves to the new
 * layer, also on failure). TLS 1.2/1.3, the leaf chosen from the SNI during
 * the handshake (local_ca_leaf_get; each new issue counts in
 * m->metrics.tls_leaf_issued), session tickets with local_ca_ticket_key.
 * Ends in TRANSPORT_CONNECTED or TRANSPORT_ERROR (ERR_TLS, reason).
 */
struct transport *tls_server_new(struct muxd *m, struct transport *lower,
                                 const struct tls_server_params *p, const struct transport_cbs *cbs,
                                 void *ctx);

/* After TRANSPORT_CONNECTED: the SNI the client sent ("" when none). */
const char *tls_server_sni(struct transport *t);

/* What the start of a client's byte stream says about its TLS ClientHello
 * (pure code over the bytes, which may hold one or more TLS records). */
enum tls_hello {
	TLS_HELLO_INCOMPLETE, /* a ClientHello so far: more bytes needed */
	TLS_HELLO_INVALID,    /* not a ClientHello muxd can read (the TLS layer says why) */
	TLS_HELLO_NO_SNI,     /* a ClientHello without a host_name */
	TLS_HELLO_SNI,        /* with a host_name, copied to name (NUL-terminated) */
};
#define TLS_HELLO_MAX 16384 /* longer ClientHello messages are not read (INVALID) */
enum tls_hello tls_client_hello_sni(const unsigned char *p, size_t len, char *name, size_t size);

/* Whether GnuTLS takes name as a server name: letters, digits, '-' and '.'
 * only (a name such as foo_bar.internal is refused during the handshake). */
bool tls_server_name_acceptable(const char *name);

#endif
