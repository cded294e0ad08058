/*
 * h2_session — HTTP/2 to clients: an nghttp2 server session over the
 * client's (intercepted TLS) transport; every request stream becomes one
 * exchange through a client_stream (session.h).
 *
 * I/O: bytes from the transport go through nghttp2_session_mem_recv, frames
 * out through nghttp2_session_mem_send while the transport's output holds
 * less than TRANSPORT_BUF (on_drain goes on). nghttp2 is never entered
 * re-entrantly, and the exchanges are never called from inside nghttp2's
 * callbacks: those only record what happened (a head to start, body bytes
 * to deliver, room made for a response) and run() acts on it afterwards.
 * Calls from an exchange only submit frames and kick a deferred run. A
 * stream is freed only in sweep(), when nghttp2 has closed it and its
 * exchange is over; the session only from the owner, told from run().
 *
 * Request heads: pseudo-header fields and fields become an HTTP/1.1 head
 * (Host from :authority, cookie fields joined with "; ") parsed by http1.c
 * like any other, so that the exchange sees what an HTTP/1.1 client would
 * have sent. The header list is bounded as an HTTP/1.1 head is
 * (HTTP1_MAX_HEAD bytes counted as RFC 9113 6.5.2 does, HTTP1_MAX_FIELDS
 * fields): over it the stream gets 431. A body without content-length goes
 * upstream like a chunked one (its length unknown).
 *
 * Flow control (DESIGN.md principle 5): automatic WINDOW_UPDATEs are off; a
 * stream's window (65535) reopens only as its exchange consumes request
 * body, so at most one window waits here per stream. The connection window
 * is max_streams windows, so a stalled stream never blocks the others. A
 * response body waits in a per-stream buffer of at most H2S_OUT_MAX
 * (send_space); the data provider takes from it as the client's windows
 * allow (NGHTTP2_ERR_DEFERRED when empty, resumed by send_body/send_end).
 * A stream whose window the client keeps closed fills only its own buffer,
 * and then its exchange stops taking from its own upstream stream.
 *
 * Endings: RST_STREAM from the client aborts only that exchange; an
 * exchange's abort resets only its stream. Draining sends GOAWAY; the open
 * streams finish. Deadlines (one timer): request_header_timeout until the
 * client's preface and while a header block is incomplete,
 * client_idle_timeout with no open stream, client_timeout while streams
 * wait on the client and nothing moves on its socket; then GOAWAY and close.
 *
 * Hostile clients: frames that carry no request (PING, SETTINGS,
 * RST_STREAM, tiny WINDOW_UPDATEs, empty DATA, PRIORITY and unknown types)
 * are counted per second against floods[]; past a limit the connection ends
 * with GOAWAY ENHANCE_YOUR_CALM and m->metrics.client_h2_floods counts it.
 * nghttp2 limits CONTINUATION frames per header block, SETTINGS entries,
 * queued ACKs and (as a backstop behind the RST_STREAM count) stream resets;
 * streams beyond SETTINGS_MAX_CONCURRENT_STREAMS are refused.
 */
#include "client/h2_session.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "client/session.h"
#include "config.h"
#include "exchange.h"
#include "log.h"
#include "timeutil.h"
#include "transport/transport.h"
#include "tunnel.h"

#define H2S_OUT_MAX (64 * 1024)    /* response body buffered per stream */
#define H2S_WINDOW 65535           /* the request body window of a stream */
#define H2S_MAX_OUTBOUND_ACK 100   /* ACKs queued before the client is cut */
#define H2S_SMALL_WINDOW_UPDATE 64 /* increments below this count as flood frames */
#define H2S_MAX_RUNS 64            /* passes of one run() before it yields */

/* Frames per connection in any one second that do no work for a request;
 * one more ends the connection with ENHANCE_YOUR_CALM. RST_STREAM is the
 * rapid-reset attack (CVE-2023-44487): a client cancels streams as fast as
 * it opens them. */
static const unsigned flood_limit[CH2_FLOOD_COUNT] = {
    [CH2_FLOOD_PING] = 100,    [CH2_FLOOD_SETTINGS] = 100, [CH2_FLOOD_RST] = 100,
    [CH2_FLOOD_WINDOW] = 1000, [CH2_FLOOD_EMPTY] = 1000,   [CH2_FLOOD_OTHER] = 1000,
};

enum h2t {
	H2T_NONE,
	H2T_HEADER, /* request_header_timeout */
	H2T_IDLE,   /* client_idle_timeout */
	H2T_CLIENT, /* client_timeout */
};

struct h2_session;

struct h2s {
	struct client_stream base; /* first */
	struct h2_session *sess;
	int32_t id;
	struct exchange *ex;
	bool started;    /* the request went to an exchange (or got an answer) */
	bool closed;     /* nghttp2 closed the stream */
	bool in_end;     /* the client's END_STREAM arrived */
	bool head_end;   /* ... with the request's HEADERS: no body */
	bool in_trailer; /* the header block is the request's trailers */
	bool start_pending, read_pending, drain_pending;
	/* the request head, while its header block arrives */
	char method[32], scheme[16], authority[300];
	char *path;
	bool has_length; /* a content-length field */
	struct evbuffer *fields, *cookie;
	size_t head_size;
	unsigned nfields;
	int head_status; /* a header block muxd refuses: the status to answer (431, 400) */
	/* request body and trailers, client -> exchange */
	struct evbuffer *in;
	size_t drain; /* bytes of the last read_body piece */
	struct evbuffer *trailers_in;
	char *trailers;
	/* response, exchange -> client */
	struct evbuffer *out;
	bool out_end, deferred, head_out;
	char *trailers_out;
	char req_method[32];
	/* an extended CONNECT (RFC 8441): a WebSocket over an HTTP/1.1 upgrade */
	char protocol[32];   /* its :protocol */
	char ws_key[32];     /* the Sec-WebSocket-Key muxd sent for it */
	bool ws_refused;     /* the origin answered 2xx without switching: 502 */
	bool upgraded;       /* switched: the stream's DATA is a tunnel's bytes */
	bool eof_told;       /* the tunnel knows the client's END_STREAM */
	struct tunnel *tn;   /* splicing the stream with the origin */
	struct transport tt; /* the stream as the tunnel's client transport */
	struct evbuffer_cb_entry *in_cb, *out_cb;
	struct h2s *prev, *next;
};

struct h2_session {
	struct muxd *m;
	struct transport *t;
	nghttp2_session *ng;
	const struct h2_session_owner *owner;
	void *ctx;
	char peer[64];
	unsigned max_streams;
	struct h2s *streams, *last; /* oldest first */
	struct event *kick, *timer;
	enum h2t timer_kind;
	struct evbuffer *raw_in, *raw_out;
	struct evbuffer_cb_entry *raw_in_cb, *raw_out_cb;
	bool in_ng;    /* inside mem_recv or mem_send */
	bool running;  /* inside run() */
	bool over;     /* told the owner, or about to */
	bool peer_eof; /* the client finished sending */
	bool failed;   /* the connection cannot go on (protocol error, EOF) */
	bool broken;   /* the transport failed: nothing more goes out */
	bool counted;  /* in m->metrics.client_h2_open */
	bool draining; /* GOAWAY submitted */
	bool preface;  /* the client's preface and SETTINGS arrived */
	bool in_head;  /* a header block is incomplete */
	struct timespec flood_since;
	unsigned flood[CH2_FLOOD_COUNT];
	int flooded; /* the kind that ended the connection, or -1 */
};

