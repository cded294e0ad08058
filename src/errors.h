/*
 * errors — why an upstream attempt failed, and what the client sees for it:
 * the error names every layer reports (enum muxd_err), the HTTP status each
 * maps to, and the one-line text body of a muxd error response. A leaf: it
 * depends on nothing else in muxd.
 */
#ifndef MUXD_ERRORS_H
#define MUXD_ERRORS_H

#include <stddef.h>

/* Why an upstream attempt failed; decides the status a client sees. */
enum muxd_err {
	ERR_NONE = 0,
	ERR_DNS,              /* 502 */
	ERR_CONNECT,          /* 502: refused, unreachable, reset during connect */
	ERR_CONNECT_TIMEOUT,  /* 504 */
	ERR_RESPONSE_TIMEOUT, /* 504 */
	ERR_BAD_RESPONSE,     /* 502 */
	ERR_CLOSED,           /* 502: upstream closed or reset mid-exchange */
	ERR_BUDGET,           /* 503: no connection could be had */
	ERR_TLS,              /* 502: handshake or certificate failure */
	ERR_UNPROCESSED,      /* the origin did not process the request (GOAWAY above
	                         last-stream-id, REFUSED_STREAM): retry elsewhere */
	ERR_LOOP,             /* 508: the target is one of muxd's own listen addresses */
	ERR_FORBIDDEN,        /* 403: a loopback target under deny_loopback_targets */
};

/* The status a client sees for err (502 unless listed above). */
int muxd_err_status(enum muxd_err err);
/* The one-line text body for an upstream failure, naming host and reason.
 * Returns its length (< size). */
int muxd_error_body(enum muxd_err err, const char *host, unsigned port, const char *reason,
                    char *buf, size_t size);

#endif
