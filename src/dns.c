/*
 * dns — asynchronous resolution: IP literals and RFC 6761 names answered
 * locally, then /etc/hosts, then the TTL cache, then evdns A and AAAA
 * queries in parallel. Every answer is delivered from the event loop, never
 * from inside dns_resolve, so callers need not guard against re-entry.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DNS_MIN_TTL 1
#define DNS_MAX_TTL 3600
#define DNS_CACHE_MAX 1024
#define DNS_HOSTS_BUCKETS 4096 /* blocklist hosts files have 100 000s of names */

struct dns_entry {
	struct dns_entry *next;
	char host[256];
	time_t expires; /* 0 = never (from /etc/hosts) */
	size_t n4, n6;
	struct in_addr v4[DNS_MAX_ADDRS];
	struct in6_addr v6[DNS_MAX_ADDRS];
};

struct dns {
	struct event_base *base;
	struct evdns_base *evdns;
	struct dns_entry *hosts[DNS_HOSTS_BUCKETS]; /* from /etc/hosts, by host_bucket */
	struct dns_entry *cache;
	size_t ncache;
	struct dns_query *queries; /* not delivered yet (freed by dns_free) */
};

struct dns_query {
	struct dns *dns;
	struct dns_query *prev, *next; /* in dns->queries */
	char host[256];
	uint16_t port;
	dns_cb cb;
	void *ctx;
	struct event *deliver; /* fires once the answer is ready */
	struct evdns_request *req4, *req6;
	bool pending4, pending6;
	int err;
	char reason[128];
	struct dns_entry answer;
	uint32_t ttl;
};

static time_t now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static struct dns_entry *entry_find(struct dns_entry *list, const char *host)
{
	for (struct dns_entry *e = list; e; e = e->next)
		if (strcasecmp(e->host, host) == 0)
			return e;
	return NULL;
}

void dns_hosts_parse(const char *text, size_t len, dns_hosts_cb cb, void *ctx)
{
	const char *end = text + len;

	for (const char *line = text; line < end;) {
		const char *nl = memchr(line, '\n', (size_t)(end - line));
		const char *stop = nl ? nl : end, *p = line, *hash;
		union {
			struct in_addr a4;
			struct in6_addr a6;
		} addr;
		char tok[DNS_HOSTS_LINE_MAX];
		int family = 0;

		hash = memchr(line, '#', (size_t)(stop - line));
		if (hash)
			stop = hash;
		if ((size_t)((nl ? nl : end) - line) >= DNS_HOSTS_LINE_MAX)
			stop = line; /* an overlong line is skipped whole */
		line = nl ? nl + 1 : end;
		/* the address, then the names: tokens separated by blanks */
		for (;;) {
			size_t n;
			while (p < stop && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\0'))
				p++;
			n = 0;
			while (p + n < stop && p[n] != ' ' && p[n] != '\t' && p[n] != '\r' &&
			       p[n] != '\0')
				n++;
			if (n == 0)
				break;
			memcpy(tok, p, n);
			tok[n] = '\0';
			p += n;
			if (!family) {
				if (inet_pton(AF_INET, tok, &addr.a4) == 1)
					family = AF_INET;
				else if (inet_pton(AF_INET6, tok, &addr.a6) == 1)
					family = AF_INET6;
				else
					break; /* not an address: the line is malformed */
			} else if (n <= DNS_HOSTS_NAME_MAX) {
				cb(ctx, tok, family, &addr);
			}
		}
	}
}

/* The hosts bucket of a name (case-insensitive FNV-1a). */
static struct dns_entry **host_bucket(struct dns *dns, const char *name)
{
	uint32_t h = 2166136261u;

	for (; *name; name++)
		h = (h ^ (uint32_t)tolower((unsigned char)*name)) * 16777619u;
	return &dns->hosts[h % DNS_HOSTS_BUCKETS];
}

static void add_host(void *ctx, const char *name, int family, const void *addr)
{
	struct dns *dns = ctx;
	struct dns_entry **bucket = host_bucket(dns, name);
	struct dns_entry *e = entry_find(*bucket, name);

	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e)
			return;
		snprintf(e->host, sizeof(e->host), "%s", name);
		e->next = *bucket;
		*bucket = e;
	}
	if (family == AF_INET && e->n4 < DNS_MAX_ADDRS)
		memcpy(&e->v4[e->n4++], addr, sizeof(e->v4[0]));
	else if (family == AF_INET6 && e->n6 < DNS_MAX_ADDRS)
		memcpy(&e->v6[e->n6++], addr, sizeof(e->v6[0]));
}

#define HOSTS_FILE_MAX (64 << 20) /* read at most this much of /etc/hosts */

