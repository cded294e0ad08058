/*
 * status_cmd — `muxd status`: fetch /status.json from a running muxd (the
 * config's first listen address) and print its pool as a table.
 */
#ifndef MUXD_STATUS_CMD_H
#define MUXD_STATUS_CMD_H

struct config;

/* Prints the table to stdout, or a one-line error to stderr. Returns the
 * process exit status: 0, or 1 when muxd cannot be reached or answers badly. */
int status_cmd(const struct config *cfg);

#endif
