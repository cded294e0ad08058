/*
 * h1 — HTTP/1.1 upstream connections: one stream at a time on a kept-alive
 * transport. Serialises the request (re-framing the body as Content-Length
 * or chunked), parses the response strictly (http1.c) and decodes its body
 * into a bounded buffer that the exchange drains. A connection that finishes
 * a response cleanly is offered back to its owner; while idle, any byte or
 * EOF from the origin means it is dead and it leaves silently. In
 * forwarding mode (forward.h) it writes absolute-form requests with the
 * parent's Proxy-Authorization and takes its 407 as a refusal.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "hold.h"
#include "log.h"
#include "timeutil.h"
#include "transport/transport.h"
#include "upstream/forward.h"
#include "upstream/mux.h"
#include "upstream/upstream.h"

/* H1_SWITCHED: a 101 to an upgrade request is being reported (on_head);
 * the user takes the transport or cancels. */
enum h1_state { H1_IDLE, H1_HEAD, H1_BODY, H1_SWITCHED, H1_DONE };

struct h1_stream {
	struct upstream_stream base;
	enum h1_state state;
	char method[32];
	bool req_chunked;
	bool req_done;
	bool got_bytes;         /* any response byte arrived */
	bool body_done;         /* the whole body is decoded into body */
	bool tunnel;            /* CONNECT: after a 2xx the connection is a byte pipe */
	bool upgrade;           /* the request asked for a protocol switch */
	struct http1_msg *head; /* allocated per response: an idle connection holds none */
	bool head_valid;
	size_t scan_from; /* where to look for the end of the head next */
	unsigned interim; /* 1xx heads so far */
	uint64_t remaining;
	struct http1_chunked *chunked;
	struct evbuffer *body;
};

struct h1_conn {
	struct upstream_conn base;
	struct upstream_params params; /* copied at creation */
	struct fwd_mode fwd;           /* to a parent proxy that forwards */
	struct transport *t;
	struct h1_stream stream;
	struct deadline timer; /* response_timeout: no byte moved either way */
	bool eof;
	unsigned holds; /* callbacks running: free only at 0 (hold.h) */
	bool closing;   /* close() was called while held */
};

static void conn_free(struct h1_conn *c)
{
	struct h1_stream *s = &c->stream;

	if (s->head_valid)
		http1_msg_free(s->head);
	free(s->head);
	free(s->chunked);
	if (s->body)
		evbuffer_free(s->body);
	deadline_free(&c->timer);
	if (c->t) /* NULL: taken after a 101 */
		transport_close(c->t);
	fwd_mode_clear(&c->fwd);
	free(c);
}

static void hold(struct h1_conn *c)
{
	hold_take(&c->holds);
}

/* Returns false when the connection was freed. */
static bool release(struct h1_conn *c)
{
	if (hold_release(&c->holds) && c->closing) {
		conn_free(c);
		return false;
	}
	return !c->closing;
}

static void h1_close(struct upstream_conn *uc)
{
	struct h1_conn *c = (struct h1_conn *)uc;

	if (hold_close(c->holds, &c->closing))
		conn_free(c);
}

/* Close and tell the owner; reason EVICT_COUNT means "not an eviction". */
static void close_and_tell(struct h1_conn *c, enum evict_reason why)
{
	if (c->closing)
		return;
	c->base.reusable = false;
	hold(c);
	c->base.owner_cbs.on_closed(c->base.owner, &c->base, why);
	c->closing = true;
	release(c);
}

static void arm_timer(struct h1_conn *c)
{
	uint64_t ms = c->params.response_timeout_ms;
	deadline_set(&c->timer, ms); /* on every read: cheap (timeutil.h) */
}

/* A request byte moved (from the client into the output, or from the output
 * to the origin): the response timer, when it runs, counts from now. It
 * measures silence in both directions, so a long upload is never cut. */
static void request_progress(struct h1_conn *c)
{
	if (deadline_pending(&c->timer))
		arm_timer(c);
}

