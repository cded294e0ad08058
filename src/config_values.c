/*
 * config_values — the value parsers of the configuration (declared in config.h,
 * the private ones in config_int.h): each turns one value string (a duration,
 * a number, a boolean, an address, a network, a host pattern, a proxy URL, a
 * list of them) into a typed value, or says why not. Pure functions of their
 * input; config.c calls them per key while loading.
 */
#include "config.h"
#include "config_int.h"
#include "http1.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define LISTEN_FORM "ADDR:PORT with a numeric address, IPv6 in brackets"

bool config_parse_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
	uint64_t n = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return false;
	for (; isdigit((unsigned char)*p); p++) {
		if (n > (UINT64_MAX - 9) / 10)
			return false;
		n = n * 10 + (uint64_t)(*p - '0');
	}
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(p, units[i].suffix) == 0) {
			if (n > UINT64_MAX / units[i].mult)
				return false;
			*ms = n * units[i].mult;
			return true;
		}
	}
	return false;
}

/* Digits and a unit: the form of a duration, whatever its size. */
bool config_duration_form(const char *s)
{
	size_t n = strspn(s, "0123456789");
	const char *u = s + n;

	return n > 0 && (!*u || strcmp(u, "ms") == 0 || strcmp(u, "s") == 0 ||
	                 strcmp(u, "m") == 0 || strcmp(u, "h") == 0);
}

/* A decimal number of at most max, digits only. */
bool config_parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long n = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return false;
		n = n * 10 + (unsigned long)(*s - '0');
		if (n > max)
			return false;
	}
	*out = n;
	return true;
}

bool config_parse_addr_port(const char *s, struct config_listen *out)
{
	char host[INET6_ADDRSTRLEN];
	const char *end, *port;
	int family = AF_INET;
	unsigned long p;

	if (*s == '[') {
		end = strchr(++s, ']');
		if (!end || end[1] != ':')
			return false;
		port = end + 2;
		family = AF_INET6;
	} else {
		end = strrchr(s, ':');
		if (!end)
			return false;
		port = end + 1;
	}
	if (end == s || (size_t)(end - s) >= sizeof host || !config_parse_uint(port, 65535, &p))
		return false;
	memcpy(host, s, (size_t)(end - s));
	host[end - s] = '\0';

	memset(out, 0, sizeof *out);
	if (family == AF_INET) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
		if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
			return false;
		memcpy(&out->addr, &sin, sizeof sin);
		out->addr_len = sizeof sin;
		inet_ntop(AF_INET, &sin.sin_addr, host, sizeof host);
		snprintf(out->text, sizeof out->text, "%s:%lu", host, p);
	} else {
		struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6,
		                            .sin6_port = htons((uint16_t)p)};
		if (inet_pton(AF_INET6, host, &sin6.sin6_addr) != 1)
			return false;
		memcpy(&out->addr, &sin6, sizeof sin6);
		out->addr_len = sizeof sin6;
		inet_ntop(AF_INET6, &sin6.sin6_addr, host, sizeof host);
		snprintf(out->text, sizeof out->text, "[%s]:%lu", host, p);
	}
	return true;
}

