/*
 * listen — the client-facing listening sockets. Bound from the config's
 * listen list; re-bound on reload only when that list changed. Or taken from
 * the service manager (systemd socket activation), then never re-bound. Accepted
 * sockets go to the accept callback given at creation (the client side, which
 * applies the allow ACL; main.c wires it).
 * Owns: the listening sockets.
 */
#ifndef MUXD_LISTEN_H
#define MUXD_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "muxd.h"

struct listeners;
struct sockaddr;

/* The client side the listeners feed (wired by main.c). */
struct listener_cbs {
	/* Take an accepted client socket. */
	void (*accept)(struct muxd *m, int fd, const struct sockaddr *peer, socklen_t peer_len);
	/* Descriptors are short: close up to n client connections idle between
	 * requests; returns how many were closed. */
	unsigned (*close_idle)(struct muxd *m, unsigned n);
};

/* Bind every address of cfg; on failure returns NULL with a message. cbs
 * must outlive the listeners. */
struct listeners *listeners_open(struct muxd *m, const struct config *cfg,
                                 const struct listener_cbs *cbs, char *err, size_t err_size);
/*
 * Socket activation: when $LISTEN_PID is this process and $LISTEN_FDS > 0,
 * adopt fds 3.. as the listeners (and unset the LISTEN_* variables). Returns
 * NULL with err "" when there is nothing to adopt, NULL with a message when the
 * handed-over sockets are unusable.
 */
struct listeners *listeners_from_env(struct muxd *m, const struct listener_cbs *cbs, char *err,
                                     size_t err_size);
/* True when the listeners came from the service manager. */
bool listeners_activated(const struct listeners *l);
/* True when cfg asks for exactly the addresses these listeners were opened for;
 * always true for activated listeners (the service manager owns the addresses). */
bool listeners_match(const struct listeners *l, const struct config *cfg);
/* The bound addresses of the listeners (at most max) into out; returns how
 * many (for loop detection by address: muxd.self). */
size_t listeners_addrs(const struct listeners *l, struct sockaddr_storage *out, size_t max);
/* Stop or resume accepting (max_clients). */
void listeners_pause(struct listeners *l, bool paused);
void listeners_free(struct listeners *l);

#endif
