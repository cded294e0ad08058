/*
 * admin — muxd's own pages, answered for origin-form requests from loopback
 * clients: / (HTML status page), /status.json (docs/status-json.md), /metrics
 * (Prometheus text) and /ca.pem. Rendering reads the root state; admin owns
 * only m->history, the samples behind the status page's chart.
 */
#ifndef MUXD_ADMIN_H
#define MUXD_ADMIN_H

#include <stddef.h>

#include "http1.h"
#include "muxd.h"

struct admin_response {
	int status;
	const char *content_type;
	char *body; /* owned */
	size_t body_len;
};

void admin_handle(struct muxd *m, const struct http1_msg *req, struct admin_response *out);
void admin_response_free(struct admin_response *r);

/* Start sampling request and reuse totals every 10 s for the status page's
 * chart (a timer on m->base); call once the event base exists. Without it
 * the pages still work, with no history. */
void admin_start(struct muxd *m);
/* Stop the timer and free the history; before the event base is freed. */
void admin_stop(struct muxd *m);

#endif
