/*
 * h1_session — the HTTP/1.1 server session (the downstream_* functions): one
 * struct per accepted connection, its one request at a time a client_stream
 * (session.h; the framing is h1_stream.c's).
 * Heads are parsed only once a blank line is in the buffer (or the buffer is
 * over the limit), so a head dribbled in byte by byte costs linear time.
 * Closing is "lingering": muxd's write side is shut after the last byte and
 * whatever the client still sends is discarded until it closes, so an error
 * response is not destroyed by a reset.
 *
 * Client deadlines (one timer per connection, its kind set by the state):
 * request_header_timeout from the first byte of a head (from the accept, or
 * the end of the client's TLS handshake, for the first request) until the
 * head is complete, then 408 and close; client_idle_timeout between requests
 * on a keep-alive connection, during the client's TLS handshake and on a
 * tunnel made after a silent peek until the client sends its first byte, then
 * close; client_timeout during an exchange while muxd waits on the client
 * (response bytes unsent, or request body bytes missing) and no byte moves
 * to or from its socket, then close. Request targets over HTTP1_MAX_TARGET
 * get 414, heads over HTTP1_MAX_HEAD 431. While descriptors run short the
 * oldest idle keep-alive connections are closed first (listen.c decides).
 */
#include "client/h1_session.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "client/h1_stream.h"
#include "client/h2_session.h"
#include "config.h"
#include "exchange.h"
#include "http1.h"
#include "log.h"
#include "route.h"
#include "timeutil.h"
#include "transport/tls.h"
#include "transport/transport.h"
#include "tunnel.h"
#include "upstream/upstream.h"
#include "via.h"

#define LINGER_MS 5000
/* A client that sends nothing after an interceptable CONNECT for this long is
 * tunneled as it is (a server-first protocol). 3 s: a TLS client on a loaded
 * host can take more than a second to send its ClientHello. */
#define PEEK_MS 3000

enum ds_mode {
	DS_PROXY,       /* requests to the proxy (absolute-form, CONNECT, admin) */
	DS_PEEK,        /* 200 sent for an interceptable CONNECT: TLS or not? */
	DS_HANDSHAKE,   /* terminating the client's TLS */
	DS_INTERCEPTED, /* requests inside the client's TLS, for one origin */
	DS_H2,          /* ... and the client chose HTTP/2: h2_session.c serves them */
};

enum ds_timer {
	T_NONE,
	T_HEADER, /* request_header_timeout: 408 */
	T_IDLE,   /* client_idle_timeout: close */
	T_CLIENT, /* client_timeout: close when muxd still waits on the client */
};

struct downstream {
	struct muxd *m;
	struct transport *t;
	char peer[64];
	/* "METHOD target" of the request in hand, for logs; "" before one */
	char req_line[DOWNSTREAM_REQ_LINE];
	bool loopback;
	struct exchange *ex;
	struct h1_stream stream; /* the request of the exchange ex */
	struct tunnel *tunnel;
	struct h2_session *h2;     /* DS_H2 */
	struct admin_async *admin; /* an admin answer that comes later (POST /warm) */
	bool admin_close;          /* ... the last on this connection */
	enum ds_mode mode;
	char origin_host[256]; /* DS_PEEK onwards: the CONNECT authority */
	uint16_t origin_port;
	char tls_name[256]; /* DS_INTERCEPTED: the SNI's name for an address origin, or "" */
	struct event *peek_timer;
	struct http1_head_scan scan; /* over the request head arriving */
	bool closing;                /* lingering close in progress */
	bool peer_eof;               /* the client finished sending */
	struct event *linger;
	struct event *timer; /* the client deadline of the current state */
	enum ds_timer timer_kind;
	unsigned served;         /* requests handled (on this connection or TLS session) */
	bool silent_peek;        /* tunneled after a peek without a byte from the client */
	uint64_t idle_since_ns;  /* when the connection last went idle (T_IDLE) */
	uint64_t moved_ms;       /* T_CLIENT: when a byte last moved (coarse_ms) */
	uint64_t head_since_ns;  /* T_HEADER: when the head's deadline started */
	uint64_t timer_due_ns;   /* when the pending timer fires (now_ns); 0: none */
	struct evbuffer *raw_in; /* the socket's buffers: progress for client_timeout */
	struct evbuffer *raw_out;
	struct evbuffer_cb_entry *raw_in_cb, *raw_out_cb;
	struct downstream *prev, *next;
};

/* The open client connections, newest first (m->clients). */
struct client_list {
	struct downstream *head;
};

static struct downstream **list_head(struct muxd *m)
{
	return &m->clients->head;
}

static void ds_free(struct downstream *ds)
{
	struct muxd *m = ds->m;

	if (ds->ex)
		exchange_abort(ds->ex);
	if (ds->admin)
		admin_async_cancel(ds->admin);
	h1_stream_clear(&ds->stream);
	if (ds->tunnel)
		tunnel_abort(ds->tunnel);
	h2_session_free(ds->h2);
	if (ds->prev)
		ds->prev->next = ds->next;
	else
		*list_head(m) = ds->next;
	if (ds->next)
		ds->next->prev = ds->prev;
	if (ds->linger)
		event_free(ds->linger);
	if (ds->peek_timer)
		event_free(ds->peek_timer);
	if (ds->raw_in_cb)
		evbuffer_remove_cb_entry(ds->raw_in, ds->raw_in_cb);
	if (ds->raw_out_cb)
		evbuffer_remove_cb_entry(ds->raw_out, ds->raw_out_cb);
	if (ds->t)
		transport_close(ds->t);
	if (ds->timer)
		event_free(ds->timer);
	free(ds);
	m->nclients--;
	muxd_client_closed(m);
}

static void linger_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	ds_free(arg);
}

/* Free from the event loop, not from inside the caller (out of memory). */
static void free_soon(struct downstream *ds)
{
	struct timeval zero = {0, 0};

	ds->closing = true;
	if (!ds->linger)
		ds->linger = evtimer_new(ds->m->base, linger_timeout, ds);
	if (ds->linger)
		evtimer_add(ds->linger, &zero);
}

/* Shut our write side once the output is flushed; free when the client
 * closes or after LINGER_MS. */
static void start_close(struct downstream *ds)
{
	struct timeval tv = ms_to_timeval(LINGER_MS);

	if (ds->closing)
		return;
	ds->closing = true;
	ds->timer_kind = T_NONE;
	ds->timer_due_ns = 0;
	evtimer_del(ds->timer);
	ds->linger = evtimer_new(ds->m->base, linger_timeout, ds);
	if (!ds->linger) {
		ds_free(ds);
		return;
	}
	evtimer_add(ds->linger, &tv);
	ds->t->ops->shutdown(ds->t);
	ds->t->ops->set_reading(ds->t, true);
}

