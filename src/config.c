/*
 * config — built-in defaults overlaid by an INI file. inih does the tokenising; a
 * line-counting reader feeds it one physical line at a time, so every handler call
 * and every syntax problem is known by its line. The reader also sees section
 * headers (inih does not report them) to reject unknown sections, and notices lines
 * inih silently dropped as syntax errors, so that every problem in the file is
 * collected rather than only the first. Each key is described once in a table (its
 * section, kind, field and range); values are parsed into a fresh copy of the
 * defaults, which is thrown away if anything was wrong. The parsers of single
 * values (durations, addresses, networks, patterns, proxy URLs) are config_values.c.
 */
#include "config.h"
#include "config_int.h"
#include "http1.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <ini.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DURATION_FORM "a number with ms, s, m or h"
/* The longest duration a key takes: 365 days. Far beyond any sensible
 * timeout, and small enough that every use (timevals, ngtcp2's nanosecond
 * timestamps, a timeout times a small factor) stays far from overflow. */
#define DURATION_MAX_MS (365ULL * 24 * 3600 * 1000)
#define DURATION_MAX_TEXT "8760h, 365 days"
#define BOOL_FORM "on, off, yes, no, true, false, 1 or 0"
#define CIDR_FORM "an address or ADDR/PREFIX"

enum kind {
	K_LISTEN,
	K_ALLOW,
	K_PORTS,
	K_IPORTS, /* [intercept] ports */
	K_BYPASS, /* host patterns */
	K_STATE_DIR,
	K_LOG_LEVEL,
	K_OPT_PATH, /* off | PATH  (access_log also takes "stderr", which is a path here) */
	K_BOOL,
	K_UINT,
	K_DURATION,     /* > 0 */
	K_DURATION_ANY, /* >= 0 */
	K_DURATION_OFF, /* off = 0 */
	K_AUTO_BOOL,    /* auto = -1, else a boolean (int field) */
	K_UPGRADE,      /* a list of protocol names; none, off or empty: none */
};

struct key {
	const char *section;
	const char *name;
	enum kind kind;
	size_t off;
	unsigned min, max; /* K_UINT */
};

#define F(field) offsetof(struct config, field)
static const struct key keys[] = {
    {"muxd", "listen", K_LISTEN, 0, 0, 0},
    {"muxd", "allow", K_ALLOW, 0, 0, 0},
    {"muxd", "state_dir", K_STATE_DIR, F(state_dir), 0, 0},
    {"muxd", "log_level", K_LOG_LEVEL, F(log_level), 0, 0},
    {"muxd", "access_log", K_OPT_PATH, F(access_log), 0, 0},
    {"muxd", "via", K_BOOL, F(via), 0, 0},
    {"muxd", "deny_loopback_targets", K_AUTO_BOOL, F(deny_loopback_targets), 0, 0},
    {"muxd", "max_clients", K_UINT, F(max_clients), 1, 1000000},
    {"muxd", "shutdown_timeout", K_DURATION_ANY, F(shutdown_timeout_ms), 0, 0},
    {"muxd", "connect_ports", K_PORTS, 0, 0, 0},
    {"muxd", "tunnel_idle_timeout", K_DURATION, F(tunnel_idle_timeout_ms), 0, 0},
    {"muxd", "request_header_timeout", K_DURATION, F(request_header_timeout_ms), 0, 0},
    {"muxd", "client_idle_timeout", K_DURATION, F(client_idle_timeout_ms), 0, 0},
    {"muxd", "client_timeout", K_DURATION, F(client_timeout_ms), 0, 0},
    {"muxd", "client_h2", K_BOOL, F(client_h2), 0, 0},
    {"muxd", "client_h2_max_streams", K_UINT, F(client_h2_max_streams), 1, 10000},
    {"muxd", "upgrade", K_UPGRADE, F(upgrade), 0, 0},
    {"pool", "idle_timeout", K_DURATION, F(idle_timeout_ms), 0, 0},
    {"pool", "max_idle_per_origin", K_UINT, F(max_idle_per_origin), 0, 100000},
    {"pool", "max_idle", K_UINT, F(max_idle), 0, 1000000},
    {"pool", "max_connections", K_UINT, F(max_connections), 1, 1000000},
    {"pool", "max_h1_per_origin", K_UINT, F(max_h1_per_origin), 1, 100000},
    {"pool", "max_h2_per_origin", K_UINT, F(max_h2_per_origin), 1, 10000},
    {"pool", "max_requests_per_connection", K_UINT, F(max_requests_per_connection), 0, UINT_MAX},
    {"pool", "max_connection_age", K_DURATION_OFF, F(max_connection_age_ms), 0, 0},
    {"pool", "connect_timeout", K_DURATION, F(connect_timeout_ms), 0, 0},
    {"pool", "response_timeout", K_DURATION, F(response_timeout_ms), 0, 0},
    {"pool", "h2", K_BOOL, F(h2), 0, 0},
    {"pool", "h3", K_BOOL, F(h3), 0, 0},
    {"pool", "h3_timeout", K_DURATION, F(h3_timeout_ms), 0, 0},
    {"pool", "altsvc_file", K_OPT_PATH, F(altsvc_file), 0, 0},
    {"pool", "session_file", K_OPT_PATH, F(session_file), 0, 0},
    {"pool", "max_stream_window_kib", K_UINT, F(max_stream_window_kib), 64, 1048576},
    {"pool", "max_conn_window_kib", K_UINT, F(max_conn_window_kib), 64, 1048576},
    {"pool", "window_budget_kib", K_UINT, F(window_budget_kib), 0, 16777216},
    {"pool", "keep_warm", K_BOOL, F(keep_warm), 0, 0},
    {"pool", "keep_warm_min_rate", K_UINT, F(keep_warm_min_rate), 1, 1000000},
    {"pool", "keep_warm_max", K_UINT, F(keep_warm_max), 0, 100000},
    {"intercept", "enabled", K_BOOL, F(intercept_enabled), 0, 0},
    {"intercept", "ports", K_IPORTS, 0, 0, 0},
    {"intercept", "bypass", K_BYPASS, 0, 0, 0},
    {"intercept", "leaf_cache", K_UINT, F(leaf_cache), 1, 1000000},
};
#define NKEYS (sizeof keys / sizeof keys[0])

