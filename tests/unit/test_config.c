/* Unit tests for src/config.c and src/config_values.c: defaults, every key, value forms, error
 * reports. */
#include "config.h"
#include "route.h"

#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_path[64];

/* Writes text to a fresh temporary file; its path is in tmp_path. */
static const char *write_conf(const char *text)
{
	strcpy(tmp_path, "/tmp/test_config.XXXXXX");
	int fd = mkstemp(tmp_path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return tmp_path;
}

static struct config *load_text(const char *text, struct config_errors *errs)
{
	struct config *cfg = config_load(write_conf(text), errs);
	unlink(tmp_path);
	return cfg;
}

/* Loads text that must be valid. */
static struct config *load_ok(const char *text)
{
	struct config_errors errs;
	struct config *cfg = load_text(text, &errs);
	ck_assert_msg(cfg, "unexpected error: %s", errs.n ? errs.lines[0] : "?");
	ck_assert_uint_eq(errs.n, 0);
	return cfg;
}

/* Loads text that must fail with exactly one error, which must end with want. */
static void load_bad(const char *text, const char *want)
{
	struct config_errors errs;
	struct config *cfg = load_text(text, &errs);
	ck_assert_ptr_null(cfg);
	ck_assert_msg(errs.n == 1, "%zu errors for %s", errs.n, text);
	const char *got = errs.lines[0] + strlen(tmp_path);
	ck_assert_str_eq(got, want);
	config_errors_free(&errs);
}

static struct sockaddr_storage sa(const char *text)
{
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
	} else {
		ck_assert_int_eq(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
		sin6->sin6_family = AF_INET6;
	}
	return ss;
}

static bool match(const char *cidr, const char *addr)
{
	struct config_cidr c;
	struct sockaddr_storage ss = sa(addr);
	ck_assert_msg(config_parse_cidr(cidr, &c), "cidr %s", cidr);
	return config_cidr_match(&c, (struct sockaddr *)&ss);
}

START_TEST(defaults)
{
	setenv("STATE_DIRECTORY", "/run/state/muxd:/other", 1);
	struct config *cfg = config_defaults();
	ck_assert_ptr_nonnull(cfg);
	ck_assert_int_eq(cfg->refs, 1);
	ck_assert_ptr_null(cfg->file);
	ck_assert_uint_eq(cfg->nlisten, 2);
	ck_assert_str_eq(cfg->listen[0].text, "127.0.0.1:3128");
	ck_assert_str_eq(cfg->listen[1].text, "[::1]:3128");
	ck_assert_int_eq(cfg->listen[1].addr.ss_family, AF_INET6);
	ck_assert_uint_eq(cfg->nallow, 2);
	ck_assert_int_eq(cfg->allow[0].prefix, 8);
	ck_assert_int_eq(cfg->allow[1].prefix, 128);
	ck_assert_str_eq(cfg->state_dir, "/run/state/muxd");
	ck_assert_int_eq(cfg->log_level, LOG_INFO);
	ck_assert_ptr_null(cfg->access_log);
	ck_assert(cfg->via);
	ck_assert_uint_eq(cfg->max_clients, 4096);
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 30000);
	ck_assert_uint_eq(cfg->nconnect_ports, 1);
	ck_assert_uint_eq(cfg->connect_ports[0], 443);
	ck_assert_uint_eq(cfg->tunnel_idle_timeout_ms, 600000);
	ck_assert_uint_eq(cfg->request_header_timeout_ms, 30000);
	ck_assert_uint_eq(cfg->client_idle_timeout_ms, 120000);
	ck_assert_uint_eq(cfg->client_timeout_ms, 300000);
	ck_assert_uint_eq(cfg->idle_timeout_ms, 90000);
	ck_assert_uint_eq(cfg->max_idle_per_origin, 6);
	ck_assert_uint_eq(cfg->max_idle, 256);
	ck_assert_uint_eq(cfg->max_connections, 1024);
	ck_assert_uint_eq(cfg->max_h1_per_origin, 16);
	ck_assert_uint_eq(cfg->max_h2_per_origin, 4);
	ck_assert_uint_eq(cfg->max_requests_per_connection, 0);
	ck_assert_uint_eq(cfg->max_connection_age_ms, 0);
	ck_assert_uint_eq(cfg->connect_timeout_ms, 10000);
	ck_assert_uint_eq(cfg->response_timeout_ms, 15 * 60000); /* long polls live */
	ck_assert(cfg->h2 && cfg->h3);
	ck_assert_uint_eq(cfg->h3_timeout_ms, 300);
	ck_assert_str_eq(cfg->altsvc_file, "altsvc.cache");
	config_unref(cfg);
	unsetenv("STATE_DIRECTORY");
}
END_TEST