static void stream_reset(struct h1_stream *s)
{
	if (s->head_valid)
		http1_msg_free(s->head);
	s->head_valid = false;
	free(s->head);
	s->head = NULL;
	free(s->chunked);
	s->chunked = NULL;
	evbuffer_drain(s->body, evbuffer_get_length(s->body));
	s->state = H1_IDLE;
	s->req_done = s->req_chunked = s->got_bytes = s->body_done = s->tunnel = false;
	s->upgrade = false;
	s->scan_from = 0;
	s->interim = 0;
	s->base.ctx = NULL;
}

static void stream_error(struct h1_conn *c, enum muxd_err err, const char *reason)
{
	struct h1_stream *s = &c->stream;
	struct upstream_stream_cbs cbs = s->base.cbs;
	void *ctx = s->base.ctx;
	bool nothing = !s->got_bytes;

	deadline_clear(&c->timer);
	s->state = H1_DONE;
	hold(c);
	close_and_tell(c, EVICT_COUNT);
	cbs.on_error(ctx, err, reason, nothing);
	release(c);
}

static void stream_end(struct h1_conn *c, const char *trailers)
{
	struct h1_stream *s = &c->stream;
	bool reusable = s->req_done && s->head->keep_alive && c->base.reusable && !c->eof &&
	                evbuffer_get_length(transport_input(c->t)) == 0;

	deadline_clear(&c->timer);
	s->state = H1_DONE;
	hold(c);
	s->base.cbs.on_end(s->base.ctx, trailers);
	if (!c->closing) {
		stream_reset(s);
		if (reusable) {
			c->base.owner_cbs.on_available(c->base.owner, &c->base);
		} else {
			close_and_tell(c, EVICT_COUNT);
		}
	}
	release(c);
}

/* Parse the response head; returns false when nothing more can be done. */
static bool read_head(struct h1_conn *c, struct evbuffer *in)
{
	struct h1_stream *s = &c->stream;
	size_t len = evbuffer_get_length(in), consumed = 0;
	struct evbuffer_ptr p;

	if (len == 0)
		return false;
	s->got_bytes = true;
	if (len > HTTP1_MAX_HEAD)
		len = HTTP1_MAX_HEAD + 1;
	evbuffer_ptr_set(in, &p, s->scan_from < len ? s->scan_from : 0, EVBUFFER_PTR_SET);
	p = evbuffer_search(in, "\r\n\r\n", 4, &p);
	if (p.pos < 0 && len < HTTP1_MAX_HEAD) {
		s->scan_from = len > 3 ? len - 3 : 0;
		return false;
	}
	if (!s->head && !(s->head = malloc(sizeof(*s->head)))) {
		stream_error(c, ERR_BAD_RESPONSE, "out of memory");
		return false;
	}
	const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
	enum http1_result r = http1_parse_response(data, len, s->method, s->head, &consumed);
	if (r == HTTP1_INCOMPLETE && len < HTTP1_MAX_HEAD) {
		s->scan_from = len > 3 ? len - 3 : 0;
		return false;
	}
	if (r != HTTP1_OK) {
		stream_error(c, ERR_BAD_RESPONSE,
		             r == HTTP1_BAD ? "malformed response" : "response head too large");
		return false;
	}
	evbuffer_drain(in, consumed);
	s->scan_from = 0;
	s->head_valid = true;
	if (s->head->status == 101) {
		if (!s->upgrade || !s->req_done) {
			stream_error(c, ERR_BAD_RESPONSE,
			             s->upgrade
			                 ? "protocol switch before the request body was complete"
			                 : "unexpected protocol switch");
			return false;
		}
		/* the user takes the transport (or cancels) from inside on_head */
		s->state = H1_SWITCHED;
		c->base.reusable = false;
		deadline_clear(&c->timer);
		hold(c);
		s->base.cbs.on_head(s->base.ctx, s->head);
		if (release(c) && s->state == H1_SWITCHED)
			stream_error(c, ERR_BAD_RESPONSE, "protocol switch not taken");
		return false;
	}
	if (s->head->status < 200) {
		if (++s->interim > UPSTREAM_MAX_INTERIM) {
			stream_error(c, ERR_BAD_RESPONSE, "too many interim (1xx) responses");
			return false;
		}
		hold(c);
		s->base.cbs.on_head(s->base.ctx, s->head);
		http1_msg_free(s->head);
		s->head_valid = false;
		return release(c) && s->state == H1_HEAD;
	}
	if (c->fwd.on && s->head->status == 407 && !s->tunnel) {
		char why[400];
		fwd_refused(&c->fwd, why, sizeof(why));
		stream_error(c, ERR_CONNECT, why);
		return false;
	}
	s->state = H1_BODY;
	s->remaining = s->head->content_length;
	if (s->tunnel && s->head->status < 300) {
		/* the tunnel is up: bytes until EOF, and never another request */
		s->head->body = HTTP1_BODY_CLOSE;
		c->base.reusable = false;
		deadline_clear(&c->timer);
	}
	if (s->head->body == HTTP1_BODY_CHUNKED) {
		s->chunked = calloc(1, sizeof(*s->chunked));
		if (!s->chunked) {
			stream_error(c, ERR_BAD_RESPONSE, "out of memory");
			return false;
		}
	}
	hold(c);
	s->base.cbs.on_head(s->base.ctx, s->head);
	if (!release(c) || s->state != H1_BODY)
		return false;
	if (s->head->body == HTTP1_BODY_NONE) {
		stream_end(c, "");
		return false;
	}
	return true;
}