bool config_port_allowed(const struct config *cfg, uint16_t port)
{
	for (size_t i = 0; i < cfg->nconnect_ports; i++)
		if (cfg->connect_ports[i] == port)
			return true;
	return false;
}

/* ---- defaults and lifetime -------------------------------------------- */

/* $STATE_DIRECTORY (its first entry), /var/lib/muxd as root, else the XDG state
 * directory. Empty or relative environment values are ignored. */
static char *default_state_dir(void)
{
	const char *env = getenv("STATE_DIRECTORY");
	char *dir = NULL;

	if (env && env[0] == '/')
		return strndup(env, strcspn(env, ":"));
	if (geteuid() == 0)
		return strdup("/var/lib/muxd");
	if ((env = getenv("XDG_STATE_HOME")) && env[0] == '/')
		return asprintf(&dir, "%s/muxd", env) < 0 ? NULL : dir;
	env = getenv("HOME");
	if (!env || env[0] != '/') {
		struct passwd *pw = getpwuid(geteuid());
		env = pw && pw->pw_dir && pw->pw_dir[0] == '/' ? pw->pw_dir : NULL;
	}
	if (!env)
		return strdup("/var/lib/muxd");
	return asprintf(&dir, "%s/.local/state/muxd", env) < 0 ? NULL : dir;
}

struct config *config_defaults(void)
{
	static const char *const listen[] = {"127.0.0.1:3128", "[::1]:3128"};
	static const char *const allow[] = {"127.0.0.0/8", "::1"};
	struct config *cfg = calloc(1, sizeof *cfg);

	if (!cfg)
		return NULL;
	cfg->refs = 1;
	for (; cfg->nlisten < 2; cfg->nlisten++)
		config_parse_addr_port(listen[cfg->nlisten], &cfg->listen[cfg->nlisten]);
	for (; cfg->nallow < 2; cfg->nallow++)
		config_parse_cidr(allow[cfg->nallow], &cfg->allow[cfg->nallow]);
	cfg->log_level = LOG_INFO;
	cfg->via = true;
	cfg->deny_loopback_targets = -1;
	cfg->max_clients = 4096;
	cfg->shutdown_timeout_ms = 30000;
	cfg->connect_ports[cfg->nconnect_ports++] = 443;
	cfg->tunnel_idle_timeout_ms = 600000;
	cfg->request_header_timeout_ms = 30000;
	cfg->client_idle_timeout_ms = 120000;
	cfg->client_timeout_ms = 300000;
	cfg->client_h2 = true;
	cfg->client_h2_max_streams = 100;
	snprintf(cfg->upgrade, sizeof(cfg->upgrade), "websocket");
	cfg->idle_timeout_ms = 90000;
	cfg->max_idle_per_origin = 6;
	cfg->max_idle = 256;
	cfg->max_connections = 1024;
	cfg->max_h1_per_origin = 16;
	cfg->max_h2_per_origin = 4;
	cfg->connect_timeout_ms = 10000;
	/* 15 min, squid's read_timeout: a host-wide proxy must not cut long polls,
	 * watch APIs or blocking queries that work without it */
	cfg->response_timeout_ms = 900000;
	cfg->intercept_enabled = true;
	cfg->intercept_ports[0] = 443;
	cfg->nintercept_ports = 1;
	cfg->leaf_cache = 1024;
	cfg->h2 = cfg->h3 = true;
	cfg->h3_timeout_ms = 300;
	cfg->max_stream_window_kib = 24576; /* 24 MiB */
	cfg->max_conn_window_kib = 65536;   /* 64 MiB */
	cfg->window_budget_kib = 262144;    /* 256 MiB */
	/* keep-warm: on, so that a hot origin's next request after a quiet spell
	 * does not pay the handshakes again; one request a minute (decayed) makes
	 * an origin hot; at most 16 kept connections cost little */
	cfg->keep_warm = true;
	cfg->keep_warm_min_rate = 1;
	cfg->keep_warm_max = 16;
	cfg->state_dir = default_state_dir();
	cfg->altsvc_file = strdup("altsvc.cache");
	cfg->session_file = strdup("sessions.cache");
	if (!cfg->state_dir || !cfg->altsvc_file || !cfg->session_file) {
		config_unref(cfg);
		return NULL;
	}
	return cfg;
}