START_TEST(state_dir_resolution)
{
	unsetenv("STATE_DIRECTORY");
	setenv("XDG_STATE_HOME", "/xdg", 1);
	setenv("HOME", "/home/u", 1);
	struct config *cfg = config_defaults();
	ck_assert_str_eq(cfg->state_dir, geteuid() == 0 ? "/var/lib/muxd" : "/xdg/muxd");
	config_unref(cfg);
	setenv("XDG_STATE_HOME", "", 1); /* empty: ignored */
	cfg = config_defaults();
	ck_assert_str_eq(cfg->state_dir,
	                 geteuid() == 0 ? "/var/lib/muxd" : "/home/u/.local/state/muxd");
	config_unref(cfg);
	unsetenv("XDG_STATE_HOME");
}
END_TEST

START_TEST(every_key)
{
	struct config *cfg = load_ok("; comment\n"
	                             "# another\n"
	                             "[muxd]\n"
	                             "listen = 0.0.0.0:8080, [2001:DB8::1]:3129\n"
	                             "allow = 10.0.0.0/8,192.168.1.7 fd00::/8 ; inline comment\n"
	                             "state_dir = /srv/muxd\n"
	                             "log_level = debug\n"
	                             "access_log = /var/log/muxd.log\n"
	                             "via = no\n"
	                             "max_clients = 10\n"
	                             "shutdown_timeout = 0\n"
	                             "connect_ports = 443 8443,22\n"
	                             "tunnel_idle_timeout = 2h\n"
	                             "request_header_timeout = 1500ms\n"
	                             "client_idle_timeout = 1s\n"
	                             "client_timeout = 2m\n"
	                             "\n"
	                             "[pool]\n"
	                             "idle_timeout = 5\n"
	                             "max_idle_per_origin = 0\n"
	                             "max_idle = 7\n"
	                             "max_connections = 8\n"
	                             "max_h1_per_origin = 9\n"
	                             "max_h2_per_origin = 2\n"
	                             "max_requests_per_connection = 100\n"
	                             "max_connection_age = 1m\n"
	                             "connect_timeout = 1500ms\n"
	                             "h2 = off\n"
	                             "h3 = false\n"
	                             "h3_timeout = 1s\n"
	                             "altsvc_file = off\n");
	ck_assert_uint_eq(cfg->nlisten, 2);
	ck_assert_str_eq(cfg->listen[0].text, "0.0.0.0:8080");
	ck_assert_str_eq(cfg->listen[1].text, "[2001:db8::1]:3129");
	ck_assert_uint_eq(cfg->nallow, 3);
	ck_assert_int_eq(cfg->allow[1].family, AF_INET);
	ck_assert_int_eq(cfg->allow[1].prefix, 32);
	ck_assert_int_eq(cfg->allow[2].family, AF_INET6);
	ck_assert_int_eq(cfg->allow[2].prefix, 8);
	ck_assert_str_eq(cfg->state_dir, "/srv/muxd");
	ck_assert_int_eq(cfg->log_level, LOG_DEBUG);
	ck_assert_str_eq(cfg->access_log, "/var/log/muxd.log");
	ck_assert(!cfg->via);
	ck_assert_uint_eq(cfg->max_clients, 10);
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 0);
	ck_assert_uint_eq(cfg->nconnect_ports, 3);
	ck_assert_uint_eq(cfg->connect_ports[2], 22);
	ck_assert_uint_eq(cfg->tunnel_idle_timeout_ms, 7200000);
	ck_assert_uint_eq(cfg->request_header_timeout_ms, 1500);
	ck_assert_uint_eq(cfg->client_idle_timeout_ms, 1000);
	ck_assert_uint_eq(cfg->client_timeout_ms, 120000);
	ck_assert_uint_eq(cfg->idle_timeout_ms, 5000);
	ck_assert_uint_eq(cfg->max_idle_per_origin, 0);
	ck_assert_uint_eq(cfg->max_idle, 7);
	ck_assert_uint_eq(cfg->max_connections, 8);
	ck_assert_uint_eq(cfg->max_h1_per_origin, 9);
	ck_assert_uint_eq(cfg->max_h2_per_origin, 2);
	ck_assert_uint_eq(cfg->max_requests_per_connection, 100);
	ck_assert_uint_eq(cfg->max_connection_age_ms, 60000);
	ck_assert_uint_eq(cfg->connect_timeout_ms, 1500);
	ck_assert(!cfg->h2 && !cfg->h3);
	ck_assert_uint_eq(cfg->h3_timeout_ms, 1000);
	ck_assert_ptr_null(cfg->altsvc_file);
	ck_assert_ptr_nonnull(cfg->file);
	config_unref(cfg);
}
END_TEST