static const struct client_stream_ops stream_ops;
static void run(struct h2_session *s);
static void ws_closed(struct h2s *st);
static bool ws_dispatch(struct h2s *st);

static uint64_t ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t->tv_sec) * 1000 +
	       (uint64_t)((now.tv_nsec - t->tv_nsec) / 1000000);
}

static void kick(struct h2_session *s)
{
	if (!s->over)
		event_active(s->kick, EV_TIMEOUT, 0);
}

/* --- streams --- */

static struct h2s *stream_new(struct h2_session *s, int32_t id)
{
	struct h2s *st = calloc(1, sizeof(*st));

	if (!st)
		return NULL;
	st->base.ops = &stream_ops;
	st->sess = s;
	st->id = id;
	st->fields = evbuffer_new();
	st->cookie = evbuffer_new();
	st->in = evbuffer_new();
	st->out = evbuffer_new();
	if (!st->fields || !st->cookie || !st->in || !st->out) {
		if (st->fields)
			evbuffer_free(st->fields);
		if (st->cookie)
			evbuffer_free(st->cookie);
		if (st->in)
			evbuffer_free(st->in);
		if (st->out)
			evbuffer_free(st->out);
		free(st);
		return NULL;
	}
	st->prev = s->last; /* in order: requests start as they came */
	if (st->prev)
		st->prev->next = st;
	else
		s->streams = st;
	s->last = st;
	return st;
}

static void stream_free(struct h2s *st)
{
	struct h2_session *s = st->sess;

	if (st->prev)
		st->prev->next = st->next;
	else
		s->streams = st->next;
	if (st->next)
		st->next->prev = st->prev;
	else
		s->last = st->prev;
	evbuffer_free(st->fields);
	evbuffer_free(st->cookie);
	evbuffer_free(st->in);
	evbuffer_free(st->out);
	if (st->trailers_in)
		evbuffer_free(st->trailers_in);
	free(st->trailers);
	free(st->trailers_out);
	free(st->path);
	free(st);
}

static struct h2s *stream_of(struct h2_session *s, int32_t id)
{
	return id > 0 ? nghttp2_session_get_stream_user_data(s->ng, id) : NULL;
}

/* Request body bytes the exchange will not take: back to the windows. */
static void give_back(struct h2s *st)
{
	size_t n = evbuffer_get_length(st->in);

	if (n > 0) {
		nghttp2_session_consume(st->sess->ng, st->id, n);
		evbuffer_drain(st->in, n);
	}
	st->drain = 0;
}

/* Streams nghttp2 closed and no exchange uses any more. */
static void sweep(struct h2_session *s)
{
	struct h2s *st = s->streams, *next;

	for (; st; st = next) {
		next = st->next;
		if (st->closed && !st->ex)
			stream_free(st);
	}
}

static unsigned open_streams(const struct h2_session *s)
{
	unsigned n = 0;

	for (const struct h2s *st = s->streams; st; st = st->next)
		n += !st->closed || st->ex;
	return n;
}

/* --- the client_stream of one request --- */

#define ST(cs) ((struct h2s *)(cs))

static enum client_body st_read_body(struct client_stream *cs, size_t max, const char **data,
                                     size_t *len)
{
	struct h2s *st = ST(cs);
	size_t have = evbuffer_get_length(st->in);
	struct evbuffer_iovec v;

	*data = NULL;
	*len = 0;
	st->drain = 0;
	if (have == 0)
		return st->in_end ? CLIENT_BODY_END : CLIENT_BODY_NONE;
	if (evbuffer_peek(st->in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
		return CLIENT_BODY_NONE;
	if (v.iov_len > max)
		v.iov_len = max;
	*data = v.iov_base;
	*len = v.iov_len;
	st->drain = v.iov_len;
	return st->in_end && v.iov_len == have ? CLIENT_BODY_END : CLIENT_BODY_DATA;
}

/* The exchange took the piece: its bytes reopen the windows. */
static void st_consumed(struct client_stream *cs)
{
	struct h2s *st = ST(cs);

	if (st->drain == 0)
		return;
	evbuffer_drain(st->in, st->drain);
	if (!st->closed)
		nghttp2_session_consume(st->sess->ng, st->id, st->drain);
	else
		nghttp2_session_consume_connection(st->sess->ng, st->drain);
	st->drain = 0;
	kick(st->sess);
}

static const char *st_trailers(struct client_stream *cs)
{
	struct h2s *st = ST(cs);

	return st->trailers ? st->trailers : "";
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

#define NV(n, nl, v, vl)                                                                           \
	((nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), (nl), (vl), NGHTTP2_NV_FLAG_NONE})

/* A response head as nghttp2 fields: :status, the end-to-end fields with
 * lower-case names (in names, which must hold every name), the Content-Length
 * muxd vouches for, Via. Returns the count; nva holds nfields + 4. */
static size_t head_nv(struct h2s *st, const struct http1_msg *h, const char *via, bool final,
                      nghttp2_nv *nva, char *names, char *status, char *clen, size_t clen_size)
{
	size_t n = 0, off = 0;
	bool bodyless_ok = st->req_method[0] && (strcmp(st->req_method, "HEAD") == 0);
	bool keep_length = final && (h->status == 304 || bodyless_ok);

	snprintf(status, 4, "%03d", h->status);
	nva[n++] = NV(":status", 7, status, 3);
	for (size_t i = 0; i < h->nfields; i++) {
		const struct http1_field *f = &h->fields[i];
		char *name = names + off;
		if (http1_is_hop_by_hop(h, f->name))
			continue;
		if (strcasecmp(f->name, "content-length") == 0 && !keep_length)
			continue;
		if (f->name[0] == ':')
			continue;
		for (size_t k = 0; k < f->name_len; k++)
			name[k] = lower(f->name[k]);
		off += f->name_len;
		nva[n++] = NV(name, f->name_len, f->value, f->value_len);
	}
	if (final && !keep_length && h->status != 204 && h->status != 304 &&
	    (h->body == HTTP1_BODY_LENGTH || h->body == HTTP1_BODY_NONE)) {
		int len = snprintf(
		    clen, clen_size, "%llu",
		    h->body == HTTP1_BODY_LENGTH ? (unsigned long long)h->content_length : 0ULL);
		nva[n++] = NV("content-length", 14, clen, (size_t)len);
	}
	if (via)
		nva[n++] = NV("via", 3, via, strlen(via));
	return n;
}

static bool submit_head(struct h2s *st, const struct http1_msg *h, const char *via, bool final);

static void st_send_interim(struct client_stream *cs, const struct http1_msg *head, const char *via)
{
	struct h2s *st = ST(cs);

	if (head->status == 101 || st->closed) /* no Upgrade in HTTP/2 */
		return;
	submit_head(st, head, via, false);
}

/* The response body: what send_body() buffered, then the end and trailers. */
static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *ud)
{
	struct h2s *st = source->ptr;
	size_t have = evbuffer_get_length(st->out);
	size_t n = have < length ? have : length;

	(void)ud;
	if (n > 0) {
		evbuffer_remove(st->out, buf, n);
		if (st->ex || st->tn)
			st->drain_pending = true;
	}
	if (n == have && st->out_end) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		if (st->trailers_out && *st->trailers_out) {
			nghttp2_nv nva[HTTP1_MAX_FIELDS];
			size_t nnv = 0;
			char *p = st->trailers_out;
			http1_filter_trailers(p);
			while (nnv < HTTP1_MAX_FIELDS && *p) {
				char *eol = strstr(p, "\r\n"), *colon, *v;
				if (!eol)
					break;
				*eol = '\0';
				colon = strchr(p, ':');
				if (colon && colon > p) {
					*colon = '\0';
					for (char *q = p; *q; q++)
						*q = lower(*q);
					for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
						;
					nva[nnv++] = NV(p, strlen(p), v, strlen(v));
				}
				p = eol + 2;
			}
			if (nnv > 0 && nghttp2_submit_trailer(ng, id, nva, nnv) == 0)
				*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
		}
		return (ssize_t)n;
	}
	if (n == 0) {
		st->deferred = true;
		return NGHTTP2_ERR_DEFERRED;
	}
	return (ssize_t)n;
}