struct config *config_ref(struct config *cfg)
{
	cfg->refs++;
	return cfg;
}

void config_unref(struct config *cfg)
{
	if (!cfg || --cfg->refs > 0)
		return;
	free(cfg->file);
	free(cfg->state_dir);
	free(cfg->access_log);
	free(cfg->altsvc_file);
	free(cfg->session_file);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		struct config_route *r = &cfg->routes[i];
		free(r->pattern);
		free(r->ca_file);
		free(r->proxy_ca_file);
		free(r->client_cert);
		free(r->client_key);
		free(r->ca_file_id);
		free(r->proxy_ca_file_id);
		free(r->client_cert_id);
		free(r->client_key_id);
		free(r->no_proxy);
		for (size_t h = 0; h < r->nhops; h++)
			config_hop_free(&r->hops[h]);
	}
	free(cfg->routes);
	free(cfg);
}

void config_errors_free(struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		free(errs->lines[i]);
	free(errs->lines);
	errs->lines = NULL;
	errs->n = 0;
}

/* ---- values ------------------------------------------------------------- */

/* A list value: each token is parsed into a temporary array which replaces (or,
 * for a continuation line, extends) the configured one only when all are good. */
static bool set_list(struct config *cfg, enum kind kind, const char *v, bool append, char *why,
                     size_t size)
{
	struct config_cidr allow[CONFIG_MAX_ALLOW];
	uint16_t ports[CONFIG_MAX_PORTS];
	const char *addrs[CONFIG_MAX_LISTEN];
	char toks[CONFIG_MAX_LISTEN][80], tok[80];
	size_t n = 0, max = kind == K_LISTEN  ? CONFIG_MAX_LISTEN
	                    : kind == K_ALLOW ? CONFIG_MAX_ALLOW
	                                      : CONFIG_MAX_PORTS;
	uint16_t *cfg_ports = kind == K_IPORTS ? cfg->intercept_ports : cfg->connect_ports;
	size_t *cfg_nports = kind == K_IPORTS ? &cfg->nintercept_ports : &cfg->nconnect_ports;
	unsigned long port;

	if (append && kind == K_LISTEN)
		for (; n < cfg->nlisten; n++)
			addrs[n] = strcpy(toks[n], cfg->listen[n].text);
	if (append && kind == K_ALLOW)
		memcpy(allow, cfg->allow, (n = cfg->nallow) * sizeof allow[0]);
	if (append && (kind == K_PORTS || kind == K_IPORTS))
		memcpy(ports, cfg_ports, (n = *cfg_nports) * sizeof ports[0]);

	while (config_next_token(&v, tok, sizeof tok)) {
		if (n == max) {
			snprintf(why, size, "too many entries (expected at most %zu)", max);
			return false;
		}
		if (kind == K_LISTEN) {
			addrs[n] = strcpy(toks[n], tok);
		} else if (kind == K_ALLOW && !config_parse_cidr(tok, &allow[n])) {
			snprintf(why, size, "bad network '%s' (expected %s)", tok, CIDR_FORM);
			return false;
		} else if (kind == K_PORTS || kind == K_IPORTS) {
			if (!config_parse_uint(tok, 65535, &port) || port == 0) {
				snprintf(why, size, "bad port '%s' (expected 1 to 65535)", tok);
				return false;
			}
			ports[n] = (uint16_t)port;
		}
		n++;
	}
	if (kind == K_LISTEN)
		return config_set_listen(cfg, addrs, n, why, size);
	if (kind == K_ALLOW && n == 0) {
		snprintf(why, size, "empty list (expected at least one network: %s)", CIDR_FORM);
		return false;
	}
	if (kind == K_ALLOW)
		memcpy(cfg->allow, allow, (cfg->nallow = n) * sizeof allow[0]);
	else
		memcpy(cfg_ports, ports, (*cfg_nports = n) * sizeof ports[0]);
	return true;
}

