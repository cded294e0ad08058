/* muxd — names and mappings shared by every module. */
#include "muxd.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "listen.h"

const char *proto_name(enum proto p)
{
	static const char *const names[] = {"h1", "h2", "h3", "tunnel"};
	return p < PROTO_COUNT ? names[p] : "?";
}

const char *evict_reason_name(enum evict_reason r)
{
	static const char *const names[] = {"idle_timeout", "limit", "dead", "goaway", "age"};
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

int muxd_error_body(enum muxd_err err, const char *host, unsigned port, const char *reason,
                    char *buf, size_t size)
{
	const char *v6 = strchr(host, ':') ? "[" : "", *v6e = *v6 ? "]" : "";
	int n;

	switch (err) {
	case ERR_DNS:
		n = snprintf(buf, size, "muxd: %s: %s\n", host, reason);
		break;
	case ERR_CONNECT:
		n = snprintf(buf, size, "muxd: cannot connect to %s%s%s:%u: %s\n", v6, host, v6e,
		             port, reason);
		break;
	case ERR_CONNECT_TIMEOUT:
		n = snprintf(buf, size, "muxd: timed out connecting to %s%s%s:%u%s%s\n", v6, host,
		             v6e, port, reason && *reason ? ": " : "", reason ? reason : "");
		break;
	case ERR_RESPONSE_TIMEOUT:
		n = snprintf(buf, size, "muxd: %s%s%s:%u did not answer in time\n", v6, host, v6e,
		             port);
		break;
	case ERR_BAD_RESPONSE:
		n = snprintf(buf, size, "muxd: bad response from %s%s%s:%u: %s\n", v6, host, v6e,
		             port, reason);
		break;
	case ERR_TLS:
		n = snprintf(buf, size, "muxd: TLS with %s%s%s:%u failed: %s\n", v6, host, v6e,
		             port, reason);
		break;
	default:
		n = snprintf(buf, size, "muxd: %s%s%s:%u: %s\n", v6, host, v6e, port, reason);
		break;
	}
	if (n < 0)
		n = 0;
	if ((size_t)n >= size) {
		n = (int)size - 1;
		buf[n - 1] = '\n';
	}
	return n;
}
