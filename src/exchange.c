/*
 * exchange — one request/response relayed between a client stream
 * (client/session.h) and an upstream stream (upstream/upstream.h); each
 * side frames its own wire. Bytes move only while the receiving side has
 * room (its send space), so memory per exchange is bounded whatever the
 * speeds.
 */
#include "exchange.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "client/session.h"
#include "config.h"
#include "hold.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

struct exchange {
	struct muxd *m;
	struct config *cfg;
	struct client_stream *client;
	/* Not zeroed either (4 KiB): move_msg writes all of it that is defined */
	struct http1_msg req;
	/* From uri to proxy_auth, ~45 KiB of buffers sized for the largest
	 * request: exchange_start does not zero them (each is written before it
	 * is read), so a request costs what it uses. Members that need zeroing
	 * go elsewhere. */
	struct http1_uri uri;
	struct route route;
	struct pool_key key;
	char authority[300];
	struct upstream_field fields[HTTP1_MAX_FIELDS + 5];
	size_t nfields;

	/* request body, client -> upstream */
	bool req_body_done;
	bool req_end_sent;
	bool body_started;
	uint64_t bytes_in;
	/* the request body sent so far, while it is at most REPLAY_HOLD bytes
	 * and no final head arrived: a retry sends it again */
	struct evbuffer *held;
	bool held_lost;  /* more was sent than held: the body cannot be replayed */
	size_t replayed; /* on a retry's stream: held bytes sent again so far */
	bool replaying;  /* ... and more are to come before the client's */

	/* upstream */
	struct pool_wait *wait;
	struct upstream_stream *stream;
	bool reused;
	bool retried;
	bool early;    /* the request went out allowed to use 0-RTT */
	bool no_early; /* a 425 Too Early came: the retry does without */
	bool got_stream;
	enum proto proto; /* of the stream's connection */

	/* response, upstream -> client */
	bool head_sent;
	int status;
	uint64_t bytes_out;
	struct timespec start;

	bool continue_sent; /* muxd answered Expect: 100-continue itself */

	/* an HTTP/1.1 Upgrade: a dedicated connection, the exchange's own */
	bool upgrade;
	struct transport *dedicated; /* connecting (pool_open_dedicated) */
	struct upstream_conn *uc;    /* then its HTTP/1.1 codec */
	/* ... or a WebSocket as an extended CONNECT (RFC 8441) on a pooled
	 * HTTP/2 connection whose origin allows it */
	bool ext_connect;
};

#define REPLAY_HOLD (16 * 1024) /* request body bytes kept for a retry */

static const struct upstream_stream_cbs stream_cbs;
static const struct pool_wait_cbs wait_cbs;
static const struct transport_cbs dedicated_cbs;
static void build_fields(struct exchange *ex);

/* This instance's Via entry (muxd_load_instance; a bare daemon state, as in
 * the unit tests, has none yet). */
static const char *via_token(const struct exchange *ex)
{
	return ex->m->via_token[0] ? ex->m->via_token : "1.1 muxd";
}

/* Whatever of the request body went upstream can be sent again. */
static bool body_replayable(const struct exchange *ex)
{
	return !ex->body_started || !ex->held_lost;
}

/* The Via entry to add to the client's heads, or NULL. */
static const char *client_via(const struct exchange *ex)
{
	return ex->cfg->via ? via_token(ex) : NULL;
}

static bool is_replayable(const struct exchange *ex)
{
	static const char *const idempotent[] = {"GET",   "HEAD", "OPTIONS",
	                                         "TRACE", "PUT",  "DELETE"};

	if (!body_replayable(ex))
		return false;
	for (size_t i = 0; i < sizeof(idempotent) / sizeof(idempotent[0]); i++)
		if (strcmp(ex->req.method, idempotent[i]) == 0)
			return true;
	return false;
}

/*
 * An exchange's memory (~55 KiB) is kept for the next request when it ends
 * (m->spare_exchange): a keep-alive request costs no malloc and free of
 * it. One at most, so memory stays bounded whatever the traffic. Not under
 * AddressSanitizer, so that an exchange used after its end is reported.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SPARE_EXCHANGE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPARE_EXCHANGE 0
#endif
#endif
#ifndef SPARE_EXCHANGE
#define SPARE_EXCHANGE 1
#endif

static struct exchange *exchange_alloc(struct muxd *m)
{
	struct exchange *ex = m->spare_exchange;

	if (!ex)
		return malloc(sizeof(*ex));
	m->spare_exchange = NULL;
	return ex;
}

static void exchange_release(struct muxd *m, struct exchange *ex)
{
	if (SPARE_EXCHANGE && !m->spare_exchange)
		m->spare_exchange = ex;
	else
		free(ex);
}

void exchange_spare_free(struct muxd *m)
{
	free(m->spare_exchange);
	m->spare_exchange = NULL;
}

static void exchange_free(struct exchange *ex)
{
	if (ex->wait)
		pool_wait_cancel(ex->wait);
	if (ex->stream)
		ex->stream->ops->cancel(ex->stream);
	if (ex->uc) /* a dedicated connection is never pooled */
		ex->uc->ops->close(ex->uc);
	if (ex->dedicated)
		transport_close(ex->dedicated);
	http1_msg_free(&ex->req);
	if (ex->held)
		evbuffer_free(ex->held);
	config_unref(ex->cfg);
	exchange_release(ex->m, ex);
}

