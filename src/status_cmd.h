/*
 * status_cmd — `muxd status`: fetch /status.json from a running muxd (the
 * config's first listen address) and print its pool as a table.
 *
 * The GET itself is admin_client's (admin_get). Owns, besides the command,
 * its pure part, callable without a socket (unit tests, fuzzing): the
 * renderer (status_render: a /status.json document to the tables, with the
 * command's small JSON parser).
 */
#ifndef MUXD_STATUS_CMD_H
#define MUXD_STATUS_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct config;

/* Prints the table to stdout, or a one-line error to stderr. Returns the
 * process exit status: 0, or 1 when muxd cannot be reached or answers badly. */
int status_cmd(const struct config *cfg);

/*
 * Parses a /status.json document (docs/status-json.md; any bytes, not
 * necessarily NUL-terminated) and prints it as the tables of `muxd status` on
 * out, headed "muxd at WHERE". False, printing nothing, with the reason in
 * err when it is not JSON (err says at which byte) or not that document.
 */
bool status_render(const char *json, size_t len, const char *where, FILE *out, char *err,
                   size_t errsize);

#endif
