/*
 * status_cmd — `muxd status`: fetch /status.json from a running muxd (the
 * config's first listen address) and print its pool as a table.
 *
 * Owns, besides the command, its two pure parts, callable without a socket
 * (unit tests, fuzzing): the response parser (status_response_*: the bytes of
 * the HTTP/1.1 response to its body, framed by src/http1's head parser and
 * chunked decoder, as everywhere else in muxd) and the renderer
 * (status_render: a /status.json document to the tables, with the command's
 * small JSON parser).
 */
#ifndef MUXD_STATUS_CMD_H
#define MUXD_STATUS_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "http1.h"

struct config;

/* Prints the table to stdout, or a one-line error to stderr. Returns the
 * process exit status: 0, or 1 when muxd cannot be reached or answers badly. */
int status_cmd(const struct config *cfg);

#define STATUS_MAX_RESPONSE (32u << 20) /* bytes of a response, head and body as sent */
#define STATUS_MAX_INTERIM 16           /* 1xx heads skipped before the final head */

enum status_parse {
	STATUS_PARSE_DONE,  /* the message is complete: body, body_len */
	STATUS_PARSE_MORE,  /* more bytes needed (never at eof) */
	STATUS_PARSE_ERROR, /* err says why; feed no more */
};

/* The parsing state of the response to one GET. Zero-initialise. */
struct status_response {
	size_t max; /* limit on the response's bytes; 0 means STATUS_MAX_RESPONSE */
	int status; /* the final status once its head is parsed, else 0 */
	char *body; /* on DONE: the decoded body, NUL-terminated (status_response_free) */
	size_t body_len;

	/* private */
	size_t pos; /* input bytes used: heads, then the chunked body so far */
	unsigned interim;
	enum http1_body framing;
	uint64_t content_length;
	size_t body_cap;
	struct http1_chunked chunked;
};

/*
 * Feeds the response received so far: in[0..len) are the bytes of the last
 * call followed by those that arrived since (the caller only appends). eof:
 * the peer closed the connection after them. DONE as soon as the message is
 * complete by its framing (Content-Length, chunked, or the close), whatever
 * follows it. ERROR for a malformed head or body, a message cut short by
 * eof, more than r->max bytes without a complete message, more than
 * STATUS_MAX_INTERIM interim heads, and a final status other than 200 (err
 * then starts with "answered", quoting the status and the first line of the
 * body). Not to be called again after DONE or ERROR.
 */
enum status_parse status_response_feed(struct status_response *r, const char *in, size_t len,
                                       bool eof, char *err, size_t errsize);

void status_response_free(struct status_response *r); /* the body; zeroes *r */

/*
 * A whole response at once, as read until the peer closed: its body
 * (NUL-terminated, caller frees, *body_len its length), or NULL with the
 * reason in err; *status is the final status (0 when there was none).
 */
char *status_parse_response(const char *buf, size_t len, int *status, size_t *body_len, char *err,
                            size_t errsize);

/*
 * Parses a /status.json document (docs/status-json.md; any bytes, not
 * necessarily NUL-terminated) and prints it as the tables of `muxd status` on
 * out, headed "muxd at WHERE". False, printing nothing, with the reason in
 * err when it is not JSON (err says at which byte) or not that document.
 */
bool status_render(const char *json, size_t len, const char *where, FILE *out, char *err,
                   size_t errsize);

#endif