/* Keep a copy of body bytes sent upstream, for a retry, while they fit. */
static void hold_body(struct exchange *ex, const void *data, size_t n)
{
	if (ex->held_lost)
		return;
	if ((ex->held || (ex->held = evbuffer_new())) &&
	    evbuffer_get_length(ex->held) + n <= REPLAY_HOLD &&
	    evbuffer_add(ex->held, data, n) == 0)
		return;
	ex->held_lost = true;
	if (ex->held)
		evbuffer_free(ex->held);
	ex->held = NULL;
}

static void access_log(struct exchange *ex)
{
	struct timespec now;
	char when[32];
	time_t t = time(NULL);
	struct tm tm;
	long ms;

	if (!ex->m->access_log)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	ms = (now.tv_sec - ex->start.tv_sec) * 1000 + (now.tv_nsec - ex->start.tv_nsec) / 1000000;
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	access_log_line(ex->m->access_log, "%s %s %s %s %d %llu %llu %ldms %s %s\n", when,
	                ex->client->ops->peer(ex->client), ex->req.method, ex->req.target,
	                ex->status, (unsigned long long)ex->bytes_in,
	                (unsigned long long)ex->bytes_out, ms,
	                ex->got_stream ? proto_name(ex->proto) : "-",
	                !ex->got_stream ? "-"
	                : ex->reused    ? "reused"
	                                : "new");
}

/* The exchange is over: log, free, and let the client connection go on. */
static void finish(struct exchange *ex)
{
	struct client_stream *cs = ex->client;

	access_log(ex);
	exchange_free(ex);
	cs->ops->done(cs);
}

static void fail_abruptly(struct exchange *ex)
{
	struct client_stream *cs = ex->client;

	access_log(ex);
	exchange_free(ex);
	cs->ops->abort(cs);
}

/* Answer with muxd's own error before any response head went out. */
static void answer_error(struct exchange *ex, enum muxd_err err, const char *reason)
{
	char body[700];
	int n = muxd_error_body(err, ex->uri.host, ex->uri.port, reason, body, sizeof(body));

	ex->status = muxd_err_status(err);
	ex->client->ops->respond(ex->client, ex->status, "text/plain", body, (size_t)n);
	finish(ex);
}

/* --- request body: client -> upstream --- */

/* Move request body pieces upstream while the stream has send space (the
 * client session reads and decodes them, session.h). */
static void send_request_body(struct exchange *ex)
{
	struct client_stream *cs = ex->client;
	struct upstream_stream *s = ex->stream;
	size_t room;

	while (ex->replaying && (room = s->ops->send_space(s)) > 0) {
		size_t left = evbuffer_get_length(ex->held) - ex->replayed;
		const unsigned char *p = evbuffer_pullup(ex->held, -1); /* <= REPLAY_HOLD */
		size_t n = left < room ? left : room;
		if (!p)
			return; /* out of memory: on the next event */
		s->ops->send_body(s, p + ex->replayed, n);
		ex->replayed += n;
		ex->replaying = ex->replayed < evbuffer_get_length(ex->held);
	}
	if (ex->replaying)
		return; /* on_send_ready goes on */
	while (!ex->req_body_done && (room = s->ops->send_space(s)) > 0) {
		const char *data;
		size_t len;
		enum client_body e = cs->ops->read_body(cs, room, &data, &len);

		if (e == CLIENT_BODY_NONE)
			break; /* nothing waiting: the next client read comes back here */
		if (e == CLIENT_BODY_ERROR) {
			/* the client broke its own framing: nothing sane can follow */
			if (ex->head_sent) {
				fail_abruptly(ex);
			} else {
				ex->req_body_done = true;
				ex->status = 400;
				cs->ops->respond(cs, 400, "text/plain",
				                 "muxd: malformed chunked body\n", 29);
				finish(ex);
			}
			return;
		}
		if (data) {
			s->ops->send_body(s, data, len);
			hold_body(ex, data, len);
			ex->bytes_in += len;
			ex->body_started = true;
		}
		cs->ops->consumed(cs);
		ex->req_body_done = e == CLIENT_BODY_END;
	}
	if (ex->req_body_done && !ex->req_end_sent) {
		ex->req_end_sent = true;
		s->ops->send_end(s, cs->ops->trailers(cs));
	}
}

/* --- response: upstream -> client --- */

/* The origin switched protocols (a 101 to the request's Upgrade, inside
 * on_head): the client gets the 101 and its session splices the dedicated
 * connection's bytes with its own; the exchange is over. */
