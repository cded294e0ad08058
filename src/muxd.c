/* muxd — names and mappings shared by every module. */
#include "muxd.h"

#include <event2/event.h>

#include "config.h"
#include "listen.h"

const char *proto_name(enum proto p)
{
	static const char *const names[] = {"h1", "h2", "h3", "tunnel"};
	return p < PROTO_COUNT ? names[p] : "?";
}

const char *evict_reason_name(enum evict_reason r)
{
	static const char *const names[] = {"idle_timeout", "limit", "dead"};
	return r < EVICT_COUNT ? names[r] : "?";
}

int muxd_err_status(enum muxd_err err)
{
	switch (err) {
	case ERR_CONNECT_TIMEOUT:
	case ERR_RESPONSE_TIMEOUT:
		return 504;
	case ERR_BUDGET:
		return 503;
	default:
		return 502;
	}
}

void muxd_client_closed(struct muxd *m)
{
	if (m->draining && m->nclients == 0)
		event_base_loopbreak(m->base);
	else if (m->nclients < m->cfg->max_clients)
		listeners_pause(m->listeners, false);
}
