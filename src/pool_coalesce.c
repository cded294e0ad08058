/*
 * pool_coalesce — HTTP/2 and HTTP/3 connection coalescing (RFC 9113
 * section 9.1.1, RFC 9114 section 3.3): a request for b.example may go on an
 * open connection made for a.example.
 *
 * When: the request's origin has no connection of its own, and another
 * origin has an HTTP/2 or HTTP/3 connection with a free stream slot whose
 * pool key equals the request's in everything but the host (scheme, port,
 * ALPN set, trust anchors, verification on, client certificate, no parent
 * proxy: coalescing is for direct connections only, since through a proxy
 * muxd cannot know where a name leads), whose verified certificate covers
 * the request's host (gnutls_x509_crt_check_hostname), and whose peer
 * address is one of the addresses the request's host resolves to (muxd
 * resolves it, from the DNS cache mostly, before deciding; the request waits
 * for that answer). A pair of names for which the origin answered 421
 * Misdirected Request is never coalesced again (a bounded memory of
 * POOL_MISDIRECTED pairs, the oldest forgotten first); the exchange retries
 * that request on a connection of its own name (pool_misdirected).
 *
 * A connection remembers the names it served (for the status page).
 */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dns.h"
#include "hold.h"
#include "log.h"
#include "pool_internal.h"

/* The part of a key id after the origin and the SNI: the rest of the key. */
static const char *id_rest(const struct pool_key_packed *k)
{
	bool v6 = strchr(k->host, ':') != NULL;
	char prefix[600];
	int n = snprintf(prefix, sizeof(prefix), "%s://%s%s%s:%u sni=%s ", k->scheme, v6 ? "[" : "",
	                 k->host, v6 ? "]" : "", k->port, k->sni);

	if (n < 0 || (size_t)n >= sizeof(prefix) || strncmp(k->id, prefix, (size_t)n) != 0)
		return NULL;
	return k->id + n;
}

/* A key whose connections may be shared with other names: direct TLS,
 * verified, named in SNI by its host. */
static bool shareable(const struct pool_key_packed *k)
{
	return k->tls && k->verify && k->nhops == 0 && !k->forward &&
	       strcmp(k->sni, k->host) == 0 && id_rest(k) != NULL;
}

bool pool_key_coalescable(const struct pool_key_packed *conn, const struct pool_key_packed *req)
{
	const struct pool_key_packed *k[2] = {conn, req};
	const char *rest[2];

	for (int i = 0; i < 2; i++) {
		if (!shareable(k[i]))
			return false;
		rest[i] = id_rest(k[i]);
	}
	return strcmp(conn->scheme, req->scheme) == 0 && conn->port == req->port &&
	       strcasecmp(conn->host, req->host) != 0 && strcmp(rest[0], rest[1]) == 0;
}

bool pool_cert_covers(const void *der, size_t len, const char *host)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d = {(unsigned char *)der, (unsigned)len};
	bool ok;

	if (!der || len == 0 || gnutls_x509_crt_init(&crt) < 0)
		return false;
	ok = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) >= 0 &&
	     gnutls_x509_crt_check_hostname(crt, host) != 0;
	gnutls_x509_crt_deinit(crt);
	return ok;
}

/* A connection's leaf certificate, kept compact: the DER, and the names it
 * may cover (subject alternative DNS names, IP addresses as text, the
 * common name), NUL-separated, ending in an empty one. The names only sort
 * out the certificates that cannot cover a host; gnutls decides on the DER.
 * (A parsed gnutls_x509_crt_t costs ~22 KiB per connection.) */
struct pool_cert {
	size_t der_len;
	char *names;
	unsigned char der[];
};

/* Appends name (and its NUL) to *buf of *len bytes; false: out of memory. */
static bool names_add(char **buf, size_t *len, const char *name, size_t n)
{
	char *grown = realloc(*buf, *len + n + 2);

	if (!grown)
		return false;
	memcpy(grown + *len, name, n);
	grown[*len + n] = '\0';
	grown[*len + n + 1] = '\0'; /* the list's end, overwritten by the next */
	*len += n + 1;
	*buf = grown;
	return true;
}

