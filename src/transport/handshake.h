/*
 * handshake — private to transport/: what the proxy handshake layers
 * (connect.c, socks5.c) share. A layer that owns the layer below, runs its
 * protocol's handshake through the lower layer's buffers, and then is a
 * transparent byte stream: input() and output() are the lower layer's own
 * buffers (zero copy, the lower layer's backpressure) and the lower layer's
 * callbacks are forwarded to the user. Before CONNECTED the user gets private
 * buffers (what was written goes out once the handshake succeeded). Work runs
 * from the lower layer's callbacks or a deferred event, never from inside a
 * user's call; events found early are reported from that event; the layer is
 * freed only when no callback runs (hold/release).
 *
 * A protocol embeds struct handshake as the first member of its layer and
 * fills struct handshake_ops with its parts.
 */
#ifndef MUXD_TRANSPORT_HANDSHAKE_H
#define MUXD_TRANSPORT_HANDSHAKE_H

#include <stdbool.h>

#include "transport/transport.h"

enum handshake_state {
	HANDSHAKE_RUNNING, /* the protocol's exchange with the proxy */
	HANDSHAKE_OPEN,    /* a transparent byte stream */
	HANDSHAKE_DEAD,    /* failed and reported */
};

struct handshake;

struct handshake_ops {
	const char *label; /* before "proxy NAME" in messages: "" or "SOCKS5 " */
	/* Consumes what the proxy sent so far (the lower input). Returns false
	 * when the handshake failed (reported; the layer may be closed); on
	 * success the state is HANDSHAKE_OPEN or still HANDSHAKE_RUNNING. */
	bool (*step)(struct handshake *h);
	/* Logs a failure about to be reported. */
	void (*log_failure)(struct handshake *h, const char *reason);
	/* Optional: the layer failed (stop protocol work). */
	void (*dead)(struct handshake *h);
	/* Optional: free the protocol's parts (the layer is being freed). */
	void (*fini)(struct handshake *h);
};

struct handshake {
	struct transport base;
	const struct handshake_ops *ops;
	struct transport *lower;
	struct event *pass_ev;
	struct evbuffer *early_in, *early_out; /* the user's buffers before CONNECTED */
	enum handshake_state state;
	char *name;   /* the proxy, for messages */
	bool reading; /* the user wants bytes */
	bool opened;  /* the handshake succeeded: the lower buffers are ours */
	bool shut_wanted;
	bool lower_eof, lower_failed;
	bool peer_eof;
	enum muxd_err lower_err;
	char lower_reason[256];
	enum muxd_err fail_err; /* a failure found while starting, reported later */
	char fail_reason[600];
	unsigned holds; /* hold.h */
	bool closing;
};

/*
 * Sets up h, the zeroed first member of a layer allocated with malloc (freed
 * with free once closed): owns lower from now on. Returns false when out of
 * memory: then free the layer with handshake_free. The protocol then checks
 * its own allocations and calls handshake_attach.
 */
bool handshake_init(struct handshake *h, struct event_base *base, struct transport *lower,
                    const struct handshake_ops *ops, const char *proxy_name,
                    const struct transport_cbs *cbs, void *ctx);

/* Frees the layer (fini, then the shared parts, the lower layer, h). */
void handshake_free(struct handshake *h);

/* Takes over the lower layer's callbacks and starts reading. */
void handshake_attach(struct handshake *h);

/* Records a failure found while starting; it is reported from the deferred
 * event. */
void handshake_fail_later(struct handshake *h, enum muxd_err err, const char *reason);

void handshake_hold(struct handshake *h);

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
bool handshake_release(struct handshake *h);

/* Reports an event to the user; marks the layer dead on errors. Returns
 * false when the user closed the layer. Caller holds h. */
bool handshake_report(struct handshake *h, enum transport_event ev, enum muxd_err err,
                      const char *reason);

/* Logs (ops->log_failure) and reports an error. Caller holds h. */
void handshake_fail(struct handshake *h, enum muxd_err err, const char *reason);

#endif
