/*
 * pool_key — the identity of an upstream connection (DESIGN.md principle 2):
 * everything that decides whether two requests may share a connection, made
 * from a request's destination and its route. Owns: the canonical key id
 * (proxy credentials only as a keyed hash, pool_cred_id), key equality and
 * hashing, and the conversion of a key into the transport chain that
 * reaches it (route -> key -> chain spec, for pooled connections and client
 * tunnels alike). Pure code: no connections, no event loop.
 */
#ifndef MUXD_POOL_KEY_H
#define MUXD_POOL_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "muxd.h"

/* Everything that decides whether two requests may share a connection
 * (DESIGN.md principle 2); two keys are equal iff their id strings are. The
 * pool builds a new connection's transport chain from the key alone. */
struct pool_key {
	char scheme[8];
	char host[256]; /* IPv6 literal without brackets */
	char sni[256];  /* the TLS name (SNI, verification): host, or a name for an address */
	uint16_t port;
	bool tls;
	bool verify;
	bool h3;           /* HTTP/3 allowed when the Alt-Svc cache knows it */
	bool early_data;   /* 0-RTT allowed on new connections (in the id only when off) */
	char ca_file[512]; /* "" = system trust store */
	char client_cert[512], client_key[512]; /* "" = no client certificate */
	/* parent proxies in order (none: direct); credentials are in the key but
	 * only a hash of them is in id, which is logged */
	struct pool_hop {
		int kind; /* enum hop_kind */
		char host[256];
		uint16_t port;
		char user[128], pass[128];
		bool auth;
	} hops[4];
	size_t nhops;
	char proxy_ca_file[512];
	/* its identity from config load ("": look it up) */
	char proxy_ca_file_id[1200];
	/* direct: never connect to a loopback address (deny_loopback_targets) */
	bool deny_loopback;
	bool forward;  /* http:// origin, last hop an HTTP parent: absolute-form to it */
	char alpn[32]; /* offered protocols, comma-separated */
	/* the route allows keep-warm (verify on); not part of the identity: a
	 * destination's route decides both */
	bool warm_ok;
	char id[2048]; /* canonical form of all of the above */
};

/* A pool_key as kept for long (per pool origin, per client tunnel): the same
 * fields, every string at its exact length ("" when unset) in the one
 * allocation pool_key_pack makes — a few hundred bytes instead of
 * sizeof(struct pool_key). free() frees it. Read-only once made. */
struct pool_key_packed {
	const char *scheme, *host, *sni;
	uint16_t port;
	bool tls, verify, h3, early_data;
	const char *ca_file, *client_cert, *client_key;
	const struct pool_packed_hop {
		int kind;
		const char *host;
		uint16_t port;
		const char *user, *pass;
		bool auth;
	} * hops;
	size_t nhops;
	const char *proxy_ca_file, *proxy_ca_file_id;
	bool deny_loopback, forward;
	const char *alpn;
	bool warm_ok;
	const char *id;
};
/* A packed copy of key; NULL when out of memory. */
struct pool_key_packed *pool_key_pack(const struct pool_key *key);
/* The full key again (where a connection is built from it). */
void pool_key_unpack(const struct pool_key_packed *packed, struct pool_key *key);
/* Equality and hash as for pool_key (by id): equal keys hash alike whatever
 * their form. */
bool pool_key_packed_equal(const struct pool_key_packed *packed, const struct pool_key *key);
unsigned pool_key_packed_hash(const struct pool_key_packed *packed);

struct route;
/* Fails (false) only when a field does not fit. Files are named by the
 * identities the route took at config load; credentials by pool_cred_id.
 * scheme "tunnel": a client tunnel, a byte stream to host:port along the
 * route's hops (no TLS of muxd's, never forwarded). */
bool pool_key_init(struct pool_key *key, const struct muxd *m, const char *scheme, const char *host,
                   uint16_t port, const struct route *route);
/* The identity of proxy credentials shown in key ids (logs, status page):
 * HMAC-SHA-256 keyed with m->secret, random per process, cut to 16 hex
 * digits, so that it cannot be brute-forced offline into the password. */
void pool_cred_id(const struct muxd *m, const char *user, const char *pass, char out[17]);
/* The same for an origin reached at host (an address) but verified, and
 * named in SNI, as sni (NULL: host). */
bool pool_key_init_sni(struct pool_key *key, const struct muxd *m, const char *scheme,
                       const char *host, uint16_t port, const char *sni, const struct route *route);

/* Whether requests with keys a and b may share connections. */
bool pool_key_equal(const struct pool_key *a, const struct pool_key *b);
/* A hash of the key (of its id), for tables of keys. */
unsigned pool_key_hash(const struct pool_key *key);

/* The connection path of key, for chain_connect: spec points into key and
 * hops (room for CONFIG_MAX_HOPS), which must outlive its use; timeout_ms
 * bounds the whole set-up. spec->shared_hop is left empty: the caller that
 * shares first hops gives its own. */
struct chain_hop;
struct chain_spec;
void pool_key_chain(const struct pool_key *key, struct chain_hop *hops, struct chain_spec *spec,
                    uint64_t timeout_ms);
/* The codec's forwarding mode for key (the parent that takes its requests,
 * with its credentials; fwd points into key): NULL when key is not
 * forwarded (upstream.h). */
struct upstream_forward;
const struct upstream_forward *pool_key_forward(const struct pool_key *key,
                                                struct upstream_forward *fwd);

#endif