/* upgrade: protocol names (tokens, compared case-insensitively), kept
 * lower-cased and comma-separated; "none", "off" or nothing: no upgrades. */
static bool set_upgrade(struct config *cfg, const char *v, char *why, size_t size)
{
	char list[CONFIG_UPGRADE_MAX] = "", tok[80];
	size_t len = 0;

	if (strcasecmp(v, "none") == 0 || strcasecmp(v, "off") == 0)
		v = "";
	while (config_next_token(&v, tok, sizeof tok)) {
		size_t bad = strspn(tok, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		                         "0123456789!#$%&'*+-.^_`|~");
		if (tok[bad]) {
			snprintf(
			    why, size,
			    "bad protocol name '%s' (expected names such as websocket, or none)",
			    tok);
			return false;
		}
		for (char *c = tok; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		if (len + strlen(tok) + 2 > sizeof(list)) {
			snprintf(why, size, "list too long (expected at most %d characters)",
			         CONFIG_UPGRADE_MAX - 1);
			return false;
		}
		len +=
		    (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", len ? "," : "", tok);
	}
	memcpy(cfg->upgrade, list, sizeof(list));
	return true;
}

static bool replace_str(char **field, const char *v, char *why, size_t size)
{
	char *copy = v ? strdup(v) : NULL;

	if (v && !copy) {
		snprintf(why, size, "out of memory");
		return false;
	}
	free(*field);
	*field = copy;
	return true;
}

/* Parse v for key k into cfg; on error, a message "what (expected FORM)" in why. */
static bool set_value(struct config *cfg, const struct key *k, const char *v, bool append,
                      char *why, size_t size)
{
	static const char *const levels[] = {"error", "warn", "info", "debug"};
	void *field = (char *)cfg + k->off;
	unsigned long n;
	uint64_t ms;
	bool b;

	switch (k->kind) {
	case K_LISTEN:
	case K_ALLOW:
	case K_PORTS:
	case K_IPORTS:
		return set_list(cfg, k->kind, v, append, why, size);
	case K_BYPASS:
		return config_set_bypass(cfg, v, append, why, size);
	case K_UPGRADE:
		return set_upgrade(cfg, v, why, size);
	case K_STATE_DIR:
		if (!*v)
			return true; /* the resolved default stays */
		if (*v == '/')
			return replace_str(field, v, why, size);
		snprintf(why, size, "relative path '%s' (expected an absolute path, or empty)", v);
		return false;
	case K_LOG_LEVEL:
		for (size_t i = 0; i < 4; i++) {
			if (strcasecmp(v, levels[i]) == 0) {
				*(enum log_level *)field = (enum log_level)i;
				return true;
			}
		}
		snprintf(why, size, "bad log level '%s' (expected error, warn, info or debug)", v);
		return false;
	case K_OPT_PATH:
		if (*v)
			return replace_str(field, strcasecmp(v, "off") == 0 ? NULL : v, why, size);
		snprintf(why, size, "empty value (expected off%s or a path)",
		         k->off == F(access_log) ? ", stderr" : "");
		return false;
	case K_AUTO_BOOL:
		if (strcasecmp(v, "auto") == 0) {
			*(int *)field = -1;
			return true;
		}
		if (config_parse_bool(v, &b)) {
			*(int *)field = b;
			return true;
		}
		snprintf(why, size, "bad value '%s' (expected auto or %s)", v, BOOL_FORM);
		return false;
	case K_BOOL:
		if (config_parse_bool(v, &b)) {
			*(bool *)field = b;
			return true;
		}
		snprintf(why, size, "bad boolean '%s' (expected %s)", v, BOOL_FORM);
		return false;
	case K_UINT:
		if (config_parse_uint(v, k->max, &n) && n >= k->min) {
			*(unsigned *)field = (unsigned)n;
			return true;
		}
		snprintf(why, size, "bad number '%s' (expected an integer from %u to %u)", v,
		         k->min, k->max);
		return false;
	case K_DURATION:
	case K_DURATION_ANY:
	case K_DURATION_OFF:
		if (k->kind == K_DURATION_OFF && strcasecmp(v, "off") == 0)
			v = "0";
		if (!config_parse_duration(v, &ms)) {
			if (!config_duration_form(v)) {
				snprintf(why, size, "bad duration '%s' (expected %s%s)", v,
				         k->kind == K_DURATION_OFF ? "off or " : "", DURATION_FORM);
				return false;
			}
			ms = UINT64_MAX; /* well formed, only beyond 64 bits of ms: too long */
		}
		if (ms == 0 && k->kind == K_DURATION) {
			snprintf(why, size, "bad duration '%s' (expected more than 0)", v);
			return false;
		}
		if (ms > DURATION_MAX_MS) {
			snprintf(why, size, "duration '%s' too long (expected at most %s)", v,
			         DURATION_MAX_TEXT);
			return false;
		}
		*(uint64_t *)field = ms;
		return true;
	}
	return false;
}

/* ---- loading ------------------------------------------------------------ */

struct load {
	const char *path;
	FILE *f;
	struct config *cfg;
	struct config_errors *errs;
	size_t nerr;
	int line;
	char *buf;
	size_t cap;
	int read_errno;
	bool expect;       /* the current line must reach the handler */
	bool handled;      /* ... and it did */
	bool continuation; /* it is an indented continuation of the previous key */
	bool have_name;    /* a key was seen since the last section header */
	long route;        /* the [route] section lines are in: its index, or -1 (none or bad) */
	int first_syntax;  /* the first line reported as a syntax error */
	int seen[NKEYS];   /* the line each key was given on */
};

static void errf(struct load *ld, int line, const char *fmt, ...)
{
	char *msg = NULL, *full = NULL, **lines;
	va_list ap;

	ld->nerr++;
	if (!ld->errs)
		return;
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (msg && (line ? asprintf(&full, "%s:%d: %s", ld->path, line, msg)
	                 : asprintf(&full, "%s: %s", ld->path, msg)) < 0)
		full = NULL;
	free(msg);
	lines = full ? realloc(ld->errs->lines, (ld->errs->n + 1) * sizeof *lines) : NULL;
	if (!lines) {
		free(full);
		return;
	}
	lines[ld->errs->n++] = full;
	ld->errs->lines = lines;
}

static bool is_route_section(const char *name, size_t len)
{
	return len > 6 && strncmp(name, "route ", 6) == 0;
}

static bool known_section(const char *name, size_t len)
{
	return (len == 4 && strncmp(name, "muxd", 4) == 0) ||
	       (len == 4 && strncmp(name, "pool", 4) == 0) ||
	       (len == 9 && strncmp(name, "intercept", 9) == 0) || is_route_section(name, len);
}

static struct config_route *find_route(struct config *cfg, const char *pattern)
{
	for (size_t i = cfg->nroutes; i-- > 0;)
		if (strcmp(cfg->routes[i].pattern, pattern) == 0)
			return &cfg->routes[i];
	return NULL;
}

/* A [route PATTERN] header: validate the pattern and add the route. */
static void add_route(struct load *ld, const char *pattern, size_t len)
{
	struct config_route r, *routes, *dup;

	while (len > 0 && isspace((unsigned char)*pattern)) {
		pattern++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)pattern[len - 1]))
		len--;
	char *p = strndup(pattern, len);
	if (!p) {
		errf(ld, ld->line, "out of memory");
		return;
	}
	if (!config_parse_route_pattern(p, &r)) {
		errf(ld, ld->line,
		     "[route %s]: bad pattern (expected *, host, *.suffix, host:port, an IP or a "
		     "CIDR)",
		     p);
		free(p);
		return;
	}
	if ((dup = find_route(ld->cfg, p)) != NULL) {
		errf(ld, ld->line, "[route %s]: given twice (expected once; first on line %d)", p,
		     dup->line);
		free(p);
		return;
	}
	routes = realloc(ld->cfg->routes, (ld->cfg->nroutes + 1) * sizeof(*routes));
	if (!routes) {
		errf(ld, ld->line, "out of memory");
		free(p);
		return;
	}
	r.pattern = p;
	r.line = ld->line;
	ld->route = (long)ld->cfg->nroutes;
	routes[ld->cfg->nroutes++] = r;
	ld->cfg->routes = routes;
}