static void load_hosts(struct dns *dns)
{
	FILE *f = fopen("/etc/hosts", "r");
	char *text = NULL;
	size_t len = 0, size = 0;

	if (!f)
		return;
	while (size < HOSTS_FILE_MAX) {
		char *more = realloc(text, size ? size * 2 : 1 << 16);
		if (!more)
			break;
		text = more;
		size = size ? size * 2 : 1 << 16;
		len += fread(text + len, 1, size - len, f);
		if (len < size)
			break; /* the end of the file (or an error) */
	}
	if (text)
		dns_hosts_parse(text, len, add_host, dns);
	free(text);
	fclose(f);
}

struct dns *dns_new(struct event_base *base)
{
	struct dns *dns = calloc(1, sizeof(*dns));

	if (!dns)
		return NULL;
	dns->base = base;
	dns->evdns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
	                                      EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (!dns->evdns)
		dns->evdns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (!dns->evdns) {
		free(dns);
		return NULL;
	}
	evdns_base_set_option(dns->evdns, "timeout:", "3");
	evdns_base_set_option(dns->evdns, "attempts:", "2");
	load_hosts(dns);
	return dns;
}

static void query_free(struct dns_query *q);

static void free_list(struct dns_entry *e)
{
	while (e) {
		struct dns_entry *next = e->next;
		free(e);
		e = next;
	}
}

void dns_free(struct dns *dns)
{
	if (!dns)
		return;
	evdns_base_free(dns->evdns, 1);
	while (dns->queries) /* cancelled at exit, their delivery never ran */
		query_free(dns->queries);
	for (size_t i = 0; i < DNS_HOSTS_BUCKETS; i++)
		free_list(dns->hosts[i]);
	free_list(dns->cache);
	free(dns);
}

/* Interleave families, IPv6 first (RFC 8305 section 4). */
static void entry_to_addrs(const struct dns_entry *e, uint16_t port, struct dns_addrs *out)
{
	size_t i4 = 0, i6 = 0;

	out->n = 0;
	while ((i4 < e->n4 || i6 < e->n6) && out->n < DNS_MAX_ADDRS) {
		struct sockaddr_storage *ss = &out->addr[out->n];
		memset(ss, 0, sizeof(*ss));
		if (i6 < e->n6 && (out->n % 2 == 0 || i4 >= e->n4)) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_port = htons(port);
			s6->sin6_addr = e->v6[i6++];
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
			s4->sin_family = AF_INET;
			s4->sin_port = htons(port);
			s4->sin_addr = e->v4[i4++];
		}
		out->n++;
	}
}

static void cache_store(struct dns *dns, const struct dns_entry *answer, uint32_t ttl)
{
	struct dns_entry **pp, *e = entry_find(dns->cache, answer->host);

	if (ttl < DNS_MIN_TTL)
		ttl = DNS_MIN_TTL;
	if (ttl > DNS_MAX_TTL)
		ttl = DNS_MAX_TTL;
	if (!e) {
		if (dns->ncache >= DNS_CACHE_MAX) {
			/* drop the oldest (tail) entry */
			for (pp = &dns->cache; (*pp)->next; pp = &(*pp)->next)
				;
			free(*pp);
			*pp = NULL;
			dns->ncache--;
		}
		e = malloc(sizeof(*e));
		if (!e)
			return;
		*e = *answer;
		e->next = dns->cache;
		dns->cache = e;
		dns->ncache++;
	} else {
		struct dns_entry *next = e->next;
		*e = *answer;
		e->next = next;
	}
	e->expires = now_s() + ttl;
}

static void query_free(struct dns_query *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		q->dns->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	event_free(q->deliver);
	free(q);
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns_query *q = arg;
	struct dns_addrs addrs;

	(void)fd;
	(void)what;
	if (q->err == 0)
		entry_to_addrs(&q->answer, q->port, &addrs);
	if (q->cb)
		q->cb(q->ctx, q->err, q->reason, q->err ? NULL : &addrs);
	query_free(q);
}

static void finish(struct dns_query *q)
{
	if (q->pending4 || q->pending6)
		return;
	if (q->answer.n4 + q->answer.n6 == 0) {
		if (!q->err) {
			q->err = ENOENT;
			snprintf(q->reason, sizeof(q->reason), "no address for host");
		}
	} else {
		q->err = 0;
		cache_store(q->dns, &q->answer, q->ttl);
	}
	event_active(q->deliver, EV_TIMEOUT, 0);
}

