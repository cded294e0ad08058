/*
 * status_cmd — `muxd status`: a blocking HTTP/1.1 GET of /status.json from
 * the config's first listen address (an unspecified address such as 0.0.0.0
 * is asked on loopback, since admin pages answer loopback clients only), a
 * small JSON parser for that document (docs/status-json.md), and aligned
 * tables of the upstream connections and the Alt-Svc cache on stdout.
 */
#include "status_cmd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "config.h"

#define CONNECT_TIMEOUT_MS 3000
#define IO_TIMEOUT_S 10
#define MAX_RESPONSE (32u << 20)
#define MAX_DEPTH 32

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
	size_t n;
};

struct jparser {
	const char *p, *end;
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
	struct jv *items = realloc(v->items, (v->n + 1) * sizeof(*items));
	if (!items)
		return false;
	v->items = items;
	memset(&v->items[v->n], 0, sizeof(*v->items));
	if (v->t == J_OBJ) {
		char **keys = realloc(v->keys, (v->n + 1) * sizeof(*keys));
		if (!keys)
			return false;
		v->keys = keys;
		v->keys[v->n] = key;
	}
	v->n++;
	return true;
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
	char *endp;

	if (depth > MAX_DEPTH)
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
		/* the document is NUL-terminated, so strtod stops in time */
		v->t = J_NUM;
		v->num = strtod(jp->p, &endp);
		if (endp == jp->p || endp > jp->end)
			return false;
		jp->p = endp;
		return true;
	}
}

static bool json_parse(const char *text, size_t len, struct jv *out)
{
	struct jparser jp = {text, text + len};

	memset(out, 0, sizeof(*out));
	if (!parse_value(&jp, out, 0)) {
		jv_free(out);
		return false;
	}
	skip_ws(&jp);
	if (jp.p != jp.end) {
		jv_free(out);
		return false;
	}
	return true;
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

/* -------------------------------------------------------------------- HTTP */

/* Loopback in place of an unspecified listen address. */
static void target_addr(const struct config_listen *l, struct sockaddr_storage *ss, socklen_t *len)
{
	memcpy(ss, &l->addr, sizeof(*ss));
	*len = l->addr_len;
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
			sin6->sin6_addr = in6addr_loopback;
	}
}

static int connect_timeout(const struct sockaddr_storage *ss, socklen_t len, char *err,
                           size_t errsize)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int soerr = 0;
	socklen_t sl = sizeof(soerr);
	struct timeval tv = {IO_TIMEOUT_S, 0};

	if (fd < 0) {
		set_err(err, errsize, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)ss, len) != 0) {
		struct pollfd pfd = {fd, POLLOUT, 0};
		int n;
		if (errno != EINPROGRESS) {
			soerr = errno;
			goto fail;
		}
		do
			n = poll(&pfd, 1, CONNECT_TIMEOUT_MS);
		while (n < 0 && errno == EINTR);
		if (n == 0) {
			soerr = ETIMEDOUT;
			goto fail;
		}
		if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
			soerr = errno;
		if (soerr)
			goto fail;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
fail:
	set_err(err, errsize, "%s", strerror(soerr));
	close(fd);
	return -1;
}

/* Decode a chunked body in place; false if it is malformed or cut short. */
static bool dechunk(char *body, size_t len, size_t *out_len)
{
	size_t r = 0, w = 0;
	for (;;) {
		char *end;
		unsigned long n;
		char *eol = memmem(body + r, len - r, "\r\n", 2);
		if (!eol)
			return false;
		n = strtoul(body + r, &end, 16);
		if (end == body + r)
			return false;
		r = (size_t)(eol - body) + 2;
		if (n == 0) {
			*out_len = w;
			return true;
		}
		if (n > len - r || len - r - n < 2)
			return false;
		memmove(body + w, body + r, n);
		w += n;
		r += n + 2;
	}
}