START_TEST(value_forms)
{
	struct config *cfg = load_ok("[muxd]\n"
	                             "state_dir =\n"
	                             "log_level = WARN\n"
	                             "access_log = stderr\n"
	                             "via = 1\n"
	                             "connect_ports =\n"
	                             "listen = 127.0.0.1:1\n"
	                             "         [::]:2\n" /* continuation extends a list */
	                             "[pool]\n"
	                             "max_connection_age = off\n"
	                             "altsvc_file = /abs/alt\n"
	                             "h2 = Yes\n"
	                             "h3 = 0\n");
	struct config *def = config_defaults();
	ck_assert_str_eq(cfg->state_dir, def->state_dir);
	ck_assert_int_eq(cfg->log_level, LOG_WARN);
	ck_assert_str_eq(cfg->access_log, "stderr");
	ck_assert(cfg->via && cfg->h2 && !cfg->h3);
	ck_assert_uint_eq(cfg->nconnect_ports, 0);
	ck_assert(!config_port_allowed(cfg, 443));
	ck_assert_uint_eq(cfg->nlisten, 2);
	ck_assert_str_eq(cfg->listen[1].text, "[::]:2");
	ck_assert_uint_eq(cfg->max_connection_age_ms, 0);
	ck_assert_str_eq(cfg->altsvc_file, "/abs/alt");
	config_unref(def);
	config_unref(cfg);
}
END_TEST