static struct transport *owner_transport(void *ctx)
{
	struct downstream *ds = ctx;

	return ds->t;
}

/* The connection of one of its streams. */
static struct downstream *stream_owner(const struct client_stream *cs)
{
	return (struct downstream *)((char *)cs - offsetof(struct downstream, stream));
}

static const char *stream_peer(const struct client_stream *cs)
{
	return stream_owner(cs)->peer;
}

static void respond_head(struct downstream *ds, int status, const char *content_type,
                         size_t body_len, bool close)
{
	evbuffer_add_printf(transport_output(ds->t),
	                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n",
	                    status, http1_reason(status), content_type, body_len,
	                    close ? "Connection: close\r\n" : "");
}

/* Write a complete response of muxd's own. close: end the connection after. */
static void respond(struct downstream *ds, int status, const char *content_type, const char *body,
                    size_t body_len, bool close)
{
	respond_head(ds, status, content_type, body_len, close);
	evbuffer_add(transport_output(ds->t), body, body_len);
}

static uint64_t now_ns(void);

static unsigned refusal_slot(int status)
{
	static const int statuses[] = {400, 403, 408, 414, 431, 500, 502, 503, 504, 508};

	for (unsigned i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
		if (statuses[i] == status)
			return i;
	return LOG_LIMIT_SLOTS - 1;
}

/* The log line of one of muxd's own answers: client, method, target,
 * status and the reason (the body without "muxd: "), at most
 * LOG_LIMIT_BURST lines a second per status, then one line counting the
 * lines suppressed. */
static void log_refusal(struct downstream *ds, int status, const char *body, size_t body_len)
{
	unsigned suppressed;
	bool pass =
	    log_limit_pass(&ds->m->refusals, refusal_slot(status), now_ns() / 1000000, &suppressed);
	const char *sp = ds->req_line[0] ? strchr(ds->req_line, ' ') : NULL;
	int mlen = sp ? (int)(sp - ds->req_line) : 1;
	const char *method = sp ? ds->req_line : "-", *target = sp ? sp + 1 : "-";

	if (suppressed)
		log_info("refused: suppressed %u similar lines (status %d)", suppressed, status);
	if (!pass)
		return;
	if (body_len > 6 && strncmp(body, "muxd: ", 6) == 0) {
		body += 6;
		body_len -= 6;
	}
	while (body_len > 0 && body[body_len - 1] == '\n')
		body_len--;
	log_info("refused client=%s method=%.*s target=%s status=%d: %.*s", ds->peer, mlen, method,
	         target, status, (int)body_len, body);
}

/* The one way muxd answers by itself (not for its admin pages): log, then
 * respond; close: end the connection after. */
static void refuse(struct downstream *ds, int status, const char *text, bool close)
{
	log_refusal(ds, status, text, strlen(text));
	respond(ds, status, "text/plain; charset=utf-8", text, strlen(text), close);
	if (close)
		start_close(ds);
}

static void refusef(struct downstream *ds, int status, bool close, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refusef(struct downstream *ds, int status, bool close, const char *fmt, ...)
{
	char text[700];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	refuse(ds, status, text, close);
}

/* A duration as muxd.conf writes it. */
static void format_ms(uint64_t ms, char *out, size_t size)
{
	if (ms % 1000 == 0)
		snprintf(out, size, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(out, size, "%llums", (unsigned long long)ms);
}

/* --- client deadlines --- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}

/* A cheap clock for progress stamps (a few ms of resolution: the deadlines
 * are seconds), read on every byte move in an exchange. */
static uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The timer fires ms from now (now_ns). */
static void timer_at(struct downstream *ds, uint64_t now, uint64_t ms)
{
	struct timeval tv = ms_to_timeval(ms);

	ds->timer_due_ns = now + ms * 1000000;
	evtimer_add(ds->timer, &tv);
}

/*
 * The deadline of kind starts now. The timer is lazy: one already pending
 * that fires no later than the new deadline is left as it is (T_NONE leaves
 * it too), and timer_cb, finding the deadline of the state then current not
 * passed yet, waits out the rest. So a keep-alive request (idle -> none ->
 * client -> idle) costs no event_del and event_add: the timer fires once per
 * client_idle_timeout or so and is set again.
 */
static void arm(struct downstream *ds, enum ds_timer kind)
{
	const struct config *cfg = ds->m->cfg;
	uint64_t ms = kind == T_HEADER ? cfg->request_header_timeout_ms
	              : kind == T_IDLE ? cfg->client_idle_timeout_ms
	                               : cfg->client_timeout_ms;
	uint64_t now;

	ds->timer_kind = kind;
	if (kind == T_NONE)
		return;
	now = now_ns();
	if (kind == T_IDLE)
		ds->idle_since_ns = now;
	if (kind == T_CLIENT)
		ds->moved_ms = coarse_ms();
	if (kind == T_HEADER)
		ds->head_since_ns = now;
	if (ds->timer_due_ns != 0 && ds->timer_due_ns <= now + ms * 1000000)
		return; /* fires first: timer_cb sets it again for the rest */
	timer_at(ds, now, ms);
}

/* Whether the deadline of ms from since (now_ns) is still ahead at now;
 * then the timer is set for the rest of it. */
static bool not_yet(struct downstream *ds, uint64_t now, uint64_t since, uint64_t ms)
{
	uint64_t passed_ms = now > since ? (now - since) / 1000000 : 0;

	if (passed_ms >= ms)
		return false;
	timer_at(ds, now, ms - passed_ms);
	return true;
}

/* Response bytes the client has not taken yet. */
static bool output_pending(struct downstream *ds)
{
	return evbuffer_get_length(transport_output(ds->t)) > 0 ||
	       (ds->raw_out && evbuffer_get_length(ds->raw_out) > 0);
}

/* Set the deadline the connection's state calls for; one of the same kind
 * already running goes on (a head's deadline counts from its first byte). */
static void update_timer(struct downstream *ds)
{
	enum ds_timer kind;

	if (ds->closing)
		kind = T_NONE;
	else if (ds->mode == DS_HANDSHAKE)
		kind = T_IDLE;
	else if (ds->mode == DS_PEEK || ds->mode == DS_H2)
		kind = T_NONE; /* the peek timer decides; the HTTP/2 session keeps its own */
	else if (ds->tunnel)
		kind = ds->silent_peek ? T_IDLE : T_NONE;   /* else tunnel_idle_timeout */
	else if (ds->ex || ds->admin || output_pending(ds)) /* a response may still be queued */
		kind = T_CLIENT;
	else if (ds->served > 0 && evbuffer_get_length(transport_input(ds->t)) == 0)
		kind = T_IDLE;
	else
		kind = T_HEADER;
	if (kind != ds->timer_kind)
		arm(ds, kind);
}

/* During an exchange: whether muxd waits on the client, for it to take
 * response bytes or to send the rest of the request body. */
static bool waits_on_client(struct downstream *ds)
{
	if (output_pending(ds))
		return true;
	return ds->ex && exchange_awaits_client(ds->ex) &&
	       evbuffer_get_length(transport_input(ds->t)) == 0;
}

/* Bytes moved in or out of the client's socket buffers: progress. */
static void raw_progress(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct downstream *ds = arg;

	(void)b;
	if (ds->closing && ds->peer_eof && !output_pending(ds)) {
		free_soon(ds); /* the last bytes are out and the client is gone */
		return;
	}
	if (ds->timer_kind != T_CLIENT || (info->n_added == 0 && info->n_deleted == 0))
		return;
	if (!ds->ex && !output_pending(ds))
		update_timer(ds); /* the last response is out: idle from now */
	else
		ds->moved_ms = coarse_ms(); /* the timer checks the stamp when it fires */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct downstream *ds = arg;
	char dur[32];
	uint64_t now = now_ns();

	(void)fd;
	(void)what;
	ds->timer_due_ns = 0;
	if (ds->closing)
		return;
	switch (ds->timer_kind) {
	case T_HEADER:
		if (not_yet(ds, now, ds->head_since_ns, ds->m->cfg->request_header_timeout_ms))
			break; /* set in an earlier state */
		ds->timer_kind = T_NONE;
		ds->req_line[0] = '\0';
		format_ms(ds->m->cfg->request_header_timeout_ms, dur, sizeof(dur));
		refusef(ds, 408, true,
		        "muxd: request head not received within request_header_timeout (%s) "
		        "\u2014 see muxd.conf(5)\n",
		        dur);
		break;
	case T_IDLE:
		if (not_yet(ds, now, ds->idle_since_ns, ds->m->cfg->client_idle_timeout_ms))
			break;
		log_debug("client %s: idle for client_idle_timeout: closing", ds->peer);
		ds_free(ds);
		break;
	case T_CLIENT:
		if (!waits_on_client(ds)) {
			ds->timer_kind = T_NONE;
			update_timer(ds);
			break;
		}
		uint64_t quiet = coarse_ms() - ds->moved_ms, limit = ds->m->cfg->client_timeout_ms;
		if (quiet < limit) { /* bytes moved since it was set: the rest from the last move */
			timer_at(ds, now, limit - quiet);
			break;
		}
		log_info("client %s: no progress for client_timeout: closing", ds->peer);
		ds_free(ds);
		break;
	case T_NONE:
		break;
	}
}

/* Watch the socket's own buffers (below a TLS layer, too) for progress. */
static void watch_raw(struct downstream *ds)
{
	ds->raw_in = transport_input(ds->t);
	ds->raw_out = transport_output(ds->t);
	ds->raw_in_cb = evbuffer_add_cb(ds->raw_in, raw_progress, ds);
	ds->raw_out_cb = evbuffer_add_cb(ds->raw_out, raw_progress, ds);
}

/* Close up to n of the connections idle between requests, the longest idle
 * first; returns how many. */
unsigned downstream_close_idle(struct muxd *m, unsigned n)
{
	unsigned closed = 0;

	while (closed < n) {
		struct downstream *ds, *oldest = NULL;
		for (ds = *list_head(m); ds; ds = ds->next)
			if (ds->timer_kind == T_IDLE && !ds->tunnel && !ds->closing &&
			    (ds->mode == DS_PROXY || ds->mode == DS_INTERCEPTED) &&
			    evbuffer_get_length(transport_output(ds->t)) == 0 &&
			    (!oldest || ds->idle_since_ns <= oldest->idle_since_ns))
				oldest = ds;
		if (!oldest) /* HTTP/2 clients with no open stream, the oldest first */
			for (ds = *list_head(m); ds; ds = ds->next)
				if (ds->h2 && !ds->closing && h2_session_idle(ds->h2))
					oldest = ds;
		if (!oldest)
			break;
		log_debug("client %s: closing an idle connection: descriptors are short",
		          oldest->peer);
		ds_free(oldest);
		closed++;
	}
	return closed;
}

static bool via_is_self(void *m, const char *name, size_t len)
{
	return muxd_via_is_self(m, name, len);
}

/* A request whose Via names this muxd instance has been here before (another
 * muxd, a parent or a child, has another token). */
static bool is_loop(const struct muxd *m, const struct http1_msg *req)
{
	for (size_t i = 0; i < req->nfields; i++)
		if (req->fields[i].name_len == 3 && strcasecmp(req->fields[i].name, "via") == 0 &&
		    via_names(req->fields[i].value, req->fields[i].value_len, via_is_self,
		              (void *)m))
			return true;
	return false;
}

/* A target naming one of muxd's own listen addresses, by address or as
 * localhost (names that resolve to one are caught when connecting). Holds
 * whatever the Via setting: it is what keeps the admin pages from being
 * reached through the proxy. */
static bool targets_self(const struct muxd *m, const char *host, uint16_t port)
{
	static const char *const lo[] = {"127.0.0.1", "::1"};
	struct sockaddr_storage ss;
	size_t hl = strlen(host);
	bool local_name, on_port = false;

	/* muxd_is_self matches listeners on this port only: with none, no
	 * address to parse (per request) */
	for (size_t i = 0; i < m->nself && !on_port; i++) {
		const struct sockaddr_storage *l = &m->self[i];
		on_port =
		    port != 0 && ((l->ss_family == AF_INET &&
		                   ntohs(((const struct sockaddr_in *)l)->sin_port) == port) ||
		                  (l->ss_family == AF_INET6 &&
		                   ntohs(((const struct sockaddr_in6 *)l)->sin6_port) == port));
	}
	if (!on_port)
		return false;
	local_name = strcasecmp(host, "localhost") == 0 ||
	             (hl > 10 && strcasecmp(host + hl - 10, ".localhost") == 0);
	for (size_t i = 0; i < (local_name ? 2 : 1); i++) {
		const char *a = local_name ? lo[i] : host;
		memset(&ss, 0, sizeof(ss));
		if (inet_pton(AF_INET, a, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
			ss.ss_family = AF_INET;
			((struct sockaddr_in *)&ss)->sin_port = htons(port);
		} else if (inet_pton(AF_INET6, a, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
			ss.ss_family = AF_INET6;
			((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
		} else {
			continue;
		}
		if (muxd_is_self(m, (const struct sockaddr *)&ss))
			return true;
	}
	return false;
}

/* 508 for a target that is muxd itself. */
static void refuse_self(struct downstream *ds, const char *host, uint16_t port)
{
	bool v6 = strchr(host, ':') != NULL;

	refusef(ds, 508, true,
	        "muxd: request loops back into muxd: %s%s%s:%u is muxd's own listen address\n",
	        v6 ? "[" : "", host, v6 ? "]" : "", port);
}

/* 508 for a request whose Via names this muxd. */
static void refuse_via(struct downstream *ds)
{
	refusef(ds, 508, true,
	        "muxd: request loops back into muxd: its Via names this muxd (%s) "
	        "\u2014 see via in muxd.conf(5)\n",
	        ds->m->via_token[0] ? ds->m->via_token : "1.1 muxd");
}

/* 403 for a CONNECT port outside connect_ports. */
static void refuse_port(struct downstream *ds, uint16_t port)
{
	const struct config *cfg = ds->m->cfg;
	char list[200] = "";
	size_t off = 0;

	for (size_t i = 0; i < cfg->nconnect_ports && off < sizeof(list) - 8; i++)
		off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%u", i ? ", " : "",
		                        cfg->connect_ports[i]);
	refusef(ds, 403, true,
	        "muxd: CONNECT to port %u refused: port not in connect_ports (%s) "
	        "\u2014 see muxd.conf(5)\n",
	        port, off ? list : "none");
}

static const struct client_stream_ops stream_ops;
static const struct tunnel_owner tunnel_owner;
static void forward(struct downstream *ds, struct http1_msg *req, const struct http1_uri *uri,
                    const char *tls_name);
static void start_peek(struct downstream *ds, const char *host, uint16_t port);
static void handle_intercepted(struct downstream *ds, struct http1_msg *req);

/* Whether a Host value ("name", "name:port", "[v6]:port"; port 443 when
 * absent) names host:port. */
static bool names_origin(const char *value, const char *host, uint16_t port)
{
	const char *name = value, *end, *colon;
	unsigned long p = 443;
	char *stop;

	if (*value == '[') {
		if (!strchr(host, ':'))
			return false; /* brackets hold an IPv6 literal only */
		name = value + 1;
		end = strchr(name, ']');
		if (!end || (end[1] && end[1] != ':'))
			return false;
		colon = end[1] ? end + 1 : NULL;
	} else {
		if (strchr(host, ':'))
			return false; /* an IPv6 literal is named in brackets only */
		colon = strrchr(value, ':');
		end = colon ? colon : value + strlen(value);
	}
	if (colon) {
		/* digits only: strtoul would take "+443" or " 443" too */
		if (!colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
			return false;
		p = strtoul(colon + 1, &stop, 10);
	}
	return p == port && (size_t)(end - name) == strlen(host) &&
	       strncasecmp(name, host, (size_t)(end - name)) == 0;
}

static void process(struct downstream *ds);

/* An admin answer that came later (admin_async_start). */
static void admin_done(void *ctx, const struct admin_response *r)
{
	struct downstream *ds = ctx;

	ds->admin = NULL;
	respond(ds, r->status, r->content_type, r->body, r->body_len, ds->admin_close);
	ds->t->ops->set_reading(ds->t, true);
	if (ds->admin_close || ds->m->draining)
		start_close(ds);
	else
		process(ds);
}

size_t downstream_req_line(char out[DOWNSTREAM_REQ_LINE], const char *method, const char *target)
{
	size_t ml = strnlen(method, 23), tl = strlen(target), n = tl > 250 ? 250 : tl;

	memcpy(out, method, ml);
	out[ml] = ' ';
	memcpy(out + ml + 1, target, n);
	memcpy(out + ml + 1 + n, tl > 250 ? "..." : "", tl > 250 ? 4 : 1);
	return tl;
}

static void handle_request(struct downstream *ds, struct http1_msg *req)
{
	struct http1_uri uri;

	size_t target_len = downstream_req_line(ds->req_line, req->method, req->target);

	if (target_len > HTTP1_MAX_TARGET) {
		refusef(ds, 414, true, "muxd: request target too long (over %d bytes)\n",
		        HTTP1_MAX_TARGET);
		return;
	}
	if (ds->mode == DS_INTERCEPTED) {
		handle_intercepted(ds, req);
		return;
	}

	if (strcmp(req->method, "CONNECT") == 0) {
		char host[256];
		uint16_t port;
		bool v6;
		if (!http1_parse_authority(req->target, host, sizeof(host), &port, &v6))
			refusef(ds, 400, true,
			        "muxd: bad CONNECT target '%.200s': expected host:port\n",
			        req->target);
		else if (targets_self(ds->m, host, port))
			refuse_self(ds, host, port);
		else if (ds->m->ca && route_intercepts(ds->m->cfg, host, port))
			start_peek(ds, host, port);
		else if (!config_port_allowed(ds->m->cfg, port))
			refuse_port(ds, port);
		else if (!(ds->tunnel = tunnel_start(ds->m, &tunnel_owner, ds, host, port, false)))
			refuse(ds, 500, "muxd: out of memory\n", true);
		else if (ds->m->ca && route_intercept_bypassed(ds->m->cfg, host, port))
			ds->m->metrics.intercept_bypassed[BYPASS_HOST]++;
		return;
	}
	if (is_loop(ds->m, req)) {
		refuse_via(ds);
		return;
	}
	if (req->target[0] == '/') {
		if (!ds->loopback) {
			refusef(ds, 403, false,
			        "muxd: admin pages are for loopback clients only (client %s); "
			        "a proxy request needs an absolute URI (http://host/path)\n",
			        ds->peer);
			return;
		}
		struct admin_response r;
		if (admin_is_async(req)) {
			ds->admin = admin_async_start(ds->m, req, admin_done, ds);
			if (!ds->admin) {
				refuse(ds, 500, "muxd: out of memory\n", true);
				return;
			}
			ds->admin_close = !req->keep_alive;
			ds->t->ops->set_reading(ds->t, false); /* the next request waits */
			return;
		}
		admin_handle(ds->m, req, &r);
		if (strcmp(req->method, "HEAD") == 0)
			respond_head(ds, r.status, r.content_type, r.body_len, !req->keep_alive);
		else
			respond(ds, r.status, r.content_type, r.body, r.body_len, !req->keep_alive);
		admin_response_free(&r);
		if (!req->keep_alive)
			start_close(ds);
		return;
	}
	if (!http1_parse_absolute_uri(req->target, &uri)) {
		refusef(ds, 400, true,
		        "muxd: bad request target '%.200s': a proxy request needs an absolute URI "
		        "(http://host/path)\n",
		        req->target);
		return;
	}
	if (targets_self(ds->m, uri.host, uri.port)) {
		refuse_self(ds, uri.host, uri.port);
		return;
	}
	forward(ds, req, &uri, NULL);
}

/* A request inside an intercepted TLS session: its origin is the CONNECT
 * authority, and its Host (or absolute URI) must name that same origin (by
 * the CONNECT host, or by the SNI's name when that stands for an address). */
static void handle_intercepted(struct downstream *ds, struct http1_msg *req)
{
	const struct http1_field *host = http1_find(req, "host");
	const char *name = ds->tls_name[0] ? ds->tls_name : NULL, *why = NULL;
	struct http1_uri uri;
	int status = downstream_intercepted_uri(req->method, req->target, host ? host->value : NULL,
	                                        ds->origin_host, ds->origin_port, name, &uri, &why);
	char text[128];

	if (status != 0) {
		snprintf(text, sizeof(text), "muxd: %s\n", why);
		refuse(ds, status, text, true);
		return;
	}
	forward(ds, req, &uri, name);
}

int downstream_intercepted_uri(const char *method, const char *target, const char *host,
                               const char *origin_host, uint16_t origin_port, const char *tls_name,
                               struct http1_uri *uri, const char **why)
{
	/* not memset: path alone is 16 KiB, zeroed for every request (a sixth
	 * of an HTTP/2 client's per-request instructions in bench/profile h2c) */
	uri->scheme[0] = uri->host[0] = uri->path[0] = '\0';
	uri->port = 0;
	uri->ipv6 = false;
	if (target[0] == '/') {
		snprintf(uri->scheme, sizeof(uri->scheme), "https");
		uri->port = origin_port;
		if (strlen(target) >= sizeof(uri->path)) {
			*why = "request target too long";
			return 414;
		}
		snprintf(uri->path, sizeof(uri->path), "%s", target);
	} else if (strcmp(method, "CONNECT") == 0 || !http1_parse_absolute_uri(target, uri) ||
	           strcmp(uri->scheme, "https") != 0 ||
	           (strcasecmp(uri->host, origin_host) != 0 &&
	            (!tls_name || strcasecmp(uri->host, tls_name) != 0)) ||
	           uri->port != origin_port) {
		*why = "request does not name the CONNECT origin";
		return 400;
	}
	if (host && !names_origin(host, origin_host, origin_port) &&
	    (!tls_name || !names_origin(host, tls_name, origin_port))) {
		*why = "Host does not match the CONNECT origin";
		return 400;
	}
	/* routed by the CONNECT address (verified by the name) */
	snprintf(uri->host, sizeof(uri->host), "%s", origin_host);
	uri->ipv6 = strchr(origin_host, ':') != NULL;
	return 0;
}

static void forward(struct downstream *ds, struct http1_msg *req, const struct http1_uri *uri,
                    const char *tls_name)
{
	if (is_loop(ds->m, req)) {
		refuse_via(ds);
		return;
	}
	if (!h1_stream_begin(&ds->stream, &stream_ops, ds->m, ds->t, req)) {
		refuse(ds, 500, "muxd: out of memory\n", true);
		return;
	}
	/* an upgrade the exchange relays: whatever the answer, no request
	 * follows (bytes after the head may be the new protocol's) */
	if (http1_upgrade_requested(req, ds->m->cfg->upgrade))
		ds->stream.keep_alive = false;
	ds->ex = exchange_start(ds->m, &ds->stream.base, req, uri, tls_name);
	if (!ds->ex) {
		h1_stream_clear(&ds->stream);
		refuse(ds, 500, "muxd: out of memory\n", true);
	}
}

/*
 * Whether the parser has something to decide in in[0..len): feeds the bytes
 * not fed yet to the head scan (http1.h), which stops at a blank line or at a
 * byte the parser rejects (bare LF, bare CR, NUL: those get 400 at once
 * instead of waiting for a CRLF CRLF that never comes).
 */
static bool head_ready(struct downstream *ds, struct evbuffer *in, size_t len)
{
	while (ds->scan.seen < len) {
		struct evbuffer_iovec v;
		struct evbuffer_ptr p;

		if (evbuffer_ptr_set(in, &p, ds->scan.seen, EVBUFFER_PTR_SET) < 0 ||
		    evbuffer_peek(in, (ev_ssize_t)(len - ds->scan.seen), &p, &v, 1) < 1)
			return true; /* cannot look: let the parser decide */
		if (http1_head_scan(&ds->scan, v.iov_base,
		                    v.iov_len < len - ds->scan.seen ? v.iov_len
		                                                    : len - ds->scan.seen))
			return true;
	}
	return false;
}

/* Parse and handle requests while complete heads are waiting. */
static void process_heads(struct downstream *ds)
{
	struct evbuffer *in = transport_input(ds->t);

	while (!ds->ex && !ds->tunnel && !ds->admin && !ds->closing &&
	       (ds->mode == DS_PROXY || ds->mode == DS_INTERCEPTED)) {
		size_t len = evbuffer_get_length(in), consumed = 0;
		struct http1_msg req;

		if (len == 0)
			return;
		if (ds->m->draining) {
			start_close(ds);
			return;
		}
		if (len > HTTP1_MAX_HEAD + 4)
			len = HTTP1_MAX_HEAD + 4;
		enum http1_result r;
		do { /* an empty line before the request line: scan on */
			if (!head_ready(ds, in, len) && len < HTTP1_MAX_HEAD)
				return;
			const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
			r = http1_parse_request(data, len, &req, &consumed);
		} while (r == HTTP1_INCOMPLETE && len < HTTP1_MAX_HEAD);
		memset(&ds->scan, 0, sizeof(ds->scan));
		ds->req_line[0] = '\0';
		if (r == HTTP1_TOO_LARGE || r == HTTP1_INCOMPLETE) {
			refusef(ds, 431, true, "muxd: request head too large (over %d bytes)\n",
			        HTTP1_MAX_HEAD);
			return;
		}
		if (r != HTTP1_OK) {
			refuse(ds, 400,
			       "muxd: malformed request: not a valid HTTP/1.1 request head\n",
			       true);
			return;
		}
		evbuffer_drain(in, consumed);
		ds->served++;
		arm(ds, T_NONE); /* the next head gets a deadline of its own */
		handle_request(ds, &req);
		http1_msg_free(&req); /* a no-op when the exchange took it */
	}
}

static void process(struct downstream *ds)
{
	process_heads(ds);
	update_timer(ds);
}

/* The client has closed its side: nothing to linger for once our answer is
 * out (freed now when nothing is pending, else when it drains). */
static void close_after_eof(struct downstream *ds)
{
	if (!output_pending(ds))
		ds_free(ds);
	else
		start_close(ds);
}

static void owner_respond(void *ctx, int status, const char *content_type, const char *body,
                          size_t body_len, bool close)
{
	log_refusal(ctx, status, body, body_len);
	respond(ctx, status, content_type, body, body_len, close);
}

/* Muxd's own answer for the exchange's request; the connection survives it
 * when the stream does. */
static void stream_respond(struct client_stream *cs, int status, const char *content_type,
                           const char *body, size_t body_len)
{
	struct downstream *ds = stream_owner(cs);

	log_refusal(ds, status, body, body_len);
	respond(ds, status, content_type, body, body_len, !h1_stream_keep_alive(&ds->stream));
}

/* The current exchange finished (it is already freed); the connection may
 * carry the next request when the stream says so. */
static void stream_done(struct client_stream *cs)
{
	struct downstream *ds = stream_owner(cs);
	bool keep_alive = h1_stream_keep_alive(&ds->stream);

	h1_stream_clear(&ds->stream);
	ds->ex = NULL;
	if (ds->peer_eof) {
		close_after_eof(ds);
		return;
	}
	if (!keep_alive || ds->m->draining) {
		start_close(ds);
		return;
	}
	process(ds);
}

/* The CONNECT tunnel ended (already freed): the connection closes, after
 * flushing what was written to it when flush is set (an error answer). */
static void tunnel_done(void *ctx, bool flush)
{
	struct downstream *ds = ctx;

	ds->tunnel = NULL;
	if (flush)
		start_close(ds);
	else
		ds_free(ds);
}

/* The exchange failed after its response head went out: close abruptly so
 * the client cannot mistake a truncated body for a whole one. */
static void stream_abort(struct client_stream *cs)
{
	struct downstream *ds = stream_owner(cs);

	h1_stream_clear(&ds->stream);
	ds->ex = NULL;
	/* What the exchange committed (a response head, body bytes) still goes
	 * out; the close right after it, without a terminating chunk, tells the
	 * client the response is cut short (DESIGN.md's error table). */
	if (evbuffer_get_length(transport_output(ds->t)) > 0)
		start_close(ds);
	else
		ds_free(ds);
}

static const struct tunnel_owner tunnel_owner;

/* The origin switched protocols: the 101 goes out, then the connection is
 * a tunnel to the origin's dedicated connection (tunnel_idle_timeout). */
static void stream_upgrade(struct client_stream *cs, const struct client_upgrade *u)
{
	struct downstream *ds = stream_owner(cs);

	h1_stream_send_switch(&ds->stream, u->head, u->via);
	h1_stream_clear(&ds->stream);
	ds->ex = NULL;
	ds->tunnel =
	    tunnel_splice(ds->m, &tunnel_owner, ds, u->origin, u->origin_eof, u->host, u->port);
	if (!ds->tunnel) {
		start_close(ds);
		return;
	}
	update_timer(ds);
	if (ds->peer_eof) /* the client half-closed while the switch was asked for */
		tunnel_client_eof(ds->tunnel); /* may free ds */
}

/* The HTTP/1.1 client stream: framing in h1_stream.c, the connection here. */
static const struct client_stream_ops stream_ops = {
    h1_stream_read_body,
    h1_stream_consumed,
    h1_stream_trailers,
    h1_stream_send_interim,
    h1_stream_send_continue,
    h1_stream_send_head,
    h1_stream_send_space,
    h1_stream_send_body,
    h1_stream_send_end,
    stream_respond,
    stream_done,
    stream_abort,
    stream_peer,
    stream_upgrade,
};
static const struct tunnel_owner tunnel_owner = {owner_transport, owner_respond, tunnel_done};

static const struct transport_cbs client_cbs;
static void start_h2(struct downstream *ds);

static bool is_ip_literal(const char *s);

/* An interceptable CONNECT tunneled untouched after all (the 200 is out; the
 * client's bytes so far stay in the input for the tunnel), counted by why. */
static void bypass(struct downstream *ds, enum bypass_reason why)
{
	ds->m->metrics.intercept_bypassed[why]++;
	ds->mode = DS_PROXY;
	ds->tunnel = tunnel_start(ds->m, &tunnel_owner, ds, ds->origin_host, ds->origin_port, true);
	if (!ds->tunnel)
		free_soon(ds);
	else
		update_timer(ds);
}

/* Why a complete ClientHello is not to be intercepted, or BYPASS_COUNT when
 * it is: a server name TLS refuses (such as foo_bar.internal), ALPN offered
 * without h2 or http/1.1 (acme-tls/1, a private protocol: muxd could not
 * speak it), no SNI for a DNS name when the route tunnels those. Logs why. */
static enum bypass_reason hello_bypass(struct downstream *ds, enum tls_hello h,
                                       struct tls_hello_info *hello)
{
	struct route r;

	if (h == TLS_HELLO_SNI && !tls_server_name_acceptable(hello->sni)) {
		for (char *c = hello->sni; *c; c++) /* the client's bytes, logged */
			if (*c < 0x21 || *c > 0x7e)
				*c = '?';
		log_info("client %s: CONNECT %s:%u: SNI '%s' is not a name TLS accepts: "
		         "tunneled, not intercepted",
		         ds->peer, ds->origin_host, ds->origin_port, hello->sni);
		return BYPASS_SNI;
	}
	if (h != TLS_HELLO_SNI && h != TLS_HELLO_NO_SNI)
		return BYPASS_COUNT; /* the TLS layer says what is wrong */
	if (hello->alpn && !hello->alpn_h2 && !hello->alpn_http11) {
		log_info("client %s: CONNECT %s:%u: ALPN '%s' offers neither h2 nor http/1.1: "
		         "tunneled, not intercepted",
		         ds->peer, ds->origin_host, ds->origin_port, hello->alpn_list);
		return BYPASS_ALPN;
	}
	if (h == TLS_HELLO_NO_SNI && !is_ip_literal(ds->origin_host)) {
		route_for(ds->m->cfg, ds->origin_host, ds->origin_port, &r);
		if (!r.intercept_without_sni) {
			log_info("client %s: CONNECT %s:%u: no SNI for a host name: tunneled, not "
			         "intercepted (intercept_without_sni is off)",
			         ds->peer, ds->origin_host, ds->origin_port);
			return BYPASS_NO_SNI;
		}
	}
	return BYPASS_COUNT;
}

/* What followed an interceptable CONNECT's 200: a TLS ClientHello is
 * terminated here unless hello_bypass says otherwise; anything else (or
 * silence) is tunneled as it is. Waits for the rest of a ClientHello unless
 * forced (the peek timer fired, the client sent EOF). */
static void end_peek(struct downstream *ds, bool forced)
{
	struct evbuffer *in = transport_input(ds->t);
	unsigned char first = 0;

	if (evbuffer_copyout(in, &first, 1) == 1 && first == 0x16) {
		size_t len = evbuffer_get_length(in);
		struct tls_hello_info hello;
		const unsigned char *data;
		enum tls_hello h;
		enum bypass_reason why;
		/* at most the records of the longest ClientHello read */
		if (len > TLS_HELLO_MAX + 1024)
			len = TLS_HELLO_MAX + 1024;
		data = evbuffer_pullup(in, (ev_ssize_t)len);
		h = data ? tls_client_hello_parse(data, len, &hello) : TLS_HELLO_INVALID;
		if (h == TLS_HELLO_INCOMPLETE && !forced)
			return; /* the peek timer still runs */
		evtimer_del(ds->peek_timer);
		if ((why = hello_bypass(ds, h, &hello)) != BYPASS_COUNT) {
			bypass(ds, why);
			return;
		}
		struct tls_server_params p = {.ca = ds->m->ca,
		                              .default_host = ds->origin_host,
		                              .alpn = ds->m->cfg->client_h2 ? "h2,http/1.1"
		                                                            : "http/1.1"};
		ds->mode = DS_HANDSHAKE;
		ds->t = tls_server_new(&ds->m->env->transport, ds->t, &p, &client_cbs, ds);
		if (!ds->t) {
			ds->raw_in_cb = ds->raw_out_cb = NULL; /* closed with the layer */
			ds->raw_in = ds->raw_out = NULL;
			free_soon(ds);
			return;
		}
		update_timer(ds);
		return;
	}
	evtimer_del(ds->peek_timer);
	ds->silent_peek = evbuffer_get_length(in) == 0 && !ds->peer_eof;
	bypass(ds, evbuffer_get_length(in) == 0 ? BYPASS_SILENT : BYPASS_NOT_TLS);
}

static void peek_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	end_peek(arg, true);
}

static void start_peek(struct downstream *ds, const char *host, uint16_t port)
{
	static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
	uint64_t ms = PEEK_MS < ds->m->cfg->client_idle_timeout_ms
	                  ? PEEK_MS
	                  : ds->m->cfg->client_idle_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);

	ds->peek_timer = evtimer_new(ds->m->base, peek_timeout, ds);
	if (!ds->peek_timer) {
		refuse(ds, 500, "muxd: out of memory\n", true);
		return;
	}
	snprintf(ds->origin_host, sizeof(ds->origin_host), "%s", host);
	ds->origin_port = port;
	ds->mode = DS_PEEK;
	evbuffer_add(transport_output(ds->t), ok, sizeof(ok) - 1);
	evtimer_add(ds->peek_timer, &tv);
	if (evbuffer_get_length(transport_input(ds->t)) > 0)
		end_peek(ds, false); /* the ClientHello came with the CONNECT */
}

static void on_read(void *ctx)
{
	struct downstream *ds = ctx;

	if (ds->mode == DS_PEEK) {
		end_peek(ds, false);
	} else if (ds->closing) {
		struct evbuffer *in = transport_input(ds->t);
		evbuffer_drain(in, evbuffer_get_length(in));
	} else if (ds->ex) {
		exchange_client_read(ds->ex);
	} else if (ds->tunnel) {
		if (ds->silent_peek) { /* the client spoke: tunnel_idle_timeout from now */
			ds->silent_peek = false;
			update_timer(ds);
		}
		tunnel_client_read(ds->tunnel);
	} else {
		process(ds);
	}
}

static void on_drain(void *ctx)
{
	struct downstream *ds = ctx;

	if (ds->ex)
		exchange_client_drain(ds->ex);
	else if (ds->tunnel)
		tunnel_client_drain(ds->tunnel);
	else if (ds->closing && ds->peer_eof && !output_pending(ds))
		ds_free(ds);
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The names of an intercepted session (the leaf was chosen the same way,
 * tls_server.c): the CONNECT host, whatever the SNI says, except that a DNS
 * name in the SNI of a session CONNECTed to an address is the name the
 * origin is verified for (routed by the address). Logs which. */
static void intercepted_names(struct downstream *ds, const char *sni)
{
	ds->tls_name[0] = '\0';
	if (!sni[0] || strcasecmp(sni, ds->origin_host) == 0) {
		log_debug("client %s: intercepting %s:%u (SNI '%s')", ds->peer, ds->origin_host,
		          ds->origin_port, sni);
	} else if (is_ip_literal(ds->origin_host) && !is_ip_literal(sni) &&
	           strlen(sni) < sizeof(ds->tls_name)) {
		for (size_t i = 0; sni[i]; i++)
			ds->tls_name[i] =
			    (char)(sni[i] >= 'A' && sni[i] <= 'Z' ? sni[i] - 'A' + 'a' : sni[i]);
		ds->tls_name[strlen(sni)] = '\0';
		log_info("client %s: intercepting %s:%u with SNI '%s': routed by the address, "
		         "the origin verified as %s",
		         ds->peer, ds->origin_host, ds->origin_port, sni, ds->tls_name);
	} else {
		log_info("client %s: intercepting %s:%u with SNI '%s': the SNI is ignored, the "
		         "certificate and the origin are %s",
		         ds->peer, ds->origin_host, ds->origin_port, sni, ds->origin_host);
	}
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct downstream *ds = ctx;

	(void)err;
	if (ev == TRANSPORT_CONNECTED) { /* the client's TLS handshake is done */
		intercepted_names(ds, tls_server_sni(ds->t));
		if (strcmp(tls_server_alpn(ds->t), "h2") == 0) {
			start_h2(ds);
			return;
		}
		ds->mode = DS_INTERCEPTED;
		ds->served = 0; /* the first request in the session: request_header_timeout */
		process(ds);
		return;
	}
	if (ev == TRANSPORT_EOF && ds->ex) {
		/* reported once (a TLS layer never again): remembered so the
		 * close after the response does not linger for it */
		ds->peer_eof = true;
		ds->stream.keep_alive = false; /* the response is the last */
		exchange_client_eof(ds->ex);   /* may free ds */
		return;
	}
	if (ev == TRANSPORT_EOF && ds->tunnel) {
		tunnel_client_eof(ds->tunnel); /* may free ds */
		return;
	}
	if (ev == TRANSPORT_EOF && !ds->closing) {
		ds->peer_eof = true;
		if (ds->mode == DS_PEEK) { /* bytes, then EOF: a tunnel gets both */
			end_peek(ds, true);
			if (ds->tunnel)
				tunnel_client_eof(ds->tunnel); /* may free ds */
			return;
		}
		/* pipelined requests before the EOF are still answered */
		process(ds);
		if (!ds->ex && !ds->tunnel && !ds->admin)
			close_after_eof(ds);
		return;
	}
	if (ev == TRANSPORT_EOF && ds->closing && output_pending(ds)) {
		/* the client is done sending, not reading: free once our last
		 * bytes are out (on_drain), or when the linger time is up */
		ds->peer_eof = true;
		ds->t->ops->set_reading(ds->t, false);
		return;
	}
	if (ev == TRANSPORT_ERROR)
		log_debug("client %s: %s", ds->peer, reason);
	ds_free(ds);
}

static const struct transport_cbs client_cbs = {on_read, on_drain, on_event};

/* --- the HTTP/2 hand-off (client/h2_session.c serves the requests) --- */

/* An HTTP/2 request, checked as an intercepted HTTP/1.1 one is. */
static int h2_route(void *ctx, const struct http1_msg *req, struct http1_uri *uri,
                    const char **tls_name, char *why, size_t why_size)
{
	struct downstream *ds = ctx;
	const struct http1_field *host = http1_find(req, "host");
	const char *w = NULL;
	int status;

	*tls_name = ds->tls_name[0] ? ds->tls_name : NULL;
	if (is_loop(ds->m, req)) {
		snprintf(why, why_size,
		         "muxd: request loops back into muxd: its Via names this muxd (%s) "
		         "\u2014 see via in muxd.conf(5)\n",
		         ds->m->via_token[0] ? ds->m->via_token : "1.1 muxd");
		return 508;
	}
	status = downstream_intercepted_uri(req->method, req->target, host ? host->value : NULL,
	                                    ds->origin_host, ds->origin_port, *tls_name, uri, &w);
	if (status)
		snprintf(why, why_size, "muxd: %s\n", w);
	return status;
}

/* The HTTP/2 session is over: the connection closes after what it wrote. */
static void h2_over(void *ctx, bool flush, bool peer_eof)
{
	struct downstream *ds = ctx;

	h2_session_free(ds->h2);
	ds->h2 = NULL;
	ds->mode = DS_INTERCEPTED;
	transport_set_cbs(ds->t, &client_cbs, ds);
	ds->peer_eof = peer_eof;
	if (!flush)
		ds_free(ds);
	else if (peer_eof)
		close_after_eof(ds);
	else
		start_close(ds);
}

static const struct h2_session_owner h2_owner = {h2_route, h2_over};

static void start_h2(struct downstream *ds)
{
	struct h2_session_params p = {.peer = ds->peer,
	                              .max_streams = ds->m->cfg->client_h2_max_streams,
	                              .raw_in = ds->raw_in,
	                              .raw_out = ds->raw_out};

	ds->mode = DS_H2;
	arm(ds, T_NONE);
	ds->h2 = h2_session_new(ds->m, ds->t, &p, &h2_owner, ds);
	if (!ds->h2)
		free_soon(ds);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		snprintf(out, size, "%s:%u", ip, ntohs(s->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		snprintf(out, size, "[%s]:%u", ip, ntohs(s->sin6_port));
	} else {
		snprintf(out, size, "?");
	}
}

void downstream_accept(struct muxd *m, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
	struct downstream *ds = calloc(1, sizeof(*ds));
	bool allowed = false;

	(void)peer_len;
	if (!ds) {
		close(fd);
		return;
	}
	if (!m->clients) { /* no downstream_list_new */
		free(ds);
		close(fd);
		return;
	}
	ds->m = m;
	format_peer(peer, ds->peer, sizeof(ds->peer));
	ds->loopback = muxd_is_loopback(peer);
	ds->timer = evtimer_new(m->base, timer_cb, ds);
	if (!ds->timer) {
		free(ds);
		close(fd);
		return;
	}
	ds->t = tcp_accepted(&m->env->transport, fd, &client_cbs, ds);
	if (!ds->t) {
		event_free(ds->timer);
		free(ds);
		return;
	}
	watch_raw(ds);
	ds->next = *list_head(m);
	if (ds->next)
		ds->next->prev = ds;
	*list_head(m) = ds;
	m->nclients++;
	for (size_t i = 0; i < m->cfg->nallow && !allowed; i++)
		allowed = config_cidr_match(&m->cfg->allow[i], peer);
	if (!allowed) {
		refusef(ds, 403, true,
		        "muxd: client %s refused: address not in allow \u2014 see muxd.conf(5)\n",
		        ds->peer);
		return;
	}
	update_timer(ds);
}

void downstream_drain_all(struct muxd *m)
{
	struct downstream *ds = *list_head(m), *next;

	for (; ds; ds = next) {
		next = ds->next;
		if (ds->h2)
			h2_session_drain(ds->h2); /* GOAWAY; over when its streams are */
		else if (!ds->ex && !ds->tunnel && !ds->admin) /* a /warm answers, then closes */
			start_close(ds);
	}
}

void downstream_reconfigured(struct muxd *m)
{
	for (struct downstream *ds = *list_head(m); ds; ds = ds->next)
		if (ds->h2 && !m->cfg->client_h2)
			h2_session_drain(ds->h2);
}

void downstream_close_all(struct muxd *m)
{
	while (m->clients && *list_head(m))
		ds_free(*list_head(m));
}

struct client_list *downstream_list_new(void)
{
	return calloc(1, sizeof(struct client_list));
}

void downstream_list_free(struct client_list *l)
{
	free(l);
}