bool config_parse_cidr(const char *s, struct config_cidr *out)
{
	char host[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t len = slash ? (size_t)(slash - s) : strlen(s);
	unsigned long prefix;

	if (len == 0 || len >= sizeof host)
		return false;
	memcpy(host, s, len);
	host[len] = '\0';
	memset(out, 0, sizeof *out);
	if (inet_pton(AF_INET, host, out->addr) == 1)
		out->family = AF_INET;
	else if (inet_pton(AF_INET6, host, out->addr) == 1)
		out->family = AF_INET6;
	else
		return false;
	out->prefix = out->family == AF_INET ? 32 : 128;
	if (slash) {
		if (!config_parse_uint(slash + 1, (unsigned long)out->prefix, &prefix))
			return false;
		out->prefix = (int)prefix;
	}
	return true;
}

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool prefix_equal(const uint8_t *a, const uint8_t *b, int bits)
{
	int whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, (size_t)whole) != 0)
		return false;
	return rest == 0 || ((a[whole] ^ b[whole]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

/* IPv4-mapped IPv6 addresses (the client side of a dual-stack socket, or a
 * ::ffff:0:0/96 network) are compared as IPv4. */
bool config_cidr_match(const struct config_cidr *c, const struct sockaddr *sa)
{
	uint8_t addr[16];
	int family;
	const uint8_t *net = c->addr;
	int net_family = c->family, prefix = c->prefix;

	if (sa->sa_family == AF_INET) {
		struct sockaddr_in sin;
		memcpy(&sin, sa, sizeof sin);
		memcpy(addr, &sin.sin_addr, 4);
		family = AF_INET;
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 sin6;
		memcpy(&sin6, sa, sizeof sin6);
		const uint8_t *b = sin6.sin6_addr.s6_addr;
		family = memcmp(b, v4mapped, 12) == 0 ? AF_INET : AF_INET6;
		memcpy(addr, family == AF_INET ? b + 12 : b, family == AF_INET ? 4 : 16);
	} else {
		return false;
	}
	if (net_family == AF_INET6 && prefix >= 96 && memcmp(net, v4mapped, 12) == 0) {
		net += 12;
		prefix -= 96;
		net_family = AF_INET;
	}
	if (prefix < 0 || prefix > (net_family == AF_INET ? 32 : 128))
		return false;
	return net_family == family && prefix_equal(addr, net, prefix);
}

void config_hop_free(struct config_hop *hop)
{
	free(hop->user);
	free(hop->pass);
	hop->user = hop->pass = NULL;
}

/* Percent-decode s[0..n) into a new string; NULL on a bad escape. */
static char *pct_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			unsigned v;
			if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
			    !isxdigit((unsigned char)s[i + 2]) ||
			    sscanf(s + i + 1, "%2x", &v) != 1) {
				free(out);
				return NULL;
			}
			*o++ = (char)v;
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

bool config_parse_hop(const char *url, struct config_hop *out, char *why, size_t why_size)
{
	static const struct {
		const char *prefix;
		enum hop_kind kind;
		uint16_t port;
	} kinds[] = {{"http://", HOP_HTTP, 80},
	             {"https://", HOP_HTTPS, 443},
	             {"socks5://", HOP_SOCKS5, 1080},
	             {"socks5h://", HOP_SOCKS5H, 1080}};
	const char *rest = NULL, *at, *end;
	char authority[300];
	bool v6;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]) && !rest; i++) {
		if (strncasecmp(url, kinds[i].prefix, strlen(kinds[i].prefix)) == 0) {
			rest = url + strlen(kinds[i].prefix);
			out->kind = kinds[i].kind;
			out->port = kinds[i].port;
		}
	}
	if (!rest) {
		snprintf(why, why_size,
		         "bad proxy '%.64s' (expected direct, env, or http://, "
		         "https://, socks5:// or socks5h:// URLs)",
		         url);
		return false;
	}
	end = rest + strcspn(rest, "/?#");
	if (*end && strcmp(end, "/") != 0) {
		snprintf(why, why_size, "bad proxy '%.64s' (expected no path)", url);
		return false;
	}
	at = memrchr(rest, '@', (size_t)(end - rest));
	if (at) {
		const char *colon = memchr(rest, ':', (size_t)(at - rest));
		const char *uend = colon ? colon : at;
		out->user = pct_decode(rest, (size_t)(uend - rest));
		out->pass =
		    pct_decode(colon ? colon + 1 : at, colon ? (size_t)(at - colon - 1) : 0);
		if (!out->user || !out->pass) {
			config_hop_free(out);
			snprintf(why, why_size,
			         "bad proxy credentials (expected percent-encoding)");
			return false;
		}
		rest = at + 1;
	}
	if ((size_t)(end - rest) >= sizeof(authority) - 8)
		goto bad_host;
	memcpy(authority, rest, (size_t)(end - rest));
	authority[end - rest] = '\0';
	/* a port is optional: add the scheme's default when absent */
	if (!(authority[0] == '[' ? strstr(authority, "]:") != NULL
	                          : strchr(authority, ':') != NULL))
		snprintf(authority + strlen(authority), 8, ":%u", out->port);
	if (!http1_parse_authority(authority, out->host, sizeof(out->host), &out->port, &v6))
		goto bad_host;
	return true;
