/*
 * exchange — one request/response relayed between a client connection and
 * an upstream stream. Bytes move only while the receiving side has room
 * (TRANSPORT_BUF), so memory per exchange is bounded whatever the speeds.
 */
#include "exchange.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "config.h"
#include "downstream.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

struct exchange {
	struct muxd *m;
	struct config *cfg;
	struct downstream *ds;
	struct transport *client;
	struct http1_msg req;
	struct http1_uri uri;
	struct route route;
	struct pool_key key;
	char authority[300];
	struct upstream_field fields[HTTP1_MAX_FIELDS + 3];
	char absolute[HTTP1_MAX_TARGET + 320]; /* forwarding to an HTTP parent: the absolute URI */
	char proxy_auth[HTTP1_BASIC_MAX];      /* its Proxy-Authorization value */
	size_t nfields;

	/* request body, client -> upstream */
	uint64_t req_remaining;
	struct http1_chunked *req_chunked;
	bool req_body_done;
	bool req_end_sent;
	bool body_started;
	uint64_t bytes_in;

	/* upstream */
	struct pool_wait *wait;
	struct upstream_stream *stream;
	bool reused;
	bool retried;
	bool got_stream;
	enum proto proto; /* of the stream's connection */

	/* response, upstream -> client */
	bool head_sent;
	int status;
	bool chunk_out;  /* re-frame the body as chunked to the client */
	bool keep_alive; /* the client connection survives this exchange */
	uint64_t bytes_out;
	struct timespec start;

	enum http1_framing framing; /* of the final response to the client */
	bool continue_sent;         /* muxd answered Expect: 100-continue itself */
};

static const struct upstream_stream_cbs stream_cbs;
static const struct pool_wait_cbs wait_cbs;

/* This instance's Via entry (muxd_load_instance; a bare daemon state, as in
 * the unit tests, has none yet). */
static const char *via_token(const struct exchange *ex)
{
	return ex->m->via_token[0] ? ex->m->via_token : "1.1 muxd";
}

static bool is_replayable(const struct exchange *ex)
{
	static const char *const idempotent[] = {"GET",   "HEAD", "OPTIONS",
	                                         "TRACE", "PUT",  "DELETE"};

	if (ex->body_started)
		return false;
	for (size_t i = 0; i < sizeof(idempotent) / sizeof(idempotent[0]); i++)
		if (strcmp(ex->req.method, idempotent[i]) == 0)
			return true;
	return false;
}

static void exchange_free(struct exchange *ex)
{
	if (ex->wait)
		pool_wait_cancel(ex->wait);
	if (ex->stream)
		ex->stream->ops->cancel(ex->stream);
	http1_msg_free(&ex->req);
	free(ex->req_chunked);
	config_unref(ex->cfg);
	free(ex);
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
	                downstream_peer(ex->ds), ex->req.method, ex->req.target, ex->status,
	                (unsigned long long)ex->bytes_in, (unsigned long long)ex->bytes_out, ms,
	                ex->got_stream ? proto_name(ex->proto) : "-",
	                !ex->got_stream ? "-"
	                : ex->reused    ? "reused"
	                                : "new");
}

/* The exchange is over: log, free, and let the client connection go on. */
static void finish(struct exchange *ex)
{
	struct downstream *ds = ex->ds;
	bool keep_alive = ex->keep_alive && ex->req_body_done;

	access_log(ex);
	exchange_free(ex);
	downstream_exchange_done(ds, keep_alive);
}

static void fail_abruptly(struct exchange *ex)
{
	struct downstream *ds = ex->ds;

	access_log(ex);
	exchange_free(ex);
	downstream_abort(ds);
}

/* Answer with muxd's own error before any response head went out. */
static void answer_error(struct exchange *ex, enum muxd_err err, const char *reason)
{
	char body[700];
	int n = muxd_error_body(err, ex->uri.host, ex->uri.port, reason, body, sizeof(body));

	ex->status = muxd_err_status(err);
	ex->keep_alive = ex->keep_alive && ex->req_body_done;
	downstream_respond(ex->ds, ex->status, "text/plain", body, (size_t)n, !ex->keep_alive);
	finish(ex);
}

