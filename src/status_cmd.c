/*
 * status_cmd — `muxd status`: a blocking HTTP/1.1 GET of /status.json from
 * the config's first listen address (an unspecified address such as 0.0.0.0
 * is asked on loopback, since admin pages answer loopback clients only), a
 * small JSON parser for that document (docs/status-json.md), and aligned
 * tables of the upstream connections and the Alt-Svc cache on stdout. The
 * response is framed by src/http1 (head parser, chunked decoder), as every
 * other HTTP/1.1 message muxd reads.
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
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "http1.h"

#define CONNECT_TIMEOUT_MS 3000
#define IO_TIMEOUT_S 10       /* the whole request and response, after connecting */
#define MAX_DEPTH 32          /* nesting of arrays and objects */
#define MAX_VALUES (1u << 20) /* values in a document: bounds the tree's memory */

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

/* ------------------------------------------------------- response parsing */

static size_t response_max(const struct status_response *r)
{
	return r->max ? r->max : STATUS_MAX_RESPONSE;
}

/* Room for n more body bytes (and the NUL) in r->body. */
static bool body_reserve(struct status_response *r, size_t n)
{
	size_t cap = r->body_cap ? r->body_cap : 256;
	char *nb;

	if (r->body && r->body_len + n < r->body_cap)
		return true;
	while (cap <= r->body_len + n)
		cap *= 2;
	nb = realloc(r->body, cap);
	if (!nb)
		return false;
	r->body = nb;
	r->body_cap = cap;
	return true;
}

static bool body_append(struct status_response *r, const char *p, size_t n)
{
	if (!body_reserve(r, n))
		return false;
	memcpy(r->body + r->body_len, p, n);
	r->body_len += n;
	r->body[r->body_len] = '\0';
	return true;
}