bad_host:
	config_hop_free(out);
	snprintf(why, why_size, "bad proxy address in '%.64s' (expected host:port)", url);
	return false;
}

static bool host_chars(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_')
			return false;
	return true;
}

/* An IPv6 address as patterns hold it; a v4-mapped one (::ffff:10.1.2.3) is
 * the IPv4 address it maps, as route.c normalises destinations. */
static void ip6_text(const struct in6_addr *a6, char *out, size_t size)
{
	if (IN6_IS_ADDR_V4MAPPED(a6))
		inet_ntop(AF_INET, a6->s6_addr + 12, out, (socklen_t)size);
	else
		inet_ntop(AF_INET6, a6, out, (socklen_t)size);
}

bool config_parse_route_pattern(const char *s, struct config_route *out)
{
	struct in6_addr a6;
	struct in_addr a4;
	const char *colon;
	unsigned long port;

	memset(out, 0, sizeof(*out));
	out->verify = -1;
	out->h2 = -1;
	out->h3 = -1;
	out->intercept_without_sni = -1;
	out->early_data = -1;
	out->proxy_set = -1;
	if (strcmp(s, "*") == 0) {
		out->kind = ROUTE_ANY;
		return true;
	}
	if (strchr(s, '/')) {
		out->kind = ROUTE_CIDR;
		return config_parse_cidr(s, &out->cidr);
	}
	if (inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1) {
		out->kind = ROUTE_HOST;
		if (strchr(s, ':'))
			ip6_text(&a6, out->host, sizeof(out->host));
		else
			inet_ntop(AF_INET, &a4, out->host, sizeof(out->host));
		return true;
	}
	if (strncmp(s, "*.", 2) == 0) {
		out->kind = ROUTE_SUFFIX;
		if (strlen(s + 1) >= sizeof(out->host) || !host_chars(s + 2))
			return false;
		for (size_t i = 0; s[i + 1]; i++)
			out->host[i] = (char)tolower((unsigned char)s[i + 1]);
		return true;
	}
	if (*s == '[') {
		const char *end = strchr(s, ']');
		char ip[INET6_ADDRSTRLEN];
		if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(ip))
			return false;
		memcpy(ip, s + 1, (size_t)(end - s - 1));
		ip[end - s - 1] = '\0';
		if (inet_pton(AF_INET6, ip, &a6) != 1 ||
		    !config_parse_uint(end + 2, 65535, &port) || !port)
			return false;
		out->kind = ROUTE_HOST_PORT;
		ip6_text(&a6, out->host, sizeof(out->host));
		out->port = (uint16_t)port;
		return true;
	}
	colon = strchr(s, ':');
	if (colon) {
		if (!config_parse_uint(colon + 1, 65535, &port) || !port ||
		    (size_t)(colon - s) >= sizeof(out->host))
			return false;
		out->kind = ROUTE_HOST_PORT;
		out->port = (uint16_t)port;
	} else {
		out->kind = ROUTE_HOST;
		colon = s + strlen(s);
	}
	if ((size_t)(colon - s) >= sizeof(out->host))
		return false;
	for (size_t i = 0; s + i < colon; i++)
		out->host[i] = (char)tolower((unsigned char)s[i]);
	return host_chars(out->host);
}

/* The next space- or comma-separated token of *p into tok; false at the end.
 * A token too long for tok is cut short and ends in "..." (which no address,
 * network or port takes): cut alone it could become another valid value
 * ("10.0.0.0/0000...08" as 10.0.0.0/0). */
