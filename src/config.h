/*
 * config — the daemon's configuration: built-in defaults, overlaid by an INI
 * file (parsed with inih). A loaded config is immutable and refcounted: a
 * reload builds a new one, and in-flight work keeps the one it started with.
 * Owns: struct config and everything it points to.
 */
#ifndef MUXD_CONFIG_H
#define MUXD_CONFIG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CONFIG_MAX_LISTEN 16
#define CONFIG_MAX_ALLOW 64
#define CONFIG_MAX_PORTS 64
#define CONFIG_MAX_BYPASS 64
#define CONFIG_UPGRADE_MAX 256

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

struct config_listen {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char text[64]; /* as written, normalised: "127.0.0.1:3128", "[::1]:3128" */
};

struct config_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	int prefix; /* 0..32 or 0..128 */
};

/* A [route PATTERN] section as written; route.c resolves and matches them. */
enum route_pattern_kind {
	ROUTE_ANY,       /* * */
	ROUTE_HOST,      /* exact host name or IP literal */
	ROUTE_HOST_PORT, /* host:port */
	ROUTE_SUFFIX,    /* *.example.com (matches subdomains, not example.com) */
	ROUTE_CIDR,      /* 10.0.0.0/8, 2001:db8::/32 */
};

#define CONFIG_MAX_HOPS 4

/* One parent proxy of a route's chain. */
enum hop_kind { HOP_HTTP, HOP_HTTPS, HOP_SOCKS5, HOP_SOCKS5H };
struct config_hop {
	enum hop_kind kind;
	char host[256]; /* lower-cased; IPv6 without brackets */
	uint16_t port;
	char *user; /* percent-decoded; NULL when the URL has none */
	char *pass;
};

struct config_route {
	char *pattern; /* as written */
	enum route_pattern_kind kind;
	char host[256];          /* ROUTE_HOST(_PORT): lower-cased; ROUTE_SUFFIX: ".example.com" */
	uint16_t port;           /* ROUTE_HOST_PORT */
	struct config_cidr cidr; /* ROUTE_CIDR (and IP literals as /32 or /128) */
	int line;                /* of the section header */
	/* keys; NULL / -1 = not set here (inherit from [route *], then defaults) */
	char *ca_file;
	int verify;
	int h2;
	int h3;
	int intercept_without_sni; /* a ClientHello without SNI for a DNS name: intercept (1)
	                              or tunnel (0) */
	int early_data;            /* 0-RTT for safe requests */
	int proxy_set;             /* -1: not set here; else hops[] (0 hops = direct) */
	bool proxy_env;            /* proxy = env: hops come from the environment */
	struct config_hop hops[CONFIG_MAX_HOPS];
	size_t nhops;
	char *no_proxy; /* proxy = env: the environment's no_proxy list */
	char *proxy_ca_file;
	/* the TLS client certificate for origins and its private key (PEM): both or
	 * neither; checked to match at load */
	char *client_cert, *client_key;
	int client_cert_line, client_key_line; /* where they were given */
	/* the file identities of ca_file, proxy_ca_file, client_cert and client_key
	 * (config_file_id), taken once at load: pool keys never stat() per request */
	char *ca_file_id, *proxy_ca_file_id, *client_cert_id, *client_key_id;
};

struct config {
	int refs;
	char *file; /* the file it came from, or NULL for built-in defaults */

	/* [muxd] */
	struct config_listen listen[CONFIG_MAX_LISTEN];
	size_t nlisten;
	struct config_cidr allow[CONFIG_MAX_ALLOW];
	size_t nallow;
	char *state_dir; /* resolved: $STATE_DIRECTORY, /var/lib/muxd (root),
	                    $XDG_STATE_HOME/muxd, ~/.local/state/muxd */
	enum log_level log_level;
	char *access_log; /* NULL = off, "stderr", or a path */
	bool via;
	int deny_loopback_targets; /* -1 = auto (on when allow has a non-loopback
	                              network), 0 = off, 1 = on; see config_deny_loopback */
	unsigned max_clients;
	uint64_t shutdown_timeout_ms;
	uint16_t connect_ports[CONFIG_MAX_PORTS];
	size_t nconnect_ports;
	uint64_t tunnel_idle_timeout_ms;
	uint64_t request_header_timeout_ms; /* the whole request head, else 408 */
	uint64_t client_idle_timeout_ms; /* keep-alive idle, peeked CONNECT, client TLS handshake */
	uint64_t client_timeout_ms;      /* no progress with the client mid-exchange */
	bool client_h2;                  /* intercepted sessions offer ALPN h2 */
	unsigned client_h2_max_streams;  /* concurrent streams per HTTP/2 client connection */
	/* HTTP/1.1 Upgrade protocols relayed (over a dedicated upstream
	 * connection), lower-cased, comma-separated ("websocket"); "": none */
	char upgrade[CONFIG_UPGRADE_MAX];

