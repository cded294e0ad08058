/*
 * h1_stream — an HTTP/1.1 request and its response on the client's
 * transport. The response goes out only while the client's output has room
 * (TRANSPORT_BUF), and the request body is read only as far as the exchange
 * takes it, so memory per request is bounded whatever the speeds.
 */
#include "client/h1_stream.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "transport/transport.h"

/* dst = src, cut to size like snprintf's "%s" (which costs ~500 instructions
 * a request here). */
static void copy_cut(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

bool h1_stream_begin(struct h1_stream *s, const struct client_stream_ops *ops, struct muxd *m,
                     struct transport *t, const struct http1_msg *req)
{
	memset(s, 0, sizeof(*s));
	if (req->body == HTTP1_BODY_CHUNKED && !(s->chunked = calloc(1, sizeof(*s->chunked))))
		return false;
	s->base.ops = ops;
	s->m = m;
	s->t = t;
	s->version_minor = req->version_minor;
	copy_cut(s->method, sizeof(s->method), req->method);
	s->body = req->body;
	s->keep_alive = req->keep_alive && !m->draining;
	s->remaining = req->body == HTTP1_BODY_LENGTH ? req->content_length : 0;
	s->body_done = req->body == HTTP1_BODY_NONE;
	return true;
}

void h1_stream_clear(struct h1_stream *s)
{
	free(s->chunked);
	s->chunked = NULL;
}

bool h1_stream_keep_alive(struct h1_stream *s)
{
	s->keep_alive = s->keep_alive && s->body_done;
	return s->keep_alive;
}

/* --- request body: client -> exchange --- */

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

/* Never more than the first chain holds, nor more than max: the chunked
 * decoder is fed at most that many bytes (its data is a part of them).
 * http1_chunked_next keeps a partial size or trailer line in its own state
 * and consumes all of its input on NEED_MORE, so a line split between two
 * chains needs no pull-up, and every piece consumes at least one byte. */
enum client_body h1_stream_read_body(struct client_stream *cs, size_t max, const char **data,
                                     size_t *len)
{
	struct h1_stream *s = (struct h1_stream *)cs;
	struct evbuffer *in = transport_input(s->t);
	struct evbuffer_iovec v;

	*data = NULL;
	*len = 0;
	s->drain = 0;
	if (s->body_done)
		return CLIENT_BODY_END;
	if (evbuffer_get_length(in) == 0 || !first_piece(in, &v))
		return CLIENT_BODY_NONE; /* out of memory: try again on the next event */
	if (v.iov_len > max)
		v.iov_len = max;
	if (!s->chunked) {
		size_t n = v.iov_len;
		if (n > s->remaining)
			n = (size_t)s->remaining;
		*data = v.iov_base;
		*len = n;
		s->drain = n;
		s->remaining -= n;
		s->body_done = s->remaining == 0;
		return s->body_done ? CLIENT_BODY_END : CLIENT_BODY_DATA;
	}
	size_t consumed = 0;
	const char *d = NULL;
	size_t dlen = 0;
	enum http1_chunk_event e =
	    http1_chunked_next(s->chunked, v.iov_base, v.iov_len, &consumed, &d, &dlen);
	if (e == HTTP1_CHUNK_ERROR) {
		/* the client broke its own framing: nothing sane can follow */
		s->keep_alive = false;
		s->body_done = true;
		return CLIENT_BODY_ERROR;
	}
	if (e == HTTP1_CHUNK_DATA) {
		*data = d;
		*len = dlen;
	}
	s->drain = consumed;
	if (e == HTTP1_CHUNK_DONE) {
		s->body_done = true;
		http1_filter_trailers(s->chunked->trailers);
		return CLIENT_BODY_END;
	}
	if (consumed == 0)
		return CLIENT_BODY_NONE; /* cannot happen (see above); never spin */
	return CLIENT_BODY_DATA;
}

void h1_stream_consumed(struct client_stream *cs)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	evbuffer_drain(transport_input(s->t), s->drain);
	s->drain = 0;
}

const char *h1_stream_trailers(struct client_stream *cs)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	return s->chunked ? s->chunked->trailers : "";
}

/* --- response: exchange -> client --- */

/* A head is built here and goes to the transport in one piece: every
 * evbuffer_add runs the buffer's callbacks (the transport's, the session's
 * progress watch), so adding field by field cost four rounds of them per
 * field. */
struct head_buf {
	struct evbuffer *out;
	size_t len;
	char data[4096];
};

