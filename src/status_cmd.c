/*
 * status_cmd — `muxd status`: /status.json fetched from the config's first
 * listen address by admin_client's GET (an unspecified address such as
 * 0.0.0.0 is asked on loopback, since admin pages answer loopback clients
 * only), a small JSON parser for that document (docs/status-json.md), and
 * aligned tables of the upstream connections and the Alt-Svc cache on stdout.
 */
#include "status_cmd.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_client.h"
#include "config.h"

#define CONNECT_TIMEOUT_MS 3000
#define EXCHANGE_TIMEOUT_MS 10000 /* the whole request and response, after connecting */
#define MAX_DEPTH 32              /* nesting of arrays and objects */
#define MAX_VALUES (1u << 20)     /* values in a document: bounds the tree's memory */

static void set_err(char *err, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, size, fmt, ap);
	va_end(ap);
}

/* -------------------------------------------------------------------- JSON */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jv {
	enum jtype t;
	bool b;
	double num;
	char *str;        /* J_STR */
	struct jv *items; /* J_ARR, J_OBJ */
	char **keys;      /* J_OBJ */
	size_t n, cap;
};

struct jparser {
	const char *p, *end;
	size_t values; /* parsed so far, at most MAX_VALUES */
};

static void jv_free(struct jv *v)
{
	free(v->str);
	for (size_t i = 0; i < v->n; i++) {
		jv_free(&v->items[i]);
		if (v->keys)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	memset(v, 0, sizeof(*v));
}

static void skip_ws(struct jparser *jp)
{
	while (jp->p < jp->end &&
	       (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
		jp->p++;
}

static bool literal(struct jparser *jp, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
		return false;
	jp->p += n;
	return true;
}

static void put_utf8(char *out, size_t *o, unsigned cp)
{
	if (cp < 0x80) {
		out[(*o)++] = (char)cp;
	} else if (cp < 0x800) {
		out[(*o)++] = (char)(0xc0 | cp >> 6);
		out[(*o)++] = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		out[(*o)++] = (char)(0xe0 | cp >> 12);
		out[(*o)++] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[(*o)++] = (char)(0x80 | (cp & 0x3f));
	} else {
		out[(*o)++] = (char)(0xf0 | cp >> 18);
		out[(*o)++] = (char)(0x80 | (cp >> 12 & 0x3f));
		out[(*o)++] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[(*o)++] = (char)(0x80 | (cp & 0x3f));
	}
}

static bool hex4(struct jparser *jp, unsigned *out)
{
	unsigned v = 0;
	if (jp->end - jp->p < 4)
		return false;
	for (int i = 0; i < 4; i++) {
		char c = *jp->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return false;
	}
	*out = v;
	return true;
}

/* At the opening quote; a decoded, NUL-terminated copy (NULs from \u0000
 * are kept as '?'). */
static char *parse_string(struct jparser *jp)
{
	const char *start = ++jp->p;
	char *out;
	size_t o = 0;

	while (jp->p < jp->end && *jp->p != '"')
		jp->p += *jp->p == '\\' && jp->p + 1 < jp->end ? 2 : 1;
	if (jp->p >= jp->end)
		return NULL;
	/* escapes never grow: \uXXXX (6 bytes) is at most 4 bytes of UTF-8,
	 * a surrogate pair (12) at most 4 */
	out = malloc((size_t)(jp->p - start) + 1);
	if (!out)
		return NULL;
	jp->p = start;
	while (*jp->p != '"') {
		char c = *jp->p++;
		unsigned cp;
		if ((unsigned char)c < 0x20)
			goto bad;
		if (c != '\\') {
			out[o++] = c;
			continue;
		}
		switch (c = *jp->p++) {
		case '"':
		case '\\':
		case '/':
			out[o++] = c;
			break;
		case 'b':
			out[o++] = '\b';
			break;
		case 'f':
			out[o++] = '\f';
			break;
		case 'n':
			out[o++] = '\n';
			break;
		case 'r':
			out[o++] = '\r';
			break;
		case 't':
			out[o++] = '\t';
			break;
		case 'u':
			if (!hex4(jp, &cp))
				goto bad;
			if (cp >= 0xd800 && cp < 0xdc00 && jp->end - jp->p >= 6 &&
			    jp->p[0] == '\\' && jp->p[1] == 'u') {
				unsigned lo;
				jp->p += 2;
				if (!hex4(jp, &lo) || lo < 0xdc00 || lo >= 0xe000)
					goto bad;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			} else if (cp >= 0xd800 && cp < 0xe000) {
				cp = 0xfffd;
			}
			if (cp == 0)
				cp = '?';
			put_utf8(out, &o, cp);
			break;
		default:
			goto bad;
		}
	}
	jp->p++;
	out[o] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

static bool parse_value(struct jparser *jp, struct jv *v, int depth);

static bool append_item(struct jv *v, char *key)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 8;
		struct jv *items = realloc(v->items, cap * sizeof(*items));
		if (!items)
			return false;
		v->items = items;
		if (v->t == J_OBJ) {
			char **keys = realloc(v->keys, cap * sizeof(*keys));
			if (!keys)
				return false;
			v->keys = keys;
		}
		v->cap = cap;
	}
	memset(&v->items[v->n], 0, sizeof(*v->items));
	if (v->t == J_OBJ)
		v->keys[v->n] = key;
	v->n++;
	return true;
}

static bool is_digit(const struct jparser *jp, const char *p)
{
	return p < jp->end && *p >= '0' && *p <= '9';
}

/* A number as RFC 8259 spells it (no "+1", "01", ".5", "1.", hex, inf or nan),
 * converted by strtod on a NUL-terminated copy of exactly its bytes. */
static bool parse_number(struct jparser *jp, double *out)
{
	const char *s = jp->p, *p = s;
	char small[64], *copy = small, *endp;
	size_t n;
	bool ok;

	if (p < jp->end && *p == '-')
		p++;
	if (!is_digit(jp, p))
		return false;
	if (*p++ != '0')
		while (is_digit(jp, p))
			p++;
	if (p < jp->end && *p == '.') {
		if (!is_digit(jp, ++p))
			return false;
		while (is_digit(jp, p))
			p++;
	}
	if (p < jp->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < jp->end && (*p == '+' || *p == '-'))
			p++;
		if (!is_digit(jp, p))
			return false;
		while (is_digit(jp, p))
			p++;
	}
	n = (size_t)(p - s);
	if (n >= sizeof(small) && !(copy = malloc(n + 1)))
		return false;
	memcpy(copy, s, n);
	copy[n] = '\0';
	*out = strtod(copy, &endp);
	ok = endp == copy + n;
	if (copy != small)
		free(copy);
	jp->p = p;
	return ok;
}

static bool parse_container(struct jparser *jp, struct jv *v, int depth)
{
	char close = *jp->p == '{' ? '}' : ']';

	v->t = close == '}' ? J_OBJ : J_ARR;
	jp->p++;
	skip_ws(jp);
	if (jp->p < jp->end && *jp->p == close) {
		jp->p++;
		return true;
	}
	for (;;) {
		char *key = NULL;
		skip_ws(jp);
		if (v->t == J_OBJ) {
			if (jp->p >= jp->end || *jp->p != '"' || !(key = parse_string(jp)))
				return false;
			skip_ws(jp);
			if (jp->p >= jp->end || *jp->p != ':') {
				free(key);
				return false;
			}
			jp->p++;
		}
		if (!append_item(v, key)) {
			free(key);
			return false;
		}
		if (!parse_value(jp, &v->items[v->n - 1], depth + 1))
			return false;
		skip_ws(jp);
		if (jp->p < jp->end && *jp->p == ',') {
			jp->p++;
			continue;
		}
		if (jp->p < jp->end && *jp->p == close) {
			jp->p++;
			return true;
		}
		return false;
	}
}

static bool parse_value(struct jparser *jp, struct jv *v, int depth)
{
	if (depth > MAX_DEPTH || ++jp->values > MAX_VALUES)
		return false;
	skip_ws(jp);
	if (jp->p >= jp->end)
		return false;
	switch (*jp->p) {
	case '{':
	case '[':
		return parse_container(jp, v, depth);
	case '"':
		v->t = J_STR;
		return (v->str = parse_string(jp)) != NULL;
	case 't':
		v->t = J_BOOL;
		v->b = true;
		return literal(jp, "true");
	case 'f':
		v->t = J_BOOL;
		return literal(jp, "false");
	case 'n':
		v->t = J_NULL;
		return literal(jp, "null");
	default:
		v->t = J_NUM;
		return parse_number(jp, &v->num);
	}
}

/* One JSON value in text[0..len) (no NUL needed); on failure *err_at is
 * about where the parser stopped. */
static bool json_parse(const char *text, size_t len, struct jv *out, size_t *err_at)
{
	struct jparser jp = {text, text + len, 0};

	memset(out, 0, sizeof(*out));
	if (parse_value(&jp, out, 0)) {
		skip_ws(&jp);
		if (jp.p == jp.end)
			return true;
	}
	*err_at = jp.p > jp.end ? len : (size_t)(jp.p - text);
	jv_free(out);
	return false;
}

static const struct jv *jget(const struct jv *obj, const char *key)
{
	if (!obj || obj->t != J_OBJ)
		return NULL;
	for (size_t i = 0; i < obj->n; i++)
		if (strcmp(obj->keys[i], key) == 0)
			return &obj->items[i];
	return NULL;
}

static const char *jstr(const struct jv *obj, const char *key, const char *dflt)
{
	const struct jv *v = jget(obj, key);
	return v && v->t == J_STR ? v->str : dflt;
}

static double jnum(const struct jv *obj, const char *key, double dflt)
{
	const struct jv *v = jget(obj, key);
	return v && v->t == J_NUM ? v->num : dflt;
}

static bool jbool(const struct jv *obj, const char *key)
{
	const struct jv *v = jget(obj, key);
	return v && v->t == J_BOOL && v->b;
}

/* ------------------------------------------------------------------ output */

#define MAX_COLS 8

struct table {
	size_t ncols, nrows;
	const char *head[MAX_COLS];
	bool right[MAX_COLS]; /* numbers: right-aligned */
	char **cells;         /* nrows * ncols, owned */
	bool oom;
};

static void table_row(struct table *t, const char *const *vals)
{
	char **c;
	if (t->oom)
		return;
	c = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*c));
	if (!c) {
		t->oom = true;
		return;
	}
	t->cells = c;
	for (size_t i = 0; i < t->ncols; i++) {
		char *cell = strdup(vals[i]);
		c[t->nrows * t->ncols + i] = cell;
		if (!cell) {
			t->oom = true;
			continue;
		}
		/* strings come from the document: no terminal control bytes */
		for (char *p = cell; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
	}
	t->nrows++;
}