bool config_next_token(const char **p, char *tok, size_t size)
{
	size_t len;

	*p += strspn(*p, " \t,");
	if (!**p)
		return false;
	len = strcspn(*p, " \t,");
	if (len < size)
		snprintf(tok, size, "%.*s", (int)len, *p);
	else
		snprintf(tok, size, "%.*s...", (int)(size - 4), *p);
	*p += len;
	return true;
}

static bool set_listen(struct config *cfg, const char *const *addrs, size_t n, char *why,
                       size_t size)
{
	struct config_listen tmp[CONFIG_MAX_LISTEN];

	if (n == 0 || n > CONFIG_MAX_LISTEN) {
		snprintf(why, size, "%s addresses (expected 1 to %d)", n ? "too many" : "no",
		         CONFIG_MAX_LISTEN);
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (!config_parse_addr_port(addrs[i], &tmp[i])) {
			snprintf(why, size, "bad address '%s' (expected %s)", addrs[i],
			         LISTEN_FORM);
			return false;
		}
	}
	memcpy(cfg->listen, tmp, n * sizeof tmp[0]);
	cfg->nlisten = n;
	return true;
}

bool config_set_listen(struct config *cfg, const char *const *addrs, size_t n, char *err,
                       size_t err_size)
{
	return set_listen(cfg, addrs, n, err, err_size);
}

/* [intercept] bypass: host patterns (*, host, *.suffix, host:port, IP, CIDR). */
bool config_set_bypass(struct config *cfg, const char *v, bool append, char *why, size_t size)
{
	struct config_route pats[CONFIG_MAX_BYPASS];
	size_t n = append ? cfg->nbypass : 0;
	char tok[300];

	memcpy(pats, cfg->bypass, n * sizeof(pats[0]));
	while (config_next_token(&v, tok, sizeof tok)) {
		if (n == CONFIG_MAX_BYPASS) {
			snprintf(why, size, "too many entries (expected at most %d)",
			         CONFIG_MAX_BYPASS);
			return false;
		}
		if (!config_parse_route_pattern(tok, &pats[n])) {
			snprintf(why, size,
			         "bad pattern '%.64s' (expected *, host, *.suffix, host:port, an "
			         "IP or a "
			         "CIDR)",
			         tok);
			return false;
		}
		n++;
	}
	memcpy(cfg->bypass, pats, (cfg->nbypass = n) * sizeof(pats[0]));
	return true;
}

bool config_parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = {"on", "yes", "true", "1"};
	static const char *const no[] = {"off", "no", "false", "0"};

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
			*out = strcasecmp(v, yes[i]) == 0;
			return true;
		}
	}
	return false;
}

bool config_file_id(const char *path, char *buf, size_t size)
{
	struct stat st;
	int n;

	if (stat(path, &st) != 0)
		n = snprintf(buf, size, "%s@missing", path);
	else
		n = snprintf(buf, size, "%s@%llu:%llu:%lld:%lld.%09ld", path,
		             (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
		             (long long)st.st_size, (long long)st.st_mtim.tv_sec,
		             (long)st.st_mtim.tv_nsec);
	return n >= 0 && (size_t)n < size;
}

#define KEY_FILE_MAX (1024 * 1024)

const char *config_key_file_problem(const char *path)
{
	struct stat st;

	if (access(path, R_OK) != 0 || stat(path, &st) != 0)
		return strerror(errno);
	if (!S_ISREG(st.st_mode))
		return "not a regular file";
	if (st.st_size > KEY_FILE_MAX)
		return "larger than 1 MiB";
	return NULL;
}

/* proxy's URLs (on its line or a continuation line), appended to the hops. */
bool config_route_hops(struct config_route *r, const char *v, char *why, size_t size)
{
	char tok[512];

	while (config_next_token(&v, tok, sizeof(tok))) {
		if (r->nhops == CONFIG_MAX_HOPS) {
			snprintf(why, size, "too many hops (expected at most %d)", CONFIG_MAX_HOPS);
			return false;
		}
		if (!config_parse_hop(tok, &r->hops[r->nhops], why, size))
			return false;
		r->nhops++;
	}
	return true;
}