START_TEST(durations)
{
	uint64_t ms = 1;
	ck_assert(config_parse_duration("90s", &ms) && ms == 90000);
	ck_assert(config_parse_duration("300ms", &ms) && ms == 300);
	ck_assert(config_parse_duration("10m", &ms) && ms == 600000);
	ck_assert(config_parse_duration("2h", &ms) && ms == 7200000);
	ck_assert(config_parse_duration("30", &ms) && ms == 30000);
	ck_assert(config_parse_duration("0ms", &ms) && ms == 0);
	static const char *const bad[] = {"",
	                                  "abc",
	                                  "-1",
	                                  "1.5s",
	                                  "s",
	                                  "10 s",
	                                  " 10",
	                                  "10x",
	                                  "1d",
	                                  "+5s",
	                                  "10msx",
	                                  "10S",
	                                  "99999999999999999999",
	                                  "18446744073709551615h"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		ck_assert_msg(!config_parse_duration(bad[i], &ms), "accepted '%s'", bad[i]);
}
END_TEST

/* Durations in the file are bounded (365 days), whatever the key's kind; the
 * error names file, line and key. */
START_TEST(duration_bound)
{
	struct config *cfg = load_ok("[muxd]\nshutdown_timeout = 31536000000ms\n"
	                             "[pool]\nresponse_timeout = 8760h\n"
	                             "max_connection_age = 525600m\n"
	                             "idle_timeout = 31536000\n");
	ck_assert_uint_eq(cfg->shutdown_timeout_ms, 31536000000ULL);
	ck_assert_uint_eq(cfg->response_timeout_ms, 31536000000ULL);
	ck_assert_uint_eq(cfg->max_connection_age_ms, 31536000000ULL);
	ck_assert_uint_eq(cfg->idle_timeout_ms, 31536000000ULL);
	config_unref(cfg);
	load_bad("[pool]\nresponse_timeout = 8761h\n",
	         ":2: [pool] response_timeout: duration '8761h' too long (expected at most 8760h, "
	         "365 days)");
	load_bad("[muxd]\n\nshutdown_timeout = 31536000001ms\n",
	         ":3: [muxd] shutdown_timeout: duration '31536000001ms' too long (expected at most "
	         "8760h, 365 days)");
	load_bad("[pool]\nmax_connection_age = 525601m\n",
	         ":2: [pool] max_connection_age: duration '525601m' too long (expected at most "
	         "8760h, 365 days)");
	load_bad("[pool]\nconnect_timeout = 18446744073709551\n",
	         ":2: [pool] connect_timeout: duration '18446744073709551' too long (expected at "
	         "most 8760h, 365 days)");
	load_bad("[muxd]\ntunnel_idle_timeout = 5124095576030431h\n",
	         ":2: [muxd] tunnel_idle_timeout: duration '5124095576030431h' too long (expected "
	         "at most 8760h, 365 days)");
}
END_TEST

START_TEST(addr_port)
{
	struct config_listen l;
	ck_assert(config_parse_addr_port("127.0.0.1:3128", &l));
	ck_assert_str_eq(l.text, "127.0.0.1:3128");
	ck_assert_uint_eq(l.addr_len, sizeof(struct sockaddr_in));
	ck_assert_uint_eq(ntohs(((struct sockaddr_in *)&l.addr)->sin_port), 3128);
	ck_assert(config_parse_addr_port("[0:0::1]:65535", &l));
	ck_assert_str_eq(l.text, "[::1]:65535");
	ck_assert_uint_eq(l.addr_len, sizeof(struct sockaddr_in6));
	static const char *const bad[] = {
	    "127.0.0.1",     "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:65536",
	    "::1:3128",      "[::1]3128",  "[::1]",        "localhost:3128",
	    "[127.0.0.1]:1", ":3128",      "1.2.3.4:80x",  "[fe80::1%eth0]:1",
	    "[]:1",          "1.2.3.4:-1"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		ck_assert_msg(!config_parse_addr_port(bad[i], &l), "accepted '%s'", bad[i]);
}
END_TEST

START_TEST(cidr)
{
	struct config_cidr c;
	static const char *const bad[] = {"",          "10.0.0.0/33", "::/129",
	                                  "10.0.0.0/", "10/8",        "10.0.0.0/8x",
	                                  "/8",        "x",           "10.0.0.0/-1"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		ck_assert_msg(!config_parse_cidr(bad[i], &c), "accepted '%s'", bad[i]);

	ck_assert(match("127.0.0.0/8", "127.1.2.3"));
	ck_assert(!match("127.0.0.0/8", "128.0.0.1"));
	ck_assert(match("10.1.2.3/8", "10.200.0.1")); /* host bits are masked */
	ck_assert(match("192.168.1.7", "192.168.1.7"));
	ck_assert(!match("192.168.1.7", "192.168.1.8"));
	ck_assert(match("192.168.0.0/23", "192.168.1.255"));
	ck_assert(!match("192.168.0.0/23", "192.168.2.0"));
	ck_assert(match("0.0.0.0/0", "8.8.8.8"));
	ck_assert(!match("0.0.0.0/0", "2001:db8::1"));
	ck_assert(match("::1", "::1"));
	ck_assert(!match("::1", "::2"));
	ck_assert(match("2001:db8::/32", "2001:db8:ffff::1"));
	ck_assert(!match("2001:db8::/33", "2001:db8:8000::1"));
	ck_assert(match("fe80::/10", "febf::1"));
	ck_assert(!match("::/0", "10.0.0.1"));
	/* IPv4-mapped clients match IPv4 networks, and mapped networks match IPv4 */
	ck_assert(match("127.0.0.0/8", "::ffff:127.0.0.1"));
	ck_assert(!match("127.0.0.0/8", "::ffff:128.0.0.1"));
	ck_assert(!match("::1", "::ffff:127.0.0.1"));
	ck_assert(match("::ffff:10.0.0.0/104", "10.9.9.9"));
	ck_assert(match("::ffff:10.0.0.0/104", "::ffff:10.9.9.9"));

	struct sockaddr_storage unix_sa = {.ss_family = AF_UNIX};
	ck_assert(config_parse_cidr("0.0.0.0/0", &c));
	ck_assert(!config_cidr_match(&c, (struct sockaddr *)&unix_sa));
}
END_TEST

START_TEST(ports)
{
	struct config *cfg = load_ok("[muxd]\nconnect_ports = 443,  8443 , 1 65535\n");
	ck_assert_uint_eq(cfg->nconnect_ports, 4);
	ck_assert(config_port_allowed(cfg, 443));
	ck_assert(config_port_allowed(cfg, 8443));
	ck_assert(config_port_allowed(cfg, 1));
	ck_assert(config_port_allowed(cfg, 65535));
	ck_assert(!config_port_allowed(cfg, 80));
	config_unref(cfg);
	load_bad("[muxd]\nconnect_ports = 443 0\n",
	         ":2: [muxd] connect_ports: bad port '0' (expected 1 to 65535)");
	load_bad("[muxd]\nconnect_ports = 70000\n",
	         ":2: [muxd] connect_ports: bad port '70000' (expected 1 to 65535)");
}
END_TEST

START_TEST(list_replaces_default)
{
	struct config *cfg = load_ok("[muxd]\nallow = 10.0.0.0/8\nlisten=[::1]:1\n");
	ck_assert_uint_eq(cfg->nallow, 1);
	ck_assert_uint_eq(cfg->nlisten, 1);
	ck_assert_str_eq(cfg->listen[0].text, "[::1]:1");
	config_unref(cfg);
}
END_TEST

START_TEST(bad_values)
{
	load_bad("[pool]\nidle_timeout = abc\n",
	         ":2: [pool] idle_timeout: bad duration 'abc' (expected a number with ms, s, m "
	         "or h)");
	load_bad("[pool]\nconnect_timeout = 0s\n",
	         ":2: [pool] connect_timeout: bad duration '0s' (expected more than 0)");
	load_bad("[pool]\nmax_connection_age = never\n",
	         ":2: [pool] max_connection_age: bad duration 'never' (expected off or a number "
	         "with ms, s, m or h)");
	load_bad("[pool]\nh2 = maybe\n",
	         ":2: [pool] h2: bad boolean 'maybe' (expected on, off, yes, no, true, false, 1 or "
	         "0)");
	load_bad("[muxd]\nvia = on # not a comment\n",
	         ":2: [muxd] via: bad boolean 'on # not a comment' (expected on, off, yes, no, "
	         "true, false, 1 or 0)");
	load_bad("[muxd]\nmax_clients = 0\n",
	         ":2: [muxd] max_clients: bad number '0' (expected an integer from 1 to 1000000)");
	load_bad("[pool]\nmax_connections = -1\n",
	         ":2: [pool] max_connections: bad number '-1' (expected an integer from 1 to "
	         "1000000)");
	load_bad("[pool]\nmax_h1_per_origin = 0\n",
	         ":2: [pool] max_h1_per_origin: bad number '0' (expected an integer from 1 to "
	         "100000)");
	load_bad("[pool]\nmax_h2_per_origin = 0\n",
	         ":2: [pool] max_h2_per_origin: bad number '0' (expected an integer from 1 to "
	         "10000)");
	load_bad("[pool]\nmax_idle = 99999999999999999999\n",
	         ":2: [pool] max_idle: bad number '99999999999999999999' (expected an integer from "
	         "0 to 1000000)");
	load_bad("[muxd]\nlog_level = trace\n",
	         ":2: [muxd] log_level: bad log level 'trace' (expected error, warn, info or "
	         "debug)");
	load_bad("[muxd]\naccess_log =\n",
	         ":2: [muxd] access_log: empty value (expected off, stderr or a path)");
	load_bad("[pool]\naltsvc_file =\n",
	         ":2: [pool] altsvc_file: empty value (expected off or a path)");
	load_bad("[muxd]\nstate_dir = var/lib\n",
	         ":2: [muxd] state_dir: relative path 'var/lib' (expected an absolute path, or "
	         "empty)");
	load_bad("[muxd]\nlisten = 127.0.0.1:3128 localhost:3128\n",
	         ":2: [muxd] listen: bad address 'localhost:3128' (expected ADDR:PORT with a "
	         "numeric address, IPv6 in brackets)");
	load_bad("[muxd]\nlisten =\n", ":2: [muxd] listen: no addresses (expected 1 to 16)");
	load_bad("[muxd]\nallow = 10.0.0.0/40\n",
	         ":2: [muxd] allow: bad network '10.0.0.0/40' (expected an address or "
	         "ADDR/PREFIX)");
	load_bad("[muxd]\nallow = ,\n",
	         ":2: [muxd] allow: empty list (expected at least one network: an address or "
	         "ADDR/PREFIX)");
	load_bad("[muxd]\nconnect_ports = 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 "
	         "22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47\n"
	         "  48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65\n",
	         ":3: [muxd] connect_ports: too many entries (expected at most 64)");
}
END_TEST

START_TEST(structure_errors)
{
	load_bad("[muxd]\nvia = on\n\n[intercepts]\nenabled = on\n",
	         ":4: [intercepts]: unknown section");
	load_bad("[route *]\nproxyx = direct\n", ":2: [route *] proxyx: unknown key");
	load_bad("[pool]\nfoo = 1\n", ":2: [pool] foo: unknown key");
	load_bad("[muxd]\nidle_timeout = 1s\n", ":2: [muxd] idle_timeout: unknown key");
	load_bad("via = on\n", ":1: via: not in a section (expected [muxd] or [pool] above it)");
	load_bad("[muxd]\nvia = on\nvia = off\n",
	         ":3: [muxd] via: given twice (expected once; first on line 2)");
	load_bad("[muxd]\nvia = on\n  off\n",
	         ":3: [muxd] via: continuation line (expected one value on the key's line)");
	load_bad("[muxd]\njust words\n",
	         ":2: syntax error (expected key = value, [section] or ; comment)");
	load_bad("[muxd]\n[pool ; no bracket]\n",
	         ":2: syntax error (expected key = value, [section] or ; comment)");
	char line[400];
	snprintf(line, sizeof line, "[muxd]\n; %0300d\nvia = on\n", 0);
	load_bad(line, ":2: line too long (expected at most 197 characters)");
}
END_TEST

START_TEST(all_errors_reported)
{
	struct config_errors errs;
	struct config *cfg = load_text("# several problems\n"  /* 1 */
	                               "[muxd]\n"              /* 2 */
	                               "max_clients = lots\n"  /* 3 */
	                               "colour = blue\n"       /* 4 */
	                               "no equals sign here\n" /* 5 */
	                               "via = on\n"            /* 6 */
	                               "[pool]\n"              /* 7 */
	                               "idle_timeout = abc\n"  /* 8 */
	                               "h3 = on ; fine\n"      /* 9 */
	                               "[foo]\n"               /* 10 */
	                               "bar = 1\n"             /* 11 */
	                               "[pool]\n"              /* 12 */
	                               "h3_timeout = 5 ms\n",  /* 13 */
	                               &errs);
	ck_assert_ptr_null(cfg);
	static const char *const want[] = {
	    ":3: [muxd] max_clients: bad number 'lots' (expected an integer from 1 to 1000000)",
	    ":4: [muxd] colour: unknown key",
	    ":5: syntax error (expected key = value, [section] or ; comment)",
	    ":8: [pool] idle_timeout: bad duration 'abc' (expected a number with ms, s, m or h)",
	    ":10: [foo]: unknown section",
	    ":13: [pool] h3_timeout: bad duration '5 ms' (expected a number with ms, s, m or h)",
	};
	ck_assert_uint_eq(errs.n, sizeof want / sizeof want[0]);
	for (size_t i = 0; i < errs.n; i++) {
		ck_assert_msg(strncmp(errs.lines[i], tmp_path, strlen(tmp_path)) == 0, "%s",
		              errs.lines[i]);
		ck_assert_str_eq(errs.lines[i] + strlen(tmp_path), want[i]);
	}
	config_errors_free(&errs);
	ck_assert_uint_eq(errs.n, 0);
	ck_assert_ptr_null(errs.lines);
}
END_TEST

START_TEST(missing_file)
{
	struct config_errors errs;
	ck_assert_ptr_null(config_load("/nonexistent/muxd.conf", &errs));
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_str_eq(errs.lines[0], "/nonexistent/muxd.conf: cannot open: No such file or "
	                                "directory");
	config_errors_free(&errs);

	ck_assert_ptr_null(config_load("/", &errs));
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_str_eq(errs.lines[0], "/: cannot read: Is a directory");
	config_errors_free(&errs);

	ck_assert_ptr_null(config_load("/nonexistent", NULL)); /* errs is optional */
}
END_TEST

START_TEST(empty_file)
{
	struct config *cfg = load_ok("");
	struct config *def = config_defaults();
	ck_assert_str_eq(cfg->file, tmp_path);
	ck_assert_uint_eq(cfg->max_clients, def->max_clients);
	ck_assert_str_eq(cfg->listen[0].text, def->listen[0].text);
	config_unref(def);
	config_unref(cfg);
}
END_TEST

/* config_load_buffer: the same configuration as from a file with that text,
 * messages naming the given name; any bytes, no terminating NUL needed. */
START_TEST(load_buffer)
{
	static const char text[] = "[muxd]\nmax_clients = 7\nlisten = 127.0.0.1:1 [::1]:2\n"
	                           "[route *.example]\nverify = off\n";
	struct config_errors errs;
	struct config *file = load_ok(text);
	struct config *buf = config_load_buffer("mem.conf", text, strlen(text), &errs);

	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(errs.n, 0);
	ck_assert_str_eq(buf->file, "mem.conf");
	ck_assert_uint_eq(buf->max_clients, 7);
	ck_assert_uint_eq(buf->nlisten, file->nlisten);
	ck_assert_str_eq(buf->listen[1].text, file->listen[1].text);
	ck_assert_uint_eq(buf->nroutes, 1);
	ck_assert_int_eq(buf->routes[0].verify, 0);
	config_unref(buf);
	config_unref(file);

	/* only len bytes count: the rest of the line is not read */
	buf = config_load_buffer("mem.conf", "[pool]\nh2 = off\nbogus", 16, &errs);
	ck_assert_ptr_nonnull(buf);
	ck_assert(!buf->h2);
	config_unref(buf);

	ck_assert_ptr_null(
	    config_load_buffer("mem.conf", "[muxd]\nvia = maybe\njunk\n", 24, &errs));
	ck_assert_uint_eq(errs.n, 2);
	ck_assert_str_eq(errs.lines[0], "mem.conf:2: [muxd] via: bad boolean 'maybe' (expected on, "
	                                "off, yes, no, true, false, 1 or 0)");
	ck_assert_str_eq(errs.lines[1], "mem.conf:3: syntax error (expected key = value, [section] "
	                                "or ; comment)");
	config_errors_free(&errs);

	buf = config_load_buffer("empty", "", 0, NULL); /* defaults */
	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(buf->max_clients, 4096);
	config_unref(buf);
}
END_TEST

/* A route's keys belong to the route its header named, also when the header
 * has spaces around the pattern or is longer than inih's section names
 * (seen while writing fuzz_config: the keys were dropped silently). */
START_TEST(route_header_forms)
{
	static const char long_host[] =
	    "a-host-name-longer-than-inih-keeps-for-a-section.example.com";
	char text[400], want[400];
	struct config *cfg = load_ok("[route  *.example.com ]\nverify = off\n"
	                             "[route 10.0.0.0/8\t]\nh2 = off\n");

	ck_assert_uint_eq(cfg->nroutes, 2);
	ck_assert_str_eq(cfg->routes[0].pattern, "*.example.com");
	ck_assert_int_eq(cfg->routes[0].verify, 0);
	ck_assert_str_eq(cfg->routes[1].pattern, "10.0.0.0/8");
	ck_assert_int_eq(cfg->routes[1].h2, 0);
	config_unref(cfg);

	snprintf(text, sizeof(text), "[route %s]\nproxy = http://parent:3128\n", long_host);
	cfg = load_ok(text);
	ck_assert_uint_eq(cfg->nroutes, 1);
	ck_assert_int_eq(cfg->routes[0].proxy_set, 1);
	ck_assert_uint_eq(cfg->routes[0].nhops, 1);
	ck_assert_str_eq(cfg->routes[0].hops[0].host, "parent");
	config_unref(cfg);

	snprintf(text, sizeof(text), "[route %s ]\nverify = maybe\n", long_host);
	snprintf(want, sizeof(want),
	         ":2: [route %s] verify: bad boolean 'maybe' (expected on, off, yes, no, true, "
	         "false, 1 or 0)",
	         long_host);
	load_bad(text, want);
}
END_TEST

/* A list token too long for the parser's buffer is an error, never a cut
 * that happens to be valid (a network widened to /0, a port 0). */
START_TEST(long_tokens)
{
	char text[300], want[300];

	snprintf(text, sizeof(text), "[muxd]\nallow = 127.0.0.0/%0*d\n", 90, 8);
	snprintf(want, sizeof(want),
	         ":2: [muxd] allow: bad network '127.0.0.0/%0*d...' (expected an address or "
	         "ADDR/PREFIX)",
	         66, 0);
	load_bad(text, want);
	snprintf(text, sizeof(text), "[muxd]\nlisten = 127.0.0.1:%0*d\n", 90, 3128);
	snprintf(want, sizeof(want),
	         ":2: [muxd] listen: bad address '127.0.0.1:%0*d...' (expected ADDR:PORT with a "
	         "numeric address, IPv6 in brackets)",
	         66, 0);
	load_bad(text, want);
	snprintf(text, sizeof(text), "[muxd]\nconnect_ports = %0*d\n", 90, 443);
	snprintf(want, sizeof(want),
	         ":2: [muxd] connect_ports: bad port '%0*d...' (expected 1 to 65535)", 76, 0);
	load_bad(text, want);
}
END_TEST

/* A route's proxy list may continue on indented lines, like every list
 * value; other route keys take one value (the lines were dropped silently). */
START_TEST(route_continuation)
{
	struct config *cfg = load_ok("[route *]\nproxy = http://a:1\n  http://b:2, socks5://c\n"
	                             "verify = off\n");

	ck_assert_uint_eq(cfg->routes[0].nhops, 3);
	ck_assert_str_eq(cfg->routes[0].hops[1].host, "b");
	ck_assert_int_eq(cfg->routes[0].hops[2].kind, HOP_SOCKS5);
	ck_assert_int_eq(cfg->routes[0].verify, 0);
	config_unref(cfg);

	load_bad("[route *]\nverify = on\n  off\n",
	         ":3: [route *] verify: continuation line (expected one value on the key's line)");
	load_bad("[route *]\nproxy = direct\n  http://a:1\n",
	         ":3: [route *] proxy: continuation line (expected one value on the key's line)");
	load_bad("[route *]\nproxy = http://a:1 http://b:2\n  http://c:3 http://d:4 http://e:5\n",
	         ":3: [route *] proxy: too many hops (expected at most 4)");
}
END_TEST

/* client_cert and client_key are read whole at load: a FIFO or a device
 * would block or never end (found by fuzz_config: client_key = /dev/full),
 * a huge file is no PEM key. */
START_TEST(key_file_kinds)
{
	char fifo[64] = "/tmp/test_config.fifo.XXXXXX", big[] = "/tmp/test_config.big.XXXXXX";
	char text[300], want[300];
	struct config_errors errs;
	int fd = mkstemp(big);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 2 * 1024 * 1024), 0);
	close(fd);
	ck_assert_ptr_nonnull(mkdtemp(fifo));
	strcat(fifo, "/p");
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);

	snprintf(text, sizeof(text), "[route *]\nclient_cert = %s\nclient_key = %s\n", fifo, big);
	ck_assert_ptr_null(load_text(text, &errs));
	ck_assert_uint_eq(errs.n, 2);
	snprintf(want, sizeof(want),
	         ":2: [route *] client_cert: cannot read '%s': not a regular file (expected a PEM "
	         "file)",
	         fifo);
	ck_assert_str_eq(errs.lines[0] + strlen(tmp_path), want);
	snprintf(want, sizeof(want),
	         ":3: [route *] client_key: cannot read '%s': larger than 1 MiB (expected a PEM "
	         "file)",
	         big);
	ck_assert_str_eq(errs.lines[1] + strlen(tmp_path), want);
	config_errors_free(&errs);
	unlink(fifo);
	*strrchr(fifo, '/') = '\0';
	rmdir(fifo);
	unlink(big);
}
END_TEST