static void switched(struct exchange *ex, const struct http1_msg *h)
{
	const struct http1_field *up = http1_find(h, "upgrade");
	struct client_stream *cs = ex->client;
	struct transport *t = NULL;
	bool eof = false;

	if (!up || !http1_upgrade_listed(up->value, up->value_len, ex->cfg->upgrade)) {
		ex->stream->ops->cancel(ex->stream);
		ex->stream = NULL;
		answer_error(ex, ERR_BAD_RESPONSE,
		             "the origin switched to a protocol not asked for");
		return;
	}
	t = h1_stream_take_transport(ex->stream, &eof);
	ex->stream = NULL;
	ex->uc = NULL; /* the codec goes away on its own, no callback */
	if (!t) {
		answer_error(ex, ERR_BAD_RESPONSE, "protocol switch failed");
		return;
	}
	char host[sizeof(ex->uri.host)];
	uint16_t port = ex->uri.port;
	const char *via = client_via(ex); /* the daemon's, not the exchange's */
	snprintf(host, sizeof(host), "%s", ex->uri.host);
	ex->status = h->status;
	ex->head_sent = true;
	access_log(ex);
	exchange_free(ex);
	struct client_upgrade u = {h, via, t, eof, host, port};
	cs->ops->upgrade(cs, &u);
}

/*
 * --- an extended CONNECT stream as a byte stream (RFC 8441) ---
 *
 * Once the origin's 2xx came, the upstream stream carries the WebSocket both
 * ways: this layer (the origin transport the client session splices with)
 * moves what its user writes into the stream's request body as send_space
 * allows and the stream's response body into its input up to TRANSPORT_BUF,
 * consumed only then (the stream's window opens as the client side takes
 * the bytes); shutdown is the stream's end, the origin's end is EOF, a
 * stream error is TRANSPORT_ERROR, close cancels the stream. Work is done in
 * deferred passes, so no callback runs inside another module's call.
 */
struct ext_layer {
	struct transport base;
	struct upstream_stream *s; /* NULL once ended, failed or cancelled */
	struct evbuffer *in, *out;
	struct event *pass;
	bool shut, shut_sent, eof, report_read, report_drain, report_eof, report_error;
	enum muxd_err err;
	char reason[300];
	unsigned holds; /* hold.h */
	bool closing;
};

static void xl_schedule(struct ext_layer *xl)
{
	event_active(xl->pass, EV_TIMEOUT, 0);
}

static void xl_free(struct ext_layer *xl)
{
	if (xl->s)
		xl->s->ops->cancel(xl->s);
	if (xl->in)
		evbuffer_free(xl->in);
	if (xl->out)
		evbuffer_free(xl->out);
	if (xl->pass)
		event_free(xl->pass);
	free(xl);
}

static struct evbuffer *xl_input(struct transport *t)
{
	return ((struct ext_layer *)t)->in;
}

static struct evbuffer *xl_output(struct transport *t)
{
	return ((struct ext_layer *)t)->out;
}

static void xl_set_reading(struct transport *t, bool on)
{
	(void)on; /* the input's bound says how much is taken */
	xl_schedule((struct ext_layer *)t);
}

static void xl_shutdown(struct transport *t)
{
	struct ext_layer *xl = (struct ext_layer *)t;

	xl->shut = true;
	xl_schedule(xl);
}

static void xl_close(struct transport *t)
{
	struct ext_layer *xl = (struct ext_layer *)t;

	if (hold_close(xl->holds, &xl->closing))
		xl_free(xl);
}

static bool xl_alive(struct transport *t)
{
	struct ext_layer *xl = (struct ext_layer *)t;

	return xl->s && !xl->eof;
}

static const struct transport_ops xl_ops = {xl_input,    xl_output, xl_set_reading,
                                            xl_shutdown, xl_close,  xl_alive};

static void xl_move(struct ext_layer *xl)
{
	struct upstream_stream *s = xl->s;

	if (!s)
		return;
	while (evbuffer_get_length(xl->out) > 0 && s->ops->send_space(s) > 0) {
		size_t room = s->ops->send_space(s), n;
		struct evbuffer_iovec v;
		evbuffer_peek(xl->out, -1, NULL, &v, 1);
		n = v.iov_len < room ? v.iov_len : room;
		s->ops->send_body(s, v.iov_base, n);
		evbuffer_drain(xl->out, n);
		xl->report_drain = true;
	}
	if (xl->shut && !xl->shut_sent && evbuffer_get_length(xl->out) == 0) {
		xl->shut_sent = true;
		s->ops->send_end(s, "");
	}
	struct evbuffer *body = s->ops->body(s);
	size_t have = evbuffer_get_length(xl->in), n = evbuffer_get_length(body);
	if (n > 0 && have < TRANSPORT_BUF) {
		if (n > TRANSPORT_BUF - have)
			n = TRANSPORT_BUF - have;
		evbuffer_remove_buffer(body, xl->in, n);
		xl->report_read = true;
		s->ops->consumed(s); /* may end the stream: xl_end, xl_error */
	}
}

