/*
 * dns — asynchronous name resolution with libevent's evdns, a cache that
 * respects record TTLs, /etc/hosts, and the special names of RFC 6761
 * (".invalid" fails at once, "localhost" is loopback). Results are ordered
 * for happy eyeballs (RFC 8305): IPv6 first, then alternating families.
 * Owns: the evdns base, the cache, pending queries.
 */
#ifndef MUXD_DNS_H
#define MUXD_DNS_H

#include <stdint.h>
#include <sys/socket.h>

#define DNS_MAX_ADDRS 16

struct event_base;
struct dns;
struct dns_query;

struct dns_addrs {
	size_t n;
	struct sockaddr_storage addr[DNS_MAX_ADDRS];
};

/* Called exactly once unless cancelled; never from inside dns_resolve. err
 * is 0 on success, otherwise reason says why ("no such host"). */
typedef void (*dns_cb)(void *ctx, int err, const char *reason, const struct dns_addrs *addrs);

struct dns *dns_new(struct event_base *base);

/* Parse the text of a hosts file (pure code, fuzzed): cb gets every (name,
 * address) pair in file order, family AF_INET or AF_INET6 and addr a struct
 * in_addr or in6_addr. A line is an address then names, separated by blanks;
 * '#' starts a comment. Lines that do not start with an address, lines of
 * DNS_HOSTS_LINE_MAX bytes or more and names longer than DNS_HOSTS_NAME_MAX
 * are skipped. */
#define DNS_HOSTS_LINE_MAX 4096
#define DNS_HOSTS_NAME_MAX 253
typedef void (*dns_hosts_cb)(void *ctx, const char *name, int family, const void *addr);
void dns_hosts_parse(const char *text, size_t len, dns_hosts_cb cb, void *ctx);
void dns_free(struct dns *dns);

struct dns_query *dns_resolve(struct dns *dns, const char *host, uint16_t port, dns_cb cb,
                              void *ctx);
void dns_cancel(struct dns_query *q);

#endif