/* Decode body bytes into s->body while it has room. */
static void read_body(struct h1_conn *c, struct evbuffer *in)
{
	struct h1_stream *s = &c->stream;
	size_t before = evbuffer_get_length(s->body);
	bool done = false;

	while (!done && evbuffer_get_length(s->body) < TRANSPORT_BUF &&
	       evbuffer_get_length(in) > 0) {
		size_t room = TRANSPORT_BUF - evbuffer_get_length(s->body);
		if (s->head->body == HTTP1_BODY_LENGTH) {
			size_t n = evbuffer_get_length(in);
			if (n > s->remaining)
				n = (size_t)s->remaining;
			if (n > room)
				n = room;
			evbuffer_remove_buffer(in, s->body, n);
			s->remaining -= n;
			done = s->remaining == 0;
		} else if (s->head->body == HTTP1_BODY_CLOSE) {
			evbuffer_remove_buffer(in, s->body, room);
		} else {
			struct evbuffer_iovec v;
			const char *data;
			size_t consumed = 0, dlen = 0;
			evbuffer_peek(in, -1, NULL, &v, 1);
			/* the data is part of the input: never more than room */
			if (v.iov_len > room)
				v.iov_len = room;
			enum http1_chunk_event ev = http1_chunked_next(
			    s->chunked, v.iov_base, v.iov_len, &consumed, &data, &dlen);
			if (ev == HTTP1_CHUNK_DATA)
				evbuffer_add(s->body, data, dlen);
			evbuffer_drain(in, consumed);
			if (ev == HTTP1_CHUNK_NEED_MORE && consumed == 0)
				break;
			if (ev == HTTP1_CHUNK_ERROR) {
				stream_error(c, ERR_BAD_RESPONSE, "malformed chunked body");
				return;
			}
			done = ev == HTTP1_CHUNK_DONE;
		}
	}
	if (evbuffer_get_length(s->body) > before) {
		hold(c);
		s->base.cbs.on_body(s->base.ctx);
		if (!release(c) || s->state != H1_BODY)
			return;
	}
	if (done) {
		s->body_done = true;
		if (evbuffer_get_length(s->body) == 0)
			stream_end(c, s->chunked ? s->chunked->trailers : "");
		return;
	}
	if (c->eof && evbuffer_get_length(in) == 0) {
		if (s->head->body == HTTP1_BODY_CLOSE) {
			if (evbuffer_get_length(s->body) == 0)
				stream_end(c, "");
		} else {
			stream_error(c, ERR_CLOSED, "connection closed in the middle of the body");
		}
	}
}