static const char *env_either(const char *lower, const char *upper)
{
	const char *v = getenv(lower);
	return v && *v ? v : getenv(upper);
}

/* Whether a hop points back at one of muxd's own listen addresses. */
static bool hop_is_self(const struct config *cfg, const struct config_hop *hop)
{
	for (size_t i = 0; i < cfg->nlisten; i++) {
		char host[64];
		uint16_t port;
		bool v6;
		if (http1_parse_authority(cfg->listen[i].text, host, sizeof(host), &port, &v6) &&
		    port == hop->port &&
		    (strcmp(host, hop->host) == 0 || strcmp(hop->host, "localhost") == 0))
			return true;
	}
	return false;
}

/* proxy = direct | env | URL... */
static bool route_proxy(const struct config *cfg, struct config_route *r, const char *v, char *why,
                        size_t size)
{
	r->proxy_set = 1;
	if (strcasecmp(v, "direct") == 0)
		return true;
	if (strcasecmp(v, "env") == 0) {
		const char *url = env_either("https_proxy", "HTTPS_PROXY");
		const char *no = env_either("no_proxy", "NO_PROXY");
		r->proxy_env = true;
		if (!url || !*url)
			url = env_either("http_proxy", "HTTP_PROXY");
		if (!url || !*url)
			return true; /* no parent in the environment: direct */
		if (!config_parse_hop(url, &r->hops[0], why, size))
			return false;
		r->nhops = 1;
		if (hop_is_self(cfg, &r->hops[0])) {
			snprintf(why, size,
			         "the environment's proxy %.64s:%u is muxd itself "
			         "(expected a parent proxy)",
			         r->hops[0].host, r->hops[0].port);
			return false;
		}
		if (no && *no && !(r->no_proxy = strdup(no))) {
			snprintf(why, size, "out of memory");
			return false;
		}
		return true;
	}
	return config_route_hops(r, v, why, size);
}

