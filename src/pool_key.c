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
	for (int i = 0; i < 8; i++)
		snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *len, size - *len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size - *len)
		return false;
	*len += (size_t)n;
	return true;
}

/* Trust anchors (and client certificates and keys) by file identity: the same
 * path with new contents is another key. The identity is the one the route
 * took at config load (no stat per request); a route made by hand has none,
 * and then the file is examined now. */
static bool append_file_id(char *buf, size_t size, size_t *len, const char *name, const char *path,
                           const char *id)
{
	char now[1200];

	if (!path || !*path)
		return append(buf, size, len, " %s=system", name);
	if (!id) {
		if (!config_file_id(path, now, sizeof(now)))
			return false;
		id = now;
	}
	return append(buf, size, len, " %s=%s", name, id);
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
	bool v6 = strchr(host, ':') != NULL, ok = true;
	bool tunnel = strcmp(scheme, "tunnel") == 0;
	size_t len = 0;

	memset(key, 0, sizeof(*key));
	copy(key->scheme, sizeof(key->scheme), scheme);
	copy(key->host, sizeof(key->host), host);
	copy(key->sni, sizeof(key->sni), sni ? sni : host);
	key->port = port;
	key->tls = strcmp(scheme, "https") == 0;
	if (route->nhops > sizeof(key->hops) / sizeof(key->hops[0]))
		return false;
	for (size_t i = 0; i < route->nhops; i++) {
		const struct config_hop *h = &route->hops[i];
		struct pool_hop *k = &key->hops[i];
		k->kind = h->kind;
		copy(k->host, sizeof(k->host), h->host);
		k->port = h->port;
		k->auth = h->user != NULL;
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
	key->warm_ok = route->verify;

	/* forwarding to an HTTP parent shares the parent's connections across
	 * all http:// origins */
	if (key->forward)
		ok = append(key->id, sizeof(key->id), &len, "http-forward");
	else
		ok = append(key->id, sizeof(key->id), &len, "%s://%s%s%s:%u", scheme, v6 ? "[" : "",
		            host, v6 ? "]" : "", port);
	if (ok && key->tls) {
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
		ok = append(key->id, sizeof(key->id), &len, " sni=%s alpn=%s%s verify=%d%s",
		            key->sni, key->alpn, key->h3 ? ",h3" : "", key->verify,
		            key->early_data ? "" : " early=off") &&
		     append_file_id(key->id, sizeof(key->id), &len, "ca", key->ca_file,
		                    route->ca_file_id);
		/* connections with different client certificates are never shared */
		if (ok && key->client_cert[0])
			ok = append_file_id(key->id, sizeof(key->id), &len, "cert",
			                    key->client_cert, route->client_cert_id) &&
			     append_file_id(key->id, sizeof(key->id), &len, "key", key->client_key,
			                    route->client_key_id);
	}
	/* made before deny_loopback_targets came on: not for requests after it */
	if (ok && key->deny_loopback)
		ok = append(key->id, sizeof(key->id), &len, " lo=deny");
	for (size_t i = 0; ok && i < key->nhops; i++) {
		const struct pool_hop *h = &key->hops[i];
		ok = append(key->id, sizeof(key->id), &len, " via=%s://%s%s%s:%u", kinds[h->kind],
		            strchr(h->host, ':') ? "[" : "", h->host,
		            strchr(h->host, ':') ? "]" : "", h->port);
		if (ok && h->auth) {
			char cred[17];
			pool_cred_id(m, h->user, h->pass, cred);
			ok = append(key->id, sizeof(key->id), &len, "#%s", cred);
		}
		if (ok && h->kind == HOP_HTTPS)
			ok = append_file_id(key->id, sizeof(key->id), &len, "proxy_ca",
			                    key->proxy_ca_file, route->proxy_ca_file_id);
	}
	return ok;
}

bool pool_key_equal(const struct pool_key *a, const struct pool_key *b)
{
	return strcmp(a->id, b->id) == 0;
}

static unsigned id_hash(const char *s)
{
	unsigned h = 2166136261u;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
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
