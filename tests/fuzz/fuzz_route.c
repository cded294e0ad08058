/*
 * Fuzz target for route patterns and CIDRs: config_parse_route_pattern and
 * config_parse_cidr (src/config_values.c), route_for and route_intercepts
 * (src/route.c). The input is lines:
 *
 *	patterns, space-separated (each one a [route PATTERN] section)
 *	destination host (as muxd has it: lower-cased, IPv6 without brackets)
 *	destination port
 *
 * Checks: what a pattern parses to is well-formed; CIDR matching agrees
 * with a bit-by-bit reference; an IPv4 address is the same destination
 * written as a v4-mapped IPv6 one (::ffff:10.1.2.3), for CIDRs and IP
 * patterns alike; route_for picks a matching section of the
 * highest rank (host:port, host, the longest *.suffix, the longest CIDR,
 * *), whatever the order of the sections, and ignores the case of names;
 * bypass patterns stop interception exactly when one matches.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "fuzz.h"
#include "route.h"

#define MAX_PATTERNS 8

static void check_pattern(const char *text, const struct config_route *r)
{
	switch (r->kind) {
	case ROUTE_ANY:
		CHECK(strcmp(text, "*") == 0);
		break;
	case ROUTE_HOST:
	case ROUTE_HOST_PORT:
	case ROUTE_SUFFIX:
		CHECK(r->host[0] && strlen(r->host) < sizeof(r->host));
		for (const char *c = r->host; *c; c++)
			CHECK(!isupper((unsigned char)*c));
		if (r->kind == ROUTE_SUFFIX)
			CHECK(r->host[0] == '.' && r->host[1]);
		if (r->kind == ROUTE_HOST_PORT)
			CHECK(r->port != 0);
		break;
	case ROUTE_CIDR:
		CHECK(r->cidr.family == AF_INET || r->cidr.family == AF_INET6);
		CHECK(r->cidr.prefix >= 0 &&
		      r->cidr.prefix <= (r->cidr.family == AF_INET ? 32 : 128));
		break;
	default:
		CHECK(0);
	}
}

/* The destination's address when it is an IP literal (v4-mapped IPv6 as v4). */
static int dest_addr(const char *host, uint8_t *addr)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	uint8_t a6[16];

	if (inet_pton(AF_INET, host, addr) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, host, a6) != 1)
		return 0;
	if (memcmp(a6, mapped, 12) == 0) {
		memcpy(addr, a6 + 12, 4);
		return AF_INET;
	}
	memcpy(addr, a6, 16);
	return AF_INET6;
}

static bool ref_cidr(const struct config_cidr *c, int family, const uint8_t *addr)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	const uint8_t *net = c->addr;
	int nf = c->family, prefix = c->prefix;

	if (nf == AF_INET6 && prefix >= 96 && memcmp(net, mapped, 12) == 0) {
		net += 12;
		prefix -= 96;
		nf = AF_INET;
	}
	if (nf != family)
		return false;
	for (int i = 0; i < prefix; i++)
		if (((net[i / 8] >> (7 - i % 8)) & 1) != ((addr[i / 8] >> (7 - i % 8)) & 1))
			return false;
	return true;
}

static struct sockaddr_storage to_sockaddr(int family, const uint8_t *addr)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	ss.ss_family = (sa_family_t)family;
	if (family == AF_INET)
		memcpy(&((struct sockaddr_in *)&ss)->sin_addr, addr, 4);
	else
		memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, addr, 16);
	return ss;
}