static void process(struct h1_conn *c)
{
	struct h1_stream *s = &c->stream;
	struct evbuffer *in = transport_input(c->t);

	if (s->state == H1_HEAD) {
		bool more;
		if (evbuffer_get_length(in) > 0)
			arm_timer(c);
		/* interim (1xx) heads and the final one may share a read */
		while ((more = read_head(c, in)) && s->state == H1_HEAD)
			;
		if (!more) {
			if (!c->closing && s->state == H1_HEAD && c->eof)
				stream_error(c, ERR_CLOSED,
				             s->got_bytes ? "connection closed in the response head"
				                          : "connection closed before a response");
			return;
		}
	}
	if (s->state == H1_BODY) {
		if (s->tunnel) /* a tunnel has its own idle timer */
			deadline_clear(&c->timer);
		else if (evbuffer_get_length(s->body) < TRANSPORT_BUF)
			arm_timer(c);
		else
			deadline_clear(&c->timer);
		read_body(c, in);
	}
}

static void on_read(void *ctx)
{
	struct h1_conn *c = ctx;

	if (c->stream.state == H1_IDLE || c->stream.state == H1_DONE) {
		close_and_tell(c, EVICT_DEAD); /* an idle origin must stay silent */
		return;
	}
	hold(c);
	process(c);
	release(c);
}

static void on_drain(void *ctx)
{
	struct h1_conn *c = ctx;
	struct h1_stream *s = &c->stream;

	if (s->state == H1_HEAD || s->state == H1_BODY)
		request_progress(c);
	if ((s->state == H1_HEAD || s->state == H1_BODY) && !s->req_done &&
	    s->base.cbs.on_send_ready)
		s->base.cbs.on_send_ready(s->base.ctx);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct h1_conn *c = ctx;
	struct h1_stream *s = &c->stream;

	c->eof = true;
	if (s->state == H1_IDLE || s->state == H1_DONE) {
		close_and_tell(c, EVICT_DEAD);
		return;
	}
	if (ev == TRANSPORT_ERROR && !(s->state == H1_BODY && s->head->body == HTTP1_BODY_CLOSE)) {
		stream_error(c, err, reason);
		return;
	}
	hold(c);
	process(c);
	release(c);
}

static void on_timeout(void *arg)
{
	struct h1_conn *c = arg;
	stream_error(c, ERR_RESPONSE_TIMEOUT, "no response in time");
}

/* --- stream operations --- */

/* dst = src, cut to size like snprintf's "%s" (which costs ~500 instructions
 * a request here). */
