/*
 * forward — the forwarding mode of the HTTP/1.1 and HTTP/2 codecs (see
 * forward.h).
 */
#include "upstream/forward.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/upstream.h"

bool fwd_mode_init(struct fwd_mode *m, const struct upstream_forward *f)
{
	memset(m, 0, sizeof(*m));
	if (!f)
		return true;
	bool v6 = strchr(f->proxy_host, ':') != NULL;
	char name[300];
	snprintf(name, sizeof(name), "%s%s%s:%u", v6 ? "[" : "", f->proxy_host, v6 ? "]" : "",
	         f->proxy_port);
	if (!(m->name = strdup(name)))
		return false;
	if (f->user) {
		char user_pass[2 * 256 + 2], auth[HTTP1_BASIC_MAX];
		int n = snprintf(user_pass, sizeof(user_pass), "%s:%s", f->user,
		                 f->pass ? f->pass : "");
		m->has_auth = n >= 0 && (size_t)n < sizeof(user_pass) &&
		              http1_basic_credentials(user_pass, auth, sizeof(auth)) &&
		              (m->auth = strdup(auth)) != NULL;
		explicit_bzero(user_pass, sizeof(user_pass));
		explicit_bzero(auth, sizeof(auth));
		if (!m->has_auth) {
			fwd_mode_clear(m);
			return false;
		}
	}
	m->on = true;
	return true;
}

void fwd_mode_clear(struct fwd_mode *m)
{
	if (m->auth) {
		explicit_bzero(m->auth, strlen(m->auth));
		free(m->auth);
	}
	free(m->name);
	memset(m, 0, sizeof(*m));
}

void fwd_refused(const struct fwd_mode *m, char *why, size_t size)
{
	snprintf(why, size, "proxy %s: proxy authentication required%s", m->name ? m->name : "?",
	         m->has_auth ? " (it refused the configured credentials)" : "");
}