static bool submit_head(struct h2s *st, const struct http1_msg *h, const char *via, bool final)
{
	struct h2_session *s = st->sess;
	nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read};
	size_t names = 0, n;
	nghttp2_nv *nva;
	char *buf, status[4], clen[24];
	int rv;

	for (size_t i = 0; i < h->nfields; i++)
		names += h->fields[i].name_len;
	nva = calloc(h->nfields + 4, sizeof(*nva));
	buf = malloc(names + 1);
	if (!nva || !buf) {
		free(nva);
		free(buf);
		nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
		kick(s);
		return false;
	}
	n = head_nv(st, h, via, final, nva, buf, status, clen, sizeof(clen));
	if (final && h->body == HTTP1_BODY_NONE) {
		/* no body (HEAD, 204, 304, or the origin's stream ended with its
		 * head: gRPC's trailers-only answers): END_STREAM on the HEADERS */
		st->out_end = true;
		rv = nghttp2_submit_response(s->ng, st->id, nva, n, NULL);
	} else if (final)
		rv = nghttp2_submit_response(s->ng, st->id, nva, n, &prd);
	else
		rv = nghttp2_submit_headers(s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, nva, n, NULL);
	free(nva);
	free(buf);
	if (rv != 0) {
		log_debug("h2 client %s: stream %d: cannot send a head: %s", s->peer, st->id,
		          nghttp2_strerror(rv));
		nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
	}
	if (final)
		st->head_out = true;
	kick(s);
	return rv == 0;
}

/* HTTP/2 has interim heads: 100 when a body is still to come. */
static bool st_send_continue(struct client_stream *cs)
{
	struct h2s *st = ST(cs);
	nghttp2_nv nv = NV(":status", 7, "100", 3);

	if (st->in_end || st->closed)
		return false;
	if (nghttp2_submit_headers(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL) !=
	    0)
		return false;
	kick(st->sess);
	return true;
}

static void st_send_head(struct client_stream *cs, const struct http1_msg *head, const char *via,
                         bool want_trailers)
{
	(void)want_trailers; /* HTTP/2 carries trailers after any body */
	submit_head(ST(cs), head, via, true);
}

static size_t st_send_space(struct client_stream *cs)
{
	struct h2s *st = ST(cs);
	size_t used = evbuffer_get_length(st->out);

	return used >= H2S_OUT_MAX ? 0 : H2S_OUT_MAX - used;
}

static void resume(struct h2s *st)
{
	if (st->deferred && !st->closed) {
		st->deferred = false;
		nghttp2_session_resume_data(st->sess->ng, st->id);
	}
	kick(st->sess);
}

static void st_send_body(struct client_stream *cs, struct evbuffer *body, size_t n)
{
	struct h2s *st = ST(cs);

	evbuffer_remove_buffer(body, st->out, n);
	resume(st);
}

static void st_send_end(struct client_stream *cs, const char *trailers)
{
	struct h2s *st = ST(cs);

	st->out_end = true;
	if (trailers && *trailers)
		st->trailers_out = strdup(trailers); /* out of memory: none */
	resume(st);
}

static void st_respond(struct client_stream *cs, int status, const char *content_type,
                       const char *body, size_t body_len)
{
	struct h2s *st = ST(cs);
	struct h2_session *s = st->sess;
	nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read};
	char code[4], len[24];
	nghttp2_nv nva[3];
	int n;

	if (st->closed || st->head_out)
		return;
	snprintf(code, sizeof(code), "%03d", status);
	n = snprintf(len, sizeof(len), "%zu", body_len);
	nva[0] = NV(":status", 7, code, 3);
	nva[1] = NV("content-type", 12, content_type, strlen(content_type));
	nva[2] = NV("content-length", 14, len, (size_t)n);
	evbuffer_add(st->out, body, body_len);
	st->out_end = true;
	st->head_out = true;
	if (nghttp2_submit_response(s->ng, st->id, nva, 3,
	                            strcmp(st->req_method, "HEAD") == 0 ? NULL : &prd) != 0)
		nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
	kick(s);
}

static void st_done(struct client_stream *cs)
{
	struct h2s *st = ST(cs);

	st->ex = NULL;
	kick(st->sess);
}

static void st_abort(struct client_stream *cs)
{
	struct h2s *st = ST(cs);

	st->ex = NULL;
	evbuffer_drain(st->out, evbuffer_get_length(st->out));
	if (!st->closed)
		nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id,
		                          NGHTTP2_INTERNAL_ERROR);
	kick(st->sess);
}

static const char *st_peer(const struct client_stream *cs)
{
	return ST(cs)->sess->peer;
}

static const struct client_stream_ops stream_ops = {
    st_read_body,  st_consumed,  st_trailers, st_send_interim, st_send_continue, st_send_head,
    st_send_space, st_send_body, st_send_end, st_respond,      st_done,          st_abort,
    st_peer,       NULL, /* upgrade: RFC 8441 not yet */
};

/* --- requests --- */

/* muxd's own answer to a stream, with a log line. */
static void answer(struct h2s *st, int status, const char *text)
{
	log_info("refused client=%s (h2) method=%s target=%s status=%d: %s", st->sess->peer,
	         st->method[0] ? st->method : "-", st->path ? st->path : "-", status, text);
	st_respond(&st->base, status, "text/plain; charset=utf-8", text, strlen(text));
}

static void ws_start(struct h2s *st);