/* Characters, not bytes, for padding (UTF-8 continuation bytes do not count). */
static int text_width(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

static void table_print(const struct table *t, FILE *out)
{
	int w[MAX_COLS];
	for (size_t c = 0; c < t->ncols; c++) {
		w[c] = text_width(t->head[c]);
		for (size_t r = 0; r < t->nrows; r++) {
			const char *s = t->cells[r * t->ncols + c];
			if (s && text_width(s) > w[c])
				w[c] = text_width(s);
		}
	}
	for (size_t r = 0; r <= t->nrows; r++) {
		for (size_t c = 0; c < t->ncols; c++) {
			const char *s = r ? t->cells[(r - 1) * t->ncols + c] : t->head[c];
			bool last = c + 1 == t->ncols;
			int pad;
			if (!s)
				s = "";
			pad = w[c] - text_width(s);
			if (t->right[c])
				fprintf(out, "%*s%s", pad, "", s);
			else
				fprintf(out, "%s%*s", s, last ? 0 : pad, "");
			fputs(last ? "\n" : "  ", out);
		}
	}
}

static void table_free(struct table *t)
{
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
}

static void fmt_duration(char *buf, size_t size, double s)
{
	unsigned long t;
	if (!(s >= 0)) /* and NaN */
		s = 0;
	if (s > 1e12) /* 31 688 years: also keeps the conversion below defined */
		s = 1e12;
	t = (unsigned long)s;
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

static bool print_status(const char *where, const struct jv *doc, FILE *out, char *err,
                         size_t errsize)
{
	const struct jv *conns = jget(doc, "connections"), *alts = jget(doc, "altsvc");
	struct table ct = {.ncols = 6,
	                   .head = {"ORIGIN", "PROTO", "STATE", "STREAMS", "REQUESTS", "IDLE"},
	                   .right = {false, false, false, true, true, true}};
	struct table at = {.ncols = 4,
	                   .head = {"ORIGIN", "ALTERNATIVE", "EXPIRES IN", "BROKEN FOR"},
	                   .right = {false, false, true, true}};
	char up[32];
	double clients = jnum(doc, "clients", 0);
	bool ok;

	if (doc->t != J_OBJ || !conns || conns->t != J_ARR) {
		set_err(err, errsize, "no connections list (is this muxd?)");
		return false;
	}
	for (size_t i = 0; i < conns->n; i++) {
		const struct jv *c = &conns->items[i];
		char streams[32], requests[32], idle[32], st[40], origin[600];
		const char *state = jstr(c, "state", "?");
		const struct jv *hosts = jget(c, "hosts");
		size_t len;
		snprintf(streams, sizeof(streams), "%.0f", jnum(c, "streams", 0));
		snprintf(requests, sizeof(requests), "%.0f", jnum(c, "requests", 0));
		if (strcmp(state, "idle") == 0)
			fmt_duration(idle, sizeof(idle), jnum(c, "idle_s", 0));
		else
			snprintf(idle, sizeof(idle), "-");
		/* kept open by keep-warm; other names coalesced onto it */
		snprintf(st, sizeof(st), "%s%s", state, jbool(c, "warm") ? ",warm" : "");
		snprintf(origin, sizeof(origin), "%s", jstr(c, "origin", "?"));
		for (size_t k = 1; hosts && hosts->t == J_ARR && k < hosts->n; k++)
			if (hosts->items[k].t == J_STR && (len = strlen(origin)) < sizeof(origin))
				snprintf(origin + len, sizeof(origin) - len, " +%s",
				         hosts->items[k].str);
		const char *row[] = {origin, jstr(c, "proto", "-"), st, streams, requests, idle};
		table_row(&ct, row);
	}
	for (size_t i = 0; alts && alts->t == J_ARR && i < alts->n; i++) {
		const struct jv *a = &alts->items[i];
		const char *host = jstr(a, "alt_host", "");
		char alt[320], expires[32], broken[32];
		snprintf(alt, sizeof(alt), "h3 %s%s%s:%.0f", strchr(host, ':') ? "[" : "", host,
		         strchr(host, ':') ? "]" : "", jnum(a, "alt_port", 0));
		fmt_duration(expires, sizeof(expires), jnum(a, "expires_in_s", 0));
		if (jnum(a, "broken_for_s", 0) > 0)
			fmt_duration(broken, sizeof(broken), jnum(a, "broken_for_s", 0));
		else
			snprintf(broken, sizeof(broken), "-");
		const char *row[] = {jstr(a, "origin", "?"), alt, expires, broken};
		table_row(&at, row);
	}
	ok = !ct.oom && !at.oom;
	if (ok) {
		fmt_duration(up, sizeof(up), jnum(doc, "uptime_s", 0));
		fprintf(
		    out,
		    "muxd at %s: up %s, %.0f client connection%s, %zu upstream connection%s\n\n",
		    where, up, clients, clients == 1 ? "" : "s", conns->n,
		    conns->n == 1 ? "" : "s");
		if (ct.nrows)
			table_print(&ct, out);
		else
			fprintf(out, "no upstream connections\n");
		fprintf(out, "\nAlt-Svc cache:\n");
		if (at.nrows)
			table_print(&at, out);
		else
			fprintf(out, "no entries\n");
	} else {
		set_err(err, errsize, "out of memory");
	}
	table_free(&ct);
	table_free(&at);
	return ok;
}

bool status_render(const char *json, size_t len, const char *where, FILE *out, char *err,
                   size_t errsize)
{
	struct jv doc;
	size_t at = 0;
	bool ok;

	if (!json_parse(json, len, &doc, &at)) {
		set_err(err, errsize, "malformed JSON (at byte %zu of %zu)", at, len);
		return false;
	}
	ok = print_status(where, &doc, out, err, errsize);
	jv_free(&doc);
	return ok;
}

int status_cmd(const struct config *cfg)
{
	static const struct admin_get_opts opts = {
	    .connect_ms = CONNECT_TIMEOUT_MS,
	    .exchange_ms = EXCHANGE_TIMEOUT_MS,
	    .max = ADMIN_MAX_RESPONSE,
	    .only_200 = true,
	    .user_agent = "muxd-status",
	    .accept = "application/json",
	};
	struct admin_reply reply;
	const char *where;
	char err[512];
	bool ok;

	if (cfg->nlisten == 0) {
		fprintf(stderr, "muxd status: the configuration has no listen address\n");
		return 1;
	}
	where = cfg->listen[0].text;
	if (admin_get(&cfg->listen[0], "/status.json", &opts, &reply, err, sizeof(err)) !=
	    ADMIN_FETCH_OK) {
		fprintf(stderr, "muxd status: cannot get the status of muxd at %s: %s\n", where,
		        err);
		return 1;
	}
	ok = status_render(reply.body, reply.body_len, where, stdout, err, sizeof(err));
	admin_reply_free(&reply);
	if (!ok) {
		fprintf(stderr, "muxd status: %s answered /status.json with %s\n", where, err);
		return 1;
	}
	return 0;
}
