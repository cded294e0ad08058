/*
 * admin_warm — POST /warm?url=URL&url=URL...: the admin side of `muxd warm`.
 * Each URL (http:// or https://, percent-encoded in the query) is routed as
 * a request to it would be, and the pool is asked for a connection to its
 * key without a stream (pool_warm). The answer waits until every origin is
 * connected or failed, bounded by connect_timeout (plus a second, in case
 * the pool never answers): one line per URL, in the order given,
 *
 *   connected URL
 *   already-warm URL
 *   failed URL REASON
 *
 * with status 200 when none failed, else 502. A failure is the caller's
 * answer, not the daemon's error: it is logged at debug only.
 */
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "timeutil.h"

#define WARM_GRACE_MS 1000 /* past connect_timeout: the pool has answered by then */

enum warm_state { WARM_PENDING, WARM_CONNECTED, WARM_ALREADY, WARM_FAILED };

struct warm_item {
	struct admin_async *a;
	struct pool_wait *w; /* NULL once the pool answered */
	char *url;           /* decoded, as given */
	char *key_id;        /* its pool key's id */
	size_t same_as;      /* 1 + the earlier item with the same key, or 0 */
	enum warm_state state;
	char why[300];
};

struct admin_async {
	struct muxd *m;
	admin_async_done done;
	void *ctx;
	struct event *finish; /* all answered (made active), or the deadline */
	int status;           /* an answer known at the start (400, 405), else 0 */
	char msg[200];        /* its body */
	size_t n, left;
	struct warm_item items[ADMIN_WARM_MAX];
};

bool admin_is_async(const struct http1_msg *req)
{
	size_t plen = strcspn(req->target, "?");
	return plen == 5 && strncmp(req->target, "/warm", 5) == 0;
}

static int hex(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
	                              : -1;
}

/* in[0..len) percent-decoded (a new string), or NULL when malformed or
 * decoding to a control character. */
static char *decode(const char *in, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '%') {
			int hi = i + 2 < len ? hex(in[i + 1]) : -1;
			int lo = i + 2 < len ? hex(in[i + 2]) : -1;
			if (hi < 0 || lo < 0) {
				free(out);
				return NULL;
			}
			c = (char)(hi * 16 + lo);
			i += 2;
		}
		if ((unsigned char)c < 0x21 || c == 0x7f) {
			free(out);
			return NULL;
		}
		*o++ = c;
	}
	*o = '\0';
	return out;
}

static void finish_cb(evutil_socket_t fd, short what, void *arg);

static void answered(struct warm_item *it, enum warm_state state, const char *why)
{
	struct admin_async *a = it->a;

	it->w = NULL;
	it->state = state;
	snprintf(it->why, sizeof(it->why), "%s", why ? why : "");
	log_debug("warm %s: %s%s%s", it->url,
	          state == WARM_CONNECTED ? "connected"
	          : state == WARM_ALREADY ? "already warm"
	                                  : "failed",
	          why ? ": " : "", why ? why : "");
	if (--a->left == 0)
		event_active(a->finish, EV_TIMEOUT, 0); /* never from inside the pool's call */
}

static void on_ready(void *ctx, struct upstream_stream *s, bool reused)
{
	(void)s; /* pool_warm opens none */
	answered(ctx, reused ? WARM_ALREADY : WARM_CONNECTED, NULL);
}

static void on_failed(void *ctx, enum muxd_err err, const char *reason)
{
	(void)err;
	answered(ctx, WARM_FAILED, reason && *reason ? reason : "no connection");
}

static const struct pool_wait_cbs warm_cbs = {on_ready, on_failed};

/* Parse the query: url=VALUE pairs (other names are errors). */
static bool parse_query(struct admin_async *a, const char *q)
{
	while (*q) {
		size_t n = strcspn(q, "&");
		if (n == 0) {
			q++;
			continue;
		}
		if (n < 4 || strncmp(q, "url=", 4) != 0) {
			snprintf(a->msg, sizeof(a->msg),
			         "muxd: /warm takes url=URL parameters only\n");
			return false;
		}
		if (a->n == ADMIN_WARM_MAX) {
			snprintf(a->msg, sizeof(a->msg), "muxd: /warm takes at most %d URLs\n",
			         ADMIN_WARM_MAX);
			return false;
		}
		char *url = decode(q + 4, n - 4);
		if (!url) {
			snprintf(a->msg, sizeof(a->msg),
			         "muxd: /warm: a url is not percent-encoded\n");
			return false;
		}
		a->items[a->n].a = a;
		a->items[a->n++].url = url;
		q += n;
	}
	if (a->n == 0) {
		snprintf(a->msg, sizeof(a->msg),
		         "muxd: /warm needs at least one url=URL (http:// or https://)\n");
		return false;
	}
	return true;
}