/* A complete request head: to an exchange, or muxd's answer. */
static void start(struct h2s *st)
{
	struct h2_session *s = st->sess;
	struct evbuffer *h = evbuffer_new();
	struct http1_msg req;
	struct http1_uri uri;
	const char *tls_name = NULL;
	char why[700];
	size_t consumed = 0, len;
	enum http1_result r;
	int status;

	st->started = true;
	snprintf(st->req_method, sizeof(st->req_method), "%s", st->method);
	if (st->protocol[0] && !st->head_status) {
		if (h)
			evbuffer_free(h);
		ws_start(st);
		return;
	}
	if (!h) {
		answer(st, 500, "muxd: out of memory\n");
		return;
	}
	if (st->head_status) {
		status = st->head_status;
	} else if (!st->method[0] || !st->path || !st->scheme[0] ||
	           strcmp(st->method, "CONNECT") == 0) {
		status = 400;
	} else if (strcmp(st->scheme, "https") != 0) {
		status = 400;
	} else {
		status = 0;
	}
	if (status) {
		evbuffer_free(h);
		if (status == 431)
			snprintf(why, sizeof(why), "muxd: request head too large (over %d bytes)\n",
			         HTTP1_MAX_HEAD);
		else if (st->method[0] && strcmp(st->method, "CONNECT") == 0)
			snprintf(why, sizeof(why),
			         "muxd: CONNECT is not served inside an "
			         "intercepted HTTP/2 session\n");
		else
			snprintf(why, sizeof(why),
			         "muxd: malformed request: not a valid HTTP/2 "
			         "request head\n");
		answer(st, status, why);
		return;
	}
	evbuffer_add_printf(h, "%s %s HTTP/1.1\r\nHost: %s\r\n", st->method, st->path,
	                    st->authority);
	evbuffer_add_buffer(h, st->fields);
	if (evbuffer_get_length(st->cookie) > 0) {
		evbuffer_add(h, "Cookie: ", 8);
		evbuffer_add_buffer(h, st->cookie);
		evbuffer_add(h, "\r\n", 2);
	}
	if (!st->head_end && !st->has_length)
		evbuffer_add_printf(h, "Transfer-Encoding: chunked\r\n");
	evbuffer_add(h, "\r\n", 2);
	len = evbuffer_get_length(h);
	r = http1_parse_request((const char *)evbuffer_pullup(h, -1), len, &req, &consumed);
	evbuffer_free(h);
	if (r == HTTP1_TOO_LARGE || (r == HTTP1_INCOMPLETE && len > HTTP1_MAX_HEAD)) {
		snprintf(why, sizeof(why), "muxd: request head too large (over %d bytes)\n",
		         HTTP1_MAX_HEAD);
		answer(st, 431, why);
		return;
	}
	if (r != HTTP1_OK) {
		answer(st, 400, "muxd: malformed request: not a valid HTTP/2 request head\n");
		return;
	}
	if (st->head_end && req.body != HTTP1_BODY_NONE) {
		/* a content-length the stream's end contradicts: nghttp2 resets
		 * the stream for a non-zero one; nothing is to come */
		req.body = HTTP1_BODY_NONE;
	}
	why[0] = '\0';
	status = s->owner->route(s->ctx, &req, &uri, &tls_name, why, sizeof(why));
	if (status) {
		http1_msg_free(&req);
		answer(st, status, why[0] ? why : "muxd: request refused\n");
		return;
	}
	st->ex = exchange_start(s->m, &st->base, &req, &uri, tls_name);
	if (!st->ex) {
		http1_msg_free(&req);
		answer(st, 500, "muxd: out of memory\n");
	}
}

/* --- WebSocket over HTTP/2 (RFC 8441): an extended CONNECT --- */

/*
 * An extended CONNECT with :protocol websocket becomes the HTTP/1.1 upgrade
 * it stands for (RFC 8441 5): GET :path with Upgrade: websocket, Connection:
 * Upgrade and a Sec-WebSocket-Key of muxd's own (the HTTP/2 request has
 * none), the client's other fields (Sec-WebSocket-Version, -Protocol,
 * -Extensions, Origin ...) as they came. The exchange sends it over a
 * dedicated HTTP/1.1 connection like an HTTP/1.1 client's upgrade. Its 101
 * (Sec-WebSocket-Accept checked, then dropped) becomes :status 200, and the
 * stream's DATA is a tunnel's client transport (tunnel_splice): the input is
 * st->in, whose bytes reopen the windows only as the tunnel moves them to
 * the origin; the output is st->out (at most TRANSPORT_BUF), taken by the
 * data provider; the client's END_STREAM is the tunnel's client EOF, the
 * tunnel's shutdown our END_STREAM; a reset either way ends the tunnel, and
 * a tunnel that ends otherwise than by both ends resets the stream.
 * Anything but a 101 is relayed as a response, except a 2xx: to an HTTP/2
 * client that would mean "switched", so it becomes a 502.
 */

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static bool ws_enabled(const struct config *cfg)
{
	return http1_upgrade_listed("websocket", 9, cfg->upgrade);
}

/* The Sec-WebSocket-Accept an origin owes for key (29 bytes with the NUL). */
static bool ws_accept(const char *key, char *out)
{
	char in[64];
	unsigned char sha[20];
	int n = snprintf(in, sizeof(in), "%s%s", key, WS_GUID);

	if (n < 0 || (size_t)n >= sizeof(in) ||
	    gnutls_hash_fast(GNUTLS_DIG_SHA1, in, (size_t)n, sha) != 0)
		return false;
	http1_base64(sha, sizeof(sha), out);
	return true;
}

#define TT(t) ((struct h2s *)((char *)(t)-offsetof(struct h2s, tt)))

static struct evbuffer *tt_input(struct transport *t)
{
	return TT(t)->in;
}

static struct evbuffer *tt_output(struct transport *t)
{
	return TT(t)->out;
}

static void tt_set_reading(struct transport *t, bool on)
{
	(void)t; /* the windows say how much may come */
	(void)on;
}

/* The origin's side ended: END_STREAM after what is buffered. */
static void tt_shutdown(struct transport *t)
{
	struct h2s *st = TT(t);

	st->out_end = true;
	resume(st);
}

static void tt_close(struct transport *t)
{
	(void)t; /* the stream is the session's */
}

static bool tt_alive(struct transport *t)
{
	return !TT(t)->closed;
}

static const struct transport_ops tt_ops = {tt_input,    tt_output, tt_set_reading,
                                            tt_shutdown, tt_close,  tt_alive};

/* Bytes the tunnel took from st->in went to the origin: the windows reopen. */
static void tt_in_moved(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct h2s *st = arg;

	(void)b;
	if (info->n_deleted == 0 || st->closed)
		return;
	nghttp2_session_consume(st->sess->ng, st->id, info->n_deleted);
	kick(st->sess);
}

/* The tunnel wrote towards the client: the data provider goes on. */
static void tt_out_added(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	if (info->n_added > 0)
		resume(arg);
}

static void ws_detach(struct h2s *st)
{
	if (st->in_cb)
		evbuffer_remove_cb_entry(st->in, st->in_cb);
	if (st->out_cb)
		evbuffer_remove_cb_entry(st->out, st->out_cb);
	st->in_cb = st->out_cb = NULL;
}

/* The stream is closed (or the session going): its tunnel goes too. */
static void ws_closed(struct h2s *st)
{
	ws_detach(st);
	if (st->tn) {
		struct tunnel *tn = st->tn;
		st->tn = NULL;
		tunnel_abort(tn);
	}
}

static struct transport *ws_owner_transport(void *ctx)
{
	return &((struct h2s *)ctx)->tt;
}

