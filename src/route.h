/*
 * route — what the configuration says about reaching one destination: the
 * most specific [route PATTERN] wins (exact host:port, exact host, longest
 * *.suffix, longest CIDR, *); keys it does not set come from [route *], then
 * from the built-in defaults. Pure code over an immutable config.
 */
#ifndef MUXD_ROUTE_H
#define MUXD_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct route {
	const struct config_route *rule; /* the winning section, NULL when none matched */
	const char *ca_file;             /* trust anchors for origins; NULL = system store */
	bool verify;
	bool h2;                       /* offer h2 by ALPN: [pool] h2 and the route's h2 */
	bool h3;                       /* HTTP/3 when advertised: [pool] h3 and the route's h3 */
	bool early_data;               /* 0-RTT (TLS 1.3 early data) for safe requests */
	const struct config_hop *hops; /* parent proxies in order; none = direct */
	size_t nhops;
	const char *proxy_ca_file; /* trust anchors for https:// parents; NULL = system */
	/* TLS client certificate and key for origins (a pair from one section); NULL = none */
	const char *client_cert, *client_key;
	/* their file identities taken at config load (config_file_id); NULL when
	 * the route was not made by route_for (pool_key_init then looks itself) */
	const char *ca_file_id, *proxy_ca_file_id, *client_cert_id, *client_key_id;
	bool deny_loopback; /* a direct connection never goes to a loopback address */
	/* an interceptable CONNECT to a DNS name whose ClientHello has no SNI is
	 * intercepted (true) or tunneled untouched (false, the default) */
	bool intercept_without_sni;
};

/* host: lower-cased name or IP literal (IPv6 without brackets). */
void route_for(const struct config *cfg, const char *host, uint16_t port, struct route *out);

/* CONNECT to host:port is to be intercepted: [intercept] enabled, the port
 * in ports, and the host matching no bypass pattern. */
bool route_intercepts(const struct config *cfg, const char *host, uint16_t port);
/* CONNECT to host:port would be intercepted but for an [intercept] bypass pattern. */
bool route_intercept_bypassed(const struct config *cfg, const char *host, uint16_t port);

#endif