/* GET path; the body (NUL-terminated, caller frees) of a 200 response. */
static char *http_get(const struct config_listen *l, const char *path, size_t *body_len, char *err,
                      size_t errsize)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	char req[512], *buf = NULL, *body, *head_end;
	size_t len = 0, cap = 0;
	int fd, status;

	target_addr(l, &ss, &sslen);
	fd = connect_timeout(&ss, sslen, err, errsize);
	if (fd < 0)
		return NULL;
	snprintf(req, sizeof(req),
	         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: muxd-status\r\n"
	         "Accept: application/json\r\nConnection: close\r\n\r\n",
	         path, l->text);
	for (size_t off = 0, n = strlen(req); off < n;) {
		ssize_t k = send(fd, req + off, n - off, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			set_err(err, errsize, "sending the request: %s", strerror(errno));
			goto fail;
		}
		off += (size_t)k;
	}
	for (;;) {
		ssize_t k;
		if (cap - len < 4096) {
			char *nb;
			if (cap >= MAX_RESPONSE) {
				set_err(err, errsize, "response too large");
				goto fail;
			}
			nb = realloc(buf, cap ? cap * 2 : 65536);
			if (!nb) {
				set_err(err, errsize, "out of memory");
				goto fail;
			}
			buf = nb;
			cap = cap ? cap * 2 : 65536;
		}
		k = recv(fd, buf + len, cap - len - 1, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			set_err(err, errsize, "reading the response: %s",
			        errno == EAGAIN ? "timed out" : strerror(errno));
			goto fail;
		}
		if (k == 0)
			break;
		len += (size_t)k;
	}
	close(fd);
	fd = -1;
	if (!buf || len == 0) {
		set_err(err, errsize, "connection closed without a response");
		goto fail;
	}
	buf[len] = '\0';
	if (sscanf(buf, "HTTP/1.%*1[01] %3d", &status) != 1) {
		set_err(err, errsize, "not an HTTP response (is this muxd?)");
		goto fail;
	}
	head_end = strstr(buf, "\r\n\r\n");
	if (!head_end) {
		set_err(err, errsize, "truncated response");
		goto fail;
	}
	body = head_end + 4;
	*body_len = len - (size_t)(body - buf);
	if (status != 200) {
		char *nl = memchr(body, '\n', *body_len);
		if (nl)
			*nl = '\0';
		set_err(err, errsize, "%s answered %d%s%s", path, status, *body ? ": " : "", body);
		goto fail;
	}
	*head_end = '\0';
	/* header names are case-insensitive; this only needs chunked or not */
	for (char *h = strchr(buf, '\n'); h; h = strchr(h + 1, '\n'))
		if (strncasecmp(h + 1, "transfer-encoding:", 18) == 0 && strstr(h, "chunked")) {
			if (!dechunk(body, *body_len, body_len)) {
				set_err(err, errsize, "bad chunked body");
				goto fail;
			}
			break;
		}
	memmove(buf, body, *body_len);
	buf[*body_len] = '\0';
	return buf;
fail:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
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
		c[t->nrows * t->ncols + i] = strdup(vals[i]);
		if (!c[t->nrows * t->ncols + i])
			t->oom = true;
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

static void table_print(const struct table *t)
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
				printf("%*s%s", pad, "", s);
			else
				printf("%s%*s", s, last ? 0 : pad, "");
			fputs(last ? "\n" : "  ", stdout);
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
	if (s < 0)
		s = 0;
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

static bool print_status(const struct config_listen *l, const struct jv *doc, char *err,
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
		set_err(err, errsize, "/status.json has no connections list (is this muxd?)");
		return false;
	}
	for (size_t i = 0; i < conns->n; i++) {
		const struct jv *c = &conns->items[i];
		char streams[32], requests[32], idle[32];
		const char *state = jstr(c, "state", "?");
		snprintf(streams, sizeof(streams), "%.0f", jnum(c, "streams", 0));
		snprintf(requests, sizeof(requests), "%.0f", jnum(c, "requests", 0));
		if (strcmp(state, "idle") == 0)
			fmt_duration(idle, sizeof(idle), jnum(c, "idle_s", 0));
		else
			snprintf(idle, sizeof(idle), "-");
		const char *row[] = {
		    jstr(c, "origin", "?"), jstr(c, "proto", "-"), state, streams, requests, idle};
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
		printf("muxd at %s: up %s, %.0f client connection%s, %zu upstream connection%s\n\n",
		       l->text, up, clients, clients == 1 ? "" : "s", conns->n,
		       conns->n == 1 ? "" : "s");
		if (ct.nrows)
			table_print(&ct);
		else
			printf("no upstream connections\n");
		printf("\nAlt-Svc cache:\n");
		if (at.nrows)
			table_print(&at);
		else
			printf("no entries\n");
	} else {
		set_err(err, errsize, "out of memory");
	}
	table_free(&ct);
	table_free(&at);
	return ok;
}

int status_cmd(const struct config *cfg)
{
	char err[512];
	size_t len;
	char *body;
	struct jv doc;
	bool ok;

	if (cfg->nlisten == 0) {
		fprintf(stderr, "muxd status: the configuration has no listen address\n");
		return 1;
	}
	body = http_get(&cfg->listen[0], "/status.json", &len, err, sizeof(err));
	if (!body) {
		fprintf(stderr, "muxd status: cannot get the status of muxd at %s: %s\n",
		        cfg->listen[0].text, err);
		return 1;
	}
	ok = json_parse(body, len, &doc);
	free(body);
	if (!ok) {
		fprintf(stderr, "muxd status: %s answered /status.json with malformed JSON\n",
		        cfg->listen[0].text);
		return 1;
	}
	ok = print_status(&cfg->listen[0], &doc, err, sizeof(err));
	jv_free(&doc);
	if (!ok) {
		fprintf(stderr, "muxd status: %s\n", err);
		return 1;
	}
	return 0;
}