static void ws_owner_respond(void *ctx, int status, const char *content_type, const char *body,
                             size_t body_len, bool close)
{
	(void)close;
	st_respond(&((struct h2s *)ctx)->base, status, content_type, body, body_len);
}

/* The tunnel ended (already freed): a stream not ended both ways is reset. */
static void ws_owner_done(void *ctx, bool flush)
{
	struct h2s *st = ctx;

	(void)flush;
	st->tn = NULL;
	ws_detach(st);
	if (!st->closed) {
		give_back(st);
		if (!st->in_end || !st->out_end || evbuffer_get_length(st->out) > 0) {
			evbuffer_drain(st->out, evbuffer_get_length(st->out));
			nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id,
			                          NGHTTP2_CANCEL);
		}
	}
	kick(st->sess);
}

static const struct tunnel_owner ws_owner = {ws_owner_transport, ws_owner_respond, ws_owner_done};

/* What the nghttp2 callbacks recorded, for the stream's tunnel. */
static bool ws_dispatch(struct h2s *st)
{
	bool any = false;

	st->start_pending = false;
	if (st->read_pending) {
		st->read_pending = false;
		if (st->tn) {
			any = true;
			tunnel_client_read(st->tn); /* may end it */
		}
	}
	if (st->tn && st->in_end && !st->eof_told) { /* its bytes still go first */
		st->eof_told = true;
		any = true;
		tunnel_client_eof(st->tn);
	}
	if (st->drain_pending) {
		st->drain_pending = false;
		if (st->tn) {
			any = true;
			tunnel_client_drain(st->tn);
		}
	}
	return any;
}

/* A 2xx that is not a switch would tell an HTTP/2 client that it switched. */
static void ws_send_head(struct client_stream *cs, const struct http1_msg *head, const char *via,
                         bool want_trailers)
{
	struct h2s *st = ST(cs);
	char why[120];

	if (head->status >= 200 && head->status < 300) {
		st->ws_refused = true;
		snprintf(why, sizeof(why),
		         "muxd: the origin did not switch to websocket (it answered %d)\n",
		         head->status);
		answer(st, 502, why);
		return;
	}
	st_send_head(cs, head, via, want_trailers);
}

static size_t ws_send_space(struct client_stream *cs)
{
	return ST(cs)->ws_refused ? H2S_OUT_MAX : st_send_space(cs);
}

static void ws_send_body(struct client_stream *cs, struct evbuffer *body, size_t n)
{
	if (ST(cs)->ws_refused)
		evbuffer_drain(body, n); /* the 2xx's body: not for this client */
	else
		st_send_body(cs, body, n);
}

static void ws_send_end(struct client_stream *cs, const char *trailers)
{
	if (!ST(cs)->ws_refused)
		st_send_end(cs, trailers);
}

/* The origin switched: :status 200, then the stream is spliced with it. */
static void ws_upgrade(struct client_stream *cs, const struct client_upgrade *u)
{
	struct h2s *st = ST(cs);
	struct h2_session *s = st->sess;
	const struct http1_msg *h = u->head;
	const struct http1_field *acc = http1_find(h, "sec-websocket-accept");
	nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read};
	nghttp2_nv *nva = NULL;
	char expect[32], *names = NULL;
	size_t n = 0, off = 0, len = 0;

	st->ex = NULL;
	if (st->closed) {
		transport_close(u->origin);
		kick(s);
		return;
	}
	if (!acc || !ws_accept(st->ws_key, expect) || acc->value_len != strlen(expect) ||
	    memcmp(acc->value, expect, acc->value_len) != 0) {
		transport_close(u->origin);
		answer(st, 502, "muxd: the origin's Sec-WebSocket-Accept does not match the key\n");
		return;
	}
	for (size_t i = 0; i < h->nfields; i++)
		len += h->fields[i].name_len;
	nva = calloc(h->nfields + 2, sizeof(*nva));
	names = malloc(len + 1);
	if (nva) {
		nva[n++] = NV(":status", 7, "200", 3);
		for (size_t i = 0; names && i < h->nfields; i++) {
			const struct http1_field *f = &h->fields[i];
			if (http1_is_hop_by_hop(h, f->name) ||
			    strcasecmp(f->name, "sec-websocket-accept") == 0 ||
			    strcasecmp(f->name, "content-length") == 0 ||
			    strcasecmp(f->name, "transfer-encoding") == 0 || f->name[0] == ':')
				continue;
			for (size_t k = 0; k < f->name_len; k++)
				names[off + k] = lower(f->name[k]);
			nva[n++] = NV(names + off, f->name_len, f->value, f->value_len);
			off += f->name_len;
		}
		if (u->via)
			nva[n++] = NV("via", 3, u->via, strlen(u->via));
	}
	st->tt.ops = &tt_ops;
	st->in_cb = evbuffer_add_cb(st->in, tt_in_moved, st);
	st->out_cb = evbuffer_add_cb(st->out, tt_out_added, st);
	if (!nva || !names || !st->in_cb || !st->out_cb ||
	    nghttp2_submit_response(s->ng, st->id, nva, n, &prd) != 0) {
		free(nva);
		free(names);
		ws_detach(st);
		transport_close(u->origin);
		nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
		kick(s);
		return;
	}
	free(nva);
	free(names);
	st->head_out = true;
	st->upgraded = true;
	st->tn = tunnel_splice(s->m, &ws_owner, st, u->origin, u->origin_eof, u->host, u->port);
	if (!st->tn) {
		ws_detach(st);
		nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
	}
	st->read_pending = true; /* a client END_STREAM that came already */
	kick(s);
}

static const struct client_stream_ops ws_ops = {
    st_read_body, st_consumed,   st_trailers,  st_send_interim, st_send_continue,
    ws_send_head, ws_send_space, ws_send_body, ws_send_end,     st_respond,
    st_done,      st_abort,      st_peer,      ws_upgrade,
};