static void copy_cut(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * The request head is written into the output in one piece: measured, then
 * copied into one reservation. Each evbuffer_add runs the buffer's
 * callbacks (~150 instructions with them), and a plain GET took 11 of them
 * plus 4 per field.
 */
struct head_out {
	char *p; /* NULL: only count */
	size_t len;
};

static void put(struct head_out *h, const char *s, size_t n)
{
	if (h->p)
		memcpy(h->p + h->len, s, n);
	h->len += n;
}

static void put_field(struct head_out *h, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
	put(h, name, nlen);
	put(h, ": ", 2);
	put(h, value, vlen);
	put(h, "\r\n", 2);
}

struct head_parts {
	const struct upstream_request *r;
	size_t method, scheme, authority, path; /* lengths */
	char len_field[48];                     /* Content-Length or Transfer-Encoding */
	size_t len_field_n;
	bool tunnel, absolute, early;
	const char *auth; /* Proxy-Authorization, or NULL */
};

static void put_head(struct head_out *h, const struct head_parts *q)
{
	const struct upstream_request *r = q->r;

	put(h, r->method, q->method);
	put(h, " ", 1);
	if (q->tunnel) {
		put(h, r->authority, q->authority);
	} else if (q->absolute) { /* the parent forwards it: absolute form */
		put(h, r->scheme, q->scheme);
		put(h, "://", 3);
		put(h, r->authority, q->authority);
		put(h, r->path, q->path);
	} else {
		put(h, r->path, q->path);
	}
	put(h, " HTTP/1.1\r\nHost: ", 17);
	put(h, r->authority, q->authority);
	put(h, "\r\n", 2);
	for (size_t i = 0; i < r->nfields; i++)
		put_field(h, r->fields[i].name, r->fields[i].name_len, r->fields[i].value,
		          r->fields[i].value_len);
	if (q->auth)
		put_field(h, "Proxy-Authorization", 19, q->auth, strlen(q->auth));
	put(h, q->len_field, q->len_field_n);
	if (q->early)
		put(h, "Early-Data: 1\r\n", 15);
	put(h, "\r\n", 2);
}

static void s_send_head(struct upstream_stream *us, const struct upstream_request *r)
{
	struct h1_stream *s = (struct h1_stream *)us;
	struct h1_conn *c = (struct h1_conn *)us->conn;
	struct evbuffer *out = transport_output(c->t);
	/* the connection's TLS handshake has not started: 0-RTT */
	bool early = r->early_data && chain_early(c->t);
	struct head_parts q = {.r = r, .early = early};
	struct head_out h = {NULL, 0};
	struct evbuffer_iovec v;
	int n;

	copy_cut(s->method, sizeof(s->method), r->method);
	s->tunnel = strcmp(r->method, "CONNECT") == 0;
	s->upgrade = r->upgrade && !s->tunnel;
	q.tunnel = s->tunnel;
	q.absolute = !s->tunnel && c->fwd.on;
	q.method = strlen(r->method);
	q.authority = strlen(r->authority);
	q.path = q.tunnel ? 0 : strlen(r->path);
	q.scheme = q.absolute ? strlen(r->scheme) : 0;
	q.auth = c->fwd.has_auth ? c->fwd.auth : NULL;
	if (r->has_body && r->content_length >= 0 && !s->tunnel)
		n = snprintf(q.len_field, sizeof(q.len_field), "Content-Length: %lld\r\n",
		             (long long)r->content_length);
	else if (r->has_body && !s->tunnel)
		n = snprintf(q.len_field, sizeof(q.len_field), "Transfer-Encoding: chunked\r\n");
	else
		n = 0;
	q.len_field_n = n > 0 ? (size_t)n : 0;
	put_head(&h, &q);
	if (evbuffer_reserve_space(out, (ev_ssize_t)h.len, &v, 1) == 1) {
		h.p = v.iov_base;
		h.len = 0;
		put_head(&h, &q);
		v.iov_len = h.len;
		evbuffer_commit_space(out, &v, 1);
	}          /* out of memory: nothing written, the response timer ends it */
	if (early) /* the whole head, and nothing else, may go early */
		chain_early_safe(c->t, evbuffer_get_length(out));
	s->req_chunked = r->has_body && r->content_length < 0 && !s->tunnel;
	s->req_done = !r->has_body;
	s->state = H1_HEAD;
	arm_timer(c);
}

static size_t s_send_space(struct upstream_stream *us)
{
	struct h1_conn *c = (struct h1_conn *)us->conn;
	size_t used = evbuffer_get_length(transport_output(c->t));
	return used >= TRANSPORT_BUF ? 0 : TRANSPORT_BUF - used;
}

static void s_send_body(struct upstream_stream *us, const void *data, size_t len)
{
	struct h1_stream *s = (struct h1_stream *)us;
	struct evbuffer *out = transport_output(((struct h1_conn *)us->conn)->t);

	if (len == 0)
		return;
	request_progress((struct h1_conn *)us->conn);
	if (s->req_chunked)
		evbuffer_add_printf(out, "%zx\r\n", len);
	evbuffer_add(out, data, len);
	if (s->req_chunked)
		evbuffer_add(out, "\r\n", 2);
}

static void s_send_end(struct upstream_stream *us, const char *trailers)
{
	struct h1_stream *s = (struct h1_stream *)us;
	struct evbuffer *out = transport_output(((struct h1_conn *)us->conn)->t);

	if (s->req_chunked)
		evbuffer_add_printf(out, "0\r\n%s\r\n", trailers ? trailers : "");
	if (s->tunnel) /* the tunnel's half-close */
		((struct h1_conn *)us->conn)->t->ops->shutdown(((struct h1_conn *)us->conn)->t);
	s->req_done = true;
}

static struct evbuffer *s_body(struct upstream_stream *us)
{
	return ((struct h1_stream *)us)->body;
}

static void s_consumed(struct upstream_stream *us)
{
	struct h1_conn *c = (struct h1_conn *)us->conn;
	struct h1_stream *s = &c->stream;

	if (s->state != H1_BODY)
		return;
	if (s->body_done && evbuffer_get_length(s->body) == 0) {
		stream_end(c, s->chunked ? s->chunked->trailers : "");
		return;
	}
	hold(c);
	process(c);
	release(c);
}

static void s_cancel(struct upstream_stream *us)
{
	struct h1_conn *c = (struct h1_conn *)us->conn;

	if (c->stream.state == H1_IDLE || c->stream.state == H1_DONE)
		return;
	c->stream.state = H1_DONE;
	deadline_clear(&c->timer);
	close_and_tell(c, EVICT_COUNT); /* HTTP/1.1 cannot abandon a response */
}

static const struct upstream_stream_ops h1_stream_ops = {
    .send_head = s_send_head,
    .send_space = s_send_space,
    .send_body = s_send_body,
    .send_end = s_send_end,
    .body = s_body,
    .consumed = s_consumed,
    .cancel = s_cancel,
};

struct transport *h1_stream_take_transport(struct upstream_stream *us, bool *eof)
{
	struct h1_conn *c = (struct h1_conn *)us->conn;
	struct transport *t;

	if (us->ops != &h1_stream_ops || c->stream.state != H1_SWITCHED || c->closing)
		return NULL;
	t = c->t;
	*eof = c->eof;
	c->t = NULL;
	c->stream.state = H1_DONE;
	h1_close(&c->base); /* held by read_head: freed once it returns */
	return t;
}

/* --- connection operations --- */

static struct upstream_stream *h1_open_stream(struct upstream_conn *uc,
                                              const struct upstream_stream_cbs *cbs, void *ctx)
{
	struct h1_conn *c = (struct h1_conn *)uc;
	struct h1_stream *s = &c->stream;

	if (s->state != H1_IDLE || !uc->reusable || c->closing)
		return NULL;
	s->base.cbs = *cbs;
	s->base.ctx = ctx;
	s->state = H1_HEAD;
	uc->requests++;
	return &s->base;
}

static unsigned h1_free_slots(struct upstream_conn *uc)
{
	struct h1_conn *c = (struct h1_conn *)uc;
	return c->stream.state == H1_IDLE && uc->reusable && !c->closing ? 1 : 0;
}

static bool h1_is_idle(struct upstream_conn *uc)
{
	return ((struct h1_conn *)uc)->stream.state == H1_IDLE;
}

static const struct upstream_conn_ops h1_conn_ops = {
    .open_stream = h1_open_stream,
    .free_slots = h1_free_slots,
    .is_idle = h1_is_idle,
    .close = h1_close,
};

struct upstream_conn *h1_conn_new(const struct upstream_env *env,
                                  const struct upstream_params *params,
                                  const struct upstream_forward *fwd, struct transport *t,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	static const struct transport_cbs tcbs = {on_read, on_drain, on_event};
	struct h1_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->params = *params;
	if (!fwd_mode_init(&c->fwd, fwd)) {
		free(c);
		return NULL;
	}
	c->t = t;
	upstream_conn_init(&c->base, &h1_conn_ops, PROTO_H1, owner_cbs, owner);
	c->stream.base.ops = &h1_stream_ops;
	c->stream.base.conn = &c->base;
	c->stream.body = evbuffer_new();
	if (!deadline_init(&c->timer, env->transport.base, on_timeout, c) || !c->stream.body) {
		c->t = NULL;
		if (c->stream.body)
			evbuffer_free(c->stream.body);
		deadline_free(&c->timer);
		fwd_mode_clear(&c->fwd);
		free(c);
		return NULL;
	}
	transport_set_cbs(t, &tcbs, c);
	t->ops->set_reading(t, true);
	return &c->base;
}
