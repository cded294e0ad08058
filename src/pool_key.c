/*
 * pool_key — keys of the pool: the canonical id of a destination and its
 * route, the credentials' keyed identity, equality, hashing, and the
 * transport chain of a key.
 */
#include "pool_key.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "route.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

void pool_cred_id(const struct muxd *m, const char *user, const char *pass, char out[17])
{
	size_t ul = strlen(user), pl = pass ? strlen(pass) : 0;
	unsigned char digest[32];
	char *text = malloc(ul + pl + 1);

	memset(digest, 0, sizeof(digest));
	if (text) { /* user NUL pass: no two pairs give the same text */
		memcpy(text, user, ul);
		text[ul] = '\0';
		if (pl)
			memcpy(text + ul + 1, pass, pl);
		gnutls_hmac_fast(GNUTLS_MAC_SHA256, m->secret, sizeof(m->secret), text, ul + 1 + pl,
		                 digest);
		explicit_bzero(text, ul + pl + 1);
		free(text);
	}
	for (int i = 0; i < 8; i++) {
		out[2 * i] = "0123456789abcdef"[digest[i] >> 4];
		out[2 * i + 1] = "0123456789abcdef"[digest[i] & 15];
	}
	out[16] = '\0';
}

/* The key id under construction: text appended piece by piece with memcpy
 * of known lengths (no printf: the key is made per request). The first
 * piece that does not fit is cut like snprintf cuts it, and nothing is
 * appended after it (ok stays false). */
struct idbuf {
	char *buf;
	size_t size, len;
	bool ok;
};

static void put_n(struct idbuf *b, const char *s, size_t n)
{
	if (!b->ok)
		return;
	if (n >= b->size - b->len) {
		n = b->size - b->len - 1;
		b->ok = false;
	}
	memcpy(b->buf + b->len, s, n);
	b->len += n;
	b->buf[b->len] = '\0';
}

static void put_s(struct idbuf *b, const char *s)
{
	put_n(b, s, strlen(s));
}

static void put_u(struct idbuf *b, unsigned v)
{
	char d[12], *p = d + sizeof(d);

	do
		*--p = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	put_n(b, p, (size_t)(d + sizeof(d) - p));
}

/* scheme://host:port with an IPv6 literal in brackets */
static void put_origin(struct idbuf *b, const char *scheme, const char *host, unsigned port)
{
	bool v6 = strchr(host, ':') != NULL;

	put_s(b, scheme);
	put_n(b, "://[", v6 ? 4 : 3);
	put_s(b, host);
	put_n(b, v6 ? "]:" : ":", v6 ? 2 : 1);
	put_u(b, port);
}

/* Trust anchors (and client certificates and keys) by file identity: the same
 * path with new contents is another key. The identity is the one the route
 * took at config load (no stat per request); a route made by hand has none,
 * and then the file is examined now. */
static void put_file_id(struct idbuf *b, const char *name, const char *path, const char *id)
{
	char now[1200];

	if (path && *path && !id) {
		if (!config_file_id(path, now, sizeof(now))) {
			b->ok = false;
			return;
		}
		id = now;
	}
	put_n(b, " ", 1);
	put_s(b, name);
	put_n(b, "=", 1);
	put_s(b, path && *path ? id : "system");
}

bool pool_key_init(struct pool_key *key, const struct muxd *m, const char *scheme, const char *host,
                   uint16_t port, const struct route *route)
{
	return pool_key_init_sni(key, m, scheme, host, port, NULL, route);
}

/* dst = src, cut to size like snprintf; false when it did not fit. (The
 * key is made per request: this is cheaper than snprintf's "%s".) */
static bool copy(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size) {
		memcpy(dst, src, size - 1);
		dst[size - 1] = '\0';
		return false;
	}
	memcpy(dst, src, n + 1);
	return true;
}