static void evdns_cb(int result, char type, int count, int ttl, void *addresses, void *arg)
{
	struct dns_query *q = arg;

	if (result == DNS_ERR_NONE && type == DNS_IPv4_A) {
		for (int i = 0; i < count && q->answer.n4 < DNS_MAX_ADDRS; i++)
			q->answer.v4[q->answer.n4++] = ((struct in_addr *)addresses)[i];
	} else if (result == DNS_ERR_NONE && type == DNS_IPv6_AAAA) {
		for (int i = 0; i < count && q->answer.n6 < DNS_MAX_ADDRS; i++)
			q->answer.v6[q->answer.n6++] = ((struct in6_addr *)addresses)[i];
	} else if (result != DNS_ERR_NONE && !q->reason[0]) {
		q->err = result;
		snprintf(q->reason, sizeof(q->reason), "%s",
		         result == DNS_ERR_NOTEXIST ? "no such host" : evdns_err_to_string(result));
	}
	if (result == DNS_ERR_NONE && count > 0 && (q->ttl == 0 || (uint32_t)ttl < q->ttl))
		q->ttl = (uint32_t)ttl;
}

static void evdns_cb4(int result, char type, int count, int ttl, void *addresses, void *arg)
{
	struct dns_query *q = arg;
	q->pending4 = false;
	q->req4 = NULL;
	evdns_cb(result, type, count, ttl, addresses, arg);
	finish(q);
}

static void evdns_cb6(int result, char type, int count, int ttl, void *addresses, void *arg)
{
	struct dns_query *q = arg;
	q->pending6 = false;
	q->req6 = NULL;
	evdns_cb(result, type, count, ttl, addresses, arg);
	finish(q);
}

static bool has_suffix(const char *host, const char *suffix)
{
	size_t h = strlen(host), s = strlen(suffix);
	if (h > 0 && host[h - 1] == '.')
		h--;
	if (h == s - 1 && strncasecmp(host, suffix + 1, h) == 0)
		return true;
	return h >= s && strncasecmp(host + h - s, suffix, s) == 0;
}

/* Answers that need no query; returns true when q->answer or q->err is set. */
static bool answer_locally(struct dns_query *q)
{
	struct dns_entry *e;

	if (inet_pton(AF_INET, q->host, &q->answer.v4[0]) == 1) {
		q->answer.n4 = 1;
		return true;
	}
	if (inet_pton(AF_INET6, q->host, &q->answer.v6[0]) == 1) {
		q->answer.n6 = 1;
		return true;
	}
	if (has_suffix(q->host, ".invalid")) {
		q->err = ENOENT;
		snprintf(q->reason, sizeof(q->reason), "no such host");
		return true;
	}
	if ((e = entry_find(*host_bucket(q->dns, q->host), q->host)) != NULL) {
		q->answer = *e;
		return true;
	}
	if (has_suffix(q->host, ".localhost")) {
		inet_pton(AF_INET6, "::1", &q->answer.v6[0]);
		inet_pton(AF_INET, "127.0.0.1", &q->answer.v4[0]);
		q->answer.n4 = q->answer.n6 = 1;
		return true;
	}
	e = entry_find(q->dns->cache, q->host);
	if (e && e->expires > now_s()) {
		q->answer = *e;
		return true;
	}
	return false;
}

struct dns_query *dns_resolve(struct dns *dns, const char *host, uint16_t port, dns_cb cb,
                              void *ctx)
{
	struct dns_query *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->dns = dns;
	snprintf(q->host, sizeof(q->host), "%s", host);
	q->port = port;
	q->cb = cb;
	q->ctx = ctx;
	q->deliver = event_new(dns->base, -1, 0, deliver_cb, q);
	if (!q->deliver) {
		free(q);
		return NULL;
	}
	q->next = dns->queries;
	if (q->next)
		q->next->prev = q;
	dns->queries = q;
	if (answer_locally(q)) {
		event_active(q->deliver, EV_TIMEOUT, 0);
		return q;
	}
	snprintf(q->answer.host, sizeof(q->answer.host), "%s", host);
	q->pending4 = q->pending6 = true;
	q->req6 = evdns_base_resolve_ipv6(dns->evdns, host, 0, evdns_cb6, q);
	if (!q->req6)
		q->pending6 = false;
	q->req4 = evdns_base_resolve_ipv4(dns->evdns, host, 0, evdns_cb4, q);
	if (!q->req4)
		q->pending4 = false;
	if (!q->req4 && !q->req6)
		finish(q);
	return q;
}

void dns_cancel(struct dns_query *q)
{
	if (!q)
		return;
	/* The query frees itself once evdns has called back (cancelled requests
	 * still call back, deferred) and the delivery event has run. */
	q->cb = NULL;
	if (q->req4)
		evdns_cancel_request(q->dns->evdns, q->req4);
	if (q->req6)
		evdns_cancel_request(q->dns->evdns, q->req6);
}
