/*
 * warm_cmd — `muxd warm URL...`: asks the running muxd (its admin endpoint
 * POST /warm, loopback only, over admin_client) to open pool connections to
 * those origins now, waits until each is connected or failed (the daemon
 * bounds that by connect_timeout), and prints one line per URL. Owns nothing
 * beyond the command.
 */
#ifndef MUXD_WARM_CMD_H
#define MUXD_WARM_CMD_H

#include <stddef.h>

struct config;

/* Returns the exit status: 0 when every origin is connected (or already
 * was), 1 when one failed or muxd cannot be asked, 2 for a usage error (no
 * URL, or one that is not http:// or https://). */
int warm_cmd(const struct config *cfg, char *const urls[], size_t n);

#endif