bool pool_key_init_sni(struct pool_key *key, const struct muxd *m, const char *scheme,
                       const char *host, uint16_t port, const char *sni, const struct route *route)
{
	static const char *const kinds[] = {"http", "https", "socks5", "socks5h"};
	bool tunnel = strcmp(scheme, "tunnel") == 0;
	struct idbuf b = {key->id, sizeof(key->id), 0, true};

	/* Every field is set here: no memset of the whole key (8
	 * KiB, made per request). Hops past nhops are left as they are. */
	copy(key->scheme, sizeof(key->scheme), scheme);
	copy(key->host, sizeof(key->host), host);
	copy(key->sni, sizeof(key->sni), sni ? sni : host);
	key->port = port;
	key->tls = strcmp(scheme, "https") == 0;
	key->verify = key->h3 = key->early_data = false;
	key->ca_file[0] = key->client_cert[0] = key->client_key[0] = '\0';
	key->proxy_ca_file[0] = key->proxy_ca_file_id[0] = key->alpn[0] = '\0';
	key->id[0] = '\0';
	key->nhops = 0;
	key->forward = key->deny_loopback = false;
	key->warm_ok = route->verify;
	if (route->nhops > sizeof(key->hops) / sizeof(key->hops[0]))
		return false;
	for (size_t i = 0; i < route->nhops; i++) {
		const struct config_hop *h = &route->hops[i];
		struct pool_hop *k = &key->hops[i];
		k->kind = h->kind;
		copy(k->host, sizeof(k->host), h->host);
		k->port = h->port;
		k->auth = h->user != NULL;
		k->user[0] = k->pass[0] = '\0';
		if (h->user && (!copy(k->user, sizeof(k->user), h->user) ||
		                !copy(k->pass, sizeof(k->pass), h->pass ? h->pass : "")))
			return false;
	}
	key->nhops = route->nhops;
	if (route->proxy_ca_file)
		copy(key->proxy_ca_file, sizeof(key->proxy_ca_file), route->proxy_ca_file);
	if (route->proxy_ca_file_id)
		copy(key->proxy_ca_file_id, sizeof(key->proxy_ca_file_id), route->proxy_ca_file_id);
	key->forward = !key->tls && !tunnel && key->nhops > 0 &&
	               (key->hops[key->nhops - 1].kind == HOP_HTTP ||
	                key->hops[key->nhops - 1].kind == HOP_HTTPS);
	key->deny_loopback = route->deny_loopback && key->nhops == 0;

	/* forwarding to an HTTP parent shares the parent's connections across
	 * all http:// origins */
	if (key->forward)
		put_n(&b, "http-forward", 12);
	else
		put_origin(&b, scheme, host, port);
	if (b.ok && key->tls) {
		key->verify = route->verify;
		/* QUIC does not pass through parents. The HTTP/3 layer presents no client
		 * certificate: a route with one stays on TCP, so that what the origin sees
		 * (and what it grants) is the same whatever the transport. */
		key->h3 = route->h3 && key->nhops == 0 && !route->client_cert;
		copy(key->alpn, sizeof(key->alpn), route->h2 ? "h2,http/1.1" : "http/1.1");
		if (route->ca_file && !copy(key->ca_file, sizeof(key->ca_file), route->ca_file))
			return false;
		if (route->client_cert &&
		    (!copy(key->client_cert, sizeof(key->client_cert), route->client_cert) ||
		     !copy(key->client_key, sizeof(key->client_key),
		           route->client_key ? route->client_key : "")))
			return false;
		key->early_data = route->early_data;
		put_n(&b, " sni=", 5);
		put_s(&b, key->sni);
		put_n(&b, " alpn=", 6);
		put_s(&b, key->alpn);
		if (key->h3)
			put_n(&b, ",h3", 3);
		put_n(&b, key->verify ? " verify=1" : " verify=0", 9);
		if (!key->early_data)
			put_n(&b, " early=off", 10);
		if (b.ok)
			put_file_id(&b, "ca", key->ca_file, route->ca_file_id);
		/* connections with different client certificates are never shared */
		if (b.ok && key->client_cert[0]) {
			put_file_id(&b, "cert", key->client_cert, route->client_cert_id);
			if (b.ok)
				put_file_id(&b, "key", key->client_key, route->client_key_id);
		}
	}
	/* made before deny_loopback_targets came on: not for requests after it */
	if (b.ok && key->deny_loopback)
		put_n(&b, " lo=deny", 8);
	for (size_t i = 0; b.ok && i < key->nhops; i++) {
		const struct pool_hop *h = &key->hops[i];
		put_n(&b, " via=", 5);
		put_origin(&b, kinds[h->kind], h->host, h->port);
		if (b.ok && h->auth) {
			char cred[17];
			pool_cred_id(m, h->user, h->pass, cred);
			put_n(&b, "#", 1);
			put_n(&b, cred, 16);
		}
		if (b.ok && h->kind == HOP_HTTPS)
			put_file_id(&b, "proxy_ca", key->proxy_ca_file, route->proxy_ca_file_id);
	}
	return b.ok;
}