struct pool_cert *pool_cert_new(const void *der, size_t len)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d = {(unsigned char *)der, (unsigned)len};
	struct pool_cert *c = NULL;
	char *names = NULL;
	size_t nlen = 0;
	bool ok;

	if (!der || len == 0 || len > UINT32_MAX || gnutls_x509_crt_init(&crt) < 0)
		return NULL;
	ok = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) >= 0;
	for (unsigned i = 0; ok; i++) {
		char buf[512], text[INET6_ADDRSTRLEN];
		size_t size = sizeof(buf) - 1;
		int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size, NULL);
		if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
			break;
		if (type == GNUTLS_SAN_DNSNAME)
			ok = names_add(&names, &nlen, buf, strnlen(buf, size));
		else if (type == GNUTLS_SAN_IPADDRESS && (size == 4 || size == 16) &&
		         inet_ntop(size == 4 ? AF_INET : AF_INET6, buf, text, sizeof(text)))
			ok = names_add(&names, &nlen, text, strlen(text));
		/* other types, and names too long for buf: never a match here */
	}
	if (ok) {
		char cn[512];
		size_t size = sizeof(cn) - 1;
		if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn,
		                                  &size) == 0)
			ok = names_add(&names, &nlen, cn, strnlen(cn, size));
	}
	gnutls_x509_crt_deinit(crt);
	if (ok && !names) /* no names: an empty list */
		ok = (names = calloc(1, 1)) != NULL;
	if (ok && (c = malloc(sizeof(*c) + len)) != NULL) {
		c->der_len = len;
		memcpy(c->der, der, len);
		c->names = names;
		return c;
	}
	free(names);
	return NULL;
}

void pool_cert_free(struct pool_cert *c)
{
	if (c) {
		free(c->names);
		free(c);
	}
}

/* Whether name (from a certificate) might cover host: equal, or with a
 * wildcard, host ends in what follows its last '*'. A superset of what
 * gnutls accepts: the certificate decides. */
static bool name_may_cover(const char *name, const char *host)
{
	const char *star = strrchr(name, '*');
	size_t hl = strlen(host), sl;

	if (!star)
		return strcasecmp(name, host) == 0;
	sl = strlen(star + 1);
	return hl >= sl && strcasecmp(host + hl - sl, star + 1) == 0;
}

bool pool_cert_serves(const struct pool_cert *c, const char *host)
{
	for (const char *n = c->names; *n; n += strlen(n) + 1)
		if (name_may_cover(n, host))
			return pool_cert_covers(c->der, c->der_len, host);
	return false;
}

bool pool_addr_listed(const struct sockaddr_storage *peer, const struct sockaddr_storage *addrs,
                      size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct sockaddr_storage *a = &addrs[i];
		if (a->ss_family != peer->ss_family)
			continue;
		if (a->ss_family == AF_INET && memcmp(&((const struct sockaddr_in *)a)->sin_addr,
		                                      &((const struct sockaddr_in *)peer)->sin_addr,
		                                      sizeof(struct in_addr)) == 0)
			return true;
		if (a->ss_family == AF_INET6 &&
		    memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
		           &((const struct sockaddr_in6 *)peer)->sin6_addr,
		           sizeof(struct in6_addr)) == 0)
			return true;
	}
	return false;
}

/* The pair (connection's key id, request's key id) as one number. */
static uint64_t pair_id(const char *conn_id, const char *req_id)
{
	uint64_t h = 1469598103934665603ull;
	const char *parts[2] = {conn_id, req_id};

	for (int i = 0; i < 2; i++) {
		for (const char *s = parts[i]; *s; s++)
			h = (h ^ (unsigned char)*s) * 1099511628211ull;
		h = (h ^ 0xff) * 1099511628211ull; /* a separator no id holds */
	}
	return h ? h : 1;
}

static bool misdirected(const struct pool *p, uint64_t pair)
{
	for (unsigned i = 0; i < p->nmisdirected; i++)
		if (p->misdirected[i] == pair)
			return true;
	return false;
}

void pool_coalesce_ready(struct pool_conn *pc)
{
	struct upstream_conn *uc = pc->uc;
	const void *der;
	size_t len;

	if (pc->cert || !uc->ops->peer || (uc->proto != PROTO_H2 && uc->proto != PROTO_H3) ||
	    !shareable(pc->o->key) || !uc->ops->peer(uc, &pc->peer, &der, &len) || len == 0)
		return;
	pc->cert = pool_cert_new(der, len);
}

void pool_coalesce_forget(struct pool_conn *pc)
{
	pool_cert_free(pc->cert);
	pc->cert = NULL;
	free(pc->hosts);
	pc->hosts = NULL;
}

/* An HTTP/2 or HTTP/3 connection of another origin that may serve o's
 * requests now; addrs: o's host's addresses (NULL: not known yet, any). */
static struct pool_conn *candidate(struct pool_origin *o, const struct dns_addrs *addrs)
{
	struct pool *p = o->pool;

	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *a = p->buckets[i]; a; a = a->next) {
			struct pool_conn *pc;
			if (a == o || !pool_key_coalescable(a->key, o->key) ||
			    misdirected(p, pair_id(a->key->id, o->key->id)))
				continue;
			TAILQ_FOREACH(pc, &a->conns, o_link)
			{
				if (!pc->uc || pc->connecting || pc->retired || !pc->cert ||
				    pc->uc->ops->free_slots(pc->uc) == 0)
					continue;
				if (addrs && !pool_addr_listed(&pc->peer, addrs->addr, addrs->n))
					continue;
				if (pool_cert_serves(pc->cert, o->key->host))
					return pc;
			}
		}
	return NULL;
}

