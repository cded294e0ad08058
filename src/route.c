/* route — destination -> route, by specificity of [route PATTERN] sections. */
#include "route.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Higher is more specific; 0 = no match. */
static int specificity(const struct config_route *r, const char *host, uint16_t port,
                       const struct sockaddr *ip)
{
	size_t hl, sl;

	switch (r->kind) {
	case ROUTE_HOST_PORT:
		return r->port == port && strcmp(r->host, host) == 0 ? 4000 : 0;
	case ROUTE_HOST:
		return strcmp(r->host, host) == 0 ? 3000 : 0;
	case ROUTE_SUFFIX:
		hl = strlen(host);
		sl = strlen(r->host);
		return hl > sl && strcmp(host + hl - sl, r->host) == 0 ? 2000 + (int)sl : 0;
	case ROUTE_CIDR:
		return ip && config_cidr_match(&r->cidr, ip) ? 1000 + r->cidr.prefix : 0;
	case ROUTE_ANY:
		return 1;
	}
	return 0;
}

/* The environment's no_proxy: "*", names (".example.com" or "example.com",
 * matching the name and its subdomains) and IPs, comma separated. */
static bool no_proxy_matches(const char *list, const char *host)
{
	size_t hl = strlen(host);

	while (list && *list) {
		size_t n = strcspn(list, ", ");
		const char *tok = list;
		if (n > 0 && tok[0] == '.') {
			tok++;
			n--;
		}
		if ((n == 1 && tok[0] == '*') || (n == hl && strncasecmp(host, tok, n) == 0) ||
		    (n > 0 && hl > n && host[hl - n - 1] == '.' &&
		     strncasecmp(host + hl - n, tok, n) == 0))
			return true;
		list = tok + n;
		list += strspn(list, ", ");
	}
	return false;
}

/* The host in the form patterns hold, and its address when it is an IP (a
 * v4-mapped IPv6 address is the IPv4 address it maps, as in patterns). Only
 * CIDR patterns look at the address of an IPv4 literal: without want_v4
 * none is made for one (inet_pton per request). */
static const struct sockaddr *normalise(const char *host, char *norm, size_t size,
                                        struct sockaddr_storage *ss, bool want_v4)
{
	struct in6_addr a6;

	/* copied and lowered in one pass, cut to size (no snprintf per request) */
	size_t n = 0;
	for (; n + 1 < size && host[n]; n++)
		norm[n] = host[n] >= 'A' && host[n] <= 'Z' ? (char)(host[n] - 'A' + 'a') : host[n];
	if (size)
		norm[n] = '\0';
	if (!strchr(host, ':')) { /* not IPv6 (every form has a colon) */
		if (!want_v4)
			return NULL;
		memset(ss, 0, sizeof(*ss));
		if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) != 1)
			return NULL;
		ss->ss_family = AF_INET;
		return (const struct sockaddr *)ss;
	}
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_V4MAPPED(&a6)) {
		ss->ss_family = AF_INET;
		memcpy(&((struct sockaddr_in *)ss)->sin_addr, a6.s6_addr + 12, 4);
		inet_ntop(AF_INET, a6.s6_addr + 12, norm, size);
		return (const struct sockaddr *)ss;
	}
	if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
		ss->ss_family = AF_INET6;
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ss)->sin6_addr, norm, size);
		return (const struct sockaddr *)ss;
	}
	return NULL;
}

/* Whether any of the n patterns is a CIDR (the only kind that needs an
 * IPv4 literal's address). */
static bool any_cidr(const struct config_route *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (r[i].kind == ROUTE_CIDR)
			return true;
	return false;
}

/* 0: the port is not intercepted, 1: intercept, 2: a bypass pattern names the host. */
static int intercept_decision(const struct config *cfg, const char *host, uint16_t port)
{
	struct sockaddr_storage ss;
	const struct sockaddr *ip;
	char norm[256];
	bool port_ok = false;

	if (!cfg->intercept_enabled)
		return 0;
	for (size_t i = 0; i < cfg->nintercept_ports; i++)
		port_ok = port_ok || cfg->intercept_ports[i] == port;
	if (!port_ok)
		return 0;
	ip = normalise(host, norm, sizeof(norm), &ss, any_cidr(cfg->bypass, cfg->nbypass));
	for (size_t i = 0; i < cfg->nbypass; i++)
		if (specificity(&cfg->bypass[i], norm, port, ip) > 0)
			return 2;
	return 1;
}

bool route_intercepts(const struct config *cfg, const char *host, uint16_t port)
{
	return intercept_decision(cfg, host, port) == 1;
}

bool route_intercept_bypassed(const struct config *cfg, const char *host, uint16_t port)
{
	return intercept_decision(cfg, host, port) == 2;
}

void route_for(const struct config *cfg, const char *host, uint16_t port, struct route *out)
{
	struct sockaddr_storage ss;
	const struct config_route *best = NULL, *any = NULL;
	char norm[256];
	int best_score = 0;
	const struct sockaddr *ip =
	    normalise(host, norm, sizeof(norm), &ss, any_cidr(cfg->routes, cfg->nroutes));

	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct config_route *r = &cfg->routes[i];
		int score = specificity(r, norm, port, ip);
		if (r->kind == ROUTE_ANY)
			any = r;
		if (score > best_score) {
			best = r;
			best_score = score;
		}
	}
	out->rule = best;
	out->ca_file = NULL;
	out->verify = true;
	out->h2 = true;
	out->h3 = true;
	out->intercept_without_sni = false;
	out->early_data = true;
	/* defaults, then [route *], then the winner */
	const struct config_route *layers[2] = {any, best != any ? best : NULL};
	out->hops = NULL;
	out->nhops = 0;
	out->proxy_ca_file = NULL;
	out->client_cert = out->client_key = NULL;
	out->ca_file_id = out->proxy_ca_file_id = out->client_cert_id = out->client_key_id = NULL;
	for (int i = 0; i < 2; i++) {
		if (!layers[i])
			continue;
		if (layers[i]->proxy_set != -1) {
			bool exempt =
			    layers[i]->proxy_env && no_proxy_matches(layers[i]->no_proxy, norm);
			out->hops = exempt ? NULL : layers[i]->hops;
			out->nhops = exempt ? 0 : layers[i]->nhops;
		}
		if (layers[i]->proxy_ca_file) {
			out->proxy_ca_file = layers[i]->proxy_ca_file;
			out->proxy_ca_file_id = layers[i]->proxy_ca_file_id;
		}
		if (layers[i]->ca_file) {
			out->ca_file = layers[i]->ca_file;
			out->ca_file_id = layers[i]->ca_file_id;
		}
		if (layers[i]->client_cert) { /* the pair comes from one section */
			out->client_cert = layers[i]->client_cert;
			out->client_key = layers[i]->client_key;
			out->client_cert_id = layers[i]->client_cert_id;
			out->client_key_id = layers[i]->client_key_id;
		}
		if (layers[i]->verify != -1)
			out->verify = layers[i]->verify;
		if (layers[i]->h2 != -1)
			out->h2 = layers[i]->h2;
		if (layers[i]->h3 != -1)
			out->h3 = layers[i]->h3;
		if (layers[i]->intercept_without_sni != -1)
			out->intercept_without_sni = layers[i]->intercept_without_sni;
		if (layers[i]->early_data != -1)
			out->early_data = layers[i]->early_data;
	}
	out->h2 = out->h2 && cfg->h2;
	out->h3 = out->h3 && cfg->h3;
	out->deny_loopback = config_deny_loopback(cfg);
}