/* An extended CONNECT: the translated upgrade to an exchange, or an answer. */
static void ws_start(struct h2s *st)
{
	struct h2_session *s = st->sess;
	struct evbuffer *h;
	struct http1_msg req;
	struct http1_uri uri;
	const char *tls_name = NULL;
	unsigned char raw[16];
	char why[700];
	size_t consumed = 0, len;
	int status;

	if (strcmp(st->method, "CONNECT") != 0 || !st->path || strcmp(st->scheme, "https") != 0 ||
	    !st->authority[0]) {
		answer(st, 400, "muxd: malformed extended CONNECT\n");
		return;
	}
	if (strcasecmp(st->protocol, "websocket") != 0 || !ws_enabled(s->m->cfg)) {
		snprintf(why, sizeof(why),
		         "muxd: protocol %s is not relayed (see [muxd] upgrade)\n", st->protocol);
		answer(st, 501, why);
		return;
	}
	if (gnutls_rnd(GNUTLS_RND_NONCE, raw, sizeof(raw)) != 0 || !(h = evbuffer_new())) {
		answer(st, 500, "muxd: out of memory\n");
		return;
	}
	http1_base64(raw, sizeof(raw), st->ws_key);
	evbuffer_add_printf(h,
	                    "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
	                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n",
	                    st->path, st->authority, st->ws_key);
	if (evbuffer_search(st->fields, "sec-websocket-version:", 22, NULL).pos < 0)
		evbuffer_add_printf(h, "Sec-WebSocket-Version: 13\r\n");
	evbuffer_add_buffer(h, st->fields);
	if (evbuffer_get_length(st->cookie) > 0) {
		evbuffer_add(h, "Cookie: ", 8);
		evbuffer_add_buffer(h, st->cookie);
		evbuffer_add(h, "\r\n", 2);
	}
	evbuffer_add(h, "\r\n", 2);
	len = evbuffer_get_length(h);
	enum http1_result r =
	    http1_parse_request((const char *)evbuffer_pullup(h, -1), len, &req, &consumed);
	evbuffer_free(h);
	if (r != HTTP1_OK) {
		answer(st, r == HTTP1_TOO_LARGE ? 431 : 400,
		       "muxd: malformed request: not a valid extended CONNECT\n");
		return;
	}
	req.body = HTTP1_BODY_NONE; /* what follows is the new protocol's */
	why[0] = '\0';
	status = s->owner->route(s->ctx, &req, &uri, &tls_name, why, sizeof(why));
	if (status) {
		http1_msg_free(&req);
		answer(st, status, why[0] ? why : "muxd: request refused\n");
		return;
	}
	st->base.ops = &ws_ops;
	st->ex = exchange_start(s->m, &st->base, &req, &uri, tls_name);
	if (!st->ex) {
		http1_msg_free(&req);
		st->base.ops = &stream_ops;
		answer(st, 500, "muxd: out of memory\n");
	}
}

/* --- nghttp2 callbacks: they record, run() acts --- */

static int flood_count(struct h2_session *s, enum client_h2_flood kind)
{
	if (ms_since(&s->flood_since) >= 1000) {
		clock_gettime(CLOCK_MONOTONIC, &s->flood_since);
		memset(s->flood, 0, sizeof(s->flood));
	}
	if (++s->flood[kind] <= flood_limit[kind])
		return 0;
	log_info("h2 client %s sent more than %u %s frames in a second (a flood): closing the "
	         "connection",
	         s->peer, flood_limit[kind], client_h2_flood_name(kind));
	s->flooded = (int)kind;
	nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
	return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int cb_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud)
{
	struct h2_session *s = ud;

	(void)ng;
	switch (hd->type) {
	case NGHTTP2_PING:
		return flood_count(s, CH2_FLOOD_PING);
	case NGHTTP2_SETTINGS:
		return flood_count(s, CH2_FLOOD_SETTINGS);
	case NGHTTP2_RST_STREAM:
		return flood_count(s, CH2_FLOOD_RST);
	case NGHTTP2_DATA:
		if (hd->length > 0 || (hd->flags & NGHTTP2_FLAG_END_STREAM))
			return 0;
		return flood_count(s, CH2_FLOOD_EMPTY);
	case NGHTTP2_HEADERS:
	case NGHTTP2_CONTINUATION:
	case NGHTTP2_GOAWAY:
	case NGHTTP2_WINDOW_UPDATE: /* counted by increment: cb_frame_recv */
		return 0;
	default:
		return flood_count(s, CH2_FLOOD_OTHER);
	}
}

static int cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st;

	if (frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	s->in_head = true;
	if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
		if ((st = stream_of(s, frame->hd.stream_id)))
			st->in_trailer = true;
		return 0;
	}
	st = stream_new(s, frame->hd.stream_id);
	if (!st)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* reset: out of memory */
	nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st);
	return 0;
}

static bool copy_pseudo(char *dst, size_t size, const uint8_t *v, size_t len)
{
	if (len >= size || len == 0)
		return false;
	memcpy(dst, v, len);
	dst[len] = '\0';
	return true;
}

/* One field of a request head (or its trailers). */
static int cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st = stream_of(s, frame->hd.stream_id);

	(void)ng;
	(void)flags;
	if (frame->hd.type != NGHTTP2_HEADERS || !st)
		return 0;
	if (st->in_trailer) {
		if (!st->trailers_in && !(st->trailers_in = evbuffer_new()))
			return 0;
		if (evbuffer_get_length(st->trailers_in) + nlen + vlen + 4 > HTTP1_MAX_HEAD)
			return 0; /* over the limit: the rest is dropped */
		evbuffer_add(st->trailers_in, name, nlen);
		evbuffer_add(st->trailers_in, ": ", 2);
		evbuffer_add(st->trailers_in, value, vlen);
		evbuffer_add(st->trailers_in, "\r\n", 2);
		return 0;
	}
	if (st->head_status)
		return 0;
	st->head_size += nlen + vlen + 32;
	if (st->head_size > HTTP1_MAX_HEAD || ++st->nfields > HTTP1_MAX_FIELDS - 4) {
		st->head_status = 431;
		return 0;
	}
	if (nlen > 0 && name[0] == ':') {
		bool ok = true;
		if (nlen == 7 && memcmp(name, ":method", 7) == 0)
			ok = copy_pseudo(st->method, sizeof(st->method), value, vlen);
		else if (nlen == 7 && memcmp(name, ":scheme", 7) == 0)
			ok = copy_pseudo(st->scheme, sizeof(st->scheme), value, vlen);
		else if (nlen == 10 && memcmp(name, ":authority", 10) == 0)
			ok = copy_pseudo(st->authority, sizeof(st->authority), value, vlen);
		else if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
			free(st->path);
			st->path =
			    vlen > HTTP1_MAX_TARGET ? NULL : strndup((const char *)value, vlen);
			ok = st->path != NULL;
		} else if (nlen == 9 && memcmp(name, ":protocol", 9) == 0)
			ok = copy_pseudo(st->protocol, sizeof(st->protocol), value, vlen);
		else
			ok = false;
		if (!ok)
			st->head_status = vlen > HTTP1_MAX_TARGET ? 431 : 400;
		return 0;
	}
	if (nlen == 4 && memcmp(name, "host", 4) == 0) {
		/* :authority wins; a Host alone stands for it (RFC 9113 8.3.1) */
		if (!st->authority[0] &&
		    !copy_pseudo(st->authority, sizeof(st->authority), value, vlen))
			st->head_status = 400;
		return 0;
	}
	if (nlen == 6 && memcmp(name, "cookie", 6) == 0) {
		/* split crumbs become one field again (RFC 9113 8.2.3) */
		if (evbuffer_get_length(st->cookie) > 0)
			evbuffer_add(st->cookie, "; ", 2);
		evbuffer_add(st->cookie, value, vlen);
		return 0;
	}
	if (nlen == 14 && memcmp(name, "content-length", 14) == 0)
		st->has_length = true;
	if (st->protocol[0] && nlen == 17 && memcmp(name, "sec-websocket-key", 17) == 0)
		return 0; /* muxd makes the key of the translated upgrade */
	evbuffer_add(st->fields, name, nlen);
	evbuffer_add(st->fields, ": ", 2);
	evbuffer_add(st->fields, value, vlen);
	evbuffer_add(st->fields, "\r\n", 2);
	return 0;
}