bool pool_key_equal(const struct pool_key *a, const struct pool_key *b)
{
	return strcmp(a->id, b->id) == 0;
}

/* Eight bytes a step (ids run to hundreds of bytes with file identities,
 * hashed per request), then a full avalanche: the pool takes the low bits. */
static unsigned id_hash(const char *s)
{
	size_t n = strlen(s);
	uint64_t h = n, w;

	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = ((h << 5 | h >> 59) ^ w) * 0x517cc1b727220a95u;
	}
	w = 0;
	memcpy(&w, s, n);
	h = ((h << 5 | h >> 59) ^ w) * 0x517cc1b727220a95u;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdu;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53u;
	h ^= h >> 33;
	return (unsigned)h;
}

unsigned pool_key_hash(const struct pool_key *key)
{
	return id_hash(key->id);
}

bool pool_key_packed_equal(const struct pool_key_packed *packed, const struct pool_key *key)
{
	return strcmp(packed->id, key->id) == 0;
}

unsigned pool_key_packed_hash(const struct pool_key_packed *packed)
{
	return id_hash(packed->id);
}

/* Packing: the header, the hops, then the strings end to end. A walk over
 * the key's strings in one order serves both to size and to fill. */
struct packer {
	char *at; /* NULL: only counting */
	size_t size;
};

static const char *put(struct packer *pk, const char *s)
{
	size_t n = strlen(s) + 1;
	const char *out = pk->at;

	if (pk->at) {
		memcpy(pk->at, s, n);
		pk->at += n;
	}
	pk->size += n;
	return out;
}

static void put_hop(struct packer *pk, const struct pool_hop *h, struct pool_packed_hop *out)
{
	out->kind = h->kind;
	out->port = h->port;
	out->auth = h->auth;
	out->host = put(pk, h->host);
	out->user = put(pk, h->user);
	out->pass = put(pk, h->pass);
}

static void put_key(struct packer *pk, const struct pool_key *key, struct pool_key_packed *out,
                    struct pool_packed_hop *hops)
{
	out->scheme = put(pk, key->scheme);
	out->host = put(pk, key->host);
	out->sni = put(pk, key->sni);
	out->ca_file = put(pk, key->ca_file);
	out->client_cert = put(pk, key->client_cert);
	out->client_key = put(pk, key->client_key);
	out->proxy_ca_file = put(pk, key->proxy_ca_file);
	out->proxy_ca_file_id = put(pk, key->proxy_ca_file_id);
	out->alpn = put(pk, key->alpn);
	out->id = put(pk, key->id);
	for (size_t i = 0; i < key->nhops; i++)
		put_hop(pk, &key->hops[i], &hops[i]);
}

struct pool_key_packed *pool_key_pack(const struct pool_key *key)
{
	struct pool_key_packed tmp, *out;
	struct pool_packed_hop tmp_hops[sizeof(key->hops) / sizeof(key->hops[0])], *hops;
	struct packer pk = {NULL, 0};
	size_t head = sizeof(*out) + key->nhops * sizeof(*hops);
	char *mem;

