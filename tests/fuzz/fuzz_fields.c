/*
 * Fuzz target for src/upstream/fields.c: HTTP/2 and HTTP/3 header fields made
 * into the HTTP/1 message the exchange relays, and what the exchange decides
 * from it (http1_relay_framing, the trailer filter).
 *
 * Input: a :status value (three digits) or one byte picking the status, a
 * flags byte (bit 0: the stream ended with the head; bits 1-2: the
 * request method), then lines separated by '\n': "name:value" head fields;
 * after a line "--", trailer fields. Any broken invariant aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "http1.h"
#include "upstream/fields.h"

static bool no_body_status(int status)
{
	return status < 200 || status == 204 || status == 304;
}

static void check_framing(const struct http1_msg *m, const char *method)
{
	bool head = method && strcmp(method, "HEAD") == 0;
	bool connect = method && strcmp(method, "CONNECT") == 0;

	for (int minor = 0; minor <= 1; minor++) {
		for (int want = 0; want <= 1; want++) {
			enum http1_framing f =
			    http1_relay_framing(m->status, method, m->body, minor, want);
			bool none =
			    no_body_status(m->status) || head || (connect && m->status < 300);

			CHECK((f == HTTP1_FRAME_NONE) == none);
			if (!none) {
				CHECK((f == HTTP1_FRAME_EMPTY) == (m->body == HTTP1_BODY_NONE));
				CHECK(f != HTTP1_FRAME_CLOSE || minor == 0);
				CHECK(f != HTTP1_FRAME_CHUNKED || minor == 1);
				if (m->body == HTTP1_BODY_LENGTH)
					CHECK(f == (want && minor ? HTTP1_FRAME_CHUNKED
					                          : HTTP1_FRAME_LENGTH));
				if (m->body == HTTP1_BODY_UNKNOWN)
					CHECK(f ==
					      (minor ? HTTP1_FRAME_CHUNKED : HTTP1_FRAME_CLOSE));
			}
		}
	}
}

static void check_msg(const struct http1_msg *m, const struct sbuf *hdrs, size_t n, int status,
                      bool no_body)
{
	const struct http1_field *cl = http1_find(m, "content-length");

	CHECK(m->status == status && m->nfields == n && m->version_minor == 1);
	CHECK(m->reason && *m->reason);
	CHECK(strcmp(m->reason, http1_reason(status)) == 0);
	for (size_t i = 0; i < n; i++) {
		const struct http1_field *f = &m->fields[i];

		CHECK(f->name >= hdrs->p && f->value + f->value_len < hdrs->p + hdrs->len + 1);
		CHECK(strlen(f->name) == f->name_len && strlen(f->value) == f->value_len);
		fields_dropped(f->name, f->name_len, f->value, f->value_len);
		http1_trailer_allowed(f->name, f->name_len);
	}
	if (no_body_status(status) || no_body)
		CHECK(m->body == HTTP1_BODY_NONE);
	else if (m->body == HTTP1_BODY_LENGTH)
		CHECK(cl && m->content_length > 0);
	else if (m->body == HTTP1_BODY_NONE)
		CHECK(cl && m->content_length == 0);
	else
		CHECK(m->body == HTTP1_BODY_UNKNOWN); /* no HTTP/1.1 framing faked */
}

/* Every line left by the filter is an allowed "name: value\r\n" field, and
 * filtering again changes nothing. */
static void check_trailers(const struct sbuf *t)
{
	char *a = malloc(t->len + 1), *b = malloc(t->len + 1), *p, *name, *value;
	size_t n;

	CHECK(a && b);
	memcpy(a, t->p ? t->p : "", t->len + (t->p != NULL));
	a[t->len] = '\0';
	n = http1_filter_trailers(a);
	CHECK(n == strlen(a) && n <= t->len);
	memcpy(b, a, n + 1);
	CHECK(http1_filter_trailers(b) == n && strcmp(a, b) == 0);
	for (p = b; (p = fields_next_line(p, &name, &value));) {
		CHECK(name && http1_trailer_allowed(name, strlen(name)));
		CHECK(p <= b + n);
	}
	free(a);
	free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const methods[] = {"GET", "HEAD", "CONNECT", "POST"};
	static struct http1_msg m;
	struct sbuf hdrs = {0}, trailers = {0};
	size_t n = 0, i = 2;
	int status;
	bool no_body, in_trailers = false;
	const char *method;

	if (size < 2)
		return 0;
	status = fields_status(data, size < 3 ? size : 3);
	CHECK(status == -1 || (status >= 100 && status <= 599));
	if (status < 0 || size < 4) {
		status = 100 + data[0] % 500;
	} else {
		data += 2; /* three status digits, then the flags byte */
		size -= 2;
	}
	no_body = data[1] & 1;
	method = methods[(data[1] >> 1) & 3];

	while (i < size) {
		const uint8_t *line = data + i, *eol = memchr(line, '\n', size - i), *colon;
		size_t len = eol ? (size_t)(eol - line) : size - i;
		const char *bad;

		i += len + 1;
		if (len == 2 && memcmp(line, "--", 2) == 0) {
			in_trailers = true;
			continue;
		}
		colon = memchr(line, ':', len);
		size_t nlen = colon ? (size_t)(colon - line) : len;
		const uint8_t *v = colon ? colon + 1 : line + len;
		size_t vlen = colon ? len - nlen - 1 : 0;
		/* the libraries never hand over NUL, CR or LF in fields */
		if (memchr(line, '\0', len) || memchr(line, '\r', len))
			continue;
		if (in_trailers) {
			bad = fields_add_trailer(&trailers, line, nlen, v, vlen);
		} else {
			if (nlen > 0 && line[0] == ':')
				continue; /* pseudo-headers are taken apart by the caller */
			bad = fields_add_head(&hdrs, &n, line, nlen, v, vlen);
		}
		if (bad)
			break;
	}
	fields_msg(&m, hdrs.p ? hdrs.p : (char *)"", hdrs.len, n, status, no_body);
	check_msg(&m, &hdrs, n, status, no_body);
	check_framing(&m, method);
	check_trailers(&trailers);
	free(hdrs.p);
	free(trailers.p);
	return 0;
}
