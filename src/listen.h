/*
 * listen — the client-facing listening sockets. Bound from the config's
 * listen list; re-bound on reload only when that list changed. Accepted
 * sockets go to downstream_accept (which applies the allow ACL).
 * Owns: the listening sockets.
 */
#ifndef MUXD_LISTEN_H
#define MUXD_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "muxd.h"

struct listeners;

/* Bind every address of cfg; on failure returns NULL with a message. */
struct listeners *listeners_open(struct muxd *m, const struct config *cfg, char *err,
                                 size_t err_size);
/* True when cfg asks for exactly the addresses these listeners were opened for. */
bool listeners_match(const struct listeners *l, const struct config *cfg);
/* Stop or resume accepting (max_clients). */
void listeners_pause(struct listeners *l, bool paused);
void listeners_free(struct listeners *l);

#endif