/* --- request body: client -> upstream --- */

/* The first contiguous bytes of in (it is not empty). Normally the first
 * chain as it is; an empty first chain gets a bounded prefix pulled up. */
static bool first_piece(struct evbuffer *in, struct evbuffer_iovec *v)
{
	size_t len = evbuffer_get_length(in);

	if (evbuffer_peek(in, -1, NULL, v, 1) >= 1 && v->iov_len > 0)
		return true;
	v->iov_len = len < 4096 ? len : 4096;
	v->iov_base = evbuffer_pullup(in, (ev_ssize_t)v->iov_len);
	return v->iov_base != NULL;
}

/* Move request body bytes upstream while the stream has send space. Never
 * more than the first chain holds, nor more than the space: the chunked
 * decoder is fed at most that many bytes (its data is a part of them).
 * http1_chunked_next keeps a partial size or trailer line in its own state
 * and consumes all of its input on NEED_MORE, so a line split between two
 * chains needs no pull-up, and every pass consumes at least one byte. */
static void send_request_body(struct exchange *ex)
{
	struct evbuffer *in = transport_input(ex->client);
	struct upstream_stream *s = ex->stream;
	size_t room;

	while (!ex->req_body_done && (room = s->ops->send_space(s)) > 0 &&
	       evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;

		if (!first_piece(in, &v))
			break; /* out of memory: try again on the next event */
		if (v.iov_len > room)
			v.iov_len = room;
		if (!ex->req_chunked) {
			size_t n = v.iov_len;
			if (n > ex->req_remaining)
				n = (size_t)ex->req_remaining;
			s->ops->send_body(s, v.iov_base, n);
			evbuffer_drain(in, n);
			ex->bytes_in += n;
			ex->req_remaining -= n;
			ex->body_started = true;
			ex->req_body_done = ex->req_remaining == 0;
		} else {
			const char *data;
			size_t consumed = 0, dlen = 0;
			enum http1_chunk_event e = http1_chunked_next(
			    ex->req_chunked, v.iov_base, v.iov_len, &consumed, &data, &dlen);
			if (e == HTTP1_CHUNK_ERROR) {
				/* the client broke its own framing: nothing sane can follow */
				if (ex->head_sent) {
					fail_abruptly(ex);
				} else {
					ex->keep_alive = false;
					ex->req_body_done = true;
					ex->status = 400;
					downstream_respond(ex->ds, 400, "text/plain",
					                   "muxd: malformed chunked body\n", 29,
					                   true);
					finish(ex);
				}
				return;
			}
			if (e == HTTP1_CHUNK_DATA) {
				s->ops->send_body(s, data, dlen);
				ex->bytes_in += dlen;
				ex->body_started = true;
			}
			evbuffer_drain(in, consumed);
			ex->req_body_done = e == HTTP1_CHUNK_DONE;
			if (consumed == 0 && e != HTTP1_CHUNK_DONE)
				break; /* cannot happen (see above); never spin */
		}
	}
	if (ex->req_body_done && !ex->req_end_sent) {
		ex->req_end_sent = true;
		if (ex->req_chunked)
			http1_filter_trailers(ex->req_chunked->trailers);
		s->ops->send_end(s, ex->req_chunked ? ex->req_chunked->trailers : "");
	}
}

/* --- response: upstream -> client --- */

static void add_line(struct evbuffer *out, const char *name, size_t nlen, const char *value,
                     size_t vlen)
{
	evbuffer_add(out, name, nlen);
	evbuffer_add(out, ": ", 2);
	evbuffer_add(out, value, vlen);
	evbuffer_add(out, "\r\n", 2);
}

/* The head as the client gets it: end-to-end fields, then muxd's own
 * framing (ex->framing for a final head). The origin's framing fields never
 * pass, except the Content-Length of a HEAD or 304 answer, which describes a
 * body that is not there. */