/* A key inside a [route PATTERN] section: the one the reader saw last, not
 * inih's section name (which keeps the spaces around the pattern, and is cut
 * short at inih's section length). */
static void route_key(struct load *ld, const char *name, const char *v, bool cont)
{
	struct config_route *r = ld->route >= 0 ? &ld->cfg->routes[ld->route] : NULL;
	char why[256], section[300];
	const char *bad;
	bool b;

	if (!r)
		return; /* its header was reported */
	snprintf(section, sizeof(section), "route %s", r->pattern);
	if (cont) {
		/* an indented line continues the key above: only proxy's URLs are a list */
		if (strcmp(name, "proxy") != 0 || r->proxy_env || r->nhops == 0)
			errf(ld, ld->line,
			     "[%s] %s: continuation line (expected one value on the key's line)",
			     section, name);
		else if (!config_route_hops(r, v, why, sizeof(why)))
			errf(ld, ld->line, "[%s] %s: %s", section, name, why);
		return;
	}
	if (strcmp(name, "verify") == 0 || strcmp(name, "h2") == 0 || strcmp(name, "h3") == 0 ||
	    strcmp(name, "intercept_without_sni") == 0 || strcmp(name, "early_data") == 0) {
		int *field = name[0] == 'v'   ? &r->verify
		             : name[0] == 'i' ? &r->intercept_without_sni
		             : name[0] == 'e' ? &r->early_data
		             : name[1] == '2' ? &r->h2
		                              : &r->h3;
		if (*field != -1)
			errf(ld, ld->line, "[%s] %s: given twice (expected once)", section, name);
		else if (!config_parse_bool(v, &b))
			errf(ld, ld->line, "[%s] %s: bad boolean '%s' (expected %s)", section, name,
			     v, BOOL_FORM);
		else
			*field = b;
	} else if (strcmp(name, "proxy") == 0) {
		if (r->proxy_set != -1)
			errf(ld, ld->line, "[%s] %s: given twice (expected once)", section, name);
		else if (!route_proxy(ld->cfg, r, v, why, sizeof(why)))
			errf(ld, ld->line, "[%s] %s: %s", section, name, why);
	} else if (strcmp(name, "proxy_ca_file") == 0) {
		if (r->proxy_ca_file)
			errf(ld, ld->line, "[%s] %s: given twice (expected once)", section, name);
		else if (access(v, R_OK) != 0)
			errf(ld, ld->line, "[%s] %s: cannot read '%s': %s (expected a PEM file)",
			     section, name, v, strerror(errno));
		else if (!replace_str(&r->proxy_ca_file, v, why, sizeof(why)))
			errf(ld, ld->line, "[%s] %s: %s", section, name, why);
	} else if (strcmp(name, "ca_file") == 0) {
		if (r->ca_file)
			errf(ld, ld->line, "[%s] %s: given twice (expected once)", section, name);
		else if (!*v)
			errf(ld, ld->line, "[%s] %s: empty value (expected a PEM file)", section,
			     name);
		else if (access(v, R_OK) != 0)
			errf(ld, ld->line, "[%s] %s: cannot read '%s': %s (expected a PEM file)",
			     section, name, v, strerror(errno));
		else if (!replace_str(&r->ca_file, v, why, sizeof(why)))
			errf(ld, ld->line, "[%s] %s: %s", section, name, why);
	} else if (strcmp(name, "client_cert") == 0 || strcmp(name, "client_key") == 0) {
		bool cert = name[7] == 'c';
		char **field = cert ? &r->client_cert : &r->client_key;
		int *line = cert ? &r->client_cert_line : &r->client_key_line;
		if (*line) {
			errf(ld, ld->line, "[%s] %s: given twice (expected once; first on line %d)",
			     section, name, *line);
			return;
		}
		*line = ld->line; /* given, even when the value is bad */
		if (!*v)
			errf(ld, ld->line, "[%s] %s: empty value (expected a PEM file)", section,
			     name);
		else if ((bad = config_key_file_problem(v)) != NULL)
			errf(ld, ld->line, "[%s] %s: cannot read '%s': %s (expected a PEM file)",
			     section, name, v, bad);
		else if (!replace_str(field, v, why, sizeof(why)))
			errf(ld, ld->line, "[%s] %s: %s", section, name, why);
	} else {
		errf(ld, ld->line, "[%s] %s: unknown key", section, name);
	}
}

