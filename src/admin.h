/*
 * admin — muxd's own pages, answered for origin-form requests from loopback
 * clients: / (HTML status page), /status.json (docs/status-json.md), /metrics
 * (Prometheus text), /ca.pem, and POST /warm (admin_warm.c). Rendering reads the root state; admin
 * owns only m->history, the samples behind the status page's chart.
 */
#ifndef MUXD_ADMIN_H
#define MUXD_ADMIN_H

#include <stdbool.h>
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

/*
 * Admin requests answered later, from the event loop (admin_warm.c): POST
 * /warm?url=URL... opens pool connections to those origins (`muxd warm`).
 * admin_is_async tells the session to use admin_async_start instead of
 * admin_handle; done runs once, never from inside admin_async_start, with a
 * response valid during the call only (the admin_async is gone by then).
 * admin_async_cancel forgets it before that (the client went away). NULL
 * when out of memory.
 */
#define ADMIN_WARM_MAX 64 /* URLs in one /warm */
struct admin_async;
typedef void (*admin_async_done)(void *ctx, const struct admin_response *r);
bool admin_is_async(const struct http1_msg *req);
struct admin_async *admin_async_start(struct muxd *m, const struct http1_msg *req,
                                      admin_async_done done, void *ctx);
void admin_async_cancel(struct admin_async *a);

/* Start sampling request and reuse totals every 10 s for the status page's
 * chart (a timer on m->base); call once the event base exists. Without it
 * the pages still work, with no history. */
void admin_start(struct muxd *m);
/* Stop the timer and free the history; before the event base is freed. */
void admin_stop(struct muxd *m);

#endif