/* The request's trailers, filtered, as the exchange takes them. */
static void trailers_done(struct h2s *st)
{
	size_t n;

	if (!st->trailers_in)
		return;
	n = evbuffer_get_length(st->trailers_in);
	free(st->trailers);
	st->trailers = malloc(n + 1);
	if (st->trailers) {
		evbuffer_remove(st->trailers_in, st->trailers, n);
		st->trailers[n] = '\0';
		http1_filter_trailers(st->trailers);
	}
	evbuffer_free(st->trailers_in);
	st->trailers_in = NULL;
}

static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st = stream_of(s, frame->hd.stream_id);
	bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;

	(void)ng;
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		s->in_head = false;
		if (!st)
			break;
		if (end)
			st->in_end = true;
		if (end && !st->in_trailer && !st->started)
			st->head_end = true;
		if (st->in_trailer) {
			trailers_done(st);
			st->read_pending = true;
		} else if (!st->started) {
			st->start_pending = true;
		}
		break;
	case NGHTTP2_DATA:
		if (st && end) {
			st->in_end = true;
			st->read_pending = true;
		}
		break;
	case NGHTTP2_SETTINGS:
		s->preface = true;
		break;
	case NGHTTP2_WINDOW_UPDATE:
		if (frame->window_update.window_size_increment < H2S_SMALL_WINDOW_UPDATE)
			return flood_count(s, CH2_FLOOD_WINDOW);
		break;
	case NGHTTP2_GOAWAY:
		log_debug("h2 client %s: GOAWAY (%s)", s->peer,
		          nghttp2_http2_strerror(frame->goaway.error_code));
		break;
	default:
		break;
	}
	return 0;
}

static int cb_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st = stream_of(s, id);

	(void)flags;
	/* kept for the exchange, also when it is still to start (the head
	 * arrived in the same read) */
	if (!st || (st->started && !st->ex && !st->tn) || evbuffer_add(st->in, data, len) != 0) {
		nghttp2_session_consume(ng, id, len); /* nobody takes it */
		return 0;
	}
	st->read_pending = true;
	return 0;
}

/* Our response went out whole: a request body still coming is not wanted
 * (RFC 9113 8.1: RST_STREAM NO_ERROR). */
static int cb_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st = stream_of(s, frame->hd.stream_id);

	if (st && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
	    (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) && !st->in_end &&
	    !st->ex && !st->upgraded)
		nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
	return 0;
}

/* nghttp2 closed the stream (both ends done, or a reset either way): an
 * exchange still running is cut (only this one). */
static int cb_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
	struct h2_session *s = ud;
	struct h2s *st = stream_of(s, id);

	(void)ng;
	if (!st)
		return 0;
	st->closed = true;
	ws_closed(st);
	give_back(st);
	if (st->ex) {
		struct exchange *ex = st->ex;
		st->ex = NULL;
		log_debug("h2 client %s: stream %d reset (%s): its exchange ends", s->peer, id,
		          nghttp2_http2_strerror(code));
		exchange_abort(ex);
	}
	nghttp2_session_set_stream_user_data(ng, id, NULL);
	return 0;
}

static int cb_error(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud)
{
	struct h2_session *s = ud;

	(void)ng;
	log_debug("h2 client %s: %.*s (%s)", s->peer, (int)len, msg, nghttp2_strerror(code));
	return 0;
}

/* --- I/O and the run --- */

static void fail(struct h2_session *s, const char *why)
{
	if (s->failed)
		return;
	log_debug("h2 client %s: %s", s->peer, why);
	s->failed = true;
	/* only the GOAWAY goes out now, nothing queued behind it */
	nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
}

static void recv_all(struct h2_session *s)
{
	struct evbuffer *in = transport_input(s->t);

	while (!s->failed && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		ssize_t n;

		evbuffer_peek(in, -1, NULL, &v, 1);
		s->in_ng = true;
		n = nghttp2_session_mem_recv(s->ng, v.iov_base, v.iov_len);
		s->in_ng = false;
		if (n < 0) {
			if (s->flooded < 0 && n == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
				s->flooded = CH2_FLOOD_CONTINUATION;
			else if (s->flooded < 0 && n == NGHTTP2_ERR_FLOODED)
				s->flooded = CH2_FLOOD_ACK;
			if (s->flooded >= 0) {
				s->m->metrics.client_h2_floods[s->flooded]++;
				if (n != NGHTTP2_ERR_CALLBACK_FAILURE)
					nghttp2_session_terminate_session(
					    s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
			}
			fail(s, nghttp2_strerror((int)n));
			evbuffer_drain(in, evbuffer_get_length(in));
			return;
		}
		evbuffer_drain(in, (size_t)n);
	}
}

/* Frames out while the transport takes them; after a failure, what nghttp2
 * still has (its GOAWAY) goes out once. */
static void flush(struct h2_session *s)
{
	struct evbuffer *out = transport_output(s->t);

	s->in_ng = true;
	while (s->failed || evbuffer_get_length(out) < TRANSPORT_BUF) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(s->ng, &data);
		if (n < 0) {
			s->in_ng = false;
			fail(s, nghttp2_strerror((int)n));
			return;
		}
		if (n == 0)
			break;
		evbuffer_add(out, data, (size_t)n);
	}
	s->in_ng = false;
}

/* What the callbacks recorded, for the exchanges. True when anything ran. */
static bool dispatch(struct h2_session *s)
{
	bool any = false;

	for (struct h2s *st = s->streams; st && !s->failed; st = st->next) {
		if (st->upgraded) {
			any = ws_dispatch(st) || any;
			continue;
		}
		if (st->start_pending) {
			st->start_pending = false;
			any = true;
			if (!st->closed) /* reset at once: nothing to start */
				start(st);
		}
		if (st->read_pending) {
			st->read_pending = false;
			if (st->ex) {
				any = true;
				exchange_client_read(st->ex);
			}
		}
		if (st->drain_pending) {
			st->drain_pending = false;
			if (st->ex) {
				any = true;
				exchange_client_drain(st->ex);
			}
		}
	}
	return any;
}

static bool waits_on_client(struct h2_session *s)
{
	if (evbuffer_get_length(transport_output(s->t)) > 0 ||
	    (s->raw_out && evbuffer_get_length(s->raw_out) > 0))
		return true;
	for (struct h2s *st = s->streams; st; st = st->next) {
		if (!st->closed && evbuffer_get_length(st->out) > 0)
			return true; /* the client keeps its window closed (the exchange may be
			                over) */
		if (st->ex && exchange_awaits_client(st->ex) && evbuffer_get_length(st->in) == 0)
			return true;
	}
	return false;
}

static void arm(struct h2_session *s, enum h2t kind)
{
	const struct config *cfg = s->m->cfg;
	uint64_t ms = kind == H2T_HEADER ? cfg->request_header_timeout_ms
	              : kind == H2T_IDLE ? cfg->client_idle_timeout_ms
	                                 : cfg->client_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);

	s->timer_kind = kind;
	if (kind == H2T_NONE)
		evtimer_del(s->timer);
	else
		evtimer_add(s->timer, &tv);
}

