/*
 * admin — muxd's own pages: the HTML status page (/), the same data as JSON
 * (/status.json, described in docs/status-json.md), /metrics in the
 * Prometheus text format and /ca.pem. Rendering reads the root state only;
 * the one thing admin keeps is a ring of per-10-second samples of the request
 * and reuse totals for the chart on the status page.
 */
#include "admin.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "pool.h"
#include "tls/ca.h"

#define HISTORY_INTERVAL_S 10
#define HISTORY_LEN 61 /* ten minutes of intervals */

struct history_sample {
	struct timespec at;
	uint64_t requests, reuses;
};

struct admin_history {
	struct event *timer;
	struct timespec started;
	struct history_sample samples[HISTORY_LEN]; /* ring, oldest at head */
	unsigned head, n;
};

static double seconds_between(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static uint64_t requests_total(const struct metrics *mt)
{
	uint64_t n = 0;
	for (int p = 0; p < PROTO_COUNT; p++)
		n += mt->requests[p];
	return n;
}

static void history_sample_now(struct muxd *m, struct history_sample *s)
{
	clock_gettime(CLOCK_MONOTONIC, &s->at);
	s->requests = requests_total(&m->metrics);
	s->reuses = m->metrics.upstream_reuses;
}

static void history_push(struct admin_history *h, const struct history_sample *s)
{
	if (h->n == HISTORY_LEN) {
		h->samples[h->head] = *s;
		h->head = (h->head + 1) % HISTORY_LEN;
	} else {
		h->samples[(h->head + h->n) % HISTORY_LEN] = *s;
		h->n++;
	}
}

static const struct history_sample *history_at(const struct admin_history *h, unsigned i)
{
	return &h->samples[(h->head + i) % HISTORY_LEN];
}

/* The history, with its first sample (no timer yet). */
static struct admin_history *history_get(struct muxd *m)
{
	if (!m->history) {
		struct history_sample s;
		m->history = calloc(1, sizeof(*m->history));
		if (!m->history)
			return NULL;
		history_sample_now(m, &s);
		m->history->started = s.at;
		history_push(m->history, &s);
	}
	return m->history;
}

static void admin_tick(evutil_socket_t fd, short what, void *arg)
{
	struct muxd *m = arg;
	struct history_sample s;
	(void)fd;
	(void)what;
	history_sample_now(m, &s);
	history_push(m->history, &s);
}

void admin_start(struct muxd *m)
{
	struct timeval tv = {HISTORY_INTERVAL_S, 0};

	/* without memory for the history or its timer the pages still work,
	 * the chart just has no past */
	if (!history_get(m) || m->history->timer)
		return;
	m->history->timer = event_new(m->base, -1, EV_PERSIST, admin_tick, m);
	if (m->history->timer && event_add(m->history->timer, &tv) != 0) {
		event_free(m->history->timer);
		m->history->timer = NULL;
	}
}

void admin_stop(struct muxd *m)
{
	if (!m->history)
		return;
	if (m->history->timer)
		event_free(m->history->timer);
	free(m->history);
	m->history = NULL;
}

/* ---------------------------------------------------------------- snapshot */

struct conn_row {
	char *key, *host;
	char *hosts; /* served, space-separated */
	bool warm;
	uint16_t port;
	enum proto proto; /* PROTO_COUNT while connecting */
	char state[16];
	unsigned streams;
	uint64_t requests;
	double age_s, idle_s;
};

struct alt_row {
	char *origin, *alt_host;
	uint16_t alt_port;
	long expires_in_s, broken_for_s;
};

struct snapshot {
	struct conn_row *conns;
	size_t nconns, conns_cap;
	struct alt_row *alts;
	size_t nalts, alts_cap;
	bool oom;
	double uptime_s;
	unsigned clients; /* client connections, not counting the one asking */
};

static bool grow(void **arr, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return true;
	size_t ncap = *cap ? *cap * 2 : 16;
	void *p = realloc(*arr, ncap * elem);
	if (!p)
		return false;
	*arr = p;
	*cap = ncap;
	return true;
}

static void collect_conn(void *arg, const struct pool_conn_info *c)
{
	struct snapshot *s = arg;
	struct conn_row *r;

	if (s->oom || !grow((void **)&s->conns, &s->conns_cap, s->nconns, sizeof(*s->conns))) {
		s->oom = true;
		return;
	}
	r = &s->conns[s->nconns];
	memset(r, 0, sizeof(*r));
	r->key = strdup(c->key ? c->key : "");
	r->host = strdup(c->host ? c->host : "");
	r->hosts = strdup(c->hosts ? c->hosts : (c->host ? c->host : ""));
	if (!r->key || !r->host || !r->hosts) {
		free(r->key);
		free(r->host);
		free(r->hosts);
		s->oom = true;
		return;
	}
	s->nconns++;
	r->port = c->port;
	r->proto = c->proto;
	snprintf(r->state, sizeof(r->state), "%s", c->state ? c->state : "");
	r->streams = c->streams;
	r->requests = c->requests;
	r->age_s = c->age_s;
	r->idle_s = c->idle_s;
	r->warm = c->warm;
}

static void collect_alt(void *arg, const char *origin, const char *alt_host, uint16_t alt_port,
                        long expires_in_s, long broken_for_s)
{
	struct snapshot *s = arg;
	struct alt_row *r;

	if (s->oom || !grow((void **)&s->alts, &s->alts_cap, s->nalts, sizeof(*s->alts))) {
		s->oom = true;
		return;
	}
	r = &s->alts[s->nalts];
	r->origin = strdup(origin ? origin : "");
	r->alt_host = strdup(alt_host ? alt_host : "");
	if (!r->origin || !r->alt_host) {
		free(r->origin);
		free(r->alt_host);
		s->oom = true;
		return;
	}
	s->nalts++;
	r->alt_port = alt_port;
	r->expires_in_s = expires_in_s;
	r->broken_for_s = broken_for_s;
}

/* Oldest first within an origin, origins in order: stable between refreshes. */
static int conn_cmp(const void *a, const void *b)
{
	const struct conn_row *x = a, *y = b;
	int c = strcmp(x->host, y->host);
	if (c)
		return c;
	if (x->port != y->port)
		return x->port < y->port ? -1 : 1;
	c = strcmp(x->key, y->key);
	if (c)
		return c;
	return x->age_s > y->age_s ? -1 : x->age_s < y->age_s;
}

static int alt_cmp(const void *a, const void *b)
{
	const struct alt_row *x = a, *y = b;
	int c = strcmp(x->origin, y->origin);
	return c ? c : strcmp(x->alt_host, y->alt_host);
}

static void snapshot_free(struct snapshot *s)
{
	for (size_t i = 0; i < s->nconns; i++) {
		free(s->conns[i].key);
		free(s->conns[i].host);
		free(s->conns[i].hosts);
	}
	for (size_t i = 0; i < s->nalts; i++) {
		free(s->alts[i].origin);
		free(s->alts[i].alt_host);
	}
	free(s->conns);
	free(s->alts);
}

static bool snapshot_take(struct muxd *m, struct snapshot *s)
{
	struct admin_history *h = m->history; /* NULL before admin_start */
	struct timespec now;

	memset(s, 0, sizeof(*s));
	clock_gettime(CLOCK_MONOTONIC, &now);
	s->uptime_s = h ? seconds_between(&h->started, &now) : 0;
	s->clients = m->nclients ? m->nclients - 1 : 0; /* the page is asked on one */
	if (m->pool) {
		pool_foreach_conn(m->pool, collect_conn, s);
		pool_foreach_altsvc(m->pool, collect_alt, s);
	}
	if (s->oom) {
		snapshot_free(s);
		return false;
	}
	if (s->nconns)
		qsort(s->conns, s->nconns, sizeof(*s->conns), conn_cmp);
	if (s->nalts)
		qsort(s->alts, s->nalts, sizeof(*s->alts), alt_cmp);
	return true;
}

/* ----------------------------------------------------------------- metrics */

/* Every metric, as families (name, type, help) followed by their samples;
 * the one list behind /metrics and the counters table of the status page. */
struct metric_visitor {
	void (*family)(void *arg, const char *name, const char *type, const char *help);
	/* labels: up to two name/value pairs, NULL when absent */
	void (*sample)(void *arg, const char *name, const char *l1, const char *v1, const char *l2,
	               const char *v2, uint64_t value);
	void *arg;
};

static void visit_metrics(struct muxd *m, const struct metric_visitor *v)
{
	const struct metrics *mt = &m->metrics;
	struct pool_counts counts;
	void *a = v->arg;

	memset(&counts, 0, sizeof(counts));
	if (m->pool)
		pool_count(m->pool, &counts);

	v->family(a, "muxd_requests_total", "counter", "Requests forwarded, by upstream protocol.");
	for (int p = 0; p < PROTO_COUNT; p++)
		v->sample(a, "muxd_requests_total", "proto", proto_name(p), NULL, NULL,
		          mt->requests[p]);

	v->family(a, "muxd_upstream_connections_opened_total", "counter",
	          "Upstream connections opened, by protocol.");
	for (int p = 0; p < PROTO_COUNT; p++)
		v->sample(a, "muxd_upstream_connections_opened_total", "proto", proto_name(p), NULL,
		          NULL, mt->upstream_opened[p]);

	v->family(a, "muxd_upstream_connections", "gauge",
	          "Upstream connections in the pool, by protocol and state.");
	for (int p = 0; p < PROTO_COUNT; p++) {
		v->sample(a, "muxd_upstream_connections", "proto", proto_name(p), "state", "active",
		          counts.active[p]);
		v->sample(a, "muxd_upstream_connections", "proto", proto_name(p), "state", "idle",
		          counts.idle[p]);
	}

	v->family(a, "muxd_upstream_reuses_total", "counter",
	          "Requests sent on an already used connection.");
	v->sample(a, "muxd_upstream_reuses_total", NULL, NULL, NULL, NULL, mt->upstream_reuses);

	v->family(a, "muxd_upstream_retries_total", "counter",
	          "Requests retried after a reused connection failed.");
	v->sample(a, "muxd_upstream_retries_total", NULL, NULL, NULL, NULL, mt->upstream_retries);

	v->family(a, "muxd_pool_evictions_total", "counter",
	          "Connections that left the pool, by reason.");
	for (int r = 0; r < EVICT_COUNT; r++)
		v->sample(a, "muxd_pool_evictions_total", "reason", evict_reason_name(r), NULL,
		          NULL, mt->evictions[r]);

	v->family(a, "muxd_client_connections", "gauge", "Open client connections.");
	v->sample(a, "muxd_client_connections", NULL, NULL, NULL, NULL, m->nclients);

	v->family(a, "muxd_client_h2_sessions", "gauge",
	          "Open client connections served with HTTP/2 (inside interception).");
	v->sample(a, "muxd_client_h2_sessions", NULL, NULL, NULL, NULL, mt->client_h2_open);

	v->family(a, "muxd_client_h2_sessions_total", "counter",
	          "Client connections served with HTTP/2 (inside interception).");
	v->sample(a, "muxd_client_h2_sessions_total", NULL, NULL, NULL, NULL,
	          mt->client_h2_sessions);

	v->family(a, "muxd_client_h2_flood_total", "counter",
	          "HTTP/2 client connections ended for a flood, by kind.");
	for (int k = 0; k < CH2_FLOOD_COUNT; k++)
		v->sample(a, "muxd_client_h2_flood_total", "kind", client_h2_flood_name(k), NULL,
		          NULL, mt->client_h2_floods[k]);

	v->family(a, "muxd_upstream_flood_total", "counter",
	          "Upstream connections ended for a flood, by protocol and kind.");
	for (int k = 0; k < UPSTREAM_FLOOD_COUNT; k++)
		v->sample(a, "muxd_upstream_flood_total", "proto", upstream_flood_proto(k), "kind",
		          upstream_flood_kind(k), mt->upstream_floods[k]);

	v->family(a, "muxd_altsvc_entries", "gauge", "Origins with a live HTTP/3 alternative.");
	v->sample(a, "muxd_altsvc_entries", NULL, NULL, NULL, NULL,
	          m->pool ? pool_altsvc_count(m->pool) : 0);

	v->family(a, "muxd_h3_fallbacks_total", "counter",
	          "QUIC attempts that failed over to TCP.");
	v->sample(a, "muxd_h3_fallbacks_total", NULL, NULL, NULL, NULL, mt->h3_fallbacks);

	v->family(a, "muxd_tls_leaf_issued_total", "counter",
	          "Leaf certificates issued for interception.");
	v->sample(a, "muxd_tls_leaf_issued_total", NULL, NULL, NULL, NULL, mt->tls_leaf_issued);

	v->family(a, "muxd_intercept_bypassed_total", "counter",
	          "Interceptable CONNECTs tunneled untouched instead, by reason.");
	for (int r = 0; r < BYPASS_COUNT; r++)
		v->sample(a, "muxd_intercept_bypassed_total", "reason", bypass_reason_name(r), NULL,
		          NULL, mt->intercept_bypassed[r]);

	v->family(a, "muxd_keep_warm_connections", "gauge",
	          "Connections of hot origins kept open past idle_timeout.");
	v->sample(a, "muxd_keep_warm_connections", NULL, NULL, NULL, NULL,
	          m->pool ? pool_keep_warm_count(m->pool) : 0);

	v->family(a, "muxd_keep_warm_reconnects_total", "counter",
	          "Warm connections re-opened in the background after the origin closed them.");
	v->sample(a, "muxd_keep_warm_reconnects_total", NULL, NULL, NULL, NULL,
	          mt->keep_warm_reconnects);
}

static void prom_family(void *arg, const char *name, const char *type, const char *help)
{
	fprintf(arg, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values here are fixed identifiers (protocol and reason names): no
 * escaping is needed. */
static void prom_sample(void *arg, const char *name, const char *l1, const char *v1, const char *l2,
                        const char *v2, uint64_t value)
{
	FILE *f = arg;
	fputs(name, f);
	if (l1) {
		fprintf(f, "{%s=\"%s\"", l1, v1);
		if (l2)
			fprintf(f, ",%s=\"%s\"", l2, v2);
		fputc('}', f);
	}
	fprintf(f, " %llu\n", (unsigned long long)value);
}

static void render_metrics(struct muxd *m, FILE *f)
{
	struct metric_visitor v = {prom_family, prom_sample, f};
	visit_metrics(m, &v);
}

/* -------------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			/* control characters, DEL, and bytes that are not ASCII (the
			 * strings here are not guaranteed to be UTF-8) as \u escapes */
			if (*p < 0x20 || *p >= 0x7f)
				fprintf(f, "\\u%04x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* The space-separated words of s as JSON strings, comma-separated. */
static void json_words(FILE *f, const char *s)
{
	char word[300];
	bool first = true;

	while (*s) {
		size_t n = strcspn(s, " ");
		if (n > 0 && n < sizeof(word)) {
			memcpy(word, s, n);
			word[n] = '\0';
			fputs(first ? "" : ", ", f);
			json_str(f, word);
			first = false;
		}
		s += n;
		s += strspn(s, " ");
	}
}

static void json_proto_counts(FILE *f, const char *name, const uint64_t *v)
{
	fprintf(f, "    ");
	json_str(f, name);
	fputs(": {", f);
	for (int p = 0; p < PROTO_COUNT; p++)
		fprintf(f, "%s\"%s\": %llu", p ? ", " : "", proto_name(p),
		        (unsigned long long)v[p]);
	fputs("},\n", f);
}

static void render_json(struct muxd *m, const struct snapshot *s, FILE *f)
{
	const struct metrics *mt = &m->metrics;
	const struct admin_history *h = m->history;
	struct pool_counts counts;
	struct timespec now;

	memset(&counts, 0, sizeof(counts));
	if (m->pool)
		pool_count(m->pool, &counts);
	clock_gettime(CLOCK_MONOTONIC, &now);

	fprintf(f,
	        "{\n  \"format\": 1,\n  \"uptime_s\": %.1f,\n  \"clients\": %u,\n"
	        "  \"draining\": %s,\n  \"connections\": [",
	        s->uptime_s, s->clients, m->draining ? "true" : "false");
	for (size_t i = 0; i < s->nconns; i++) {
		const struct conn_row *c = &s->conns[i];
		fprintf(f, "%s\n    {\"origin\": ", i ? "," : "");
		if (strchr(c->host, ':')) {
			/* an IPv6 literal: bracketed, as in a URL */
			char buf[300];
			snprintf(buf, sizeof(buf), "[%s]:%u", c->host, c->port);
			json_str(f, buf);
		} else {
			char buf[300];
			snprintf(buf, sizeof(buf), "%s:%u", c->host, c->port);
			json_str(f, buf);
		}
		fputs(", \"host\": ", f);
		json_str(f, c->host);
		fprintf(f, ", \"port\": %u, \"key\": ", c->port);
		json_str(f, c->key);
		fputs(", \"proto\": ", f);
		if (c->proto < PROTO_COUNT)
			json_str(f, proto_name(c->proto));
		else
			fputs("null", f);
		fputs(", \"state\": ", f);
		json_str(f, c->state);
		fprintf(f,
		        ", \"streams\": %u, \"requests\": %llu, \"age_s\": %.1f, "
		        "\"idle_s\": %.1f, \"warm\": %s, \"hosts\": [",
		        c->streams, (unsigned long long)c->requests, c->age_s, c->idle_s,
		        c->warm ? "true" : "false");
		json_words(f, c->hosts);
		fputs("]}", f);
	}
	fputs(s->nconns ? "\n  ],\n  \"altsvc\": [" : "],\n  \"altsvc\": [", f);
	for (size_t i = 0; i < s->nalts; i++) {
		const struct alt_row *a = &s->alts[i];
		fprintf(f, "%s\n    {\"origin\": ", i ? "," : "");
		json_str(f, a->origin);
		fputs(", \"alt_host\": ", f);
		json_str(f, a->alt_host);
		fprintf(f,
		        ", \"alt_port\": %u, \"expires_in_s\": %ld, \"broken\": %s, "
		        "\"broken_for_s\": %ld}",
		        a->alt_port, a->expires_in_s, a->broken_for_s > 0 ? "true" : "false",
		        a->broken_for_s);
	}
	fputs(s->nalts ? "\n  ],\n  \"counters\": {\n" : "],\n  \"counters\": {\n", f);
	json_proto_counts(f, "requests_total", mt->requests);
	json_proto_counts(f, "upstream_connections_opened_total", mt->upstream_opened);
	fputs("    \"upstream_connections\": {", f);
	for (int p = 0; p < PROTO_COUNT; p++)
		fprintf(f, "%s\"%s\": {\"active\": %u, \"idle\": %u}", p ? ", " : "", proto_name(p),
		        counts.active[p], counts.idle[p]);
	fprintf(f,
	        "},\n    \"upstream_reuses_total\": %llu,\n    \"upstream_retries_total\": %llu,\n",
	        (unsigned long long)mt->upstream_reuses, (unsigned long long)mt->upstream_retries);
	fputs("    \"pool_evictions_total\": {", f);
	for (int r = 0; r < EVICT_COUNT; r++)
		fprintf(f, "%s\"%s\": %llu", r ? ", " : "", evict_reason_name(r),
		        (unsigned long long)mt->evictions[r]);
	fprintf(f,
	        "},\n    \"client_h2_sessions\": %llu,\n    \"client_h2_sessions_total\": %llu,\n",
	        (unsigned long long)mt->client_h2_open, (unsigned long long)mt->client_h2_sessions);
	fputs("    \"client_h2_flood_total\": {", f);
	for (int k = 0; k < CH2_FLOOD_COUNT; k++)
		fprintf(f, "%s\"%s\": %llu", k ? ", " : "", client_h2_flood_name(k),
		        (unsigned long long)mt->client_h2_floods[k]);
	fprintf(
	    f,
	    "},\n    \"client_connections\": %u,\n    \"altsvc_entries\": %zu,\n"
	    "    \"h3_fallbacks_total\": %llu,\n    \"tls_leaf_issued_total\": %llu,\n"
	    "    \"keep_warm_connections\": %u,\n    \"keep_warm_reconnects_total\": %llu\n  },\n",
	    m->nclients, m->pool ? pool_altsvc_count(m->pool) : 0,
	    (unsigned long long)mt->h3_fallbacks, (unsigned long long)mt->tls_leaf_issued,
	    m->pool ? pool_keep_warm_count(m->pool) : 0,
	    (unsigned long long)mt->keep_warm_reconnects);
	fprintf(f, "  \"history\": {\"interval_s\": %d, \"samples\": [", HISTORY_INTERVAL_S);
	for (unsigned i = 0; h && i < h->n; i++) {
		const struct history_sample *hs = history_at(h, i);
		fprintf(f, "%s\n    {\"ago_s\": %.1f, \"requests\": %llu, \"reuses\": %llu}",
		        i ? "," : "", seconds_between(&hs->at, &now),
		        (unsigned long long)hs->requests, (unsigned long long)hs->reuses);
	}
	fputs(h && h->n ? "\n  ]}\n}\n" : "]}\n}\n", f);
}

/* -------------------------------------------------------------------- HTML */

static void html_esc(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\'':
			fputs("&#39;", f);
			break;
		default:
			fputc(*s, f);
		}
	}
}

/* "850ms", "42.0s", "3m05s", "2h07m", "3d04h" */
static void fmt_duration(char *buf, size_t size, double s)
{
	if (s < 0)
		s = 0;
	unsigned long t = (unsigned long)s;
	if (s < 1)
		snprintf(buf, size, "%.0fms", s * 1000);
	else if (s < 60)
		snprintf(buf, size, "%.1fs", s);
	else if (t < 3600)
		snprintf(buf, size, "%lum%02lus", t / 60, t % 60);
	else if (t < 86400)
		snprintf(buf, size, "%luh%02lum", t / 3600, t % 3600 / 60);
	else
		snprintf(buf, size, "%lud%02luh", t / 86400, t % 86400 / 3600);
}

static void html_td(FILE *f, const char *cls, const char *text)
{
	fprintf(f, "<td%s%s%s>", cls ? " class=\"" : "", cls ? cls : "", cls ? "\"" : "");
	html_esc(f, text);
	fputs("</td>", f);
}

static void html_counter_family(void *arg, const char *name, const char *type, const char *help)
{
	(void)arg;
	(void)name;
	(void)type;
	(void)help;
}

static void html_counter_sample(void *arg, const char *name, const char *l1, const char *v1,
                                const char *l2, const char *v2, uint64_t value)
{
	FILE *f = arg;
	char labels[128] = "", num[32];
	if (l1 && l2)
		snprintf(labels, sizeof(labels), "%s=%s %s=%s", l1, v1, l2, v2);
	else if (l1)
		snprintf(labels, sizeof(labels), "%s=%s", l1, v1);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)value);
	fputs("<tr>", f);
	html_td(f, NULL, name);
	html_td(f, NULL, labels);
	html_td(f, "n", num);
	fputs("</tr>\n", f);
}

