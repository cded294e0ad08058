/*
 * http1 — strict HTTP/1.1 head parser, incremental chunked-body decoder and
 * URI/authority helpers (RFC 9110, RFC 9112). Pure code; see http1.h.
 * Anything ambiguous is rejected rather than repaired.
 */
#include "http1.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_LINE_MAX 4096 /* longest chunk-size line (with extensions) */

static bool is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Byte classes, one table lookup per byte on the hot paths (the heads of a
 * request and its response are most of a keep-alive request's parsing):
 * CL_TCHAR  token characters (RFC 9110 5.6.2)
 * CL_VALUE  field-value octets: HTAB, SP, VCHAR, obs-text (RFC 9110 5.5)
 * CL_TARGET request-target octets: VCHAR (0x21..0x7e)
 * CL_LINE   what the head scan passes over: all but NUL, CR and LF
 * CL_HOST   what a Host value may hold: unreserved, sub-delims, '%', ':', '[', ']'
 * CL_NAME   a reg-name's characters as muxd takes them: ALPHA DIGIT - . _ ~
 */
enum { CL_TCHAR = 1, CL_VALUE = 2, CL_TARGET = 4, CL_LINE = 8, CL_HOST = 16, CL_NAME = 32 };
#define CL_IS_ALNUM(c)                                                                             \
	(((c) >= '0' && (c) <= '9') || ((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define CL_IS_UNRESERVED(c) ((c) == '-' || (c) == '.' || (c) == '_' || (c) == '~')
#define CL_IS_TCHAR(c)                                                                             \
	(CL_IS_ALNUM(c) || (c) == '!' || (c) == '#' || (c) == '$' || (c) == '%' || (c) == '&' ||   \
	 (c) == '\'' || (c) == '*' || (c) == '+' || (c) == '-' || (c) == '.' || (c) == '^' ||      \
	 (c) == '_' || (c) == '`' || (c) == '|' || (c) == '~')
#define CL_OF(c)                                                                                   \
	((CL_IS_TCHAR(c) ? CL_TCHAR : 0) |                                                         \
	 ((c) == '\t' || ((c) >= 0x20 && (c) != 0x7f) ? CL_VALUE : 0) |                            \
	 ((c) > 0x20 && (c) < 0x7f ? CL_TARGET : 0) |                                              \
	 ((c) != 0 && (c) != '\r' && (c) != '\n' ? CL_LINE : 0) |                                  \
	 (CL_IS_ALNUM(c) || CL_IS_UNRESERVED(c) || (c) == '%' || (c) == '!' || (c) == '$' ||       \
	          (c) == '&' || (c) == '\'' || (c) == '(' || (c) == ')' || (c) == '*' ||           \
	          (c) == '+' || (c) == ',' || (c) == ';' || (c) == '=' || (c) == ':' ||            \
	          (c) == '[' || (c) == ']'                                                         \
	      ? CL_HOST                                                                            \
	      : 0) |                                                                               \
	 (CL_IS_ALNUM(c) || CL_IS_UNRESERVED(c) ? CL_NAME : 0))
#define CL_4(c) CL_OF(c), CL_OF((c) + 1), CL_OF((c) + 2), CL_OF((c) + 3)
#define CL_16(c) CL_4(c), CL_4((c) + 4), CL_4((c) + 8), CL_4((c) + 12)
#define CL_64(c) CL_16(c), CL_16((c) + 16), CL_16((c) + 32), CL_16((c) + 48)
static const unsigned char cls[256] = {CL_64(0), CL_64(64), CL_64(128), CL_64(192)};
#undef CL_4
#undef CL_16
#undef CL_64
#undef CL_OF
#undef CL_IS_TCHAR
#undef CL_IS_UNRESERVED
#undef CL_IS_ALNUM

static bool is_tchar(unsigned char c)
{
	return cls[c] & CL_TCHAR;
}

/* field-value octets: HTAB, SP, VCHAR, obs-text */
static bool is_value_char(unsigned char c)
{
	return cls[c] & CL_VALUE;
}

/*
 * The control bytes (below 0x20, and DEL) among the eight bytes of x: the
 * word tricks "has a byte less than n" and "has a zero byte". A byte's high
 * bit is set for the first such byte (lowest address on a little-endian
 * machine) exactly, and maybe for some after it; none before it.
 */
#define BYTES(b) (0x0101010101010101ULL * (b))
static inline uint64_t ctl_bytes(uint64_t x)
{
	uint64_t del = x ^ BYTES(0x7f);

	return (((x - BYTES(0x20)) & ~x) | ((del - BYTES(1)) & ~del)) & BYTES(0x80);
}

/* Past the bytes from p[i] (at most to p[n]) that are neither control bytes
 * nor DEL, eight at a time: all of them are CL_VALUE and CL_LINE; the caller
 * goes on byte by byte (HTAB is a value byte too). */
static inline size_t run_plain(const unsigned char *p, size_t i, size_t n)
{
	uint64_t x, ctl;

	while (i + 8 <= n) {
		memcpy(&x, p + i, 8);
		ctl = ctl_bytes(x);
		if (ctl) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			i += (size_t)__builtin_ctzll(ctl) / 8; /* to the first one */
#endif
			break;
		}
		i += 8;
	}
	return i;
}

/* Past the bytes of class cl (one CL_ bit) from p[i], at most to p[n]:
 * four at a time while they last. */
static inline size_t run(const unsigned char *p, size_t i, size_t n, unsigned cl)
{
	while (i + 4 <= n && (cls[p[i]] & cls[p[i + 1]] & cls[p[i + 2]] & cls[p[i + 3]] & cl))
		i += 4;
	while (i < n && (cls[p[i]] & cl))
		i++;
	return i;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
		return (c | 0x20) - 'a' + 10;
	return -1;
}

/* ASCII lower case of every byte */
#define LC_OF(c) ((c) >= 'A' && (c) <= 'Z' ? (c) | 0x20 : (c))
#define LC_4(c) LC_OF(c), LC_OF((c) + 1), LC_OF((c) + 2), LC_OF((c) + 3)
#define LC_16(c) LC_4(c), LC_4((c) + 4), LC_4((c) + 8), LC_4((c) + 12)
#define LC_64(c) LC_16(c), LC_16((c) + 16), LC_16((c) + 32), LC_16((c) + 48)
static const unsigned char lc[256] = {LC_64(0), LC_64(64), LC_64(128), LC_64(192)};
#undef LC_4
#undef LC_16
#undef LC_64
#undef LC_OF

static char lower(char c)
{
	return (char)lc[(unsigned char)c];
}

/* Case-insensitive (ASCII) comparison of s[0..n) with the string b. */
static bool ieq(const char *s, size_t n, const char *b)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (b[i] == '\0' || lower(s[i]) != lower(b[i]))
			return false;
	return b[n] == '\0';
}

/* ieq against a string literal: the length decides most comparisons (the
 * header filters run these for every field against every name). */
#define IEQ_LIT(s, n, lit) ((n) == sizeof(lit) - 1 && ieq((s), (n), (lit)))

static void trim_ows(const char *s, size_t *start, size_t *end)
{
	while (*start < *end && is_ows(s[*start]))
		(*start)++;
	while (*end > *start && is_ows(s[*end - 1]))
		(*end)--;
}

/*
 * The next element of a comma-separated list (RFC 9110 5.6.1) from *pos:
 * [*start, *end) without its OWS, and without its parameters (";q=1") when
 * strip_params; false past the end. Empty elements come back empty.
 */
static bool list_next(const char *value, size_t value_len, size_t *pos, bool strip_params,
                      size_t *start, size_t *end)
{
	size_t i = *pos;

	if (i > value_len)
		return false;
	*start = i;
	while (i < value_len && value[i] != ',')
		i++;
	*end = i;
	*pos = i + 1;
	if (strip_params) {
		const char *semi = memchr(value + *start, ';', *end - *start);
		if (semi)
			*end = (size_t)(semi - value);
	}
	trim_ows(value, start, end);
	return true;
}

/* ---- message heads ---- */

/*
 * Find the end of a head that starts at data[start]: the offset just past
 * CRLF CRLF. Bare CR, bare LF and NUL are rejected as soon as they are seen.
 * Asked only when scan_head found a line wrong (or the input short), to say
 * whether that line's answer stands yet.
 */
static enum http1_result find_head(const char *d, size_t len, size_t start, size_t *end)
{
	size_t lim = len < HTTP1_MAX_HEAD ? len : HTTP1_MAX_HEAD;
	size_t line = start;
	size_t i;

	for (i = start; i < lim; i++) {
		if (d[i] == '\0')
			return HTTP1_BAD;
		if (d[i] == '\r' && i + 1 < len && d[i + 1] != '\n')
			return HTTP1_BAD;
		if (d[i] != '\n')
			continue;
		if (i == start || d[i - 1] != '\r')
			return HTTP1_BAD;
		if (i - line == 1) {
			*end = i + 1;
			return HTTP1_OK;
		}
		line = i + 1;
	}
	return len >= HTTP1_MAX_HEAD ? HTTP1_TOO_LARGE : HTTP1_INCOMPLETE;
}

bool http1_head_scan(struct http1_head_scan *sc, const char *data, size_t len)
{
	const unsigned char *p = (const unsigned char *)data;
	size_t i = 0;

	while (i < len) {
		unsigned char c = p[i], prev = sc->last[2];
		bool first = sc->seen == 0;

		if ((cls[c] & CL_LINE) && prev != '\r') {
			/* none of NUL, CR, LF and not after a CR: a run of
			 * those decides nothing */
			size_t k = run(p, run_plain(p, i + 1, len), len, CL_LINE) - i;

			sc->seen += k;
			if (k >= 3) {
				memcpy(sc->last, p + i + k - 3, 3);
			} else if (k == 2) {
				sc->last[0] = prev;
				sc->last[1] = c;
				sc->last[2] = p[i + 1];
			} else {
				sc->last[0] = sc->last[1];
				sc->last[1] = prev;
				sc->last[2] = c;
			}
			i += k;
			continue;
		}
		bool ready =
		    c == '\0' || (c == '\n' && (first || prev != '\r')) ||
		    (!first && prev == '\r' && c != '\n') ||
		    (c == '\n' && sc->seen >= 3 && sc->last[0] == '\r' && sc->last[1] == '\n');
		sc->seen++;
		sc->last[0] = sc->last[1];
		sc->last[1] = prev;
		sc->last[2] = c;
		i++;
		if (ready)
			return true;
	}
	return false;
}

/* A Content-Length value: a list of identical decimal numbers ("5, 5"), each
 * at most INT64_MAX: the exchange and the HTTP/2 and HTTP/3 codecs carry a
 * length as a signed 64-bit number (-1 = unknown), so a larger one must be
 * malformed rather than silently become "unknown length". */
static bool parse_content_length(const struct http1_field *f, bool *have, uint64_t *cl)
{
	size_t i = 0;

	while (i <= f->value_len) {
		size_t s = i, e;
		uint64_t v = 0;

		while (i < f->value_len && f->value[i] != ',')
			i++;
		e = i++;
		trim_ows(f->value, &s, &e);
		if (s == e)
			return false;
		for (; s < e; s++) {
			unsigned d = (unsigned char)f->value[s] - '0';

			if (d > 9 || v > ((uint64_t)INT64_MAX - d) / 10)
				return false;
			v = v * 10 + d;
		}
		if (*have && v != *cl)
			return false;
		*have = true;
		*cl = v;
	}
	return true;
}

/* Every Transfer-Encoding element must be "chunked"; *count adds them up. */
static bool parse_transfer_encoding(const struct http1_field *f, int *count)
{
	size_t i = 0;

	while (i <= f->value_len) {
		size_t s = i, e;

		while (i < f->value_len && f->value[i] != ',')
			i++;
		e = i++;
		trim_ows(f->value, &s, &e);
		if (!ieq(f->value + s, e - s, "chunked"))
			return false;
		(*count)++;
	}
	return true;
}

/* What a field name means to the parser itself. */
enum name_kind {
	K_OTHER,
	K_HOST,
	K_EXPECT,
	K_CONNECTION,
	K_CONTENT_LENGTH,
	K_TRANSFER_ENCODING,
};
#define K_BIT(k) (1u << (k))

/* By length first: most names are none of these and cost one switch. */
static enum name_kind name_kind(const char *s, size_t n)
{
	switch (n) {
	case 4:
		return ieq(s, n, "Host") ? K_HOST : K_OTHER;
	case 6:
		return ieq(s, n, "Expect") ? K_EXPECT : K_OTHER;
	case 10:
		return ieq(s, n, "Connection") ? K_CONNECTION : K_OTHER;
	case 14:
		return ieq(s, n, "Content-Length") ? K_CONTENT_LENGTH : K_OTHER;
	case 17:
		return ieq(s, n, "Transfer-Encoding") ? K_TRANSFER_ENCODING : K_OTHER;
	}
	return K_OTHER;
}

/* The HTTP1_CONN_* bit of a well-known Connection token, 0 for others. */
static unsigned conn_token(const char *s, size_t n)
{
	switch (n) {
	case 2:
		return ieq(s, n, "te") ? HTTP1_CONN_TE : 0;
	case 5:
		return ieq(s, n, "close") ? HTTP1_CONN_CLOSE : 0;
	case 7:
		return ieq(s, n, "upgrade") ? HTTP1_CONN_UPGRADE : 0;
	case 10:
		return ieq(s, n, "keep-alive") ? HTTP1_CONN_KEEP_ALIVE : 0;
	}
	return 0;
}

/* The tokens of one Connection value, split as http1_list_has splits a list. */
static unsigned conn_tokens(const char *value, size_t value_len)
{
	unsigned bits = 0;
	size_t i = 0, s, e;

	while (list_next(value, value_len, &i, true, &s, &e)) {
		if (s < e) { /* an empty element names nothing */
			unsigned t = conn_token(value + s, e - s);
			bits |= t ? t : HTTP1_CONN_OTHER;
		}
	}
	return bits;
}

void http1_msg_index_connection(struct http1_msg *m)
{
	unsigned bits = HTTP1_CONN_INDEXED;

	for (size_t i = 0; i < m->nfields; i++) {
		const struct http1_field *f = &m->fields[i];

		if (IEQ_LIT(f->name, f->name_len, "Connection"))
			bits |= conn_tokens(f->value, f->value_len);
	}
	m->conn = bits;
}

/* Whether a Connection field of m lists token[0..n): from the index when
 * there is one and the token is well known (or none but well-known ones
 * are listed), else by looking at every field. */
static bool connection_has(const struct http1_msg *m, const char *token, size_t n)
{
	if (m->conn & HTTP1_CONN_INDEXED) {
		unsigned t = conn_token(token, n);

		if (t)
			return m->conn & t;
		if (!(m->conn & HTTP1_CONN_OTHER))
			return false;
	}
	for (size_t i = 0; i < m->nfields; i++) {
		const struct http1_field *f = &m->fields[i];

		if (IEQ_LIT(f->name, f->name_len, "Connection") &&
		    http1_list_has(f->value, f->value_len, token))
			return true;
	}
	return false;
}

/*
 * Content-Length / Transfer-Encoding checks shared by requests and
 * responses; sets body to CHUNKED, LENGTH or NONE (no framing fields).
 * kind[i] is what fields[i]'s name means, kinds the K_BITs of all of them.
 */
static enum http1_result framing(struct http1_msg *m, const unsigned char *kind, unsigned kinds)
{
	bool have_cl = false;
	int te_count = 0, te_fields = 0;
	uint64_t cl = 0;

	for (size_t i = 0;
	     (kinds & (K_BIT(K_CONTENT_LENGTH) | K_BIT(K_TRANSFER_ENCODING))) && i < m->nfields;
	     i++) {
		const struct http1_field *f = &m->fields[i];

		if (kind[i] == K_CONTENT_LENGTH) {
			if (!parse_content_length(f, &have_cl, &cl))
				return HTTP1_BAD;
		} else if (kind[i] == K_TRANSFER_ENCODING) {
			te_fields++;
			if (!parse_transfer_encoding(f, &te_count))
				return HTTP1_BAD;
		}
	}
	if (te_fields > 0) {
		if (te_count != 1 || have_cl || m->version_minor == 0)
			return HTTP1_BAD;
		m->body = HTTP1_BODY_CHUNKED;
	} else if (have_cl) {
		m->content_length = cl;
		m->body = cl ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
	} else {
		m->body = HTTP1_BODY_NONE;
	}
	m->conn = HTTP1_CONN_INDEXED;
	for (size_t i = 0; (kinds & K_BIT(K_CONNECTION)) && i < m->nfields; i++)
		if (kind[i] == K_CONNECTION)
			m->conn |= conn_tokens(m->fields[i].value, m->fields[i].value_len);
	m->keep_alive = !(m->conn & HTTP1_CONN_CLOSE) &&
	                (m->version_minor == 1 || (m->conn & HTTP1_CONN_KEEP_ALIVE));
	return HTTP1_OK;
}

/* Host = uri-host [ ":" port ]; checked loosely by character class. */
static bool valid_host_value(const struct http1_field *f)
{
	for (size_t i = 0; i < f->value_len; i++) {
		unsigned char c = f->value[i];

		if (!(cls[c] & CL_HOST))
			return false;
	}
	return true;
}

static enum http1_result request_semantics(struct http1_msg *m, const unsigned char *kind,
                                           unsigned kinds)
{
	const struct http1_field *host = NULL;
	enum http1_result r;

	for (size_t i = 0; (kinds & K_BIT(K_HOST)) && i < m->nfields; i++) {
		if (kind[i] != K_HOST)
			continue;
		if (host || !valid_host_value(&m->fields[i]))
			return HTTP1_BAD;
		host = &m->fields[i];
	}
	if (!host && m->version_minor == 1)
		return HTTP1_BAD;
	r = framing(m, kind, kinds);
	if (r != HTTP1_OK)
		return r;
	for (size_t i = 0; (kinds & K_BIT(K_EXPECT)) && i < m->nfields; i++) {
		if (kind[i] == K_EXPECT) { /* the first one decides */
			m->expect_continue =
			    ieq(m->fields[i].value, m->fields[i].value_len, "100-continue");
			break;
		}
	}
	return HTTP1_OK;
}

static enum http1_result response_semantics(struct http1_msg *m, const char *method,
                                            const unsigned char *kind, unsigned kinds)
{
	enum http1_result r = framing(m, kind, kinds);

	if (r != HTTP1_OK)
		return r;
	if ((method && strcmp(method, "HEAD") == 0) || m->status < 200 || m->status == 204 ||
	    m->status == 304 || (method && strcmp(method, "CONNECT") == 0 && m->status < 300))
		m->body = HTTP1_BODY_NONE;
	else if (m->body == HTTP1_BODY_NONE && !(kinds & K_BIT(K_CONTENT_LENGTH)))
		m->body = HTTP1_BODY_CLOSE;
	if (m->body == HTTP1_BODY_CLOSE)
		m->keep_alive = false;
	return HTTP1_OK;
}

void http1_msg_init(struct http1_msg *m)
{
	size_t at = offsetof(struct http1_msg, fields), end = at + sizeof(m->fields);

	memset(m, 0, at);
	memset((char *)m + end, 0, sizeof(*m) - end);
}

/* "HTTP/1.0" or "HTTP/1.1" at p[0..8) */
static bool is_version(const unsigned char *p, int *minor)
{
	if (memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
		return false;
	*minor = p[7] - '0';
	return true;
}

/*
 * One pass over the head straight from the input, each byte looked at once
 * (by class): the start line, then each field line, until the empty line.
 * The message's pointers point into data for now. Returns the offset just
 * past the head, or 0 when a line is not what it must be (or the input ends
 * first, or HTTP1_MAX_HEAD is reached); *r then says BAD or TOO_LARGE for the
 * line, and the caller decides with find_head whether that is the answer.
 * Start line offsets: sl[0] method end / reason start, sl[1] target end,
 * sl[2] the start line's CR.
 */
static size_t scan_head(const char *data, size_t n, size_t start, bool request, struct http1_msg *m,
                        unsigned char *kind, unsigned *kinds, size_t sl[3], enum http1_result *r)
{
	const unsigned char *p = (const unsigned char *)data;
	size_t i = start;

	*r = HTTP1_BAD;
	if (request) { /* method SP request-target SP HTTP-version */
		size_t t;

		i = run(p, i, n, CL_TCHAR);
		if (i == start || i >= n || p[i] != ' ')
			return 0;
		sl[0] = i++;
		t = i;
		i = run(p, i, n, CL_TARGET);
		if (i == t || i >= n || p[i] != ' ')
			return 0;
		sl[1] = i++;
		if (n - i < 10 || !is_version(p + i, &m->version_minor) || p[i + 8] != '\r')
			return 0;
		i += 8;
	} else { /* HTTP-version SP 3DIGIT [SP reason-phrase] */
		if (n - i < 14 || !is_version(p + i, &m->version_minor) || p[i + 8] != ' ')
			return 0;
		for (size_t k = i + 9; k < i + 12; k++) {
			if (p[k] < '0' || p[k] > '9')
				return 0;
			m->status = m->status * 10 + (p[k] - '0');
		}
		if (m->status < 100 || m->status > 599)
			return 0;
		i += 12;
		if (p[i] == ' ') {
			i++;
			i = run(p, run_plain(p, i, n), n, CL_VALUE);
			sl[0] = start + 13;
		} else {
			sl[0] = i; /* empty: the NUL that replaces CR */
		}
	}
	if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
		return 0;
	sl[2] = i;
	i += 2;
	for (;;) { /* field-name ":" OWS field-value OWS CRLF, or CRLF */
		struct http1_field *f = &m->fields[m->nfields];
		size_t s = i, v, e;

		if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n')
			return i + 2;
		if (m->nfields == HTTP1_MAX_FIELDS) {
			*r = HTTP1_TOO_LARGE;
			return 0;
		}
		i = run(p, i, n, CL_TCHAR);
		if (i == s || i >= n || p[i] != ':') /* also catches obs-fold */
			return 0;
		f->name = data + s;
		f->name_len = i - s;
		kind[m->nfields] = (unsigned char)name_kind(f->name, f->name_len);
		*kinds |= K_BIT(kind[m->nfields]);
		i++;
		while (i < n && is_ows(p[i]))
			i++;
		v = i;
		i = run(p, run_plain(p, i, n), n, CL_VALUE);
		if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
			return 0;
		for (e = i; e > v && is_ows(p[e - 1]); e--)
			;
		f->value = data + v;
		f->value_len = e - v;
		m->nfields++;
		i += 2;
	}
}

static enum http1_result parse_head(const char *data, size_t len, bool request, const char *method,
                                    struct http1_msg *m, size_t *consumed)
{
	unsigned char kind[HTTP1_MAX_FIELDS];
	unsigned kinds = 0;
	enum http1_result r;
	size_t skip = 0, end, sl[3] = {0, 0, 0};
	const char *base;
	char *h;

	http1_msg_init(m);
	/* RFC 9112 2.2: empty lines before a request line are ignored */
	while (request && skip + 1 < len && data[skip] == '\r' && data[skip + 1] == '\n')
		skip += 2;
	end = scan_head(data, len < HTTP1_MAX_HEAD ? len : HTTP1_MAX_HEAD, skip, request, m, kind,
	                &kinds, sl, &r);
	if (end == 0) {
		/* a line is wrong or the head is not all there: the answer is
		 * that line's (BAD, TOO_LARGE) only once the head is complete
		 * and holds no byte rejected on sight (NUL, bare CR or LF) */
		enum http1_result whole = find_head(data, len, skip, &end);

		http1_msg_init(m);
		return whole == HTTP1_OK ? r : whole;
	}
	m->head_len = end - skip;
	m->head = h = malloc(m->head_len + 1);
	if (!h) {
		http1_msg_init(m);
		return HTTP1_BAD;
	}
	base = data + skip;
	memcpy(h, base, m->head_len);
	h[m->head_len] = '\0';
	/* point into the copy; NULs after the names, values and start line */
	if (request) {
		m->method = h;
		m->target = h + (sl[0] - skip) + 1;
		h[sl[0] - skip] = h[sl[1] - skip] = '\0';
	} else {
		m->reason = h + (sl[0] - skip);
	}
	h[sl[2] - skip] = '\0';
	for (size_t i = 0; i < m->nfields; i++) {
		struct http1_field *f = &m->fields[i];
		size_t v = (size_t)(f->value - base) + f->value_len, cr = v;

		while (h[cr] != '\r')
			cr++; /* past trailing OWS */
		h[cr] = h[v] = '\0';
		f->name = h + (f->name - base);
		h[(f->name - h) + f->name_len] = '\0';
		f->value = h + (f->value - base);
	}
	r = request ? request_semantics(m, kind, kinds)
	            : response_semantics(m, method, kind, kinds);
	if (r != HTTP1_OK)
		goto fail;
	*consumed = end;
	return HTTP1_OK;
fail:
	http1_msg_free(m);
	return r;
}

enum http1_result http1_parse_request(const char *data, size_t len, struct http1_msg *msg,
                                      size_t *consumed)
{
	return parse_head(data, len, true, NULL, msg, consumed);
}

enum http1_result http1_parse_response(const char *data, size_t len, const char *request_method,
                                       struct http1_msg *msg, size_t *consumed)
{
	return parse_head(data, len, false, request_method, msg, consumed);
}

void http1_msg_free(struct http1_msg *msg)
{
	free(msg->head);
	http1_msg_init(msg);
}

const struct http1_field *http1_find(const struct http1_msg *msg, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < msg->nfields; i++)
		if (msg->fields[i].name_len == n && ieq(msg->fields[i].name, n, name))
			return &msg->fields[i];
	return NULL;
}

bool http1_list_has(const char *value, size_t value_len, const char *token)
{
	size_t i = 0, s, e;

	if (!*token)
		return false;
	/* the element's token only, not its parameters (";q=1") */
	while (list_next(value, value_len, &i, true, &s, &e)) {
		if (ieq(value + s, e - s, token))
			return true;
	}
	return false;
}

/* Whether name[0..n) is an element of allowed (comma-separated, lower-case). */
static bool allowed_has(const char *allowed, const char *name, size_t n)
{
	while (*allowed) {
		size_t len = strcspn(allowed, ",");
		if (len == n) {
			size_t i = 0;
			while (i < n && lower(name[i]) == allowed[i])
				i++;
			if (i == n)
				return true;
		}
		allowed += len;
		allowed += *allowed == ',';
	}
	return false;
}

bool http1_upgrade_listed(const char *value, size_t value_len, const char *allowed)
{
	size_t i = 0, named = 0, s, e;

	while (list_next(value, value_len, &i, false, &s, &e)) {
		if (s == e)
			continue; /* an empty list element */
		const char *slash = memchr(value + s, '/', e - s);
		size_t n = slash ? (size_t)(slash - (value + s)) : e - s;
		if (n == 0 || !allowed_has(allowed, value + s, n))
			return false;
		named++;
	}
	return named > 0;
}

bool http1_upgrade_requested(const struct http1_msg *req, const char *allowed)
{
	const struct http1_field *up = NULL;

	if (!*allowed || req->version_minor != 1 || strcmp(req->method, "CONNECT") == 0 ||
	    !connection_has(req, "upgrade", 7))
		return false;
	for (size_t i = 0; i < req->nfields; i++) {
		if (!ieq(req->fields[i].name, req->fields[i].name_len, "Upgrade"))
			continue;
		if (up)
			return false; /* one Upgrade field, one decision */
		up = &req->fields[i];
	}
	return up && http1_upgrade_listed(up->value, up->value_len, allowed);
}

bool http1_is_hop_by_hop(const struct http1_msg *msg, const char *name)
{
	size_t n = strlen(name);

	switch (n) { /* by length: most names are none of these */
	case 2:
		if (ieq(name, n, "TE"))
			return true;
		break;
	case 7:
		if (ieq(name, n, "Upgrade"))
			return true;
		break;
	case 10:
		if (ieq(name, n, "Connection") || ieq(name, n, "Keep-Alive"))
			return true;
		break;
	case 16:
		if (ieq(name, n, "Proxy-Connection"))
			return true;
		break;
	case 17:
		if (ieq(name, n, "Transfer-Encoding"))
			return true;
		break;
	case 18:
		if (ieq(name, n, "Proxy-Authenticate"))
			return true;
		break;
	case 19:
		if (ieq(name, n, "Proxy-Authorization"))
			return true;
		break;
	}
	if (!msg)
		return false;
	/* Connection lists only well-known tokens: of those, only "close"
	 * is not a hop-by-hop name anyway (nor is it Content-Length) */
	if ((msg->conn & (HTTP1_CONN_INDEXED | HTTP1_CONN_OTHER)) == HTTP1_CONN_INDEXED)
		return (msg->conn & HTTP1_CONN_CLOSE) && n == 5 && ieq(name, n, "close");
	/* framing is never dropped by Connection processing (RFC 9110 7.6.1) */
	if (IEQ_LIT(name, n, "Content-Length"))
		return false;
	return connection_has(msg, name, n);
}

bool http1_trailer_allowed(const char *name, size_t name_len)
{
	static const char *const banned[] = {
	    /* framing, routing */
	    "Content-Length",
	    "Transfer-Encoding",
	    "Trailer",
	    "Host",
	    /* request modifiers (controls, conditionals, range) */
	    "Cache-Control",
	    "Expect",
	    "Max-Forwards",
	    "Pragma",
	    "Range",
	    "TE",
	    "If-Match",
	    "If-None-Match",
	    "If-Modified-Since",
	    "If-Unmodified-Since",
	    "If-Range",
	    /* authentication, cookies */
	    "Authorization",
	    "Proxy-Authorization",
	    "WWW-Authenticate",
	    "Proxy-Authenticate",
	    "Authentication-Info",
	    "Proxy-Authentication-Info",
	    "Cookie",
	    "Set-Cookie",
	    /* response control data */
	    "Age",
	    "Date",
	    "Expires",
	    "Location",
	    "Retry-After",
	    "Vary",
	    "Warning",
	    /* payload processing */
	    "Content-Type",
	    "Content-Encoding",
	    "Content-Range",
	    /* connection-specific */
	    "Connection",
	    "Keep-Alive",
	    "Proxy-Connection",
	    "Upgrade",
	};

	if (name_len == 0 || name[0] == ':')
		return false;
	for (size_t i = 0; i < name_len; i++)
		if (!is_tchar((unsigned char)name[i]))
			return false;
	for (size_t i = 0; i < sizeof(banned) / sizeof(banned[0]); i++)
		if (ieq(name, name_len, banned[i]))
			return false;
	return true;
}

size_t http1_filter_trailers(char *trailers)
{
	char *in = trailers, *out = trailers;

	while (*in) {
		char *eol = strstr(in, "\r\n");
		size_t len = eol ? (size_t)(eol - in) + 2 : strlen(in);
		char *colon = memchr(in, ':', eol ? (size_t)(eol - in) : len);

		if (eol && colon && http1_trailer_allowed(in, (size_t)(colon - in))) {
			memmove(out, in, len);
			out += len;
		}
		in += len;
	}
	*out = '\0';
	return (size_t)(out - trailers);
}

/* ---- chunked bodies ---- */

enum {
	C_SIZE = 0, /* chunk-size hex digits; line_len counts them */
	C_SIZE_WS,  /* BWS after size or extension value: ';' must follow */
	C_EXT_NAME0,
	C_EXT_NAME,
	C_EXT_NAME_WS, /* BWS after a name: '=' or ';' must follow */
	C_EXT_VAL0,
	C_EXT_TOKEN,
	C_EXT_QUOTED,
	C_EXT_QESC,
	C_EXT_QEND,
	C_SIZE_LF,
	C_DATA,
	C_DATA_CR,
	C_DATA_LF,
	C_TR_NAME, /* trailer line; line_len bytes stored at trailers[trailer_len] */
	C_TR_VALUE,
	C_TR_LF,
	C_END_LF,
	C_DONE,
	C_ERROR,
};

/* End of a size line (CR) or an extension separator: the next state, or C_ERROR. */
static int ext_delim(unsigned char ch)
{
	if (ch == ';')
		return C_EXT_NAME0;
	if (ch == '\r')
		return C_SIZE_LF;
	return is_ows(ch) ? C_SIZE_WS : C_ERROR;
}

/* A complete trailer line: rewrite it in place as "name: value\r\n". */
static bool finish_trailer(struct http1_chunked *c)
{
	char *base = c->trailers + c->trailer_len;
	size_t name_len = (char *)memchr(base, ':', c->line_len) - base;
	size_t v = name_len + 1, e = c->line_len, out;

	trim_ows(base, &v, &e);
	out = name_len + 2 + (e - v) + 2;
	if (c->trailer_len + out >= sizeof(c->trailers))
		return false;
	memmove(base + name_len + 2, base + v, e - v);
	base[name_len + 1] = ' ';
	memcpy(base + name_len + 2 + (e - v), "\r\n", 2);
	c->trailer_len += out;
	c->trailers[c->trailer_len] = '\0';
	c->line_len = 0;
	return true;
}

static bool store_trailer_byte(struct http1_chunked *c, char ch)
{
	if (c->trailer_len + c->line_len + 1 >= sizeof(c->trailers))
		return false;
	c->trailers[c->trailer_len + c->line_len++] = ch;
	return true;
}

/* Advance the decoder by one byte outside chunk data. Returns the new state. */
static int chunk_step(struct http1_chunked *c, unsigned char ch)
{
	int h;

	if (c->state < C_SIZE_LF && ++c->line_len > CHUNK_LINE_MAX)
		return C_ERROR;
	switch (c->state) {
	case C_SIZE:
		h = hex_value(ch);
		if (h >= 0) {
			if (c->remaining > UINT64_MAX >> 4)
				return C_ERROR;
			c->remaining = c->remaining << 4 | (uint64_t)h;
			return C_SIZE;
		}
		return c->line_len == 1 ? C_ERROR : ext_delim(ch);
	case C_SIZE_WS:
		return is_ows(ch) ? C_SIZE_WS : ch == ';' ? C_EXT_NAME0 : C_ERROR;
	case C_EXT_NAME0:
		return is_ows(ch) ? C_EXT_NAME0 : is_tchar(ch) ? C_EXT_NAME : C_ERROR;
	case C_EXT_NAME:
		if (is_tchar(ch))
			return C_EXT_NAME;
		if (ch == '=')
			return C_EXT_VAL0;
		return is_ows(ch) ? C_EXT_NAME_WS : ext_delim(ch);
	case C_EXT_NAME_WS:
		if (is_ows(ch))
			return C_EXT_NAME_WS;
		if (ch == '=')
			return C_EXT_VAL0;
		return ch == ';' ? C_EXT_NAME0 : C_ERROR;
	case C_EXT_VAL0:
		if (is_ows(ch))
			return C_EXT_VAL0;
		if (ch == '"')
			return C_EXT_QUOTED;
		return is_tchar(ch) ? C_EXT_TOKEN : C_ERROR;
	case C_EXT_TOKEN:
		return is_tchar(ch) ? C_EXT_TOKEN : ext_delim(ch);
	case C_EXT_QUOTED:
		if (ch == '"')
			return C_EXT_QEND;
		if (ch == '\\')
			return C_EXT_QESC;
		return is_value_char(ch) ? C_EXT_QUOTED : C_ERROR;
	case C_EXT_QESC:
		return is_value_char(ch) ? C_EXT_QUOTED : C_ERROR;
	case C_EXT_QEND:
		return ext_delim(ch);
	case C_SIZE_LF:
		if (ch != '\n')
			return C_ERROR;
		c->line_len = 0;
		return c->remaining ? C_DATA : C_TR_NAME;
	case C_DATA_CR:
		return ch == '\r' ? C_DATA_LF : C_ERROR;
	case C_DATA_LF:
		c->line_len = 0;
		return ch == '\n' ? C_SIZE : C_ERROR;
	case C_TR_NAME:
		if (ch == '\r' && c->line_len == 0)
			return C_END_LF;
		if (!(is_tchar(ch) || (ch == ':' && c->line_len > 0)) || !store_trailer_byte(c, ch))
			return C_ERROR;
		return ch == ':' ? C_TR_VALUE : C_TR_NAME;
	case C_TR_VALUE:
		if (ch == '\r')
			return C_TR_LF;
		return is_value_char(ch) && store_trailer_byte(c, ch) ? C_TR_VALUE : C_ERROR;
	case C_TR_LF:
		return ch == '\n' && finish_trailer(c) ? C_TR_NAME : C_ERROR;
	case C_END_LF:
		return ch == '\n' ? C_DONE : C_ERROR;
	}
	return C_ERROR;
}

enum http1_chunk_event http1_chunked_next(struct http1_chunked *c, const char *in, size_t len,
                                          size_t *consumed, const char **data, size_t *data_len)
{
	size_t i = 0;

	*data = NULL;
	*data_len = 0;
	while (i < len && c->state != C_DONE && c->state != C_ERROR) {
		if (c->state == C_DATA) {
			size_t n = len - i < c->remaining ? len - i : (size_t)c->remaining;

			*data = in + i;
			*data_len = n;
			*consumed = i + n;
			c->remaining -= n;
			if (c->remaining == 0)
				c->state = C_DATA_CR;
			return HTTP1_CHUNK_DATA;
		}
		c->state = chunk_step(c, (unsigned char)in[i++]);
	}
	*consumed = i;
	if (c->state == C_DONE)
		return HTTP1_CHUNK_DONE;
	return c->state == C_ERROR ? HTTP1_CHUNK_ERROR : HTTP1_CHUNK_NEED_MORE;
}

/* ---- URIs ---- */

/*
 * host [":" port] or "[" IPv6 "]" [":" port] in s[0..n); the host is copied
 * lower-cased. *port is 0 when absent (allowed only if !port_required).
 */
static bool parse_host_port(const char *s, size_t n, char *host, size_t host_size, uint16_t *port,
                            bool *ipv6, bool port_required)
{
	const char *h = s, *rest;
	size_t hn, i;
	uint32_t p = 0;

	*ipv6 = false;
	if (n > 0 && s[0] == '[') {
		const char *rb = memchr(s, ']', n);
		char tmp[INET6_ADDRSTRLEN];
		struct in6_addr a;

		if (!rb)
			return false;
		h = s + 1;
		hn = rb - h;
		rest = rb + 1;
		if (hn == 0 || hn >= sizeof(tmp))
			return false;
		memcpy(tmp, h, hn);
		tmp[hn] = '\0';
		if (inet_pton(AF_INET6, tmp, &a) != 1)
			return false;
		*ipv6 = true;
	} else {
		const char *colon = memchr(s, ':', n);

		hn = colon ? (size_t)(colon - s) : n;
		rest = s + hn;
		if (hn == 0)
			return false;
		for (i = 0; i < hn; i++)
			if (!(cls[(unsigned char)s[i]] & CL_NAME))
				return false;
	}
	n -= rest - s;
	if (n == 0 && port_required)
		return false;
	if (n > 0) {
		if (rest[0] != ':' || n < 2 || n > 6)
			return false;
		for (i = 1; i < n; i++) {
			if (rest[i] < '0' || rest[i] > '9')
				return false;
			p = p * 10 + (uint32_t)(rest[i] - '0');
		}
		if (p == 0 || p > 65535)
			return false;
	}
	if (hn >= host_size)
		return false;
	for (i = 0; i < hn; i++)
		host[i] = lower(h[i]);
	host[hn] = '\0';
	*port = (uint16_t)p;
	return true;
}

bool http1_parse_absolute_uri(const char *target, struct http1_uri *uri)
{
	const char *sep, *auth, *path;
	size_t auth_len, path_len, i;
	bool query_only;

	/* not the whole 16 KiB path: zeroing it cost more than the rest of a
	 * keep-alive request's parsing (docs/performance.md) */
	memset(uri, 0, offsetof(struct http1_uri, path));
	uri->path[0] = '\0';
	uri->ipv6 = false;
	for (i = 0; target[i]; i++)
		if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f)
			return false;
	sep = strstr(target, "://");
	if (!sep)
		return false;
	if (ieq(target, sep - target, "http"))
		strcpy(uri->scheme, "http");
	else if (ieq(target, sep - target, "https"))
		strcpy(uri->scheme, "https");
	else
		return false;
	auth = sep + 3;
	auth_len = strcspn(auth, "/?#");
	if (memchr(auth, '@', auth_len) ||
	    !parse_host_port(auth, auth_len, uri->host, sizeof(uri->host), &uri->port, &uri->ipv6,
	                     false))
		return false;
	if (uri->port == 0)
		uri->port = uri->scheme[4] == 's' ? 443 : 80;
	path = auth + auth_len;
	path_len = strcspn(path, "#");
	query_only = path_len == 0 || path[0] == '?';
	if (path_len + query_only >= sizeof(uri->path))
		return false;
	if (query_only)
		uri->path[0] = '/';
	memcpy(uri->path + query_only, path, path_len);
	uri->path[path_len + query_only] = '\0';
	return true;
}

bool http1_parse_authority(const char *target, char *host, size_t host_size, uint16_t *port,
                           bool *ipv6)
{
	return parse_host_port(target, strlen(target), host, host_size, port, ipv6, true);
}

const char *http1_reason(int status)
{
	static const struct {
		int status;
		const char *text;
	} reasons[] = {
	    {100, "Continue"},
	    {101, "Switching Protocols"},
	    {102, "Processing"},
	    {103, "Early Hints"},
	    {200, "OK"},
	    {201, "Created"},
	    {202, "Accepted"},
	    {203, "Non-Authoritative Information"},
	    {204, "No Content"},
	    {205, "Reset Content"},
	    {206, "Partial Content"},
	    {207, "Multi-Status"},
	    {208, "Already Reported"},
	    {226, "IM Used"},
	    {300, "Multiple Choices"},
	    {301, "Moved Permanently"},
	    {302, "Found"},
	    {303, "See Other"},
	    {304, "Not Modified"},
	    {305, "Use Proxy"},
	    {307, "Temporary Redirect"},
	    {308, "Permanent Redirect"},
	    {400, "Bad Request"},
	    {401, "Unauthorized"},
	    {402, "Payment Required"},
	    {403, "Forbidden"},
	    {404, "Not Found"},
	    {405, "Method Not Allowed"},
	    {406, "Not Acceptable"},
	    {407, "Proxy Authentication Required"},
	    {408, "Request Timeout"},
	    {409, "Conflict"},
	    {410, "Gone"},
	    {411, "Length Required"},
	    {412, "Precondition Failed"},
	    {413, "Content Too Large"},
	    {414, "URI Too Long"},
	    {415, "Unsupported Media Type"},
	    {416, "Range Not Satisfiable"},
	    {417, "Expectation Failed"},
	    {421, "Misdirected Request"},
	    {422, "Unprocessable Content"},
	    {423, "Locked"},
	    {424, "Failed Dependency"},
	    {425, "Too Early"},
	    {426, "Upgrade Required"},
	    {428, "Precondition Required"},
	    {429, "Too Many Requests"},
	    {431, "Request Header Fields Too Large"},
	    {451, "Unavailable For Legal Reasons"},
	    {500, "Internal Server Error"},
	    {501, "Not Implemented"},
	    {502, "Bad Gateway"},
	    {503, "Service Unavailable"},
	    {504, "Gateway Timeout"},
	    {505, "HTTP Version Not Supported"},
	    {506, "Variant Also Negotiates"},
	    {507, "Insufficient Storage"},
	    {508, "Loop Detected"},
	    {510, "Not Extended"},
	    {511, "Network Authentication Required"},
	};

	for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
		if (reasons[i].status == status)
			return reasons[i].text;
	return "Unknown";
}

enum http1_framing http1_relay_framing(int status, const char *method, enum http1_body body,
                                       int client_minor, bool want_trailers)
{
	bool head = method && strcmp(method, "HEAD") == 0;
	bool connect = method && strcmp(method, "CONNECT") == 0;

	if (status < 200 || status == 204 || status == 304 || head || (connect && status < 300))
		return HTTP1_FRAME_NONE;
	switch (body) {
	case HTTP1_BODY_NONE:
		return HTTP1_FRAME_EMPTY;
	case HTTP1_BODY_LENGTH:
		return want_trailers && client_minor >= 1 ? HTTP1_FRAME_CHUNKED
		                                          : HTTP1_FRAME_LENGTH;
	case HTTP1_BODY_CHUNKED:
	case HTTP1_BODY_CLOSE:
	case HTTP1_BODY_UNKNOWN:
		break;
	}
	return client_minor >= 1 ? HTTP1_FRAME_CHUNKED : HTTP1_FRAME_CLOSE;
}

/* Base64 (RFC 4648, with padding) of src into dst (4 * ((n + 2) / 3) + 1 bytes). */
void http1_base64(const unsigned char *src, size_t n, char *dst)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8 | src[i + 2];

		*dst++ = alphabet[v >> 18];
		*dst++ = alphabet[(v >> 12) & 63];
		*dst++ = alphabet[(v >> 6) & 63];
		*dst++ = alphabet[v & 63];
	}
	if (i < n) {
		unsigned v = (unsigned)src[i] << 16 | (i + 1 < n ? (unsigned)src[i + 1] << 8 : 0);

		*dst++ = alphabet[v >> 18];
		*dst++ = alphabet[(v >> 12) & 63];
		*dst++ = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
		*dst++ = '=';
	}
	*dst = '\0';
}

bool http1_basic_credentials(const char *user_pass, char *out, size_t size)
{
	size_t n = strlen(user_pass);

	if (6 + 4 * ((n + 2) / 3) + 1 > size)
		return false;
	memcpy(out, "Basic ", 6);
	http1_base64((const unsigned char *)user_pass, n, out + 6);
	return true;
}
