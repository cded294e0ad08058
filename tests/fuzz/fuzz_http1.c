/*
 * Fuzz target for src/http1.c: request and response heads, the chunked
 * decoder (whole input, byte at a time and in odd pieces must agree), URI and
 * authority parsing. Any broken invariant aborts.
 */
#include "http1.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool inside(const struct http1_msg *m, const char *p, size_t n)
{
	return p >= m->head && p + n < m->head + m->head_len + 1 && p[n] == '\0' && strlen(p) == n;
}

/* The parser's Connection index answers as a scan of the fields does. */
static void check_connection_index(const struct http1_msg *m)
{
	static struct http1_msg plain;
	static const char *const names[] = {"close", "keep-alive", "upgrade", "te", "x-foo", ""};

	CHECK(m->conn & HTTP1_CONN_INDEXED);
	plain = *m;
	plain.conn = 0;
	for (size_t i = 0; i < m->nfields; i++) {
		const char *name = m->fields[i].name, *value = m->fields[i].value;
		CHECK(http1_is_hop_by_hop(m, name) == http1_is_hop_by_hop(&plain, name));
		/* values too: any token a Connection field lists */
		CHECK(http1_is_hop_by_hop(m, value) == http1_is_hop_by_hop(&plain, value));
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(http1_is_hop_by_hop(m, names[i]) == http1_is_hop_by_hop(&plain, names[i]));
	if (m->method)
		CHECK(http1_upgrade_requested(m, "websocket") ==
		      http1_upgrade_requested(&plain, "websocket"));
	http1_msg_index_connection(&plain);
	CHECK(plain.conn == m->conn);
}

static void check_msg(const struct http1_msg *m, size_t len, size_t consumed)
{
	check_connection_index(m);
	CHECK(m->head && consumed >= m->head_len && consumed <= len);
	CHECK(m->head_len <= HTTP1_MAX_HEAD && m->nfields <= HTTP1_MAX_FIELDS);
	CHECK(m->version_minor == 0 || m->version_minor == 1);
	for (size_t i = 0; i < m->nfields; i++) {
		const struct http1_field *f = &m->fields[i];
		const struct http1_field *g = http1_find(m, f->name);

		CHECK(f->name_len > 0 && inside(m, f->name, f->name_len));
		CHECK(inside(m, f->value, f->value_len));
		CHECK(g && g <= f && strcasecmp(g->name, f->name) == 0);
		if (f->value_len)
			CHECK(!memchr(" \t", f->value[0], 2) &&
			      !memchr(" \t", f->value[f->value_len - 1], 2));
		http1_is_hop_by_hop(m, f->name);
		http1_list_has(f->value, f->value_len, "close");
		/* every name of a listed value is allowed: listed against a
		 * superset too; nothing is listed against an empty set */
		if (http1_upgrade_listed(f->value, f->value_len, "websocket"))
			CHECK(http1_upgrade_listed(f->value, f->value_len, "h2c,websocket"));
		CHECK(!http1_upgrade_listed(f->value, f->value_len, ""));
	}
	/* an upgrade only from HTTP/1.1 with an Upgrade field */
	if (m->method && http1_upgrade_requested(m, "websocket,h2c"))
		CHECK(m->version_minor == 1 && http1_find(m, "upgrade"));
	if (m->body == HTTP1_BODY_LENGTH)
		CHECK(m->content_length > 0);
	if (m->body == HTTP1_BODY_CHUNKED)
		CHECK(http1_find(m, "Transfer-Encoding") && !http1_find(m, "Content-Length"));
}

/* Decode in[0..len) in pieces of `step` bytes into out; returns the last event. */
static enum http1_chunk_event decode(const char *in, size_t len, size_t step,
                                     struct http1_chunked *c, char *out, size_t *out_len,
                                     size_t *used)
{
	enum http1_chunk_event ev = HTTP1_CHUNK_NEED_MORE;
	size_t off = 0;

	memset(c, 0, sizeof(*c));
	*out_len = 0;
	while (off < len) {
		size_t n = len - off < step ? len - off : step, cons = (size_t)-1, dl = (size_t)-1;
		const char *d = in;

		ev = http1_chunked_next(c, in + off, n, &cons, &d, &dl);
		CHECK(cons <= n);
		if (ev == HTTP1_CHUNK_DATA) {
			CHECK(dl > 0 && d >= in + off && d + dl <= in + off + cons);
			memcpy(out + *out_len, d, dl);
			*out_len += dl;
		} else {
			CHECK(d == NULL && dl == 0);
		}
		off += cons;
		if (ev == HTTP1_CHUNK_NEED_MORE)
			CHECK(cons == n);
		if (ev == HTTP1_CHUNK_DONE || ev == HTTP1_CHUNK_ERROR)
			break;
		CHECK(cons > 0);
	}
	if (ev == HTTP1_CHUNK_DATA && off == len)
		ev = HTTP1_CHUNK_NEED_MORE; /* input ended inside chunk data */
	*used = off;
	return ev;
}

static void check_chunked(const char *in, size_t len)
{
	static struct http1_chunked a, b;
	char *oa = malloc(len + 1), *ob = malloc(len + 1);
	size_t la, lb, ua, ub;
	enum http1_chunk_event ea, eb;
	size_t steps[] = {1, 3, 7 + len % 11};

	ea = decode(in, len, len ? len : 1, &a, oa, &la, &ua);
	CHECK(ea != HTTP1_CHUNK_DATA && la <= ua && ua <= len);
	CHECK(a.trailer_len < sizeof(a.trailers));
	if (ea == HTTP1_CHUNK_DONE)
		CHECK(strlen(a.trailers) == a.trailer_len);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		eb = decode(in, len, steps[i], &b, ob, &lb, &ub);
		CHECK(ea == eb && ua == ub && la == lb && memcmp(oa, ob, la) == 0);
		if (ea != HTTP1_CHUNK_ERROR)
			CHECK(a.trailer_len == b.trailer_len &&
			      strcmp(a.trailers, b.trailers) == 0);
	}
	if (ea == HTTP1_CHUNK_DONE) {
		const char *d;
		size_t c, dl;

		CHECK(http1_chunked_next(&a, in, len, &c, &d, &dl) == HTTP1_CHUNK_DONE && c == 0);
	}
	free(oa);
	free(ob);
}