#define CHART_W 600
#define CHART_H 140
#define CHART_PAD 30

static double chart_x(const struct timespec *t0, const struct timespec *t, double span)
{
	return CHART_PAD + (CHART_W - 2 * CHART_PAD) * seconds_between(t0, t) / span;
}

/* Requests and reuses per interval over the history, as an inline SVG line
 * chart (the last point is the interval in progress, up to now). */
static void render_chart(struct muxd *m, FILE *f)
{
	const struct admin_history *h = m->history;
	struct history_sample pts[HISTORY_LEN + 1];
	unsigned n = 0;
	uint64_t max = 1;
	double span;

	for (unsigned i = 0; h && i < h->n; i++)
		pts[n++] = *history_at(h, i);
	if (n) {
		history_sample_now(m, &pts[n]);
		if (seconds_between(&pts[n - 1].at, &pts[n].at) >= 0.5)
			n++;
	}
	if (n < 2) {
		fputs("<p class=\"muted\">Collecting samples (one every 10 s)…</p>\n", f);
		return;
	}
	for (unsigned i = 1; i < n; i++) {
		uint64_t dr = pts[i].requests - pts[i - 1].requests;
		if (dr > max)
			max = dr;
	}
	span = seconds_between(&pts[0].at, &pts[n - 1].at);
	if (span <= 0)
		span = 1;
	fprintf(f,
	        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
	        "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"requests and reuses per "
	        "interval\">\n"
	        "<rect x=\"%d\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" "
	        "stroke=\"#ccc\"/>\n"
	        "<text x=\"%d\" y=\"12\" font-size=\"11\" text-anchor=\"end\">%llu</text>\n"
	        "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\">0</text>\n"
	        "<text x=\"%d\" y=\"%d\" font-size=\"11\">-%.0fs</text>\n"
	        "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\">now</text>\n",
	        CHART_W, CHART_H + 20, CHART_W, CHART_H + 20, CHART_PAD, CHART_W - 2 * CHART_PAD,
	        CHART_H, CHART_PAD - 4, (unsigned long long)max, CHART_PAD - 4, CHART_H, CHART_PAD,
	        CHART_H + 14, span, CHART_W - CHART_PAD, CHART_H + 14);
	for (int series = 0; series < 2; series++) {
		fprintf(f, "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"%s\" points=\"",
		        series ? "#2a8" : "#36c");
		/* a step per interval: its count held from its start to its end */
		for (unsigned i = 1; i < n; i++) {
			uint64_t d = series ? pts[i].reuses - pts[i - 1].reuses
			                    : pts[i].requests - pts[i - 1].requests;
			double y = CHART_H - (double)(CHART_H - 4) * (double)d / (double)max;
			fprintf(f, "%s%.1f,%.1f %.1f,%.1f", i > 1 ? " " : "",
			        chart_x(&pts[0].at, &pts[i - 1].at, span), y,
			        chart_x(&pts[0].at, &pts[i].at, span), y);
		}
		fputs("\"/>\n", f);
	}
	fputs("</svg>\n<p class=\"legend\"><span style=\"color:#36c\">&#9632; requests</span> "
	      "<span style=\"color:#2a8\">&#9632; reuses</span> per interval</p>\n",
	      f);
}