START_TEST(example_file)
{
	struct config_errors errs;
	struct config *cfg = config_load("conf/muxd.conf", &errs);
	ck_assert_msg(cfg, "conf/muxd.conf: %s", errs.n ? errs.lines[0] : "?");
	struct config *def = config_defaults();
	ck_assert_uint_eq(cfg->nlisten, def->nlisten);
	ck_assert_str_eq(cfg->listen[1].text, def->listen[1].text);
	ck_assert_uint_eq(cfg->nallow, def->nallow);
	ck_assert_str_eq(cfg->state_dir, def->state_dir);
	ck_assert_int_eq(cfg->log_level, def->log_level);
	ck_assert_uint_eq(cfg->tunnel_idle_timeout_ms, def->tunnel_idle_timeout_ms);
	ck_assert_uint_eq(cfg->h3_timeout_ms, def->h3_timeout_ms);
	ck_assert_uint_eq(cfg->max_connection_age_ms, def->max_connection_age_ms);
	ck_assert_str_eq(cfg->altsvc_file, def->altsvc_file);
	ck_assert_str_eq(cfg->upgrade, def->upgrade);
	config_unref(def);
	config_unref(cfg);
}
END_TEST

START_TEST(upgrade_list)
{
	struct config *cfg = config_defaults();
	ck_assert_str_eq(cfg->upgrade, "websocket");
	config_unref(cfg);
	cfg = load_ok("[muxd]\nupgrade = WebSocket, h2c  foo_bar\n");
	ck_assert_str_eq(cfg->upgrade, "websocket,h2c,foo_bar");
	config_unref(cfg);
	const char *none[] = {"none", "off", "NONE", ""};
	for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
		char text[64];
		snprintf(text, sizeof(text), "[muxd]\nupgrade = %s\n", none[i]);
		cfg = load_ok(text);
		ck_assert_str_eq(cfg->upgrade, "");
		config_unref(cfg);
	}
	load_bad("[muxd]\nupgrade = websocket HTTP/2.0\n",
	         ":2: [muxd] upgrade: bad protocol name 'HTTP/2.0' (expected names such as "
	         "websocket, or none)");
}
END_TEST

