/*
 * admin_client — the command-line side of muxd's admin pages: a blocking
 * HTTP/1.1 GET to a running muxd's listen address on loopback (an
 * unspecified address such as 0.0.0.0 is asked on 127.0.0.1 / ::1), with
 * deadlines on connecting and on the whole exchange, and the local CA
 * fetched from /ca.pem; and the small file helpers both commands need.
 * Used by `muxd env` and `muxd trust`.
 * Owns: nothing beyond the replies it hands to the caller.
 */
#ifndef MUXD_ADMIN_CLIENT_H
#define MUXD_ADMIN_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

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

/* GET path from the daemon at l; the reply is the caller's (admin_reply_free). */
enum admin_fetch admin_get(const struct config_listen *l, const char *path,
                           struct admin_reply *reply, char *err, size_t errsize);
void admin_reply_free(struct admin_reply *reply);

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
