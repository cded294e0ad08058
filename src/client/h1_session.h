/*
 * h1_session — the HTTP/1.1 server session, one per client connection (its
 * functions keep the name downstream_*): applies the allow ACL, keeps the
 * client deadlines, reads request heads strictly (http1.c), answers
 * pipelined requests in order, hands absolute-form requests to an exchange
 * as a client_stream (client/session.h, framed by client/h1_stream.c),
 * CONNECT to a tunnel or, for intercepted ports, peeks and terminates the
 * client's TLS, sends origin-form requests to the admin pages, and writes
 * muxd's own answers (errors, 403, 508 ...).
 * Owns: the client transport, the current exchange or tunnel; and the list
 * of open client connections (m->clients, opaque to the other modules).
 */
#ifndef MUXD_DOWNSTREAM_H
#define MUXD_DOWNSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "muxd.h"

struct downstream;

/* The list of open client connections, for m->clients (main.c makes it
 * before the listeners, frees it after downstream_close_all); NULL when out
 * of memory. */
struct client_list *downstream_list_new(void);
void downstream_list_free(struct client_list *l);

/* Take an accepted client socket. */
void downstream_accept(struct muxd *m, int fd, const struct sockaddr *peer, socklen_t peer_len);

/* Draining: close connections that sit between requests; the others close
 * after their current response. */
void downstream_drain_all(struct muxd *m);
/* The configuration was reloaded: HTTP/2 client connections drain (GOAWAY)
 * when client_h2 is off now, so that their clients come back over HTTP/1.1. */
void downstream_reconfigured(struct muxd *m);
/* Close every client connection now (shutdown deadline). */
void downstream_close_all(struct muxd *m);
/* Descriptors are short: close up to n client connections that sit idle
 * between requests, the longest idle first. Returns how many were closed. */
unsigned downstream_close_idle(struct muxd *m, unsigned n);

/* The request as log lines name it: the method (at most 23 bytes), a space
 * and the target (at most 250, then "..."), in out; per request, so by
 * memcpy. Returns the target's length. */
#define DOWNSTREAM_REQ_LINE 300
size_t downstream_req_line(char out[DOWNSTREAM_REQ_LINE], const char *method, const char *target);

/* Inside an intercepted session (pure code, fuzzed): whether a request's
 * target and Host value (NULL: none) name the CONNECT origin
 * origin_host:origin_port, or tls_name:origin_port when the SNI's name
 * stands for that address (NULL: none). Returns 0 and fills uri (https, the
 * CONNECT host and port: requests are routed by the address), or the status
 * to answer, with why. */
struct http1_uri;
int downstream_intercepted_uri(const char *method, const char *target, const char *host,
                               const char *origin_host, uint16_t origin_port, const char *tls_name,
                               struct http1_uri *uri, const char **why);

#endif
