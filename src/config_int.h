/*
 * config_int — private to the config module: what config.c (loading and
 * validation) uses of config_values.c (the parsers of single values) beyond
 * the parsers config.h declares for everyone. Owns nothing.
 */
#ifndef MUXD_CONFIG_INT_H
#define MUXD_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Digits and a unit: the form of a duration, whatever its size. */
bool config_duration_form(const char *s);
/* A decimal number of at most max, digits only. */
bool config_parse_uint(const char *s, unsigned long max, unsigned long *out);
/* on, off, yes, no, true, false, 1 or 0 (any case). */
bool config_parse_bool(const char *v, bool *out);
/* The next space- or comma-separated token of *p into tok; false at the end.
 * A token too long for tok is cut short and ends in "..." (which no address,
 * network or port takes): cut alone it could become another valid value
 * ("10.0.0.0/0000...08" as 10.0.0.0/0). */
bool config_next_token(const char **p, char *tok, size_t size);
/* [intercept] bypass: host patterns replacing (or, when append, extending) the
 * configured ones, only when all are good. */
bool config_set_bypass(struct config *cfg, const char *v, bool append, char *why, size_t size);
/* Why the client certificate or key file at path cannot be loaded now (GnuTLS
 * reads it whole, at load): unreadable, not a regular file (a device or a
 * FIFO would be read without end), or far larger (1 MiB) than any PEM key or
 * chain. NULL when it can. */
const char *config_key_file_problem(const char *path);
/* proxy's URLs (on its line or a continuation line), appended to r's hops. */
bool config_route_hops(struct config_route *r, const char *v, char *why, size_t size);

#endif