static const char html_style[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}"
    "table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}th{background:#f0f0f0}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "td.key{font-family:monospace;font-size:12px;color:#555;max-width:36em;"
    "word-break:break-all}.muted{color:#888}.broken{color:#b00;font-weight:bold}"
    ".legend{font-size:12px;margin:.2em 0}";

static void render_html(struct muxd *m, const struct snapshot *s, FILE *f)
{
	char buf[64];
	struct metric_visitor v = {html_counter_family, html_counter_sample, f};

	fmt_duration(buf, sizeof(buf), s->uptime_s);
	fprintf(f,
	        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	        "<meta http-equiv=\"refresh\" content=\"5\">\n"
	        "<title>muxd status</title>\n<style>%s</style></head>\n<body>\n"
	        "<h1>muxd</h1>\n<p id=\"summary\">up %s, %u client connection%s, "
	        "%zu upstream connection%s%s</p>\n",
	        html_style, buf, s->clients, s->clients == 1 ? "" : "s", s->nconns,
	        s->nconns == 1 ? "" : "s", m->draining ? ", <b>draining</b>" : "");

	fputs(
	    "<h2>Upstream connections</h2>\n<table id=\"connections\">\n<thead><tr>"
	    "<th>origin</th><th>key</th><th>proto</th><th>state</th><th>serves</th><th>streams</th>"
	    "<th>requests</th><th>age</th><th>idle</th></tr></thead>\n<tbody>\n",
	    f);
	for (size_t i = 0; i < s->nconns; i++) {
		const struct conn_row *c = &s->conns[i];
		char origin[300];
		bool v6 = strchr(c->host, ':') != NULL;
		snprintf(origin, sizeof(origin), "%s%s%s:%u", v6 ? "[" : "", c->host, v6 ? "]" : "",
		         c->port);
		fputs("<tr class=\"conn\">", f);
		html_td(f, NULL, origin);
		html_td(f, "key", c->key);
		html_td(f, NULL, c->proto < PROTO_COUNT ? proto_name(c->proto) : "-");
		snprintf(buf, sizeof(buf), "%s%s", c->state, c->warm ? ", warm" : "");
		html_td(f, c->warm ? "warm" : NULL, buf);
		html_td(f, "hosts", c->hosts);
		snprintf(buf, sizeof(buf), "%u", c->streams);
		html_td(f, "n", buf);
		snprintf(buf, sizeof(buf), "%llu", (unsigned long long)c->requests);
		html_td(f, "n", buf);
		fmt_duration(buf, sizeof(buf), c->age_s);
		html_td(f, "n", buf);
		if (strcmp(c->state, "idle") == 0)
			fmt_duration(buf, sizeof(buf), c->idle_s);
		else
			snprintf(buf, sizeof(buf), "-");
		html_td(f, "n", buf);
		fputs("</tr>\n", f);
	}
	if (!s->nconns)
		fputs("<tr><td colspan=\"9\" class=\"muted\">no upstream connections</td></tr>\n",
		      f);
	fputs("</tbody></table>\n", f);

	fputs("<h2>Requests and connection reuse</h2>\n", f);
	render_chart(m, f);

	fputs("<h2>Alt-Svc cache</h2>\n<table id=\"altsvc\">\n<thead><tr><th>origin</th>"
	      "<th>alternative</th><th>expires in</th><th>broken</th></tr></thead>\n<tbody>\n",
	      f);
	for (size_t i = 0; i < s->nalts; i++) {
		const struct alt_row *a = &s->alts[i];
		char alt[300];
		bool v6 = strchr(a->alt_host, ':') != NULL;
		snprintf(alt, sizeof(alt), "h3 %s%s%s:%u", v6 ? "[" : "", a->alt_host,
		         v6 ? "]" : "", a->alt_port);
		fputs("<tr class=\"alt\">", f);
		html_td(f, NULL, a->origin);
		html_td(f, NULL, alt);
		fmt_duration(buf, sizeof(buf), (double)a->expires_in_s);
		html_td(f, "n", buf);
		if (a->broken_for_s > 0) {
			char d[32];
			fmt_duration(d, sizeof(d), (double)a->broken_for_s);
			snprintf(buf, sizeof(buf), "broken for %s", d);
			html_td(f, "broken", buf);
		} else {
			html_td(f, NULL, "-");
		}
		fputs("</tr>\n", f);
	}
	if (!s->nalts)
		fputs("<tr><td colspan=\"4\" class=\"muted\">no entries</td></tr>\n", f);
	fputs("</tbody></table>\n", f);

	fputs("<h2>Counters</h2>\n<table id=\"counters\">\n<thead><tr><th>metric</th>"
	      "<th>labels</th><th>value</th></tr></thead>\n<tbody>\n",
	      f);
	visit_metrics(m, &v);
	fputs("</tbody></table>\n<p class=\"muted\">Also as <a href=\"/status.json\">JSON</a> "
	      "and <a href=\"/metrics\">Prometheus metrics</a>; refreshes every 5 s.</p>\n"
	      "</body></html>\n",
	      f);
}

/* ------------------------------------------------------------------ routing */

static bool path_is(const char *path, size_t plen, const char *name)
{
	return plen == strlen(name) && strncmp(path, name, plen) == 0;
}

void admin_handle(struct muxd *m, const struct http1_msg *req, struct admin_response *out)
{
	FILE *f;
	size_t len = 0;
	const char *path = req->target;
	size_t plen = strcspn(path, "?");
	struct snapshot snap;

	memset(out, 0, sizeof(*out));
	f = open_memstream(&out->body, &len);
	if (!f) {
		out->status = 500;
		out->content_type = "text/plain";
		return;
	}
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
		out->status = 405;
		out->content_type = "text/plain";
		fprintf(f, "muxd: admin pages answer GET only\n");
	} else if (path_is(path, plen, "/metrics")) {
		out->status = 200;
		out->content_type = "text/plain; version=0.0.4; charset=utf-8";
		render_metrics(m, f);
	} else if (path_is(path, plen, "/") || path_is(path, plen, "/status.json")) {
		bool html = plen == 1;
		if (!snapshot_take(m, &snap)) {
			out->status = 500;
			out->content_type = "text/plain";
			fprintf(f, "muxd: out of memory\n");
		} else {
			out->status = 200;
			out->content_type = html ? "text/html; charset=utf-8" : "application/json";
			if (html)
				render_html(m, &snap, f);
			else
				render_json(m, &snap, f);
			snapshot_free(&snap);
		}
	} else if (path_is(path, plen, "/ca.pem") && m->ca) {
		size_t n;
		const char *pem = local_ca_pem(m->ca, &n);
		out->status = 200;
		out->content_type = "application/x-pem-file";
		fwrite(pem, 1, n, f);
	} else {
		out->status = 404;
		out->content_type = "text/plain";
		fprintf(f, "muxd: no such page\n");
	}
	if (fclose(f) != 0 || !out->body) {
		free(out->body);
		out->body = NULL;
		len = 0;
		out->status = 500;
		out->content_type = "text/plain";
	}
	out->body_len = len;
}

void admin_response_free(struct admin_response *r)
{
	free(r->body);
	r->body = NULL;
}
