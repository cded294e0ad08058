/*
 * config_values — the parsers of single configuration values: durations,
 * numbers, booleans, ADDR:PORT, networks (CIDR) and matching against them,
 * host patterns, proxy URLs, and the list values built from them. Each takes
 * one value string and fills a typed value (the types are config.h's), with a
 * reason "what (expected FORM)" where a caller needs one. Owns no state;
 * config.c (the loader) and the modules that parse values of their own use it.
 */
#ifndef MUXD_CONFIG_VALUES_H
#define MUXD_CONFIG_VALUES_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

bool config_parse_duration(const char *s, uint64_t *ms); /* "90s", "300ms", "10m", "2h", "30" */
/* Digits and a unit: the form of a duration, whatever its size. */
bool config_duration_form(const char *s);
/* A decimal number of at most max, digits only. */
bool config_parse_uint(const char *s, unsigned long max, unsigned long *out);
/* on, off, yes, no, true, false, 1 or 0 (any case). */
bool config_parse_bool(const char *v, bool *out);
bool config_parse_addr_port(const char *s,
                            struct config_listen *out);         /* "127.0.0.1:3128", "[::1]:3128" */
bool config_parse_cidr(const char *s, struct config_cidr *out); /* "127.0.0.0/8", "::1" */
bool config_cidr_match(const struct config_cidr *c, const struct sockaddr *sa);
/* A proxy URL: http://, https://, socks5://, socks5h://, [user:pass@]host[:port]. */
bool config_parse_hop(const char *url, struct config_hop *out, char *why, size_t why_size);
void config_hop_free(struct config_hop *hop);
/* "*", "host", "*.suffix", "host:port", "[v6]:port", an IP or a CIDR. */
bool config_parse_route_pattern(const char *s, struct config_route *out);

/* The next space- or comma-separated token of *p into tok; false at the end.
 * A token too long for tok is truncated (it is invalid anyway). */
bool config_next_token(const char **p, char *tok, size_t size);
/* Replace the listen list (the listen key, the -l options); returns false on a
 * bad address, with a message in err. */
bool config_set_listen(struct config *cfg, const char *const *addrs, size_t n, char *err,
                       size_t err_size);
/* [intercept] bypass: host patterns replacing (or, when append, extending) the
 * configured ones, only when all are good. */
bool config_set_bypass(struct config *cfg, const char *v, bool append, char *why, size_t size);

#endif
