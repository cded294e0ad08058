/*
 * downstream — one client connection: the HTTP/1.1 server side. Reads
 * request heads strictly (http1.c), answers pipelined requests in order,
 * hands absolute-form requests to an exchange, origin-form requests to the
 * admin pages, and writes muxd's own answers (errors, 403, 508 ...).
 * Owns: the client transport, the current exchange.
 */
#ifndef MUXD_DOWNSTREAM_H
#define MUXD_DOWNSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "muxd.h"

struct downstream;
struct transport;

/* Take an accepted client socket. */
void downstream_accept(struct muxd *m, int fd, const struct sockaddr *peer, socklen_t peer_len);

/* Draining: close connections that sit between requests; the others close
 * after their current response. */
void downstream_drain_all(struct muxd *m);
/* Close every client connection now (shutdown deadline). */
void downstream_close_all(struct muxd *m);
/* Descriptors are short: close up to n client connections that sit idle
 * between requests, the longest idle first. Returns how many were closed. */
unsigned downstream_close_idle(struct muxd *m, unsigned n);

struct transport *downstream_transport(struct downstream *ds);
const char *downstream_peer(const struct downstream *ds);

/* Write a complete response of muxd's own. close: end the connection after. */
void downstream_respond(struct downstream *ds, int status, const char *content_type,
                        const char *body, size_t body_len, bool close);

/* The current exchange finished; keep_alive: the connection may carry the
 * next request. The exchange is already freed. */
void downstream_exchange_done(struct downstream *ds, bool keep_alive);

/* The CONNECT tunnel ended (already freed): the connection closes, after
 * flushing what was written to it when flush is set (an error answer). */
void downstream_tunnel_done(struct downstream *ds, bool flush);

/* The exchange failed after its response head went out: close abruptly so
 * the client cannot mistake a truncated body for a whole one. */
void downstream_abort(struct downstream *ds);

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