/* After the whole file: a route's client_cert and client_key come together, and
 * GnuTLS must accept them as a pair (readable PEM, the key matching the
 * certificate), as it will when connecting. */
static void check_client_certs(struct load *ld)
{
	for (size_t i = 0; i < ld->cfg->nroutes; i++) {
		const struct config_route *r = &ld->cfg->routes[i];
		gnutls_certificate_credentials_t cred;
		int ret;

		if (!r->client_cert_line && !r->client_key_line)
			continue;
		if (!r->client_cert_line || !r->client_key_line) {
			bool cert = r->client_cert_line != 0;
			errf(ld, cert ? r->client_cert_line : r->client_key_line,
			     "[route %s] %s: given without %s (expected both client_cert and "
			     "client_key, or neither)",
			     r->pattern, cert ? "client_cert" : "client_key",
			     cert ? "client_key" : "client_cert");
			continue;
		}
		if (!r->client_cert || !r->client_key)
			continue; /* a bad value, reported on its line */
		if (gnutls_certificate_allocate_credentials(&cred) < 0) {
			errf(ld, r->client_key_line, "out of memory");
			continue;
		}
		ret = gnutls_certificate_set_x509_key_file(cred, r->client_cert, r->client_key,
		                                           GNUTLS_X509_FMT_PEM);
		gnutls_certificate_free_credentials(cred);
		if (ret == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
			errf(ld, r->client_key_line,
			     "[route %s] client_key: '%s' does not match client_cert '%s' "
			     "(expected the certificate's private key)",
			     r->pattern, r->client_key, r->client_cert);
		else if (ret < 0)
			errf(ld, r->client_key_line,
			     "[route %s] client_key: cannot load '%s' with client_cert '%s': %s "
			     "(expected a PEM certificate and its unencrypted PEM private key)",
			     r->pattern, r->client_key, r->client_cert, gnutls_strerror(ret));
	}
}

/* Where inih's scan for c stops: at c, at an inline ';' comment (one preceded by
 * whitespace), or at the end of the string. */
static const char *find_end(const char *s, char c)
{
	for (bool space = false; *s && *s != c; space = isspace((unsigned char)*s), s++)
		if (*s == ';' && space)
			break;
	return s;
}

/* A line that had to reach the handler and did not was dropped by inih. */
static void check_syntax(struct load *ld)
{
	if (ld->expect && !ld->handled) {
		errf(ld, ld->line, "syntax error (expected key = value, [section] or ; comment)");
		if (!ld->first_syntax)
			ld->first_syntax = ld->line;
	}
	ld->expect = ld->handled = false;
}

/* Classifies the line the way inih will, to know what to expect from it. */
static void classify(struct load *ld, const char *line)
{
	const char *s = line, *end;

	if (ld->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	ld->continuation = false;
	if (!*s || *s == ';' || *s == '#')
		return;
	if (ld->have_name && s > line) {
		ld->expect = ld->continuation = true;
	} else if (*s == '[') {
		end = find_end(s + 1, ']');
		if (*end != ']') {
			ld->expect = true; /* never handled: reported as a syntax error */
			return;
		}
		ld->have_name = false;
		ld->route = -1;
		if (is_route_section(s + 1, (size_t)(end - s - 1)))
			add_route(ld, s + 7, (size_t)(end - s - 7));
		else if (!known_section(s + 1, (size_t)(end - s - 1)))
			errf(ld, ld->line, "[%.*s]: unknown section", (int)(end - s - 1), s + 1);
	} else {
		ld->expect = true;
	}
}

/* The ini_reader: hands inih one physical line, so its line count is ours. */
static char *read_line(char *str, int num, void *stream)
{
	struct load *ld = stream;
	ssize_t len;

	check_syntax(ld);
	len = getline(&ld->buf, &ld->cap, ld->f);
	if (len < 0) {
		if (ferror(ld->f))
			ld->read_errno = errno;
		return NULL;
	}
	ld->line++;
	if (len > num - 1) {
		errf(ld, ld->line, "line too long (expected at most %d characters)", num - 3);
		return strcpy(str, "\n");
	}
	memcpy(str, ld->buf, (size_t)len + 1);
	classify(ld, str);
	return str;
}

static int on_pair(void *user, const char *section, const char *name, const char *value)
{
	struct load *ld = user;
	const struct key *k = NULL;
	bool cont = ld->continuation;
	char why[256];

	ld->handled = true;
	ld->have_name = true;
	if (!*section) {
		if (!cont)
			errf(ld, ld->line,
			     "%s: not in a section (expected [muxd] or [pool] above it)", name);
		return 1;
	}
	if (!known_section(section, strlen(section)))
		return 1; /* reported at its header */
	if (is_route_section(section, strlen(section))) {
		route_key(ld, name, value, cont);
		return 1;
	}
	for (size_t i = 0; i < NKEYS && !k; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			k = &keys[i];
	if (!k) {
		if (!cont)
			errf(ld, ld->line, "[%s] %s: unknown key", section, name);
		return 1;
	}
	if (cont && k->kind != K_LISTEN && k->kind != K_ALLOW && k->kind != K_PORTS &&
	    k->kind != K_IPORTS && k->kind != K_BYPASS) {
		errf(ld, ld->line,
		     "[%s] %s: continuation line (expected one value on the key's line)", section,
		     name);
		return 1;
	}
	if (!cont && ld->seen[k - keys]) {
		errf(ld, ld->line, "[%s] %s: given twice (expected once; first on line %d)",
		     section, name, ld->seen[k - keys]);
		return 1;
	}
	if (!cont)
		ld->seen[k - keys] = ld->line;
	if (!set_value(ld->cfg, k, value, cont, why, sizeof why))
		errf(ld, ld->line, "[%s] %s: %s", section, name, why);
	return 1;
}

/* The identity of path in a new string (NULL path: NULL, true). */
static bool take_id(const char *path, char **out)
{
	char buf[PATH_MAX + 80];

	if (!path)
		return true;
	if (!config_file_id(path, buf, sizeof(buf)))
		snprintf(buf, sizeof(buf), "%.*s", (int)sizeof(buf) - 1, path);
	return (*out = strdup(buf)) != NULL;
}

/* Identities of every file a route names, once per load (and reload). */
static bool take_file_ids(struct config *cfg)
{
	for (size_t i = 0; i < cfg->nroutes; i++) {
		struct config_route *r = &cfg->routes[i];
		if (!take_id(r->ca_file, &r->ca_file_id) ||
		    !take_id(r->proxy_ca_file, &r->proxy_ca_file_id) ||
		    !take_id(r->client_cert, &r->client_cert_id) ||
		    !take_id(r->client_key, &r->client_key_id))
			return false;
	}
	return true;
}

bool config_deny_loopback(const struct config *cfg)
{
	if (cfg->deny_loopback_targets >= 0)
		return cfg->deny_loopback_targets == 1;
	for (size_t i = 0; i < cfg->nallow; i++) {
		const struct config_cidr *c = &cfg->allow[i];
		bool lo = c->family == AF_INET
		              ? c->prefix >= 8 && c->addr[0] == 127
		              : c->prefix == 128 &&
		                    memcmp(c->addr, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
		if (!lo)
			return true;
	}
	return false;
}

/* config_load and config_load_buffer: the file at path, or text[0..len) named
 * path when text is set. */
static struct config *load(const char *path, const char *text, size_t len,
                           struct config_errors *errs)
{
	struct load ld = {.path = path, .errs = errs, .route = -1};
	int ret;

	if (errs)
		*errs = (struct config_errors){0};
	ld.cfg = config_defaults();
	if (!ld.cfg || !(ld.cfg->file = strdup(path))) {
		errf(&ld, 0, "out of memory");
		config_unref(ld.cfg);
		return NULL;
	}
	ld.f = text ? fmemopen((void *)text, len, "r") : fopen(path, "r");
	if (!ld.f) {
		errf(&ld, 0, "cannot open: %s", strerror(errno));
		config_unref(ld.cfg);
		return NULL;
	}
	ret = ini_parse_stream(read_line, &ld, on_pair, &ld);
	check_syntax(&ld);
	check_client_certs(&ld);
	if (!ld.nerr && !take_file_ids(ld.cfg))
		errf(&ld, 0, "out of memory");
	if (ret > 0 && ret != ld.first_syntax)
		errf(&ld, ret, "syntax error");
	if (ret == -2)
		errf(&ld, 0, "out of memory");
	if (ld.read_errno)
		errf(&ld, 0, "cannot read: %s", strerror(ld.read_errno));
	fclose(ld.f);
	free(ld.buf);
	if (ld.nerr) {
		config_unref(ld.cfg);
		return NULL;
	}
	return ld.cfg;
}

struct config *config_load(const char *path, struct config_errors *errs)
{
	return load(path, NULL, 0, errs);
}

struct config *config_load_buffer(const char *name, const char *text, size_t len,
                                  struct config_errors *errs)
{
	return load(name, text, len, errs);
}
