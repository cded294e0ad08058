/*
 * Fuzz target for src/config.c: the input is a configuration file's text,
 * loaded with config_load_buffer (inih, the line-counting reader, every key's
 * value parser, route sections, hops). Then each of its first lines goes
 * through the value parsers config.h exports, with round-trip checks. Any
 * broken invariant aborts.
 */
#include "config.h"

#include "fuzz.h"
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz.conf"
#define DAY_MS (24ULL * 3600 * 1000)

static bool terminated(const char *s, size_t size)
{
	return memchr(s, '\0', size) != NULL;
}

static void check_cidr(const struct config_cidr *c)
{
	CHECK(c->family == AF_INET || c->family == AF_INET6);
	CHECK(c->prefix >= 0 && c->prefix <= (c->family == AF_INET ? 32 : 128));
}

/* The network's own address matches it (but a network of IPv4-mapped
 * addresses shorter than /96: clients mapped to IPv4 are compared as IPv4). */
static void check_cidr_self_match(const struct config_cidr *c)
{
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	struct sockaddr_storage ss = {0};

	if (c->family == AF_INET6 && c->prefix < 96 && memcmp(c->addr, v4mapped, 12) == 0)
		return;
	if (c->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, c->addr, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, c->addr, 16);
	}
	CHECK(config_cidr_match(c, (struct sockaddr *)&ss));
}

static void check_listen(const struct config_listen *l)
{
	struct config_listen again;

	CHECK(terminated(l->text, sizeof(l->text)) && l->text[0]);
	CHECK(l->addr.ss_family == AF_INET || l->addr.ss_family == AF_INET6);
	CHECK(l->addr_len == (l->addr.ss_family == AF_INET ? sizeof(struct sockaddr_in)
	                                                   : sizeof(struct sockaddr_in6)));
	/* the normalised text parses to the same address and text */
	CHECK(config_parse_addr_port(l->text, &again));
	CHECK(again.addr_len == l->addr_len && memcmp(&again.addr, &l->addr, l->addr_len) == 0);
	CHECK(strcmp(again.text, l->text) == 0);
}

static void check_hop(const struct config_hop *h)
{
	CHECK(h->kind == HOP_HTTP || h->kind == HOP_HTTPS || h->kind == HOP_SOCKS5 ||
	      h->kind == HOP_SOCKS5H);
	CHECK(terminated(h->host, sizeof(h->host)) && h->host[0] && h->port > 0);
	CHECK((h->user == NULL) == (h->pass == NULL));
	for (const char *p = h->host; *p; p++)
		CHECK(!isupper((unsigned char)*p));
}

static void check_pattern(const struct config_route *r)
{
	CHECK(terminated(r->host, sizeof(r->host)));
	switch (r->kind) {
	case ROUTE_ANY:
		break;
	case ROUTE_HOST:
		CHECK(r->host[0]);
		break;
	case ROUTE_HOST_PORT:
		CHECK(r->host[0] && r->port > 0);
		break;
	case ROUTE_SUFFIX:
		CHECK(r->host[0] == '.' && r->host[1]);
		break;
	case ROUTE_CIDR:
		check_cidr(&r->cidr);
		break;
	default:
		CHECK(0);
	}
	for (const char *p = r->host; *p; p++)
		CHECK(!isupper((unsigned char)*p));
}

static void check_route(const struct config_route *r)
{
	CHECK(r->pattern && r->line > 0);
	check_pattern(r);
	CHECK(r->verify >= -1 && r->verify <= 1 && r->h2 >= -1 && r->h2 <= 1 && r->h3 >= -1 &&
	      r->h3 <= 1);
	CHECK(r->nhops <= CONFIG_MAX_HOPS);
	CHECK(r->proxy_set == -1 || r->proxy_set == 1);
	if (r->proxy_set == -1)
		CHECK(r->nhops == 0 && !r->proxy_env);
	for (size_t i = 0; i < r->nhops; i++)
		check_hop(&r->hops[i]);
	CHECK(!r->client_cert == !r->client_key); /* both or neither, or the load failed */
	CHECK(!r->ca_file == !r->ca_file_id && !r->client_cert == !r->client_cert_id);
}

