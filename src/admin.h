/*
 * admin — muxd's own pages, answered for origin-form requests from loopback
 * clients: /metrics (Prometheus text). Pure rendering from the root state.
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

#endif