	/* [pool] */
	uint64_t idle_timeout_ms;
	unsigned max_idle_per_origin;
	unsigned max_idle;
	unsigned max_connections;
	unsigned max_h1_per_origin;
	unsigned max_h2_per_origin;
	unsigned max_requests_per_connection; /* 0 = unlimited */
	uint64_t max_connection_age_ms;       /* 0 = off */
	uint64_t connect_timeout_ms;
	uint64_t response_timeout_ms; /* longest wait for the next response byte */
	bool h2;
	bool h3;
	uint64_t h3_timeout_ms;
	char *altsvc_file;  /* NULL = off; relative to state_dir unless absolute */
	char *session_file; /* TLS/QUIC resumption state; NULL = off; relative to state_dir */
	/* HTTP/2 and HTTP/3 receive windows (KiB): the most one stream / one
	 * connection may grow to; all growth beyond the base windows together */
	unsigned max_stream_window_kib;
	unsigned max_conn_window_kib;
	unsigned window_budget_kib;
	/* keep-warm of hot origins: on/off, the decayed request rate (requests
	 * per minute) that makes a pool key hot, and the most kept connections */
	bool keep_warm;
	unsigned keep_warm_min_rate;
	unsigned keep_warm_max;

	/* [intercept] */
	bool intercept_enabled;
	uint16_t intercept_ports[CONFIG_MAX_PORTS];
	size_t nintercept_ports;
	struct config_route bypass[CONFIG_MAX_BYPASS]; /* host patterns, always tunneled */
	size_t nbypass;
	unsigned leaf_cache;

	/* [route PATTERN] sections in file order */
	struct config_route *routes;
	size_t nroutes;
};

/*
 * Errors collected while loading: every problem, each one line of the form
 * "FILE:LINE: [section] key: what is wrong (expected FORM)".
 */
struct config_errors {
	char **lines;
	size_t n;
};

/* Built-in defaults (DESIGN.md). Never fails except on out-of-memory (NULL). */
struct config *config_defaults(void);

/*
 * Load defaults overlaid by the INI file at path. On any error returns NULL
 * and fills errs (caller frees with config_errors_free). A missing or
 * unreadable file is an error naming the file.
 */
struct config *config_load(const char *path, struct config_errors *errs);

/* The same from the file's text in text[0..len) (any bytes); name stands for
 * the file in messages and in cfg->file. */
struct config *config_load_buffer(const char *name, const char *text, size_t len,
                                  struct config_errors *errs);

/* Replace the listen list (the -l options); returns false on a bad address,
 * with a message in err. */
bool config_set_listen(struct config *cfg, const char *const *addrs, size_t n, char *err,
                       size_t err_size);

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);
void config_errors_free(struct config_errors *errs);

/* Helpers also used elsewhere (and unit-tested); the value parsers are in
 * config_values.c. */
bool config_parse_duration(const char *s, uint64_t *ms); /* "90s", "300ms", "10m", "2h", "30" */
bool config_parse_addr_port(const char *s,
                            struct config_listen *out);         /* "127.0.0.1:3128", "[::1]:3128" */
bool config_parse_cidr(const char *s, struct config_cidr *out); /* "127.0.0.0/8", "::1" */
bool config_cidr_match(const struct config_cidr *c, const struct sockaddr *sa);
bool config_port_allowed(const struct config *cfg, uint16_t port); /* connect_ports */
/* A proxy URL: http://, https://, socks5://, socks5h://, [user:pass@]host[:port]. */
bool config_parse_hop(const char *url, struct config_hop *out, char *why, size_t why_size);
void config_hop_free(struct config_hop *hop);
/* A file's identity "PATH@DEV:INODE:SIZE:MTIME" (MTIME with nanoseconds): the
 * same path with other contents is another identity. "PATH@missing" when it
 * cannot be examined. False only when it does not fit in size. */
bool config_file_id(const char *path, char *buf, size_t size);
/* deny_loopback_targets resolved: auto is on when allow lists a network that
 * is not loopback. */
bool config_deny_loopback(const struct config *cfg);
/* "*", "host", "*.suffix", "host:port", "[v6]:port", an IP or a CIDR. */
bool config_parse_route_pattern(const char *s, struct config_route *out);

#endif