START_TEST(set_listen)
{
	struct config *cfg = config_defaults();
	char err[256];
	const char *good[] = {"0.0.0.0:8080", "[::]:8080", "10.0.0.1:1"};
	const char *bad[] = {"0.0.0.0:8080", "localhost:1"};

	ck_assert(config_set_listen(cfg, good, 3, err, sizeof err));
	ck_assert_uint_eq(cfg->nlisten, 3);
	ck_assert_str_eq(cfg->listen[1].text, "[::]:8080");
	ck_assert(!config_set_listen(cfg, bad, 2, err, sizeof err));
	ck_assert_str_eq(err, "bad address 'localhost:1' (expected ADDR:PORT with a numeric "
	                      "address, IPv6 in brackets)");
	ck_assert_uint_eq(cfg->nlisten, 3); /* unchanged on error */
	ck_assert(!config_set_listen(cfg, good, 0, err, sizeof err));
	config_unref(cfg);
}
END_TEST

START_TEST(refcount)
{
	struct config *cfg = load_ok("[muxd]\naccess_log = /tmp/a.log\n");
	ck_assert_ptr_eq(config_ref(cfg), cfg);
	ck_assert_int_eq(cfg->refs, 2);
	config_unref(cfg);
	ck_assert_int_eq(cfg->refs, 1);
	ck_assert_str_eq(cfg->access_log, "/tmp/a.log");
	config_unref(cfg); /* freed here: ASan/LSan checks there is no leak */
	config_unref(NULL);
}
END_TEST