static void update_timer(struct h2_session *s)
{
	enum h2t kind;

	if (s->over)
		kind = H2T_NONE;
	else if (!s->preface || s->in_head)
		kind = H2T_HEADER;
	else if (open_streams(s) == 0)
		kind = H2T_IDLE;
	else if (waits_on_client(s))
		kind = H2T_CLIENT;
	else
		kind = H2T_NONE;
	if (kind != s->timer_kind)
		arm(s, kind);
}

/* Every exchange ends (the connection is going). */
static void abort_all(struct h2_session *s)
{
	for (struct h2s *st = s->streams; st; st = st->next) {
		if (st->ex) {
			struct exchange *ex = st->ex;
			st->ex = NULL;
			exchange_abort(ex);
		}
		ws_closed(st);
	}
}

static void run(struct h2_session *s)
{
	if (s->over || s->running || s->in_ng)
		return;
	s->running = true;
	for (int i = 0; i < H2S_MAX_RUNS && !s->failed; i++) {
		recv_all(s);
		bool any = dispatch(s);
		flush(s);
		any = dispatch(s) || any;
		if (!any)
			break;
	}
	if (s->failed) {
		abort_all(s);
		if (!s->broken)
			flush(s); /* the GOAWAY nghttp2 has queued */
	}
	sweep(s);
	s->running = false;
	if (s->failed ||
	    (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))) {
		if (s->flooded < 0 && !s->failed && !s->draining)
			log_debug("h2 client %s: session ended", s->peer);
		abort_all(s);
		s->over = true;
		arm(s, H2T_NONE);
		s->owner->over(s->ctx,
		               !s->broken && evbuffer_get_length(transport_output(s->t)) > 0,
		               s->peer_eof); /* may free s */
		return;
	}
	update_timer(s);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	run(arg);
}

static void on_read(void *ctx)
{
	run(ctx);
}

static void on_drain(void *ctx)
{
	run(ctx);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct h2_session *s = ctx;

	(void)err;
	if (ev == TRANSPORT_CONNECTED)
		return;
	if (ev == TRANSPORT_EOF) {
		s->peer_eof = true;
		recv_all(s); /* what came before the end still counts */
		fail(s, "the client closed the connection");
	} else {
		s->peer_eof = true;
		s->broken = true;
		fail(s, reason ? reason : "connection error");
	}
	run(s);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct h2_session *s = arg;
	enum h2t kind = s->timer_kind;

	(void)fd;
	(void)what;
	s->timer_kind = H2T_NONE;
	if (kind == H2T_CLIENT && !waits_on_client(s)) {
		update_timer(s);
		return;
	}
	if (kind == H2T_NONE)
		return;
	log_info("h2 client %s: %s: closing", s->peer,
	         kind == H2T_HEADER ? "no complete request head within request_header_timeout"
	         : kind == H2T_IDLE ? "idle for client_idle_timeout"
	                            : "no progress for client_timeout");
	fail(s, "deadline");
	run(s);
}

/* Bytes moved on the client's socket: progress, for client_timeout. */
static void raw_progress(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct h2_session *s = arg;

	(void)b;
	if (s->timer_kind == H2T_CLIENT && (info->n_added || info->n_deleted))
		arm(s, H2T_CLIENT);
}

/* --- the session --- */

static bool session_setup(struct h2_session *s)
{
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	uint64_t conn_window = (uint64_t)s->max_streams * H2S_WINDOW;
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->max_streams},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2S_WINDOW},
	    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HTTP1_MAX_HEAD},
	    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
	    {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1}, /* RFC 8441: when websocket is */
	};
	size_t niv = sizeof(iv) / sizeof(iv[0]) - !ws_enabled(s->m->cfg);
	int rv;

	if (nghttp2_session_callbacks_new(&cb) != 0)
		return false;
	if (nghttp2_option_new(&opt) != 0) {
		nghttp2_session_callbacks_del(cb);
		return false;
	}
	nghttp2_session_callbacks_set_on_begin_frame_callback(cb, cb_begin_frame);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
	nghttp2_session_callbacks_set_on_frame_send_callback(cb, cb_frame_send);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
	nghttp2_session_callbacks_set_error_callback2(cb, cb_error);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_max_outbound_ack(opt, H2S_MAX_OUTBOUND_ACK);
	nghttp2_option_set_max_settings(opt, 32);
	nghttp2_option_set_max_continuations(opt, 8);
	nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 100);
	nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
	rv = nghttp2_session_server_new2(&s->ng, cb, s, opt);
	nghttp2_session_callbacks_del(cb);
	nghttp2_option_del(opt);
	if (rv != 0) {
		s->ng = NULL;
		return false;
	}
	return nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, niv) == 0 &&
	       nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0,
	                                             conn_window < INT32_MAX ? (int32_t)conn_window
	                                                                     : INT32_MAX) == 0;
}

struct h2_session *h2_session_new(struct muxd *m, struct transport *t,
                                  const struct h2_session_params *p,
                                  const struct h2_session_owner *owner, void *ctx)
{
	static const struct transport_cbs cbs = {on_read, on_drain, on_event};
	struct h2_session *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->m = m;
	s->t = t;
	s->owner = owner;
	s->ctx = ctx;
	s->flooded = -1;
	s->max_streams = p->max_streams ? p->max_streams : 100;
	snprintf(s->peer, sizeof(s->peer), "%s", p->peer ? p->peer : "?");
	clock_gettime(CLOCK_MONOTONIC, &s->flood_since);
	s->kick = event_new(m->base, -1, 0, on_kick, s);
	s->timer = evtimer_new(m->base, on_timer, s);
	if (!s->kick || !s->timer || !session_setup(s)) {
		h2_session_free(s);
		return NULL;
	}
	s->raw_in = p->raw_in;
	s->raw_out = p->raw_out;
	if (s->raw_in)
		s->raw_in_cb = evbuffer_add_cb(s->raw_in, raw_progress, s);
	if (s->raw_out)
		s->raw_out_cb = evbuffer_add_cb(s->raw_out, raw_progress, s);
	m->metrics.client_h2_sessions++;
	m->metrics.client_h2_open++;
	s->counted = true;
	transport_set_cbs(t, &cbs, s);
	t->ops->set_reading(t, true);
	if (m->draining)
		h2_session_drain(s);
	arm(s, H2T_HEADER);
	event_active(s->kick, EV_TIMEOUT, 0); /* SETTINGS, and bytes already waiting */
	return s;
}

void h2_session_drain(struct h2_session *s)
{
	if (s->draining || s->over)
		return;
	s->draining = true;
	nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
	                      nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR,
	                      NULL, 0);
	kick(s);
}

bool h2_session_idle(const struct h2_session *s)
{
	return open_streams(s) == 0;
}

void h2_session_free(struct h2_session *s)
{
	if (!s)
		return;
	abort_all(s);
	while (s->streams)
		stream_free(s->streams);
	if (s->raw_in_cb)
		evbuffer_remove_cb_entry(s->raw_in, s->raw_in_cb);
	if (s->raw_out_cb)
		evbuffer_remove_cb_entry(s->raw_out, s->raw_out_cb);
	if (s->counted)
		s->m->metrics.client_h2_open--;
	if (s->ng)
		nghttp2_session_del(s->ng);
	if (s->kick)
		event_free(s->kick);
	if (s->timer)
		event_free(s->timer);
	free(s);
}
