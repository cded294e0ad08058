/*
 * fields — header fields shared by the HTTP/2 and HTTP/3 upstream
 * connections (see fields.h): the byte string, the received head and
 * trailers, the struct http1_msg built for on_head, the request fields that
 * are dropped. Owns nothing.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "upstream/fields.h"

bool sbuf_add(struct sbuf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;
		while (cap < b->len + n + 1)
			cap *= 2;
		if (!(p = realloc(b->p, cap)))
			return false;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return true;
}

int fields_status(const uint8_t *v, size_t len)
{
	if (len != 3 || v[0] < '1' || v[0] > '5' || v[1] < '0' || v[1] > '9' || v[2] < '0' ||
	    v[2] > '9')
		return -1;
	return (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
}

const char *fields_add_head(struct sbuf *hdrs, size_t *n, const void *name, size_t nlen,
                            const void *value, size_t vlen)
{
	if (*n >= HTTP1_MAX_FIELDS || hdrs->len + nlen + vlen + 2 > HTTP1_MAX_HEAD)
		return "response head too large";
	if (!sbuf_add(hdrs, name, nlen) || !sbuf_add(hdrs, "", 1) || !sbuf_add(hdrs, value, vlen) ||
	    !sbuf_add(hdrs, "", 1))
		return "out of memory";
	(*n)++;
	return NULL;
}

const char *fields_add_trailer(struct sbuf *trailers, const void *name, size_t nlen,
                               const void *value, size_t vlen)
{
	if (trailers->len + nlen + vlen + 4 > HTTP1_MAX_HEAD)
		return "response trailers too large";
	if (!sbuf_add(trailers, name, nlen) || !sbuf_add(trailers, ": ", 2) ||
	    !sbuf_add(trailers, value, vlen) || !sbuf_add(trailers, "\r\n", 2))
		return "out of memory";
	return NULL;
}

static bool parse_length(const char *v, size_t len, uint64_t *out)
{
	uint64_t n = 0;

	if (len == 0 || len > 18)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return false;
		n = n * 10 + (uint64_t)(v[i] - '0');
	}
	*out = n;
	return true;
}

void fields_msg(struct http1_msg *m, char *head, size_t head_len, size_t nfields, int status,
                bool no_body)
{
	const char *p = head;

	http1_msg_init(m);
	m->head = head;
	m->head_len = head_len;
	m->status = status;
	m->reason = http1_reason(status);
	m->version_minor = 1;
	m->keep_alive = true;
	for (size_t i = 0; i < nfields; i++) {
		struct http1_field *f = &m->fields[i];
		f->name = p;
		f->name_len = strlen(p);
		p += f->name_len + 1;
		f->value = p;
		f->value_len = strlen(p);
		p += f->value_len + 1;
	}
	m->nfields = nfields;
	http1_msg_index_connection(m); /* the hop-by-hop filter asks per field */
	if (status < 200 || status == 204 || status == 304 || no_body) {
		m->body = HTTP1_BODY_NONE;
	} else {
		const struct http1_field *cl = http1_find(m, "content-length");
		uint64_t n;
		if (cl && parse_length(cl->value, cl->value_len, &n)) {
			m->body = n > 0 ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
			m->content_length = n;
		} else {
			m->body = HTTP1_BODY_UNKNOWN; /* ends with the stream */
		}
	}
}

bool fields_dropped(const char *name, size_t nlen, const char *value, size_t vlen)
{
	static const char *const drop[] = {"connection",        "keep-alive", "proxy-connection",
	                                   "transfer-encoding", "upgrade",    "host",
	                                   "content-length"};

	for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
		if (strlen(drop[i]) == nlen && strncasecmp(name, drop[i], nlen) == 0)
			return true;
	if (nlen == 2 && strncasecmp(name, "te", 2) == 0)
		return !(vlen == 8 && strncasecmp(value, "trailers", 8) == 0);
	return false;
}

char *fields_next_line(char *p, char **name, char **value)
{
	char *eol, *colon, *v;

	*name = *value = NULL;
	if (!p || !*p || !(eol = strstr(p, "\r\n")))
		return NULL;
	*eol = '\0';
	colon = strchr(p, ':');
	if (colon && colon > p) {
		*colon = '\0';
		v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		*name = p;
		*value = v;
	}
	return eol + 2;
}