static void write_head(struct exchange *ex, const struct http1_msg *h, bool final)
{
	struct evbuffer *out = transport_output(ex->client);
	enum http1_framing fr = final ? ex->framing : HTTP1_FRAME_NONE;
	bool keep_length = final && fr == HTTP1_FRAME_NONE && h->status != 204;

	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", h->status, h->reason);
	for (size_t i = 0; i < h->nfields; i++) {
		const struct http1_field *f = &h->fields[i];
		if (http1_is_hop_by_hop(h, f->name))
			continue;
		if (!keep_length && strcasecmp(f->name, "content-length") == 0)
			continue;
		/* trailers go only with a chunked body: else neither they nor the
		 * field announcing them */
		if (final && fr != HTTP1_FRAME_CHUNKED && strcasecmp(f->name, "trailer") == 0)
			continue;
		add_line(out, f->name, f->name_len, f->value, f->value_len);
	}
	if (ex->cfg->via)
		evbuffer_add_printf(out, "Via: %s\r\n", via_token(ex));
	if (final) {
		if (fr == HTTP1_FRAME_EMPTY)
			evbuffer_add_printf(out, "Content-Length: 0\r\n");
		else if (fr == HTTP1_FRAME_LENGTH)
			evbuffer_add_printf(out, "Content-Length: %llu\r\n",
			                    (unsigned long long)h->content_length);
		else if (fr == HTTP1_FRAME_CHUNKED)
			evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
		if (!ex->keep_alive)
			evbuffer_add_printf(out, "Connection: close\r\n");
		else if (ex->req.version_minor == 0)
			evbuffer_add_printf(out, "Connection: keep-alive\r\n");
	}
	evbuffer_add(out, "\r\n", 2);
}

static void on_head(void *ctx, const struct http1_msg *h)
{
	struct exchange *ex = ctx;
	bool client10 = ex->req.version_minor == 0;

	if (h->status < 200) {
		/* muxd answered the client's Expect itself: not a second 100 */
		if (!client10 && !(h->status == 100 && ex->continue_sent))
			write_head(ex, h, false);
		return;
	}
	if (h->status == 407 && ex->key.forward) {
		/* the parent asks for credentials: they are muxd's configuration,
		 * not the client's business (DESIGN: 502 naming the parent) */
		const struct pool_hop *last = &ex->key.hops[ex->key.nhops - 1];
		bool v6 = strchr(last->host, ':') != NULL;
		char why[400];
		snprintf(why, sizeof(why), "proxy %s%s%s:%u: proxy authentication required%s",
		         v6 ? "[" : "", last->host, v6 ? "]" : "", last->port,
		         last->auth ? " (it refused the configured credentials)" : "");
		log_info("%s: %s", ex->key.id, why);
		ex->stream->ops->cancel(ex->stream);
		ex->stream = NULL;
		answer_error(ex, ERR_CONNECT, why);
		return;
	}
	ex->status = h->status;
	const struct http1_field *alt = http1_find(h, "alt-svc");
	if (alt)
		pool_altsvc_learned(ex->m->pool, &ex->key, alt->value, alt->value_len);
	/* HTTP/2 and HTTP/3 trailers may follow a body of known length: relay
	 * them chunked to a client that asked for them */
	const struct http1_field *te = http1_find(&ex->req, "te");
	bool want_trailers = ex->proto != PROTO_H1 && http1_find(h, "trailer") && te &&
	                     http1_list_has(te->value, te->value_len, "trailers");
	ex->framing = http1_relay_framing(h->status, ex->req.method, h->body, ex->req.version_minor,
	                                  want_trailers);
	ex->chunk_out = ex->framing == HTTP1_FRAME_CHUNKED;
	if (ex->framing == HTTP1_FRAME_CLOSE)
		ex->keep_alive =
		    false; /* an HTTP/1.0 body of unknown length ends with the connection */
	if (ex->m->draining)
		ex->keep_alive = false;
	write_head(ex, h, true);
	ex->head_sent = true;
}

/* Move decoded response body to the client while it has room. May end in
 * the stream finishing (and the exchange being freed): callers must not
 * touch ex afterwards. */