/* [pool] session_file (default sessions.cache, off) and [route] early_data
 * (default on, inherited from [route *]). */
START_TEST(session_file_and_early_data)
{
	struct config *def = config_defaults(), *cfg;
	struct route r;

	ck_assert_str_eq(def->session_file, "sessions.cache");
	route_for(def, "example.com", 443, &r);
	ck_assert(r.early_data);
	config_unref(def);
	cfg = load_ok("[pool]\nsession_file = off\n[route *]\nearly_data = off\n"
	              "[route a.example]\nearly_data = on\n");
	ck_assert_ptr_null(cfg->session_file);
	route_for(cfg, "example.com", 443, &r);
	ck_assert(!r.early_data);
	route_for(cfg, "a.example", 443, &r);
	ck_assert(r.early_data);
	config_unref(cfg);
	cfg = load_ok("[pool]\nsession_file = /abs/sessions\n");
	ck_assert_str_eq(cfg->session_file, "/abs/sessions");
	config_unref(cfg);
	load_bad("[route *]\nearly_data = maybe\n",
	         ":2: [route *] early_data: bad boolean 'maybe' (expected on, off, yes, no, true, "
	         "false, 1 or 0)");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");

	tcase_add_test(tc, defaults);
	tcase_add_test(tc, state_dir_resolution);
	tcase_add_test(tc, every_key);
	tcase_add_test(tc, value_forms);
	tcase_add_test(tc, durations);
	tcase_add_test(tc, duration_bound);
	tcase_add_test(tc, addr_port);
	tcase_add_test(tc, cidr);
	tcase_add_test(tc, ports);
	tcase_add_test(tc, list_replaces_default);
	tcase_add_test(tc, bad_values);
	tcase_add_test(tc, structure_errors);
	tcase_add_test(tc, all_errors_reported);
	tcase_add_test(tc, missing_file);
	tcase_add_test(tc, empty_file);
	tcase_add_test(tc, load_buffer);
	tcase_add_test(tc, route_header_forms);
	tcase_add_test(tc, long_tokens);
	tcase_add_test(tc, route_continuation);
	tcase_add_test(tc, key_file_kinds);
	tcase_add_test(tc, example_file);
	tcase_add_test(tc, upgrade_list);
	tcase_add_test(tc, set_listen);
	tcase_add_test(tc, refcount);
	tcase_add_test(tc, session_file_and_early_data);
	suite_add_tcase(s, tc);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
