/* errors — error names, their statuses and the text of error responses. */
#include "errors.h"

#include <stdio.h>
#include <string.h>

int muxd_err_status(enum muxd_err err)
{
	switch (err) {
	case ERR_CONNECT_TIMEOUT:
	case ERR_RESPONSE_TIMEOUT:
		return 504;
	case ERR_BUDGET:
		return 503;
	case ERR_LOOP:
		return 508;
	case ERR_FORBIDDEN:
		return 403;
	default:
		return 502;
	}
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
	case ERR_LOOP:
		n = snprintf(buf, size, "muxd: request loops back into muxd (%s%s%s:%u: %s)\n", v6,
		             host, v6e, port, reason);
		break;
	case ERR_FORBIDDEN:
		n = snprintf(buf, size, "muxd: %s%s%s:%u: %s\n", v6, host, v6e, port, reason);
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