/*
 * The head scan (what tells downstream to run the parser) never misses a
 * decision: whenever the parser decides (OK or BAD within HTTP1_MAX_HEAD),
 * the scan stops at or before the end of the input, and the parser's answer
 * on the bytes up to that stop is already a decision or INCOMPLETE only for
 * empty lines before the request line. Fed whole or byte by byte, it stops at
 * the same byte.
 */
static void check_head_scan(const char *in, size_t len, enum http1_result r)
{
	struct http1_head_scan a, b;
	bool stopped_a, stopped_b = false;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	stopped_a = http1_head_scan(&a, in, len);
	for (size_t i = 0; i < len && !stopped_b; i++)
		stopped_b = http1_head_scan(&b, in + i, 1);
	CHECK(stopped_a == stopped_b && a.seen == b.seen);
	CHECK(stopped_a ? a.seen <= len : a.seen == len);
	if (len < HTTP1_MAX_HEAD && (r == HTTP1_OK || r == HTTP1_BAD)) {
		/* scan on past stops where the parser still waits (leading CRLFs) */
		struct http1_msg m;
		size_t used;
		memset(&a, 0, sizeof(a));
		while (http1_head_scan(&a, in + a.seen, len - a.seen)) {
			enum http1_result q = http1_parse_request(in, a.seen, &m, &used);
			http1_msg_free(&m);
			if (q != HTTP1_INCOMPLETE)
				return;
			if (a.seen == len)
				break;
		}
		CHECK(!"the parser decided but the head scan never stopped for it");
	}
}

static void check_request(const char *in, size_t len)
{
	struct http1_msg m, m2;
	size_t used = (size_t)-1, used2;
	enum http1_result r = http1_parse_request(in, len, &m, &used);

	check_head_scan(in, len, r);
	if (r != HTTP1_OK) {
		CHECK(m.head == NULL && m.nfields == 0);
		if (r == HTTP1_INCOMPLETE)
			CHECK(len < HTTP1_MAX_HEAD);
		return;
	}
	check_msg(&m, len, used);
	CHECK(m.method && m.target && *m.method && *m.target);
	CHECK(m.body != HTTP1_BODY_CLOSE);
	CHECK(m.version_minor == 0 || http1_find(&m, "Host"));
	/* the head alone parses the same; any shorter prefix is incomplete */
	CHECK(http1_parse_request(in, used, &m2, &used2) == HTTP1_OK && used2 == used);
	CHECK(m2.nfields == m.nfields && m2.body == m.body && m2.keep_alive == m.keep_alive);
	http1_msg_free(&m2);
	CHECK(m2.head == NULL);
	CHECK(http1_parse_request(in, used - 1, &m2, &used2) == HTTP1_INCOMPLETE);
	CHECK(http1_parse_request(in, used / 2, &m2, &used2) == HTTP1_INCOMPLETE);
	if (m.body == HTTP1_BODY_CHUNKED)
		check_chunked(in + used, len - used);
	http1_msg_free(&m);
}

static void check_response(const char *in, size_t len, const char *method)
{
	struct http1_msg m;
	size_t used = (size_t)-1;
	enum http1_result r = http1_parse_response(in, len, method, &m, &used);

	if (r != HTTP1_OK) {
		CHECK(m.head == NULL);
		return;
	}
	check_msg(&m, len, used);
	CHECK(m.status >= 100 && m.status <= 599 && m.reason && !m.method);
	if (m.body == HTTP1_BODY_CLOSE)
		CHECK(!m.keep_alive);
	if (method && strcmp(method, "HEAD") == 0)
		CHECK(m.body == HTTP1_BODY_NONE);
	if (m.status < 200 || m.status == 204 || m.status == 304)
		CHECK(m.body == HTTP1_BODY_NONE);
	if (m.body == HTTP1_BODY_CHUNKED)
		check_chunked(in + used, len - used);
	http1_msg_free(&m);
}

static void check_uri(const char *in, size_t len)
{
	static struct http1_uri u;
	char *s = malloc(len + 1), host[64];
	uint16_t port = 0;
	bool v6;

	memcpy(s, in, len);
	s[len] = '\0';
	if (http1_parse_absolute_uri(s, &u)) {
		CHECK(strcmp(u.scheme, "http") == 0 || strcmp(u.scheme, "https") == 0);
		CHECK(u.host[0] && u.port && u.path[0] == '/' && !strchr(u.path, '#'));
		CHECK(strlen(u.path) < sizeof(u.path) && strlen(u.host) < sizeof(u.host));
		for (const char *p = u.host; *p; p++)
			CHECK(!(*p >= 'A' && *p <= 'Z') && *p != '@');
		CHECK(u.ipv6 == (strchr(u.host, ':') != NULL));
	}
	if (http1_parse_authority(s, host, sizeof(host), &port, &v6))
		CHECK(host[0] && port > 0 && strlen(host) < sizeof(host));
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	static const char *const methods[] = {"GET", "HEAD", "CONNECT", NULL};

	check_request(in, size);
	check_response(in, size, methods[size % 4]);
	check_chunked(in, size);
	check_uri(in, size);
	CHECK(strcmp(http1_reason(size % 600), "") != 0);
	return 0;
}