static void check_config(const struct config *c)
{
	CHECK(c->refs == 1 && c->file && strcmp(c->file, NAME) == 0);
	CHECK(c->nlisten >= 1 && c->nlisten <= CONFIG_MAX_LISTEN);
	for (size_t i = 0; i < c->nlisten; i++)
		check_listen(&c->listen[i]);
	CHECK(c->nallow >= 1 && c->nallow <= CONFIG_MAX_ALLOW);
	for (size_t i = 0; i < c->nallow; i++) {
		check_cidr(&c->allow[i]);
		check_cidr_self_match(&c->allow[i]);
	}
	CHECK(c->state_dir && c->state_dir[0] == '/');
	CHECK(c->log_level >= LOG_ERROR && c->log_level <= LOG_DEBUG);
	CHECK(!c->access_log || c->access_log[0]);
	CHECK(!c->altsvc_file || c->altsvc_file[0]);
	CHECK(c->deny_loopback_targets >= -1 && c->deny_loopback_targets <= 1);
	config_deny_loopback(c);
	CHECK(c->max_clients >= 1 && c->max_connections >= 1 && c->max_h1_per_origin >= 1 &&
	      c->max_h2_per_origin >= 1 && c->leaf_cache >= 1);
	CHECK(c->nconnect_ports <= CONFIG_MAX_PORTS && c->nintercept_ports <= CONFIG_MAX_PORTS);
	for (size_t i = 0; i < c->nconnect_ports; i++)
		CHECK(c->connect_ports[i] > 0 && config_port_allowed(c, c->connect_ports[i]));
	for (size_t i = 0; i < c->nintercept_ports; i++)
		CHECK(c->intercept_ports[i] > 0);
	/* durations: within 365 days; those that must be positive are */
	CHECK(c->shutdown_timeout_ms <= 365 * DAY_MS && c->max_connection_age_ms <= 365 * DAY_MS);
	CHECK(c->tunnel_idle_timeout_ms > 0 && c->tunnel_idle_timeout_ms <= 365 * DAY_MS);
	CHECK(c->idle_timeout_ms > 0 && c->idle_timeout_ms <= 365 * DAY_MS);
	CHECK(c->connect_timeout_ms > 0 && c->connect_timeout_ms <= 365 * DAY_MS);
	CHECK(c->response_timeout_ms > 0 && c->response_timeout_ms <= 365 * DAY_MS);
	CHECK(c->h3_timeout_ms > 0 && c->h3_timeout_ms <= 365 * DAY_MS);
	CHECK(c->nbypass <= CONFIG_MAX_BYPASS);
	for (size_t i = 0; i < c->nbypass; i++)
		check_pattern(&c->bypass[i]);
	CHECK(!c->nroutes == !c->routes);
	for (size_t i = 0; i < c->nroutes; i++) {
		check_route(&c->routes[i]);
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(c->routes[i].pattern, c->routes[j].pattern) != 0);
	}
}

static void check_errors(const struct config_errors *e)
{
	CHECK(e->n > 0 && e->lines);
	for (size_t i = 0; i < e->n; i++) {
		const char *l = e->lines[i];

		CHECK(l && strncmp(l, NAME ":", sizeof(NAME)) == 0 && l[sizeof(NAME)]);
	}
}

/* The exported value parsers on one line of the input. */
static void check_value(const char *s)
{
	struct config_listen l;
	struct config_cidr c;
	struct config_hop h;
	static struct config_route r;
	char why[256], again[32];
	uint64_t ms, ms2;

	if (config_parse_duration(s, &ms)) {
		CHECK(isdigit((unsigned char)s[0]));
		snprintf(again, sizeof(again), "%llums", (unsigned long long)ms);
		CHECK(config_parse_duration(again, &ms2) && ms2 == ms);
	}
	if (config_parse_addr_port(s, &l))
		check_listen(&l);
	if (config_parse_cidr(s, &c)) {
		check_cidr(&c);
		check_cidr_self_match(&c);
	}
	why[0] = '\0';
	if (config_parse_hop(s, &h, why, sizeof(why))) {
		check_hop(&h);
		config_hop_free(&h);
		CHECK(!h.user && !h.pass);
	} else {
		CHECK(why[0] && terminated(why, sizeof(why)) && !h.user && !h.pass);
	}
	if (config_parse_route_pattern(s, &r))
		check_pattern(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config_errors errs;
	struct config *cfg;
	char *text = malloc(size + 1), *line, *save = NULL;
	bool ok;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	cfg = config_load_buffer(NAME, (const char *)data, size, &errs);
	ok = cfg != NULL;
	if (cfg) {
		CHECK(errs.n == 0);
		check_config(cfg);
		config_unref(cfg);
	} else {
		check_errors(&errs);
	}
	config_errors_free(&errs);
	/* without an error list, the same verdict (on small inputs: a load is slow) */
	if (size < 256) {
		cfg = config_load_buffer(NAME, (const char *)data, size, NULL);
		CHECK((cfg != NULL) == ok);
		config_unref(cfg);
	}

	line = strtok_r(text, "\n", &save);
	for (int i = 0; line && i < 8; i++, line = strtok_r(NULL, "\n", &save))
		check_value(line);
	free(text);
	return 0;
}