/* Route it and ask the pool: 0, or the status of the answer (a->msg set). */
static int start_item(struct admin_async *a, struct warm_item *it)
{
	struct http1_uri uri;
	struct route route;
	struct pool_key key;

	if (!http1_parse_absolute_uri(it->url, &uri)) {
		snprintf(a->msg, sizeof(a->msg),
		         "muxd: /warm: '%.100s' is not an http:// or https:// URL\n", it->url);
		return 400;
	}
	route_for(a->m->cfg, uri.host, uri.port, &route);
	if (!pool_key_init(&key, a->m, uri.scheme, uri.host, uri.port, &route)) {
		snprintf(a->msg, sizeof(a->msg), "muxd: /warm: '%.100s' does not fit a pool key\n",
		         it->url);
		return 400;
	}
	if (!(it->key_id = strdup(key.id))) {
		snprintf(a->msg, sizeof(a->msg), "muxd: out of memory\n");
		return 500;
	}
	for (size_t i = 0; &a->items[i] != it; i++)
		if (!a->items[i].same_as && strcmp(a->items[i].key_id, it->key_id) == 0) {
			it->same_as = i + 1; /* one connection per origin: answered as that one */
			a->left--;
			return 0;
		}
	it->w = pool_warm(a->m->pool, &key, &warm_cbs, it);
	if (!it->w) {
		snprintf(a->msg, sizeof(a->msg), "muxd: out of memory\n");
		return 500;
	}
	return 0;
}

static void stop_waits(struct admin_async *a)
{
	for (size_t i = 0; i < a->n; i++)
		if (a->items[i].w) {
			pool_wait_cancel(a->items[i].w);
			a->items[i].w = NULL;
		}
}

static void async_free(struct admin_async *a)
{
	stop_waits(a);
	for (size_t i = 0; i < a->n; i++) {
		free(a->items[i].url);
		free(a->items[i].key_id);
	}
	if (a->finish)
		event_free(a->finish);
	free(a);
}

static void finish_cb(evutil_socket_t fd, short what, void *arg)
{
	struct admin_async *a = arg;
	struct admin_response r = {0};
	admin_async_done done = a->done;
	void *ctx = a->ctx;
	size_t len = 0;
	bool failed = false;
	FILE *f;

	(void)fd;
	(void)what;
	r.content_type = "text/plain; charset=utf-8";
	if (a->status) {
		r.status = a->status;
		r.body = strdup(a->msg);
		r.body_len = r.body ? strlen(r.body) : 0;
	} else if ((f = open_memstream(&r.body, &len)) != NULL) {
		uint64_t ms = a->m->cfg->connect_timeout_ms;
		char d[32];
		if (ms % 1000 == 0)
			snprintf(d, sizeof(d), "%llus", (unsigned long long)(ms / 1000));
		else
			snprintf(d, sizeof(d), "%llums", (unsigned long long)ms);
		for (size_t i = 0; i < a->n; i++) {
			struct warm_item *it = &a->items[i];
			if (it->same_as) {
				it->state = a->items[it->same_as - 1].state;
				memcpy(it->why, a->items[it->same_as - 1].why, sizeof(it->why));
			}
			if (it->state == WARM_PENDING) /* the deadline passed first */
				snprintf(it->why, sizeof(it->why),
				         "not connected within connect_timeout (%s)", d);
			failed |= it->state == WARM_PENDING || it->state == WARM_FAILED;
			if (it->state == WARM_CONNECTED)
				fprintf(f, "connected %s\n", it->url);
			else if (it->state == WARM_ALREADY)
				fprintf(f, "already-warm %s\n", it->url);
			else
				fprintf(f, "failed %s %s\n", it->url, it->why);
		}
		if (fclose(f) != 0 || !r.body) {
			free(r.body);
			r.body = NULL;
		}
		r.body_len = r.body ? len : 0;
		r.status = !r.body ? 500 : failed ? 502 : 200;
	}
	if (!r.body)
		r.status = 500;
	async_free(a); /* before done: it may free the session that holds a */
	done(ctx, &r);
	free(r.body);
}

struct admin_async *admin_async_start(struct muxd *m, const struct http1_msg *req,
                                      admin_async_done done, void *ctx)
{
	struct admin_async *a = calloc(1, sizeof(*a));
	const char *q = strchr(req->target, '?');
	struct timeval tv = ms_to_timeval(m->cfg->connect_timeout_ms + WARM_GRACE_MS);

	if (!a)
		return NULL;
	a->m = m;
	a->done = done;
	a->ctx = ctx;
	a->finish = evtimer_new(m->base, finish_cb, a);
	if (!a->finish) {
		free(a);
		return NULL;
	}
	if (strcmp(req->method, "POST") != 0) {
		a->status = 405;
		snprintf(a->msg, sizeof(a->msg), "muxd: /warm answers POST only\n");
	} else if (!parse_query(a, q ? q + 1 : "")) {
		a->status = 400;
	} else {
		a->left = a->n;
		for (size_t i = 0; i < a->n && !a->status; i++)
			a->status = start_item(a, &a->items[i]);
		if (a->status)
			stop_waits(a);
	}
	if (a->status || a->left == 0)
		event_active(a->finish, EV_TIMEOUT, 0);
	else
		evtimer_add(a->finish, &tv);
	return a;
}

void admin_async_cancel(struct admin_async *a)
{
	async_free(a);
}
