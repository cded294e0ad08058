/*
 * tls — the TLS client transport layer: GnuTLS over the layer below it
 * (custom push/pull functions on that layer's buffers, never a socket).
 * TLS 1.2 and 1.3 only, SNI, ALPN, certificate and host name verification
 * against the system trust store or a CA file, verification off on request,
 * session resumption through a cache keyed by the pool key (tls_sessions.h;
 * kept in the session file across restarts), and 0-RTT early data on
 * resumed TLS 1.3 sessions whose ticket allows it.
 * Owns: the GnuTLS session and the layer below.
 */
#ifndef MUXD_TLS_H
#define MUXD_TLS_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

struct tls_client_ctx;

/* Process-wide TLS client state: credentials per (trust store, verify, client
 * certificate), session cache. */
struct tls_client_ctx *tls_client_ctx_new(void);
/* Writes the session file a last time (durably) and frees everything. */
void tls_client_ctx_free(struct tls_client_ctx *ctx);
/*
 * Keep the session cache in the file path (NULL: memory only; [pool]
 * session_file): the first call reads it (a corrupt or truncated file is
 * ignored with one warning); after a change the file is written atomically
 * at most every few seconds from a timer on base (no fsync), and durably by
 * tls_client_ctx_free. A later call with another path (reload) writes there
 * from then on. False when out of memory.
 */
struct event_base;
bool tls_client_ctx_persist(struct tls_client_ctx *ctx, struct event_base *base, const char *path);

struct tls_client_params {
	const char *sni;     /* host name for SNI and verification; IP literals: no SNI */
	const char *alpn;    /* comma-separated protocol ids, e.g. "http/1.1" or "h2,http/1.1" */
	const char *ca_file; /* PEM trust anchors; NULL = the system trust store */
	bool verify;         /* false: no certificate or host name check */
	const char *session_key; /* resumption cache key (the pool key id); NULL = none */
	/* 0-RTT allowed ([route] early_data): when the cached session is TLS 1.3
	 * and its ticket allows early data, the layer reports TRANSPORT_CONNECTED
	 * before the handshake (tls_early) with the session's ALPN protocol */
	bool early_data;
	/* then the handshake's own deadline, ERR_CONNECT_TIMEOUT (0: none) */
	uint64_t early_timeout_ms;
};

/*
 * Start a TLS handshake over lower (connected; ownership moves to the new
 * layer, also on failure). Ends in TRANSPORT_CONNECTED or TRANSPORT_ERROR
 * with ERR_TLS and a reason naming what failed, e.g. "certificate signed by
 * unknown authority", "certificate name does not match", "handshake failed:
 * <GnuTLS error>". Returns NULL only when out of memory (lower is closed).
 */
struct transport *tls_client_new(const struct transport_env *env, struct transport *lower,
                                 const struct tls_client_params *p, const struct transport_cbs *cbs,
                                 void *ctx);
/*
 * The same, also presenting a client certificate when the server asks for one
 * (and names the certificate's issuer, or no issuer at all): PEM files, the
 * certificate and its unencrypted private key; NULL: none. A session made with
 * one client certificate is never resumed with another.
 */
struct transport *tls_client_new_cert(const struct transport_env *env, struct transport *lower,
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

/*
 * 0-RTT. tls_early: TRANSPORT_CONNECTED came before the handshake, which
 * starts once the current event is over; until then tls_early_safe(t, n)
 * says the first n bytes now in the output are replay-safe (a whole
 * idempotent request): those (up to the ticket's limit) go as TLS 1.3 early
 * data, everything else after the handshake. Early data the server refuses
 * is sent again after the handshake, unseen by the user. A server that
 * resumes with another ALPN protocol fails the layer (ERR_TLS).
 */
bool tls_early(struct transport *t);
void tls_early_safe(struct transport *t, size_t n);

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
/* The whole live entry under key (tls_sessions.h; borrowed as above), or NULL. */
struct tls_session_entry;
const struct tls_session_entry *tls_session_entry(struct tls_client_ctx *ctx, const char *key);
/* Store session data under key; takes ownership of data.data (gnutls_malloc).
 * lifetime: the ticket's, seconds (0: not known). */
void tls_session_put(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                     uint32_t lifetime);
/* The same for QUIC: with the early data the ticket allows, the session's
 * ALPN protocol and the server's transport parameters (copied; NULL, 0: none). */
void tls_session_put_quic(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                          uint32_t lifetime, uint32_t max_early, const char *alpn,
                          const unsigned char *tp, size_t tp_len);
/* The lifetime a NewSessionTicket message (its body, TLS 1.2 or 1.3) gives. */
uint32_t tls_ticket_lifetime(const gnutls_datum_t *msg);

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
 * env->tls_leaf_issued), session tickets with local_ca_ticket_key.
 * Ends in TRANSPORT_CONNECTED or TRANSPORT_ERROR (ERR_TLS, reason).
 */
struct transport *tls_server_new(const struct transport_env *env, struct transport *lower,
                                 const struct tls_server_params *p, const struct transport_cbs *cbs,
                                 void *ctx);

/* After TRANSPORT_CONNECTED: the SNI the client sent ("" when none). */
const char *tls_server_sni(struct transport *t);
/* After TRANSPORT_CONNECTED: the ALPN protocol the client chose ("" when none). */
const char *tls_server_alpn(struct transport *t);

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

/* What a complete ClientHello offers (tls_client_hello_parse). */
struct tls_hello_info {
	char sni[256];       /* the host_name, NUL-terminated; "" when none */
	bool alpn;           /* an ALPN extension (RFC 7301) was sent */
	bool alpn_h2;        /* ... offering "h2" */
	bool alpn_http11;    /* ... offering "http/1.1" */
	char alpn_list[128]; /* the offered protocols for logs, comma-separated, bytes outside
	                        0x21..0x7e as '?', cut short with "..." */
};
/* The same strict reading as tls_client_hello_sni (whose answer it returns,
 * the name at most 255 bytes), also reading the ALPN extension: a malformed
 * one (an empty list, an empty name, lengths that disagree) or a second
 * server_name or ALPN extension is INVALID. info is filled for NO_SNI and SNI. */
enum tls_hello tls_client_hello_parse(const unsigned char *p, size_t len,
                                      struct tls_hello_info *info);

/* Whether GnuTLS takes name as a server name: letters, digits, '-' and '.'
 * only (a name such as foo_bar.internal is refused during the handshake). */
bool tls_server_name_acceptable(const char *name);

#endif
