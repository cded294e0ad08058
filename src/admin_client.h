/*
 * admin_client — the command-line side of muxd's admin pages: the one
 * blocking HTTP/1.1 GET (or POST) to a running muxd's listen address on loopback (an
 * unspecified address such as 0.0.0.0 is asked on 127.0.0.1 / ::1), with
 * deadlines on connecting and on the whole exchange; its response parser
 * (admin_resp_*, pure, callable without a socket for unit tests and
 * fuzzing: the bytes of the response to its body, framed by src/http1's head
 * parser and chunked decoder, as everywhere else in muxd); the local CA
 * fetched from /ca.pem; and the small file helpers the commands need.
 * Used by `muxd status`, `muxd env`, `muxd trust` and `muxd warm`.
 * Owns: nothing beyond the replies it hands to the caller.
 */
#ifndef MUXD_ADMIN_CLIENT_H
#define MUXD_ADMIN_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http1.h"

struct config;
struct config_listen;

enum admin_fetch {
	ADMIN_FETCH_OK,        /* an HTTP response arrived: see status and body */
	ADMIN_FETCH_NO_DAEMON, /* nothing listens there (refused, or no answer in time) */
	ADMIN_FETCH_ERROR,     /* something answered, but not a usable HTTP response */
};

struct admin_reply {
	int status;
	char *body; /* owned, NUL-terminated (a NUL after body_len bytes) */
	size_t body_len;
};

/* How one GET is made; a NULL admin_get_opts means all defaults. */
struct admin_get_opts {
	int connect_ms;         /* connecting; 0: 1000 */
	int exchange_ms;        /* sending the request and reading the response; 0: 5000 */
	size_t max;             /* bytes of the response; 0: 1 MiB */
	bool only_200;          /* any other final status is an ERROR ("PATH answered ...") */
	const char *user_agent; /* NULL: "muxd-cli" */
	const char *accept;     /* an Accept header, or NULL for none */
};

/*
 * GET path from the daemon at l, reading until the response is complete by
 * its framing (parsed by admin_resp_feed); the reply is the caller's
 * (admin_reply_free).
 */
enum admin_fetch admin_get(const struct config_listen *l, const char *path,
                           const struct admin_get_opts *opts, struct admin_reply *reply, char *err,
                           size_t errsize);
/* The same as a POST with an empty body (actions such as /warm; the query
 * carries the arguments). */
enum admin_fetch admin_post(const struct config_listen *l, const char *path,
                            const struct admin_get_opts *opts, struct admin_reply *reply, char *err,
                            size_t errsize);
void admin_reply_free(struct admin_reply *reply);

#define ADMIN_MAX_RESPONSE (32u << 20) /* bytes of a response, head and body as sent */
#define ADMIN_MAX_INTERIM 16           /* 1xx heads skipped before the final head */

enum admin_parse {
	ADMIN_PARSE_DONE,  /* the message is complete: body, body_len */
	ADMIN_PARSE_MORE,  /* more bytes needed (never at eof) */
	ADMIN_PARSE_ERROR, /* err says why; feed no more */
};

/* The parsing state of the response to one GET. Zero-initialise. */
struct admin_resp {
	size_t max;      /* limit on the response's bytes; 0 means ADMIN_MAX_RESPONSE */
	bool any_status; /* DONE whatever the final status; else only a 200 is */
	int status;      /* the final status once its head is parsed, else 0 */
	char *body;      /* on DONE: the decoded body, NUL-terminated (admin_resp_free) */
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
 * ADMIN_MAX_INTERIM interim heads, and, unless r->any_status, a final status
 * other than 200 (err then starts with "answered", quoting the status and
 * the first line of the body). Not to be called again after DONE or ERROR.
 */
enum admin_parse admin_resp_feed(struct admin_resp *r, const char *in, size_t len, bool eof,
                                 char *err, size_t errsize);

void admin_resp_free(struct admin_resp *r); /* the body; zeroes *r */

/*
 * A whole response at once, as read until the peer closed: its body
 * (NUL-terminated, caller frees, *body_len its length), or NULL with the
 * reason in err; *status is the final status (0 when there was none).
 * Only a 200 is a body.
 */
char *admin_parse_response(const char *buf, size_t len, int *status, size_t *body_len, char *err,
                           size_t errsize);

enum admin_ca {
	ADMIN_CA_OK,        /* *pem holds the daemon's CA certificate (caller frees) */
	ADMIN_CA_NONE,      /* the daemon runs but has no CA (interception off) */
	ADMIN_CA_NO_DAEMON, /* no muxd answers at any listen address of cfg */
	ADMIN_CA_ERROR,     /* err says why */
};

/*
 * Ask each listen address of cfg in turn for /ca.pem. On OK and NONE,
 * *which is the listen address that answered. A 200 whose body is not one
 * PEM certificate is an error.
 */
enum admin_ca admin_get_ca(const struct config *cfg, const struct config_listen **which, char **pem,
                           size_t *pem_len, char *err, size_t errsize);

/* The system's trust anchors, which bundles for clients start with. */
#define ADMIN_SYSTEM_TRUST_FILE "/etc/ssl/certs/ca-certificates.crt"

/*
 * Write path (mode 0644) atomically (a temporary file renamed over it) with
 * a then b, unless it already holds exactly that; *changed says whether it
 * was written. False with err set (errno kept from the failing call).
 */
bool admin_write_file(const char *path, const char *a, size_t alen, const char *b, size_t blen,
                      bool *changed, char *err, size_t errsize);

/* mkdir -p: the directories it creates get mode; false with errno. */
bool admin_make_dirs(const char *path, unsigned mode);

/* The whole of a file, NUL-terminated (caller frees); NULL with errno. */
char *admin_read_file(const char *path, size_t *len);

#endif