static void put(struct head_buf *b, const char *p, size_t n)
{
	if (b->len + n > sizeof(b->data)) {
		evbuffer_add(b->out, b->data, b->len);
		b->len = 0;
		if (n > sizeof(b->data)) {
			evbuffer_add(b->out, p, n);
			return;
		}
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_str(struct head_buf *b, const char *p)
{
	put(b, p, strlen(p));
}

static void put_u64(struct head_buf *b, uint64_t v)
{
	char d[20];
	size_t i = sizeof(d);

	do
		d[--i] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	put(b, d + i, sizeof(d) - i);
}

static void add_line(struct head_buf *b, const char *name, size_t nlen, const char *value,
                     size_t vlen)
{
	put(b, name, nlen);
	put(b, ": ", 2);
	put(b, value, vlen);
	put(b, "\r\n", 2);
}

/* The head as the client gets it: end-to-end fields, then muxd's own
 * framing (s->framing for a final head). The origin's framing fields never
 * pass, except the Content-Length of a HEAD or 304 answer, which describes a
 * body that is not there. */
static void write_head(struct h1_stream *s, const struct http1_msg *h, const char *via, bool final)
{
	struct head_buf b;
	enum http1_framing fr = final ? s->framing : HTTP1_FRAME_NONE;
	bool keep_length = final && fr == HTTP1_FRAME_NONE && h->status != 204;

	b.out = transport_output(s->t);
	b.len = 0;
	put(&b, "HTTP/1.1 ", 9);
	if (h->status >= 0)
		put_u64(&b, (uint64_t)h->status);
	put(&b, " ", 1);
	put_str(&b, h->reason ? h->reason : "");
	put(&b, "\r\n", 2);
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
		add_line(&b, f->name, f->name_len, f->value, f->value_len);
	}
	if (via) {
		put(&b, "Via: ", 5);
		put_str(&b, via);
		put(&b, "\r\n", 2);
	}
	if (final) {
		if (fr == HTTP1_FRAME_EMPTY)
			put_str(&b, "Content-Length: 0\r\n");
		else if (fr == HTTP1_FRAME_LENGTH) {
			put_str(&b, "Content-Length: ");
			put_u64(&b, h->content_length);
			put(&b, "\r\n", 2);
		} else if (fr == HTTP1_FRAME_CHUNKED)
			put_str(&b, "Transfer-Encoding: chunked\r\n");
		if (!s->keep_alive)
			put_str(&b, "Connection: close\r\n");
		else if (s->version_minor == 0)
			put_str(&b, "Connection: keep-alive\r\n");
	}
	put(&b, "\r\n", 2);
	evbuffer_add(b.out, b.data, b.len);
}

void h1_stream_send_interim(struct client_stream *cs, const struct http1_msg *head, const char *via)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	if (s->version_minor != 0) /* HTTP/1.0 has no interim responses */
		write_head(s, head, via, false);
}

void h1_stream_send_switch(struct h1_stream *s, const struct http1_msg *h, const char *via)
{
	struct head_buf b = {.out = transport_output(s->t)};
	const struct http1_field *up = http1_find(h, "upgrade");

	put_str(&b, "HTTP/1.1 101 ");
	put_str(&b, h->reason[0] ? h->reason : "Switching Protocols");
	put(&b, "\r\n", 2);
	for (size_t i = 0; i < h->nfields; i++) {
		const struct http1_field *f = &h->fields[i];
		if (!http1_is_hop_by_hop(h, f->name) && strcasecmp(f->name, "content-length") != 0)
			add_line(&b, f->name, f->name_len, f->value, f->value_len);
	}
	if (up)
		add_line(&b, "Upgrade", 7, up->value, up->value_len);
	put_str(&b, "Connection: upgrade\r\n");
	if (via) {
		put_str(&b, "Via: ");
		put_str(&b, via);
		put(&b, "\r\n", 2);
	}
	put(&b, "\r\n", 2);
	evbuffer_add(b.out, b.data, b.len);
	s->body_done = true;
	s->keep_alive = false;
}

bool h1_stream_send_continue(struct client_stream *cs)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	if (s->version_minor == 0 || s->body == HTTP1_BODY_NONE)
		return false;
	evbuffer_add_printf(transport_output(s->t), "HTTP/1.1 100 Continue\r\n\r\n");
	return true;
}

void h1_stream_send_head(struct client_stream *cs, const struct http1_msg *h, const char *via,
                         bool want_trailers)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	s->framing =
	    http1_relay_framing(h->status, s->method, h->body, s->version_minor, want_trailers);
	s->chunk_out = s->framing == HTTP1_FRAME_CHUNKED;
	if (s->framing == HTTP1_FRAME_CLOSE)
		s->keep_alive =
		    false; /* an HTTP/1.0 body of unknown length ends with the connection */
	if (s->m->draining)
		s->keep_alive = false;
	/* A final answer before the whole request body (an origin refusing an
	 * upload, often before a 100 Continue): the exchange ends with the
	 * response, so the rest of the body is never read and the connection
	 * closes after it. Said in the head (RFC 9110 10.1.1), so that the client
	 * neither sends the body it held back nor reuses the connection. */
	if (!s->body_done)
		s->keep_alive = false;
	write_head(s, h, via, true);
}

size_t h1_stream_send_space(struct client_stream *cs)
{
	struct h1_stream *s = (struct h1_stream *)cs;
	size_t used = evbuffer_get_length(transport_output(s->t));

	return used >= TRANSPORT_BUF ? 0 : TRANSPORT_BUF - used;
}

void h1_stream_send_body(struct client_stream *cs, struct evbuffer *body, size_t n)
{
	struct h1_stream *s = (struct h1_stream *)cs;
	struct evbuffer *out = transport_output(s->t);

	if (s->chunk_out)
		evbuffer_add_printf(out, "%zx\r\n", n);
	evbuffer_remove_buffer(body, out, n);
	if (s->chunk_out)
		evbuffer_add(out, "\r\n", 2);
}

void h1_stream_send_end(struct client_stream *cs, const char *trailers)
{
	struct h1_stream *s = (struct h1_stream *)cs;

	if (s->chunk_out) {
		char *t = *trailers ? strdup(trailers) : NULL; /* out of memory: none */
		if (t)
			http1_filter_trailers(t);
		evbuffer_add_printf(transport_output(s->t), "0\r\n%s\r\n", t ? t : "");
		free(t);
	}
}