static void resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct pool_origin *o = ctx;

	o->co_query = NULL;
	o->co_state = POOL_CO_KNOWN;
	if (err == 0 && addrs && (o->co_addrs = malloc(sizeof(*o->co_addrs))) != NULL)
		*o->co_addrs = *addrs;
	else
		log_debug("pool: no coalescing for %s: %s", o->key->id,
		          reason ? reason : "no address");
	pool_schedule(o);
}

/* The names pc serves. */
static const char *hosts_of(const struct pool_conn *pc)
{
	return pc->hosts ? pc->hosts : pc->o->key->host;
}

/* The served names of pc gain host (when it fits). */
static void add_host(struct pool_conn *pc, const char *host)
{
	const char *s = hosts_of(pc);
	size_t len = strlen(s), hl = strlen(host);
	char *grown;

	while (*s) { /* listed already? */
		size_t n = strcspn(s, " ");
		if (n == hl && strncasecmp(s, host, n) == 0)
			return;
		s += n;
		s += strspn(s, " ");
	}
	if (len + 1 + hl >= POOL_HOSTS_MAX || !(grown = malloc(len + 1 + hl + 1)))
		return;
	memcpy(grown, hosts_of(pc), len);
	if (len)
		grown[len++] = ' ';
	memcpy(grown + len, host, hl + 1);
	free(pc->hosts);
	pc->hosts = grown;
}

/* The served names of pc lose host (it answered 421 for it). */
static void remove_host(struct pool_conn *pc, const char *host)
{
	char out[POOL_HOSTS_MAX], *kept;
	size_t len = 0, hl = strlen(host);
	const char *s = hosts_of(pc);

	out[0] = '\0';
	while (*s) {
		size_t n = strcspn(s, " ");
		if (!(n == hl && strncasecmp(s, host, n) == 0)) {
			snprintf(out + len, sizeof(out) - len, "%s%.*s", len ? " " : "", (int)n, s);
			len = strlen(out);
		}
		s += n;
		s += strspn(s, " ");
	}
	if (!(kept = strdup(out)))
		return; /* host stays listed: one more 421 for it */
	free(pc->hosts);
	pc->hosts = kept;
}

bool pool_coalesce(struct pool_origin *o)
{
	struct pool *p = o->pool;
	struct pool_conn *pc;
	struct pool_wait *w;

	if (o->nconns > 0 || o->nwaiters == 0 || p->m->draining || !p->m->dns || !shareable(o->key))
		return false;
	if (o->co_state == POOL_CO_RESOLVING)
		return true;
	if (o->co_state == POOL_CO_NONE) {
		if (!candidate(o, NULL))
			return false; /* nothing to share: no lookup */
		o->co_state = POOL_CO_RESOLVING;
		o->co_query = dns_resolve(p->m->dns, o->key->host, o->key->port, resolved, o);
		if (o->co_query)
			return true;
		o->co_state = POOL_CO_KNOWN;
	}
	if (!o->co_addrs)
		return false;
	while (o->nwaiters > 0 && (pc = candidate(o, o->co_addrs)) != NULL) {
		struct pool_origin *a = pc->o;
		TAILQ_FOREACH(w, &o->waiters, link)
		if (w->min_serial == 0)
			break;
		if (!w)
			break; /* fresh-only waiters want a new connection of their own */
		log_debug("pool: %s coalesced onto the %s connection to %s", o->key->host,
		          proto_name(pc->uc->proto), a->key->id);
		add_host(pc, o->key->host);
		pool_warm_hit(a); /* its connection's use counts for its keep-warm */
		hold_take(&a->holds);
		pool_give(pc, w);
		hold_release(&a->holds);
		pool_origin_maybe_free(a);
	}
	return false;
}

bool pool_misdirected(struct pool *p, const struct pool_key *key, struct upstream_stream *s)
{
	for (unsigned i = 0; i < POOL_BUCKETS; i++)
		for (struct pool_origin *a = p->buckets[i]; a; a = a->next) {
			struct pool_conn *pc;
			TAILQ_FOREACH(pc, &a->conns, o_link)
			{
				if (pc->uc != s->conn)
					continue;
				if (pool_key_packed_equal(a->key, key))
					return false; /* its own connection: the 421 is the answer
					               */
				uint64_t pair = pair_id(a->key->id, key->id);
				log_info(
				    "pool: %s answered 421 for %s: no more coalescing of the two",
				    a->key->id, key->host);
				remove_host(pc, key->host);
				if (misdirected(p, pair)) {
					/* known already */
				} else if (p->nmisdirected < POOL_MISDIRECTED) {
					p->misdirected[p->nmisdirected++] = pair;
				} else { /* the oldest goes */
					p->misdirected[p->misdirected_next] = pair;
					p->misdirected_next =
					    (p->misdirected_next + 1) % POOL_MISDIRECTED;
				}
				return true;
			}
		}
	return false;
}

void pool_coalesce_origin_free(struct pool_origin *o)
{
	if (o->co_query)
		dns_cancel(o->co_query);
	free(o->co_addrs);
}
