/*
 * forward — the forwarding mode of the HTTP/1.1 and HTTP/2 codecs
 * (struct upstream_forward in upstream.h): a connection to an HTTP parent
 * proxy that takes the requests itself. Owns the parent's name for
 * messages and its Proxy-Authorization value, encoded once when the
 * connection is made; the codecs add the field to every request and turn
 * the parent's 407 into an error naming it. Nothing outside src/upstream/
 * includes it.
 */
#ifndef MUXD_UPSTREAM_FORWARD_H
#define MUXD_UPSTREAM_FORWARD_H

#include <stdbool.h>
#include <stddef.h>

#include "http1.h"

struct upstream_forward;

/* Allocated only when forwarding: every pooled HTTP/1.1 and HTTP/2
 * connection has one, most of them off. */
struct fwd_mode {
	bool on;       /* forwarding to a parent */
	bool has_auth; /* auth holds the Proxy-Authorization value */
	char *auth;    /* "Basic ..." (owned; NULL without has_auth) */
	char *name;    /* the parent, host:port ([v6]:port) (owned; NULL when off) */
};

/* Sets m from f (NULL: not forwarding); false when the credentials do not
 * fit or memory runs out (then m is off). */
bool fwd_mode_init(struct fwd_mode *m, const struct upstream_forward *f);
/* Forgets the credentials; frees what m holds (m is off then). */
void fwd_mode_clear(struct fwd_mode *m);
/* The error reason for the parent's 407 ("proxy h:p: proxy authentication
 * required ..."): the parent wants credentials, which are muxd's
 * configuration, not the client's business (DESIGN.md: 502 naming it). */
void fwd_refused(const struct fwd_mode *m, char *why, size_t size);

#endif