	put_key(&pk, key, &tmp, tmp_hops);
	if (!(mem = malloc(head + pk.size)))
		return NULL;
	out = (struct pool_key_packed *)mem;
	hops = (struct pool_packed_hop *)(mem + sizeof(*out));
	*out = (struct pool_key_packed){
	    .port = key->port,
	    .tls = key->tls,
	    .verify = key->verify,
	    .h3 = key->h3,
	    .early_data = key->early_data,
	    .hops = hops,
	    .nhops = key->nhops,
	    .deny_loopback = key->deny_loopback,
	    .forward = key->forward,
	    .warm_ok = key->warm_ok,
	};
	pk = (struct packer){mem + head, 0};
	put_key(&pk, key, out, hops);
	return out;
}

void pool_key_unpack(const struct pool_key_packed *pk, struct pool_key *key)
{
	/* the packed strings came from these fields: they fit */
	memset(key, 0, sizeof(*key));
	copy(key->scheme, sizeof(key->scheme), pk->scheme);
	copy(key->host, sizeof(key->host), pk->host);
	copy(key->sni, sizeof(key->sni), pk->sni);
	key->port = pk->port;
	key->tls = pk->tls;
	key->verify = pk->verify;
	key->h3 = pk->h3;
	key->early_data = pk->early_data;
	copy(key->ca_file, sizeof(key->ca_file), pk->ca_file);
	copy(key->client_cert, sizeof(key->client_cert), pk->client_cert);
	copy(key->client_key, sizeof(key->client_key), pk->client_key);
	for (size_t i = 0; i < pk->nhops; i++) {
		const struct pool_packed_hop *h = &pk->hops[i];
		struct pool_hop *k = &key->hops[i];
		k->kind = h->kind;
		copy(k->host, sizeof(k->host), h->host);
		k->port = h->port;
		copy(k->user, sizeof(k->user), h->user);
		copy(k->pass, sizeof(k->pass), h->pass);
		k->auth = h->auth;
	}
	key->nhops = pk->nhops;
	copy(key->proxy_ca_file, sizeof(key->proxy_ca_file), pk->proxy_ca_file);
	copy(key->proxy_ca_file_id, sizeof(key->proxy_ca_file_id), pk->proxy_ca_file_id);
	key->deny_loopback = pk->deny_loopback;
	key->forward = pk->forward;
	copy(key->alpn, sizeof(key->alpn), pk->alpn);
	key->warm_ok = pk->warm_ok;
	copy(key->id, sizeof(key->id), pk->id);
}

void pool_key_chain(const struct pool_key *key, struct chain_hop *hops, struct chain_spec *sp,
                    uint64_t timeout_ms)
{
	for (size_t i = 0; i < key->nhops; i++)
		hops[i] =
		    (struct chain_hop){key->hops[i].kind, key->hops[i].host, key->hops[i].port,
		                       key->hops[i].auth ? key->hops[i].user : NULL,
		                       key->hops[i].auth ? key->hops[i].pass : NULL};
	*sp = (struct chain_spec){
	    .hops = hops,
	    .nhops = key->nhops,
	    .proxy_ca_file = key->proxy_ca_file[0] ? key->proxy_ca_file : NULL,
	    .proxy_ca_file_id = key->proxy_ca_file_id[0] ? key->proxy_ca_file_id : NULL,
	    .host = key->host,
	    .port = key->port,
	    .forward = key->forward,
	    .tls = key->tls,
	    .sni = key->sni,
	    .alpn = key->alpn,
	    .ca_file = key->ca_file[0] ? key->ca_file : NULL,
	    .client_cert = key->client_cert[0] ? key->client_cert : NULL,
	    .client_key = key->client_key[0] ? key->client_key : NULL,
	    .session_key = key->id,
	    .verify = key->verify,
	    .early_data = key->early_data,
	    .timeout_ms = timeout_ms,
	    .deny_loopback = key->deny_loopback,
	};
}

const struct upstream_forward *pool_key_forward(const struct pool_key *key,
                                                struct upstream_forward *fwd)
{
	const struct pool_hop *last = &key->hops[key->nhops > 0 ? key->nhops - 1 : 0];

	if (!key->forward)
		return NULL;
	*fwd = (struct upstream_forward){last->host, last->port, last->auth ? last->user : NULL,
	                                 last->auth ? last->pass : NULL};
	return fwd;
}