static void pump_response(struct exchange *ex)
{
	struct evbuffer *out = transport_output(ex->client);
	struct upstream_stream *s = ex->stream;
	struct evbuffer *body;
	size_t n, used = evbuffer_get_length(out);

	if (!s || !ex->head_sent)
		return;
	body = s->ops->body(s);
	n = evbuffer_get_length(body);
	if (used >= TRANSPORT_BUF || n == 0)
		return;
	if (n > TRANSPORT_BUF - used)
		n = TRANSPORT_BUF - used;
	if (ex->chunk_out)
		evbuffer_add_printf(out, "%zx\r\n", n);
	evbuffer_remove_buffer(body, out, n);
	if (ex->chunk_out)
		evbuffer_add(out, "\r\n", 2);
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
	struct evbuffer *out = transport_output(ex->client);

	ex->stream = NULL; /* the connection takes it back */
	if (ex->chunk_out) {
		char *t = *trailers ? strdup(trailers) : NULL; /* out of memory: none */
		if (t)
			http1_filter_trailers(t);
		evbuffer_add_printf(out, "0\r\n%s\r\n", t ? t : "");
		free(t);
	}
	finish(ex);
}

static void on_error(void *ctx, enum muxd_err err, const char *reason, bool nothing_received)
{
	struct exchange *ex = ctx;

	ex->stream = NULL;
	if (ex->head_sent) {
		log_info("%s: response from %s broke off: %s", downstream_peer(ex->ds), ex->key.id,
		         reason);
		fail_abruptly(ex);
		return;
	}
	/* a stream the origin never processed may go again whatever its method;
	 * a request that died on a reused connection, when it is replayable */
	bool unprocessed = err == ERR_UNPROCESSED && !ex->body_started;
	if (!ex->retried &&
	    (unprocessed || (nothing_received && ex->reused && is_replayable(ex)))) {
		log_debug("retrying %s %s on a new connection (%s)", ex->req.method, ex->req.target,
		          reason);
		ex->retried = true;
		ex->m->metrics.upstream_retries++;
		ex->wait =
		    pool_start_stream(ex->m->pool, &ex->key, true, &stream_cbs, &wait_cbs, ex);
		if (ex->wait)
			return;
		reason = "out of memory";
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
	if (ex->continue_sent || ex->head_sent || ex->req.version_minor == 0 ||
	    ex->req.body == HTTP1_BODY_NONE)
		return;
	ex->continue_sent = true;
	evbuffer_add_printf(transport_output(ex->client), "HTTP/1.1 100 Continue\r\n\r\n");
}

static void wait_stream(void *ctx, struct upstream_stream *s, bool reused)
{
	struct exchange *ex = ctx;

	if (s->conn->proto != PROTO_H1 && ex->req.expect_continue)
		answer_continue(ex);
	struct upstream_request r = {
	    .method = ex->req.method,
	    .scheme = ex->uri.scheme,
	    .authority = ex->authority,
	    .path = ex->uri.path,
	    .absolute = ex->key.forward ? ex->absolute : NULL,
	    .fields = ex->fields,
	    .nfields = ex->nfields,
	    .has_body = ex->req.body != HTTP1_BODY_NONE,
	    .content_length =
	        ex->req.body == HTTP1_BODY_LENGTH ? (int64_t)ex->req.content_length : -1,
	};

	ex->wait = NULL;
	ex->stream = s;
	ex->reused = reused;
	ex->req_end_sent = false; /* a retry: the new stream needs the end too */
	ex->proto = s->conn->proto;
	if (!ex->got_stream)
		ex->m->metrics.requests[ex->proto]++;
	ex->got_stream = true;
	upstream_stream_send_head(s, &r);
	send_request_body(ex);
}

static void wait_error(void *ctx, enum muxd_err err, const char *reason)
{
	struct exchange *ex = ctx;

	ex->wait = NULL;
	answer_error(ex, err, reason);
}

static const struct pool_wait_cbs wait_cbs = {wait_stream, wait_error};

/* The end-to-end fields to send upstream: hop-by-hop, Host and framing go. */
static void build_fields(struct exchange *ex)
{
	static const char *const skip[] = {"host", "content-length", "transfer-encoding"};
	const struct http1_msg *req = &ex->req;
	const struct http1_field *te = http1_find(req, "te");

	for (size_t i = 0; i < req->nfields; i++) {
		const struct http1_field *f = &req->fields[i];
		bool drop = http1_is_hop_by_hop(req, f->name);
		for (size_t k = 0; k < sizeof(skip) / sizeof(skip[0]); k++)
			drop = drop || strcasecmp(f->name, skip[k]) == 0;
		if (!drop)
			ex->fields[ex->nfields++] =
			    (struct upstream_field){f->name, f->name_len, f->value, f->value_len};
	}
	if (ex->cfg->via)
		ex->fields[ex->nfields++] =
		    (struct upstream_field){"Via", 3, via_token(ex), strlen(via_token(ex))};
	if (te && http1_list_has(te->value, te->value_len, "trailers"))
		ex->fields[ex->nfields++] = (struct upstream_field){"TE", 2, "trailers", 8};
	if (ex->key.forward) {
		const struct pool_hop *last = &ex->key.hops[ex->key.nhops - 1];
		snprintf(ex->absolute, sizeof(ex->absolute), "%s://%s%s", ex->uri.scheme,
		         ex->authority, ex->uri.path);
		char user_pass[sizeof(last->user) + sizeof(last->pass) + 1];
		if (last->auth) {
			snprintf(user_pass, sizeof(user_pass), "%s:%s", last->user, last->pass);
			if (http1_basic_credentials(user_pass, ex->proxy_auth,
			                            sizeof(ex->proxy_auth)))
				ex->fields[ex->nfields++] =
				    (struct upstream_field){"Proxy-Authorization", 19,
				                            ex->proxy_auth, strlen(ex->proxy_auth)};
			explicit_bzero(user_pass, sizeof(user_pass));
		}
	}
}

struct exchange *exchange_start(struct muxd *m, struct downstream *ds, struct http1_msg *req,
                                const struct http1_uri *uri, const char *tls_name)
{
	struct exchange *ex = calloc(1, sizeof(*ex));
	bool v6 = uri->ipv6 && !tls_name;
	bool default_port = (strcmp(uri->scheme, "http") == 0 && uri->port == 80) ||
	                    (strcmp(uri->scheme, "https") == 0 && uri->port == 443);

	if (!ex)
		return NULL;
	if (req->body == HTTP1_BODY_CHUNKED &&
	    !(ex->req_chunked = calloc(1, sizeof(*ex->req_chunked)))) {
		free(ex);
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &ex->start);
	ex->m = m;
	ex->cfg = config_ref(m->cfg);
	ex->ds = ds;
	ex->client = downstream_transport(ds);
	ex->req = *req;
	memset(req, 0, sizeof(*req));
	ex->uri = *uri;
	ex->keep_alive = ex->req.keep_alive && !m->draining;
	ex->req_remaining = ex->req.body == HTTP1_BODY_LENGTH ? ex->req.content_length : 0;
	ex->req_body_done = ex->req.body == HTTP1_BODY_NONE;
	snprintf(ex->authority, sizeof(ex->authority), "%s%s%s", v6 ? "[" : "",
	         tls_name ? tls_name : uri->host, v6 ? "]" : "");
	if (!default_port)
		snprintf(ex->authority + strlen(ex->authority),
		         sizeof(ex->authority) - strlen(ex->authority), ":%u", uri->port);
	route_for(ex->cfg, uri->host, uri->port, &ex->route);
	if (!pool_key_init_sni(&ex->key, m, uri->scheme, uri->host, uri->port, tls_name,
	                       &ex->route)) {
		*req = ex->req;
		memset(&ex->req, 0, sizeof(ex->req));
		exchange_free(ex);
		return NULL;
	}
	build_fields(ex);
	ex->wait = pool_start_stream(m->pool, &ex->key, false, &stream_cbs, &wait_cbs, ex);
	if (!ex->wait) {
		*req = ex->req;
		memset(&ex->req, 0, sizeof(ex->req));
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
		struct downstream *ds = ex->ds;
		exchange_free(ex);
		downstream_abort(ds);
	} else {
		ex->keep_alive = false;
	}
}

void exchange_abort(struct exchange *ex)
{
	exchange_free(ex);
}

bool exchange_awaits_client(const struct exchange *ex)
{
	return !ex->req_body_done;
}