/* Reference rank of r for the destination (0: no match). */
static int ref_rank(const struct config_route *r, const char *norm, uint16_t port, int family,
                    const uint8_t *addr)
{
	size_t hl = strlen(norm), sl = strlen(r->host);

	switch (r->kind) {
	case ROUTE_HOST_PORT:
		return strcmp(r->host, norm) == 0 && r->port == port ? 5000 : 0;
	case ROUTE_HOST:
		return strcmp(r->host, norm) == 0 ? 4000 : 0;
	case ROUTE_SUFFIX:
		return hl > sl && strcmp(norm + hl - sl, r->host) == 0 ? 3000 + (int)sl : 0;
	case ROUTE_CIDR:
		return family && ref_cidr(&r->cidr, family, addr) ? 1000 + r->cidr.prefix : 0;
	case ROUTE_ANY:
		return 1;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	char *pats = next_line(&p, end), *host = next_line(&p, end), *port_s = next_line(&p, end);
	struct config_route routes[MAX_PATTERNS], reversed[MAX_PATTERNS];
	size_t n = 0;

	if (!pats || !host || !port_s || memchr(data, '\0', size) || strlen(host) >= 256)
		goto out;
	for (char *save = NULL, *tok = strtok_r(pats, " ", &save); tok && n < MAX_PATTERNS;
	     tok = strtok_r(NULL, " ", &save)) {
		struct config_cidr cidr;
		if (config_parse_cidr(tok, &cidr))
			CHECK(cidr.prefix >= 0 &&
			      cidr.prefix <= (cidr.family == AF_INET ? 32 : 128));
		if (!config_parse_route_pattern(tok, &routes[n]))
			continue;
		check_pattern(tok, &routes[n]);
		n++;
	}
	{
		uint16_t port = (uint16_t)strtoul(port_s, NULL, 10);
		uint8_t addr[16];
		int family = dest_addr(host, addr);
		char norm[256], upper[256];
		struct config cfg;
		struct route a, b, c;
		int best = 0;

		/* the host as patterns hold it: lower-cased, IPv6 as inet_ntop writes
		 * it, a v4-mapped IPv6 address as the IPv4 address it is */
		for (size_t i = 0; i <= strlen(host); i++)
			norm[i] = (char)tolower((unsigned char)host[i]);
		if (family)
			inet_ntop(family, addr, norm, sizeof(norm));
		for (size_t i = 0; i <= strlen(host); i++)
			upper[i] = (char)toupper((unsigned char)host[i]);
		for (size_t i = 0; i < n; i++) {
			int r = ref_rank(&routes[i], norm, port, family, addr);
			if (routes[i].kind == ROUTE_CIDR && family) {
				struct sockaddr_storage ss = to_sockaddr(family, addr);
				CHECK(config_cidr_match(&routes[i].cidr, (struct sockaddr *)&ss) ==
				      ref_cidr(&routes[i].cidr, family, addr));
			}
			best = r > best ? r : best;
			reversed[n - 1 - i] = routes[i];
		}
		memset(&cfg, 0, sizeof(cfg));
		cfg.h2 = cfg.h3 = true;
		cfg.routes = routes;
		cfg.nroutes = n;
		route_for(&cfg, host, port, &a);
		if (best == 0 || best == 1) {
			CHECK(best ? a.rule && a.rule->kind == ROUTE_ANY : !a.rule);
		} else {
			CHECK(a.rule && ref_rank(a.rule, norm, port, family, addr) == best);
		}
		route_for(&cfg, upper, port, &b); /* names are case-insensitive */
		CHECK((a.rule == NULL) == (b.rule == NULL));
		if (a.rule && family == 0)
			CHECK(ref_rank(b.rule, norm, port, family, addr) == best);
		cfg.routes = reversed; /* the order of the sections does not matter */
		route_for(&cfg, host, port, &c);
		CHECK((a.rule == NULL) == (c.rule == NULL));
		if (a.rule)
			CHECK(ref_rank(c.rule, norm, port, family, addr) == best);
		/* the same patterns as bypass: no interception exactly when one matches */
		cfg.routes = NULL;
		cfg.nroutes = 0;
		cfg.intercept_enabled = true;
		cfg.intercept_ports[0] = port;
		cfg.nintercept_ports = 1;
		memcpy(cfg.bypass, routes, n * sizeof(routes[0]));
		cfg.nbypass = n;
		CHECK(route_intercepts(&cfg, host, port) == (best == 0));
	}
out:
	free(pats);
	free(host);
	free(port_s);
	return 0;
}
