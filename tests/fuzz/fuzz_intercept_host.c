/*
 * Fuzz target for the intercepted-session host check
 * (downstream_intercepted_uri): whether a request inside an intercepted TLS
 * session names the CONNECT origin. The input is lines:
 *
 *	CONNECT authority (host:port, parsed as muxd parses it)
 *	the SNI's name standing for the address ("" = none; only the bytes
 *	the TLS server lets through)
 *	method
 *	request target
 *	Host value (absent line = no Host)
 *
 * A request that passes is routed to exactly the CONNECT host and port, and
 * an origin-form request passes exactly when its Host names the origin by
 * the rules of a small reference implementation here (name or [v6], then
 * ":digits" naming the port, 443 when absent, case-insensitive).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client/h1_session.h"
#include "fuzz.h"
#include "http1.h"

/* Reference: value is NAME or NAME:DIGITS (NAME = host, [host] for IPv6),
 * the port 443 when absent. */
static bool ref_names(const char *value, const char *host, uint16_t port)
{
	size_t hl = strlen(host), off = 0;
	bool v6 = strchr(host, ':') != NULL;
	unsigned long p = 0;
	const char *rest;

	if (v6) {
		if (value[0] != '[' || strncasecmp(value + 1, host, hl) != 0 ||
		    value[1 + hl] != ']')
			return false;
		off = hl + 2;
	} else {
		if (strncasecmp(value, host, hl) != 0)
			return false;
		off = hl;
	}
	rest = value + off;
	if (!*rest)
		return port == 443;
	if (*rest != ':' || !rest[1])
		return false;
	for (const char *c = rest + 1; *c; c++) {
		if (*c < '0' || *c > '9')
			return false;
		if (p < 100000)
			p = p * 10 + (unsigned long)(*c - '0');
	}
	return p == port;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	char *authority = next_line(&p, end), *name = next_line(&p, end);
	char *method = next_line(&p, end), *target = next_line(&p, end);
	char *host = next_line(&p, end);
	char origin[256];
	uint16_t port;
	bool v6;

	/* the SNI's name is what the TLS server took: letters, digits, '-', '.', '_' */
	if (authority && name && method && target && memchr(data, '\0', size) == NULL &&
	    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") ==
	        strlen(name) &&
	    http1_parse_authority(authority, origin, sizeof(origin), &port, &v6)) {
		const char *tls_name = name[0] ? name : NULL, *why = NULL;
		struct http1_uri uri;
		int r = downstream_intercepted_uri(method, target, host, origin, port, tls_name,
		                                   &uri, &why);
		CHECK(r == 0 || r == 400 || r == 414);
		if (r == 0) {
			CHECK(strcmp(uri.scheme, "https") == 0 && strcmp(uri.host, origin) == 0);
			CHECK(uri.port == port && uri.ipv6 == (strchr(origin, ':') != NULL));
			CHECK(uri.path[0] == '/');
		} else {
			CHECK(why && *why);
		}
		if (target[0] == '/' && strlen(target) < sizeof(uri.path)) {
			bool want = !host || ref_names(host, origin, port) ||
			            (tls_name && ref_names(host, tls_name, port));
			CHECK((r == 0) == want);
		}
	}
	free(authority);
	free(name);
	free(method);
	free(target);
	free(host);
	return 0;
}