/* The first line of the body, at most 160 bytes, control bytes as '?'. */
static void first_line(const struct status_response *r, char *out, size_t size)
{
	size_t o = 0;

	for (size_t i = 0; r->body && i < r->body_len && o + 1 < size && o < 160; i++) {
		unsigned char c = (unsigned char)r->body[i];
		if (c == '\r' || c == '\n')
			break;
		out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	out[o] = '\0';
}

/* A complete message: the body, or the error that a status other than 200 is. */
static enum status_parse finish(struct status_response *r, char *err, size_t errsize)
{
	char line[161];

	if (!body_reserve(r, 0)) {
		set_err(err, errsize, "out of memory");
		return STATUS_PARSE_ERROR;
	}
	r->body[r->body_len] = '\0';
	if (r->status == 200)
		return STATUS_PARSE_DONE;
	first_line(r, line, sizeof(line));
	set_err(err, errsize, "answered %d %s%s%s", r->status, http1_reason(r->status),
	        *line ? ": " : "", line);
	return STATUS_PARSE_ERROR;
}

/* An error in the body (or the size) of a response: a final status other
 * than 200 says more than the body does. */
static enum status_parse body_error(struct status_response *r, const char *what, char *err,
                                    size_t errsize)
{
	if (r->status && r->status != 200)
		set_err(err, errsize, "answered %d %s (%s)", r->status, http1_reason(r->status),
		        what);
	else
		set_err(err, errsize, "%s", what);
	return STATUS_PARSE_ERROR;
}

/* Whether p[0..n) can start an HTTP/1 status line. */
static bool http_prefix(const char *p, size_t n)
{
	return memcmp(p, "HTTP/", n < 5 ? n : 5) == 0;
}

/* Parses heads at r->pos until the final one; MORE when a head is incomplete. */
static enum status_parse parse_heads(struct status_response *r, const char *in, size_t len,
                                     char *err, size_t errsize)
{
	while (r->status == 0) {
		struct http1_msg msg;
		size_t used = 0;
		int status;

		switch (http1_parse_response(in + r->pos, len - r->pos, "GET", &msg, &used)) {
		case HTTP1_OK:
			break;
		case HTTP1_INCOMPLETE:
			if (!http_prefix(in + r->pos, len - r->pos))
				goto not_http;
			return STATUS_PARSE_MORE;
		case HTTP1_TOO_LARGE:
			set_err(err, errsize,
			        "response head too large (over %d bytes or %d fields)",
			        HTTP1_MAX_HEAD, HTTP1_MAX_FIELDS);
			return STATUS_PARSE_ERROR;
		case HTTP1_BAD:
		default:
			if (!http_prefix(in + r->pos, len - r->pos))
				goto not_http;
			set_err(err, errsize, "malformed response head");
			return STATUS_PARSE_ERROR;
		}
		status = msg.status;
		r->framing = msg.body;
		r->content_length = msg.content_length;
		http1_msg_free(&msg);
		r->pos += used;
		if (status >= 200 || status == 101) {
			r->status = status;
			break;
		}
		if (++r->interim > STATUS_MAX_INTERIM) {
			set_err(err, errsize, "more than %d interim (1xx) responses",
			        STATUS_MAX_INTERIM);
			return STATUS_PARSE_ERROR;
		}
	}
	return STATUS_PARSE_DONE;
not_http:
	set_err(err, errsize, "not an HTTP response (is this muxd?)");
	return STATUS_PARSE_ERROR;
}

/* Decodes the chunked body from r->pos on. */
static enum status_parse parse_chunked(struct status_response *r, const char *in, size_t len,
                                       char *err, size_t errsize)
{
	while (r->pos < len) {
		const char *data;
		size_t used = 0, n = 0;

		switch (
		    http1_chunked_next(&r->chunked, in + r->pos, len - r->pos, &used, &data, &n)) {
		case HTTP1_CHUNK_DATA:
			r->pos += used;
			if (!body_append(r, data, n)) {
				set_err(err, errsize, "out of memory");
				return STATUS_PARSE_ERROR;
			}
			continue;
		case HTTP1_CHUNK_NEED_MORE:
			r->pos += used;
			return STATUS_PARSE_MORE;
		case HTTP1_CHUNK_DONE:
			r->pos += used;
			return finish(r, err, errsize);
		case HTTP1_CHUNK_ERROR:
		default:
			return body_error(r, "malformed chunked body", err, errsize);
		}
	}
	return STATUS_PARSE_MORE;
}

enum status_parse status_response_feed(struct status_response *r, const char *in, size_t len,
                                       bool eof, char *err, size_t errsize)
{
	size_t max = response_max(r), avail = len < max ? len : max;
	enum status_parse res = parse_heads(r, in, avail, err, errsize);
	char what[160];

	if (res == STATUS_PARSE_DONE) {
		switch (r->framing) {
		case HTTP1_BODY_NONE:
			return finish(r, err, errsize);
		case HTTP1_BODY_LENGTH:
			if (r->content_length > max - r->pos) {
				snprintf(what, sizeof(what),
				         "response too large: Content-Length %llu, limit %zu bytes",
				         (unsigned long long)r->content_length, max);
				return body_error(r, what, err, errsize);
			}
			if (avail - r->pos < r->content_length) {
				res = STATUS_PARSE_MORE;
				break;
			}
			if (!body_append(r, in + r->pos, (size_t)r->content_length)) {
				set_err(err, errsize, "out of memory");
				return STATUS_PARSE_ERROR;
			}
			return finish(r, err, errsize);
		case HTTP1_BODY_CHUNKED:
			res = parse_chunked(r, in, avail, err, errsize);
			break;
		case HTTP1_BODY_CLOSE:
		case HTTP1_BODY_UNKNOWN: /* not from an HTTP/1.x parse; as CLOSE */
			if (!eof || len > max) {
				res = STATUS_PARSE_MORE;
				break;
			}
			if (!body_append(r, in + r->pos, len - r->pos)) {
				set_err(err, errsize, "out of memory");
				return STATUS_PARSE_ERROR;
			}
			return finish(r, err, errsize);
		}
	}
	if (res != STATUS_PARSE_MORE)
		return res;
	if (len > max) {
		snprintf(what, sizeof(what), "response too large (over %zu bytes)", max);
		return body_error(r, what, err, errsize);
	}
	if (!eof)
		return STATUS_PARSE_MORE;
	if (r->status == 0) {
		set_err(err, errsize,
		        len == 0 ? "connection closed without a response"
		                 : "connection closed in the response head");
		return STATUS_PARSE_ERROR;
	}
	if (r->framing == HTTP1_BODY_LENGTH)
		snprintf(what, sizeof(what),
		         "truncated response: connection closed after %zu of %llu body bytes",
		         avail - r->pos, (unsigned long long)r->content_length);
	else
		snprintf(what, sizeof(what),
		         "truncated response: connection closed in the chunked body");
	return body_error(r, what, err, errsize);
}

void status_response_free(struct status_response *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}

char *status_parse_response(const char *buf, size_t len, int *status, size_t *body_len, char *err,
                            size_t errsize)
{
	struct status_response r;
	char *body = NULL;

	memset(&r, 0, sizeof(r));
	if (status_response_feed(&r, buf, len, true, err, errsize) == STATUS_PARSE_DONE) {
		body = r.body;
		*body_len = r.body_len;
		r.body = NULL;
	}
	*status = r.status;
	status_response_free(&r);
	return body;
}

/* -------------------------------------------------------------------- HTTP */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

/* GET path; the body (NUL-terminated, caller frees) of a 200 response, read
 * within IO_TIMEOUT_S. */
static char *http_get(const struct config_listen *l, const char *path, size_t *body_len, char *err,
                      size_t errsize)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct status_response r;
	char req[512], perr[384], *buf = NULL, *body = NULL;
	size_t len = 0, cap = 0, max = STATUS_MAX_RESPONSE;
	long long deadline;
	int fd;

	memset(&r, 0, sizeof(r));
	target_addr(l, &ss, &sslen);
	fd = connect_timeout(&ss, sslen, err, errsize);
	if (fd < 0)
		return NULL;
	deadline = now_ms() + IO_TIMEOUT_S * 1000;
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
			goto out;
		}
		off += (size_t)k;
	}
	for (;;) {
		struct pollfd pfd = {fd, POLLIN, 0};
		enum status_parse res;
		long long left = deadline - now_ms();
		bool eof = false;
		ssize_t k;
		int n;

		/* up to max + 1 bytes: one more than the limit tells the parser it is over */
		if (cap - len < 4096 && cap <= max) {
			size_t ncap = cap ? cap * 2 : 65536;
			char *nb;
			if (ncap > max + 1)
				ncap = max + 1;
			nb = realloc(buf, ncap);
			if (!nb) {
				set_err(err, errsize, "out of memory");
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		n = left > 0 ? poll(&pfd, 1, (int)left) : 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0) {
			set_err(err, errsize, "reading the response: timed out after %d s",
			        IO_TIMEOUT_S);
			goto out;
		}
		k = n < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k < 0) {
			set_err(err, errsize, "reading the response: %s", strerror(errno));
			goto out;
		}
		if (k == 0)
			eof = true;
		len += (size_t)k;
		res = status_response_feed(&r, buf, len, eof, perr, sizeof(perr));
		if (res == STATUS_PARSE_MORE)
			continue;
		if (res == STATUS_PARSE_DONE) {
			body = r.body;
			*body_len = r.body_len;
			r.body = NULL;
		} else if (r.status && r.status != 200) {
			set_err(err, errsize, "%s %s", path, perr);
		} else {
			set_err(err, errsize, "%s", perr);
		}
		break;
	}
out:
	close(fd);
	free(buf);
	status_response_free(&r);
	return body;
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
	const char *where;
	char err[512];
	size_t len;
	char *body;
	bool ok;

	if (cfg->nlisten == 0) {
		fprintf(stderr, "muxd status: the configuration has no listen address\n");
		return 1;
	}
	where = cfg->listen[0].text;
	body = http_get(&cfg->listen[0], "/status.json", &len, err, sizeof(err));
	if (!body) {
		fprintf(stderr, "muxd status: cannot get the status of muxd at %s: %s\n", where,
		        err);
		return 1;
	}
	ok = status_render(body, len, where, stdout, err, sizeof(err));
	free(body);
	if (!ok) {
		fprintf(stderr, "muxd status: %s answered /status.json with %s\n", where, err);
		return 1;
	}
	return 0;
}