static void xl_pass(evutil_socket_t fd, short what, void *arg)
{
	struct ext_layer *xl = arg;
	const struct transport_cbs *cbs = &xl->base.cbs;

	(void)fd;
	(void)what;
	hold_take(&xl->holds);
	xl_move(xl);
	if (xl->report_read && !xl->closing && cbs->on_read) {
		xl->report_read = false;
		cbs->on_read(xl->base.ctx);
	}
	if (xl->report_drain && !xl->closing && cbs->on_drain &&
	    evbuffer_get_length(xl->out) < TRANSPORT_BUF / 2) {
		xl->report_drain = false;
		cbs->on_drain(xl->base.ctx);
	}
	if (xl->report_eof && !xl->closing && evbuffer_get_length(xl->in) == 0) {
		xl->report_eof = false;
		cbs->on_event(xl->base.ctx, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
	if (xl->report_error && !xl->closing) {
		xl->report_error = false;
		cbs->on_event(xl->base.ctx, TRANSPORT_ERROR, xl->err, xl->reason);
	}
	if (hold_release(&xl->holds) && xl->closing)
		xl_free(xl);
}

static void xl_head(void *ctx, const struct http1_msg *h)
{
	(void)h; /* the final head came already */
	xl_schedule(ctx);
}

static void xl_body(void *ctx)
{
	xl_schedule(ctx);
}

static void xl_end(void *ctx, const char *trailers)
{
	struct ext_layer *xl = ctx;

	(void)trailers;
	xl->s = NULL; /* the connection takes it back */
	xl->eof = xl->report_eof = true;
	xl_schedule(xl);
}

static void xl_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct ext_layer *xl = ctx;

	(void)nothing;
	xl->s = NULL;
	xl->err = err;
	xl->report_error = true;
	snprintf(xl->reason, sizeof(xl->reason), "%s", reason);
	xl_schedule(xl);
}

static const struct upstream_stream_cbs xl_stream_cbs = {xl_head, xl_body, xl_end, xl_error,
                                                         xl_body};

static void xl_moved(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	if (info->n_added > 0 || info->n_deleted > 0)
		xl_schedule(arg); /* bytes to send, or room to read more */
}

/* The layer over s (whose 2xx head came); NULL when out of memory (s is
 * cancelled then). Its user sets its callbacks before the loop runs. */
static struct transport *ext_layer_new(struct exchange *ex, struct upstream_stream *s)
{
	struct ext_layer *xl = calloc(1, sizeof(*xl));

	if (!xl) {
		s->ops->cancel(s);
		return NULL;
	}
	xl->base.ops = &xl_ops;
	xl->s = s;
	xl->in = evbuffer_new();
	xl->out = evbuffer_new();
	xl->pass = event_new(ex->m->base, -1, 0, xl_pass, xl);
	if (!xl->in || !xl->out || !xl->pass) {
		xl_free(xl);
		return NULL;
	}
	evbuffer_add_cb(xl->out, xl_moved, xl);
	evbuffer_add_cb(xl->in, xl_moved, xl);
	s->cbs = xl_stream_cbs;
	s->ctx = xl;
	xl_schedule(xl); /* body bytes that came with the head */
	return &xl->base;
}

/*
 * The origin accepted the extended CONNECT (its 2xx): the client gets the
 * 101 its HTTP/1.1 upgrade asked for (Sec-WebSocket-Accept for its key, the
 * origin's end-to-end fields such as Sec-WebSocket-Protocol), and its
 * session splices the stream, as a byte stream (h2_tunnel_adopt), with its
 * own; the exchange is over.
 */
static void ext_switched(struct exchange *ex, const struct http1_msg *h)
{
	struct client_stream *cs = ex->client;
	const struct http1_field *key = http1_find(&ex->req, "sec-websocket-key");
	struct http1_msg *sw = malloc(sizeof(*sw));
	char in[96], accept[32];
	unsigned char sha[20];
	struct transport *t;
	int n = key ? snprintf(in, sizeof(in), "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
	                       (int)key->value_len, key->value)
	            : -1;

	if (!sw || n < 0 || (size_t)n >= sizeof(in) ||
	    gnutls_hash_fast(GNUTLS_DIG_SHA1, in, (size_t)n, sha) != 0) {
		free(sw);
		ex->stream->ops->cancel(ex->stream);
		ex->stream = NULL;
		answer_error(ex, ERR_BAD_RESPONSE, "protocol switch failed");
		return;
	}
	http1_base64(sha, sizeof(sha), accept);
	/* the fields array stays unset: zero what is before and after it
	 * (nfields follows it; malloc's garbage there wrote out of bounds) */
	memset(sw, 0, offsetof(struct http1_msg, fields));
	memset(&sw->nfields, 0, sizeof(*sw) - offsetof(struct http1_msg, nfields));
	sw->status = 101;
	sw->reason = "Switching Protocols";
	sw->version_minor = 1;
	sw->body = HTTP1_BODY_NONE;
	sw->fields[sw->nfields++] = (struct http1_field){"Upgrade", 7, "websocket", 9};
	sw->fields[sw->nfields++] = (struct http1_field){"Connection", 10, "Upgrade", 7};
	sw->fields[sw->nfields++] =
	    (struct http1_field){"Sec-WebSocket-Accept", 20, accept, strlen(accept)};
	for (size_t i = 0; i < h->nfields && sw->nfields < HTTP1_MAX_FIELDS; i++) {
		const struct http1_field *f = &h->fields[i];
		if (!http1_is_hop_by_hop(h, f->name) &&
		    strcasecmp(f->name, "content-length") != 0 &&
		    strcasecmp(f->name, "sec-websocket-accept") != 0)
			sw->fields[sw->nfields++] = *f;
	}
	t = ext_layer_new(ex, ex->stream);
	ex->stream = NULL; /* the layer's now (or cancelled) */
	if (!t) {
		free(sw);
		answer_error(ex, ERR_BAD_RESPONSE, "protocol switch failed");
		return;
	}
	char host[sizeof(ex->uri.host)];
	uint16_t port = ex->uri.port;
	const char *via = client_via(ex);
	snprintf(host, sizeof(host), "%s", ex->uri.host);
	ex->status = 101;
	ex->head_sent = true;
	access_log(ex);
	exchange_free(ex);
	struct client_upgrade u = {sw, via, t, false, host, port};
	cs->ops->upgrade(cs, &u);
	free(sw);
}

/* The one retry an exchange gets: its stream (if any) cancelled, the
 * request once more through the pool (fresh: on a new connection). */
static void retry(struct exchange *ex, bool fresh, const char *why)
{
	log_debug("retrying %s %s%s (%s)", ex->req.method, ex->req.target,
	          fresh ? " on a new connection" : "", why);
	if (ex->stream) {
		ex->stream->ops->cancel(ex->stream);
		ex->stream = NULL;
	}
	ex->retried = true;
	ex->m->metrics.upstream_retries++;
	ex->wait = pool_start_stream(ex->m->pool, &ex->key, fresh, &stream_cbs, &wait_cbs, ex);
	if (!ex->wait)
		answer_error(ex, ERR_CONNECT, "out of memory");
}

static void on_head(void *ctx, const struct http1_msg *h)
{
	struct exchange *ex = ctx;

	if (h->status == 101 && ex->upgrade) { /* the codec passes none other */
		switched(ex, h);
		return;
	}
	if (ex->ext_connect && h->status >= 200 && h->status < 300) {
		ext_switched(ex, h);
		return;
	}
	if (h->status < 200) {
		/* Interim heads count against the client's buffer: while it holds
		 * TRANSPORT_BUF bytes the client is not reading, and a head is
		 * dropped rather than queued (they are advisory; the codec ends a
		 * stream after UPSTREAM_MAX_INTERIM of them). muxd answered the
		 * client's Expect itself: not a second 100. */
		if (ex->client->ops->send_space(ex->client) == 0)
			log_debug("%s: interim %d dropped: the client is not reading",
			          ex->client->ops->peer(ex->client), h->status);
		else if (!(h->status == 100 && ex->continue_sent))
			ex->client->ops->send_interim(ex->client, h, client_via(ex));
		return;
	}
	if (h->status == 421 && !ex->retried && body_replayable(ex) && ex->m->pool &&
	    pool_misdirected(ex->m->pool, &ex->key, ex->stream)) {
		/* a connection made for another name (coalescing) was the wrong
		 * one: once more on a connection of the request's own name */
		retry(ex, true, "421 on a shared connection");
		return;
	}
	if (h->status == 425 && ex->early && !ex->retried) {
		/* RFC 8470 5.2: the origin wants the request after the handshake */
		ex->no_early = true;
		retry(ex, false, "without early data (425)");
		return;
	}
	ex->status = h->status;
	if (ex->held) /* a final head: no retry any more */
		evbuffer_free(ex->held);
	ex->held = NULL;
	ex->held_lost = true;
	const struct http1_field *alt = http1_find(h, "alt-svc");
	if (alt)
		pool_altsvc_learned(ex->m->pool, &ex->key, alt->value, alt->value_len);
	/* HTTP/2 and HTTP/3 trailers may follow a body of known length: relay
	 * them chunked to a client that asked for them */
	const struct http1_field *te = http1_find(&ex->req, "te");
	bool want_trailers = ex->proto != PROTO_H1 && http1_find(h, "trailer") && te &&
	                     http1_list_has(te->value, te->value_len, "trailers");
	ex->client->ops->send_head(ex->client, h, client_via(ex), want_trailers);
	ex->head_sent = true;
}

/* Move decoded response body to the client while it has room. May end in
 * the stream finishing (and the exchange being freed): callers must not
 * touch ex afterwards. */
static void pump_response(struct exchange *ex)
{
	struct client_stream *cs = ex->client;
	struct upstream_stream *s = ex->stream;
	struct evbuffer *body;
	size_t n, room;

	if (!s || !ex->head_sent)
		return;
	body = s->ops->body(s);
	n = evbuffer_get_length(body);
	room = cs->ops->send_space(cs);
	if (room == 0 || n == 0)
		return;
	if (n > room)
		n = room;
	cs->ops->send_body(cs, body, n);
	ex->bytes_out += n;
	s->ops->consumed(s);
}

static void on_body(void *ctx)
{
	pump_response(ctx);
}

static void on_end(void *ctx, const char *trailers)
{
	struct exchange *ex = ctx;

	ex->stream = NULL; /* the connection takes it back */
	if (ex->uc) {      /* a refused upgrade: its connection closes */
		ex->uc->ops->close(ex->uc);
		ex->uc = NULL;
	}
	ex->client->ops->send_end(ex->client, trailers);
	finish(ex);
}

static void on_error(void *ctx, enum muxd_err err, const char *reason, bool nothing_received)
{
	struct exchange *ex = ctx;

	ex->stream = NULL;
	if (ex->head_sent) {
		log_info("%s: response from %s broke off: %s", ex->client->ops->peer(ex->client),
		         ex->key.id, reason);
		fail_abruptly(ex);
		return;
	}
	/* a stream the origin never processed may go again whatever its method;
	 * a request that died on a reused connection, when it is replayable */
	bool unprocessed = err == ERR_UNPROCESSED && body_replayable(ex);
	/* a multiplexed connection that closed under a stream with no response
	 * byte is the connection's failure, shared by every stream on it (a
	 * peer's GOAWAY, a connection error, a flood): not this request's */
	bool shared = ex->proto != PROTO_H1 && err == ERR_CLOSED;
	if (!ex->retried && !ex->upgrade &&
	    (unprocessed || (nothing_received && (ex->reused || shared) && is_replayable(ex)))) {
		retry(ex, true, reason);
		return;
	}
	answer_error(ex, err, reason);
}

static void on_send_ready(void *ctx)
{
	struct exchange *ex = ctx;

	if (ex->stream && !ex->req_end_sent)
		send_request_body(ex);
}

static const struct upstream_stream_cbs stream_cbs = {on_head, on_body, on_end, on_error,
                                                      on_send_ready};

/*
 * HTTP/2 and HTTP/3 origins rarely answer Expect: 100-continue (nginx, h2o
 * do not), and the client would wait for a 100 before sending its body: muxd
 * answers it as soon as the stream is open, and Expect does not go upstream.
 */
static void answer_continue(struct exchange *ex)
{
	size_t n = 0;

	for (size_t i = 0; i < ex->nfields; i++)
		if (!(ex->fields[i].name_len == 6 &&
		      strncasecmp(ex->fields[i].name, "expect", 6) == 0))
			ex->fields[n++] = ex->fields[i];
	ex->nfields = n;
	if (ex->continue_sent || ex->head_sent)
		return;
	ex->continue_sent = ex->client->ops->send_continue(ex->client);
}

/* 0-RTT for this request: safe methods without a body, where the route
 * allows it, not after a 425, and not for a request a client already sent
 * as early data (its own Early-Data field: a 425 is for that client). */
static bool early_allowed(const struct exchange *ex)
{
	const char *m = ex->req.method;

	return ex->route.early_data && !ex->no_early && ex->req.body == HTTP1_BODY_NONE &&
	       (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0) &&
	       !http1_find(&ex->req, "early-data");
}

static void wait_stream(void *ctx, struct upstream_stream *s, bool reused)
{
	struct exchange *ex = ctx;

	if (ex->ext_connect &&
	    !(s->conn->ops->connect_protocol && s->conn->ops->connect_protocol(s->conn))) {
		/* the connection the pool gave cannot: a dedicated one after all */
		s->ops->cancel(s);
		ex->wait = NULL;
		ex->ext_connect = false;
		ex->nfields = 0;
		build_fields(ex);
		ex->dedicated = pool_open_dedicated(ex->m->pool, &ex->key, &dedicated_cbs, ex);
		if (!ex->dedicated)
			answer_error(ex, ERR_CONNECT, "out of memory");
		return;
	}
	if (s->conn->proto != PROTO_H1 && ex->req.expect_continue)
		answer_continue(ex);
	struct upstream_request r = {
	    .method = ex->ext_connect ? "CONNECT" : ex->req.method,
	    .scheme = ex->uri.scheme,
	    .authority = ex->authority,
	    .path = ex->uri.path,
	    .fields = ex->fields,
	    .nfields = ex->nfields,
	    .has_body = ex->ext_connect || ex->req.body != HTTP1_BODY_NONE,
	    .content_length =
	        ex->req.body == HTTP1_BODY_LENGTH ? (int64_t)ex->req.content_length : -1,
	    .upgrade = ex->upgrade && !ex->ext_connect,
	    .protocol = ex->ext_connect ? "websocket" : NULL,
	    .early_data = !ex->ext_connect && early_allowed(ex),
	};

	ex->wait = NULL;
	ex->stream = s;
	ex->early = r.early_data;
	ex->reused = reused;
	ex->req_end_sent = false; /* a retry: the new stream needs the end too */
	if (ex->ext_connect)
		ex->req_end_sent = true; /* the stream stays open for the new protocol */
	ex->proto = s->conn->proto;
	if (!ex->got_stream)
		ex->m->metrics.requests[ex->proto]++;
	ex->got_stream = true;
	upstream_stream_send_head(s, &r);
	/* a retry: what went before goes first */
	ex->replaying = ex->held && evbuffer_get_length(ex->held) > 0;
	ex->replayed = 0;
	send_request_body(ex);
}

static void wait_error(void *ctx, enum muxd_err err, const char *reason)
{
	struct exchange *ex = ctx;

	ex->wait = NULL;
	answer_error(ex, err, reason);
}

static const struct pool_wait_cbs wait_cbs = {wait_stream, wait_error};

/* --- the dedicated connection of an upgrade --- */

/* Its codec is the exchange's: a stream slot never frees for anyone else
 * (the connection closes with the exchange), and when it closes under the
 * stream, the stream's own error follows. */
static void dedicated_available(void *owner, struct upstream_conn *c)
{
	(void)owner;
	(void)c;
}

static void dedicated_closed(void *owner, struct upstream_conn *c, enum evict_reason why)
{
	struct exchange *ex = owner;

	(void)c;
	(void)why;
	ex->uc = NULL;
}

static void dedicated_failed(void *owner, struct upstream_conn *c, enum muxd_err err,
                             const char *reason)
{
	dedicated_closed(owner, c, EVICT_COUNT);
	(void)err;
	(void)reason;
}

static const struct upstream_owner_cbs dedicated_owner = {dedicated_available, dedicated_closed,
                                                          dedicated_failed};

static void dedicated_read(void *ctx)
{
	(void)ctx; /* not before TRANSPORT_CONNECTED */
}

static void dedicated_event(void *ctx, enum transport_event ev, enum muxd_err err,
                            const char *reason)
{
	struct exchange *ex = ctx;
	struct transport *t = ex->dedicated;
	struct upstream_stream *s = NULL;

	ex->dedicated = NULL;
	if (ev != TRANSPORT_CONNECTED) {
		transport_close(t);
		answer_error(ex, err, reason);
		return;
	}
	struct upstream_params prm;
	struct upstream_forward fwd_buf;
	const struct upstream_forward *fwd = pool_key_forward(&ex->key, &fwd_buf);
	upstream_params_init(&prm, ex->cfg);
	ex->uc = h1_conn_new(ex->m->env, &prm, fwd, t, &dedicated_owner, ex);
	if (!ex->uc)
		transport_close(t);
	else
		s = ex->uc->ops->open_stream(ex->uc, &stream_cbs, ex);
	if (!s) {
		answer_error(ex, ERR_CONNECT, "out of memory");
		return;
	}
	wait_stream(ex, s, false);
}

static const struct transport_cbs dedicated_cbs = {dedicated_read, dedicated_read, dedicated_event};

/* The end-to-end fields to send upstream: hop-by-hop, Host and framing go. */
static void build_fields(struct exchange *ex)
{
	static const struct {
		const char *name;
		size_t len;
	} skip[] = {{"host", 4}, {"content-length", 14}, {"transfer-encoding", 17}};
	const struct http1_msg *req = &ex->req;
	const struct http1_field *te = http1_find(req, "te");

	for (size_t i = 0; i < req->nfields; i++) {
		const struct http1_field *f = &req->fields[i];
		bool drop = http1_is_hop_by_hop(req, f->name) ||
		            (ex->ext_connect && f->name_len == 17 &&
		             strcasecmp(f->name, "sec-websocket-key") == 0);
		for (size_t k = 0; k < sizeof(skip) / sizeof(skip[0]); k++)
			drop = drop || (f->name_len == skip[k].len &&
			                strcasecmp(f->name, skip[k].name) == 0);
		if (!drop)
			ex->fields[ex->nfields++] =
			    (struct upstream_field){f->name, f->name_len, f->value, f->value_len};
	}
	if (ex->upgrade && !ex->ext_connect) { /* the switch asked for goes along (hop-by-hop) */
		const struct http1_field *up = http1_find(req, "upgrade");
		ex->fields[ex->nfields++] =
		    (struct upstream_field){"Upgrade", 7, up->value, up->value_len};
		ex->fields[ex->nfields++] = (struct upstream_field){"Connection", 10, "upgrade", 7};
	}
	if (ex->cfg->via)
		ex->fields[ex->nfields++] =
		    (struct upstream_field){"Via", 3, via_token(ex), strlen(via_token(ex))};
	if (te && http1_list_has(te->value, te->value_len, "trailers"))
		ex->fields[ex->nfields++] = (struct upstream_field){"TE", 2, "trailers", 8};
}

/* *dst = *src, but only the used part of the path buffer. */
static void copy_uri(struct http1_uri *dst, const struct http1_uri *src)
{
	size_t at = offsetof(struct http1_uri, path), end = at + sizeof(src->path);

	memcpy(dst, src, at);
	memcpy(dst->path, src->path, strlen(src->path) + 1);
	memcpy((char *)dst + end, (const char *)src + end, sizeof(*src) - end);
}

/* *dst = *src, then src empty, copying only the fields in use. */
static void move_msg(struct http1_msg *dst, struct http1_msg *src)
{
	size_t at = offsetof(struct http1_msg, fields), end = at + sizeof(src->fields);

	memcpy(dst, src, at);
	memcpy(dst->fields, src->fields, src->nfields * sizeof(src->fields[0]));
	memcpy((char *)dst + end, (const char *)src + end, sizeof(*src) - end);
	http1_msg_init(src);
}

/* out = host ("[host]" when v6), then ":port" when with_port; cut to size
 * as snprintf would (it never is: a host has at most 255 bytes). Per
 * request, so without printf. */
static void make_authority(char *out, size_t size, const char *host, bool v6, uint16_t port,
                           bool with_port)
{
	char tail[8], *p = tail + sizeof(tail);
	size_t hl = strlen(host), tl = 0, len = 0;

	if (with_port) {
		unsigned v = port;
		do
			*--p = (char)('0' + v % 10);
		while ((v /= 10) > 0);
		*--p = ':';
		tl = (size_t)(tail + sizeof(tail) - p);
	}
	const char *parts[] = {"[", host, "]", p};
	size_t lens[] = {v6 ? 1 : 0, hl, v6 ? 1 : 0, tl};
	for (size_t i = 0; i < 4; i++) {
		size_t n = lens[i] < size - 1 - len ? lens[i] : size - 1 - len;
		memcpy(out + len, parts[i], n);
		len += n;
	}
	out[len] = '\0';
}

struct exchange *exchange_start(struct muxd *m, struct client_stream *client, struct http1_msg *req,
                                const struct http1_uri *uri, const char *tls_name)
{
	struct exchange *ex = exchange_alloc(m);
	bool v6 = uri->ipv6 && !tls_name;
	bool default_port = (strcmp(uri->scheme, "http") == 0 && uri->port == 80) ||
	                    (strcmp(uri->scheme, "https") == 0 && uri->port == 443);

	if (!ex)
		return NULL;
	memset(&ex->nfields, 0, sizeof(*ex) - offsetof(struct exchange, nfields));
	clock_gettime(CLOCK_MONOTONIC, &ex->start);
	ex->m = m;
	ex->cfg = config_ref(m->cfg);
	ex->client = client;
	move_msg(&ex->req, req);
	copy_uri(&ex->uri, uri);
	ex->req_body_done = ex->req.body == HTTP1_BODY_NONE;
	ex->upgrade = client->ops->upgrade && http1_upgrade_requested(&ex->req, ex->cfg->upgrade);
	make_authority(ex->authority, sizeof(ex->authority), tls_name ? tls_name : uri->host, v6,
	               uri->port, !default_port);
	route_for(ex->cfg, uri->host, uri->port, &ex->route);
	if (!pool_key_init_sni(&ex->key, m, uri->scheme, uri->host, uri->port, tls_name,
	                       &ex->route)) {
		move_msg(req, &ex->req);
		exchange_free(ex);
		return NULL;
	}
	/* a WebSocket without a body may go to an HTTP/2 origin that allows it */
	if (ex->upgrade && ex->req.body == HTTP1_BODY_NONE && m->pool &&
	    http1_upgrade_listed(http1_find(&ex->req, "upgrade")->value,
	                         http1_find(&ex->req, "upgrade")->value_len, "websocket") &&
	    http1_find(&ex->req, "sec-websocket-key") && pool_connect_protocol(m->pool, &ex->key))
		ex->ext_connect = true;
	build_fields(ex);
	if (ex->upgrade && !ex->ext_connect)
		ex->dedicated = pool_open_dedicated(m->pool, &ex->key, &dedicated_cbs, ex);
	else
		ex->wait = pool_start_stream(m->pool, &ex->key, false, &stream_cbs, &wait_cbs, ex);
	if (!ex->wait && !ex->dedicated) {
		move_msg(req, &ex->req);
		exchange_free(ex);
		return NULL;
	}
	return ex;
}

void exchange_client_read(struct exchange *ex)
{
	if (ex->stream && !ex->req_end_sent)
		send_request_body(ex);
}

void exchange_client_drain(struct exchange *ex)
{
	pump_response(ex);
}

void exchange_client_eof(struct exchange *ex)
{
	/* A client that half-closes after its whole request still gets the
	 * response; one that vanishes mid-request takes the exchange with it. */
	if (!ex->req_body_done) {
		struct client_stream *cs = ex->client;
		exchange_free(ex);
		cs->ops->abort(cs);
	}
	/* else the session ends the connection after the response */
}

void exchange_abort(struct exchange *ex)
{
	exchange_free(ex);
}

bool exchange_awaits_client(const struct exchange *ex)
{
	return !ex->req_body_done;
}
