/*
 * fields — private to upstream/: what the HTTP/2 and HTTP/3 connections
 * (h2.c, h3.c) share about header fields. A growable byte string (sbuf); the
 * received response head collected as name\0value\0... and trailers as
 * "name: value\r\n" lines; the struct http1_msg handed to on_head built from
 * them (status, reason, fields, framing); the connection-specific request
 * fields that never go out on a multiplexed stream. Owns nothing: callers own
 * every buffer.
 */
#ifndef MUXD_UPSTREAM_FIELDS_H
#define MUXD_UPSTREAM_FIELDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http1.h"

/* A growable NUL-terminated byte string. */
struct sbuf {
	char *p;
	size_t len, cap;
};

bool sbuf_add(struct sbuf *b, const void *data, size_t n);

/* The value of :status (three digits, 100-599), or -1. */
int fields_status(const uint8_t *v, size_t len);

/* Appends a received head field to hdrs (name\0value\0...) and counts it in
 * *n. Returns NULL, or why the response is malformed. */
const char *fields_add_head(struct sbuf *hdrs, size_t *n, const void *name, size_t nlen,
                            const void *value, size_t vlen);

/* Appends a received trailer ("name: value\r\n", at most HTTP1_MAX_HEAD
 * bytes in all). Returns NULL, or why the response is malformed. */
const char *fields_add_trailer(struct sbuf *trailers, const void *name, size_t nlen,
                               const void *value, size_t vlen);

/*
 * Fills *m for on_head from a received head: head (name\0value\0..., head_len
 * bytes) holding nfields fields, status (>= 100). Framing: no body for 1xx,
 * 204, 304 or when no_body (a HEAD request, or the stream ended with the
 * head); a length from content-length; else HTTP1_BODY_UNKNOWN (the body
 * ends with the stream; the client side frames it for its own wire).
 */
void fields_msg(struct http1_msg *m, char *head, size_t head_len, size_t nfields, int status,
                bool no_body);

/* A request field (or trailer) that does not go out on an HTTP/2 or HTTP/3
 * stream: connection-specific ones, Host (:authority), Content-Length (sent
 * by the caller), TE other than "trailers". */
bool fields_dropped(const char *name, size_t nlen, const char *value, size_t vlen);

/*
 * Iterates over "name: value\r\n" lines in text (modified in place: NULs).
 * Returns the position after the line, or NULL at the end; *name is NULL for
 * a line that is not a field, else *name and *value are NUL-terminated (the
 * value without leading blanks).
 */
char *fields_next_line(char *p, char **name, char **value);

#endif
