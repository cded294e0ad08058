/*
 * connect — a CONNECT tunnel (RFC 9110 9.3.6) through an HTTP/1.1 proxy
 * connection. The request goes out through the lower layer's output; the
 * answer's head is parsed strictly (http1_parse_response) from its input.
 * After a 2xx the layer is a transparent byte stream: input() and output()
 * are the lower layer's own buffers (zero copy, the lower layer's
 * backpressure) and the lower layer's callbacks are forwarded to the user;
 * bytes that followed the head stay in the lower input as the tunnel's first
 * bytes. Work runs from the lower layer's callbacks or a deferred event,
 * never from inside a user's call. Owns: the layer below. Proxy credentials
 * are written into the request only and never logged.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"
#include "log.h"
#include "transport/transport.h"

enum hc_state {
	HC_HEAD, /* request sent; waiting for the answer's head */
	HC_OPEN, /* a transparent byte stream */
	HC_DEAD, /* failed and reported */
};

struct hc {
	struct transport base;
	struct transport *lower;
	struct event *pass_ev;
	struct evbuffer *early_in, *early_out; /* the user's buffers before CONNECTED */
	enum hc_state state;
	char *name;       /* the proxy, for messages */
	char target[300]; /* host:port, for messages */
	bool reading;     /* the user wants bytes */
	bool opened;      /* the handshake succeeded: the lower buffers are ours */
	bool shut_wanted;
	bool lower_eof, lower_failed;
	bool peer_eof;
	enum muxd_err lower_err;
	char lower_reason[256];
	char fail_reason[600]; /* a failure found in h1_connect_new, reported later */
	int holds;
	bool closing;
};

static void hc_free(struct hc *t)
{
	if (t->pass_ev)
		event_free(t->pass_ev);
	if (t->early_in)
		evbuffer_free(t->early_in);
	if (t->early_out)
		evbuffer_free(t->early_out);
	if (t->lower)
		transport_close(t->lower);
	free(t->name);
	free(t);
}

static void hold(struct hc *t)
{
	t->holds++;
}

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
static bool release(struct hc *t)
{
	if (--t->holds == 0 && t->closing) {
		hc_free(t);
		return false;
	}
	return !t->closing;
}

static void schedule(struct hc *t)
{
	if (t->pass_ev && t->state != HC_DEAD && !t->closing)
		event_active(t->pass_ev, EV_TIMEOUT, 0);
}

/* Reports an event to the user; marks the layer dead on errors. Returns
 * false when the user closed the layer. Caller holds t. */
static bool report(struct hc *t, enum transport_event ev, enum muxd_err err, const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		t->state = HC_DEAD;
		if (t->pass_ev)
			event_del(t->pass_ev);
	}
	t->base.cbs.on_event(t->base.ctx, ev, err, reason);
	return !t->closing;
}

static void fail(struct hc *t, const char *reason)
{
	log_debug("connect: %s: %s", t->target, reason);
	report(t, TRANSPORT_ERROR, ERR_CONNECT, reason);
}

static void fail_malformed(struct hc *t)
{
	char reason[600];

	snprintf(reason, sizeof(reason), "proxy %s sent a malformed answer", t->name);
	fail(t, reason);
}

/* True when the bytes so far cannot start a status line ("HTTP/1.x "). */
static bool bad_start(const unsigned char *p, size_t len)
{
	static const char prefix[] = "HTTP/1.";

	return memcmp(p, prefix, len < 7 ? len : 7) != 0;
}

/*
 * Reads answer heads: interim 1xx heads are skipped, a 2xx opens the
 * tunnel, anything else fails. Returns false when the handshake failed
 * (reported; the layer may be closed); on success t->state is HC_OPEN or
 * still HC_HEAD waiting for more bytes.
 */
static bool read_head(struct hc *t)
{
	struct evbuffer *in = transport_input(t->lower);

	for (;;) {
		size_t len = evbuffer_get_length(in), consumed = 0;
		struct http1_msg msg;
		enum http1_result r;
		unsigned char *p;
		char reason[600];

		if (len == 0)
			return true;
		if (len > HTTP1_MAX_HEAD)
			len = HTTP1_MAX_HEAD;
		p = evbuffer_pullup(in, (ssize_t)len);
		if (!p) {
			fail(t, "out of memory");
			return false;
		}
		if (bad_start(p, len)) {
			fail_malformed(t);
			return false;
		}
		r = http1_parse_response((const char *)p, len, "CONNECT", &msg, &consumed);
		if (r == HTTP1_INCOMPLETE)
			return true;
		if (r != HTTP1_OK) {
			fail_malformed(t);
			return false;
		}
		evbuffer_drain(in, consumed);
		if (msg.status >= 100 && msg.status < 200 && msg.status != 101) {
			http1_msg_free(&msg);
			continue; /* interim answer */
		}
		if (msg.status >= 200 && msg.status < 300) {
			log_debug("connect: %s via %s: %d %s", t->target, t->name, msg.status,
			          msg.reason);
			http1_msg_free(&msg);
			t->state = HC_OPEN;
			return true;
		}
		snprintf(reason, sizeof(reason), "proxy %s answered %d%s%.200s", t->name,
		         msg.status, msg.reason && *msg.reason ? " " : "",
		         msg.reason ? msg.reason : "");
		http1_msg_free(&msg);
		fail(t, reason);
		return false;
	}
}

/* The tunnel is open: hand the stream to the user. Caller holds t. */
static void become_open(struct hc *t)
{
	struct evbuffer *in = transport_input(t->lower);

	t->opened = true;
	if (evbuffer_get_length(t->early_out) > 0)
		evbuffer_add_buffer(transport_output(t->lower), t->early_out);
	if (t->shut_wanted)
		t->lower->ops->shutdown(t->lower);
	t->lower->ops->set_reading(t->lower, t->reading);
	if (!report(t, TRANSPORT_CONNECTED, ERR_NONE, NULL) || t->state != HC_OPEN)
		return;
	if (t->reading && evbuffer_get_length(in) > 0 && t->base.cbs.on_read) {
		t->base.cbs.on_read(t->base.ctx);
		if (t->closing || t->state != HC_OPEN)
			return;
	}
	if (t->lower_failed) {
		report(t, TRANSPORT_ERROR, t->lower_err, t->lower_reason);
	} else if (t->lower_eof && !t->peer_eof) {
		t->peer_eof = true;
		report(t, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
}

/* One round of work. Caller holds t. */
static void run_pass(struct hc *t)
{
	char reason[600];

	if (t->state == HC_DEAD)
		return;
	if (t->fail_reason[0]) {
		fail(t, t->fail_reason);
		return;
	}
	if (t->state == HC_OPEN) {
		/* resumed reading, or bytes that came with the head */
		if (t->reading && evbuffer_get_length(transport_input(t->lower)) > 0 &&
		    t->base.cbs.on_read)
			t->base.cbs.on_read(t->base.ctx);
		return;
	}
	if (!read_head(t))
		return;
	if (t->state == HC_OPEN) {
		become_open(t);
		return;
	}
	if (t->lower_eof || t->lower_failed) {
		snprintf(reason, sizeof(reason),
		         "proxy %s closed the connection during the handshake", t->name);
		fail(t, reason);
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hc *t = arg;

	(void)fd;
	(void)what;
	hold(t);
	run_pass(t);
	release(t);
}

static void lower_on_read(void *ctx)
{
	struct hc *t = ctx;

	if (t->state == HC_OPEN) {
		hold(t);
		if (t->base.cbs.on_read)
			t->base.cbs.on_read(t->base.ctx);
		release(t);
		return;
	}
	pass_cb(-1, 0, t);
}

static void lower_on_drain(void *ctx)
{
	struct hc *t = ctx;

	if (t->state != HC_OPEN || !t->base.cbs.on_drain)
		return;
	hold(t);
	t->base.cbs.on_drain(t->base.ctx);
	release(t);
}

static void lower_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct hc *t = ctx;

	if (ev == TRANSPORT_CONNECTED || t->state == HC_DEAD)
		return; /* lower was connected already */
	if (t->state == HC_OPEN) {
		hold(t);
		if (ev == TRANSPORT_EOF)
			t->peer_eof = true;
		report(t, ev, err, reason);
		release(t);
		return;
	}
	if (ev == TRANSPORT_EOF) {
		t->lower_eof = true;
	} else {
		t->lower_failed = true;
		t->lower_err = err;
		snprintf(t->lower_reason, sizeof(t->lower_reason), "%s",
		         reason ? reason : "connection error");
	}
	pass_cb(-1, 0, t);
}

static struct evbuffer *hc_input(struct transport *base)
{
	struct hc *t = (struct hc *)base;

	return t->opened ? transport_input(t->lower) : t->early_in;
}

static struct evbuffer *hc_output(struct transport *base)
{
	struct hc *t = (struct hc *)base;

	return t->opened ? transport_output(t->lower) : t->early_out;
}

static void hc_set_reading(struct transport *base, bool on)
{
	struct hc *t = (struct hc *)base;

	if (t->reading == on)
		return;
	t->reading = on;
	if (t->state != HC_OPEN)
		return; /* the handshake always reads; applied when it ends */
	t->lower->ops->set_reading(t->lower, on);
	if (on && evbuffer_get_length(transport_input(t->lower)) > 0)
		schedule(t);
}

static void hc_shutdown(struct transport *base)
{
	struct hc *t = (struct hc *)base;

	if (t->state == HC_OPEN)
		t->lower->ops->shutdown(t->lower);
	else
		t->shut_wanted = true;
}

static void hc_close(struct transport *base)
{
	struct hc *t = (struct hc *)base;

	if (t->holds > 0) {
		t->closing = true;
		if (t->pass_ev)
			event_del(t->pass_ev);
		return;
	}
	hc_free(t);
}

static bool hc_is_alive(struct transport *base)
{
	struct hc *t = (struct hc *)base;

	return t->state == HC_OPEN && !t->peer_eof && t->lower->ops->is_alive(t->lower);
}

static const struct transport_ops hc_ops = {
    .input = hc_input,
    .output = hc_output,
    .set_reading = hc_set_reading,
    .shutdown = hc_shutdown,
    .close = hc_close,
    .is_alive = hc_is_alive,
};

/* Base64 (RFC 4648, with padding) of src into dst (4 * ((n + 2) / 3) + 1 bytes). */
static void base64(const unsigned char *src, size_t n, char *dst)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8 | src[i + 2];

		*dst++ = alphabet[v >> 18];
		*dst++ = alphabet[(v >> 12) & 63];
		*dst++ = alphabet[(v >> 6) & 63];
		*dst++ = alphabet[v & 63];
	}
	if (i < n) {
		unsigned v = (unsigned)src[i] << 16 | (i + 1 < n ? (unsigned)src[i + 1] << 8 : 0);

		*dst++ = alphabet[v >> 18];
		*dst++ = alphabet[(v >> 12) & 63];
		*dst++ = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
		*dst++ = '=';
	}
	*dst = '\0';
}

/* A host fit for a request line: a name or an address, nothing that could
 * break the message. */
static bool host_ok(const char *host)
{
	size_t n = strlen(host);

	if (n == 0 || n > 255)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = host[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_' || c == ':'))
			return false;
	}
	return true;
}

/* Appends the request to out; returns false when out of memory. */
static bool write_request(struct hc *t, struct evbuffer *out, const char *auth)
{
	bool ok = evbuffer_add_printf(out, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", t->target,
	                              t->target) >= 0;

	if (ok && auth) {
		size_t n = strlen(auth);
		size_t size = 4 * ((n + 2) / 3) + 1;
		char *b64 = malloc(size);

		if (!b64)
			return false;
		base64((const unsigned char *)auth, n, b64);
		ok = evbuffer_add_printf(out, "Proxy-Authorization: Basic %s\r\n", b64) >= 0;
		explicit_bzero(b64, size);
		free(b64);
	}
	return ok && evbuffer_add(out, "\r\n", 2) == 0;
}

struct transport *h1_connect_new(struct muxd *m, struct transport *lower, const char *proxy_name,
                                 const char *host, uint16_t port, const char *auth,
                                 const struct transport_cbs *cbs, void *ctx)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};
	struct hc *t = calloc(1, sizeof(*t));

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->base.ops = &hc_ops;
	transport_set_cbs(&t->base, cbs, ctx);
	t->lower = lower;
	t->reading = true;
	t->name = strdup(proxy_name ? proxy_name : "");
	t->early_in = evbuffer_new();
	t->early_out = evbuffer_new();
	t->pass_ev = event_new(m->base, -1, 0, pass_cb, t);
	if (!t->name || !t->early_in || !t->early_out || !t->pass_ev) {
		hc_free(t);
		return NULL;
	}
	transport_set_cbs(lower, &lower_cbs, t);
	lower->ops->set_reading(lower, true);
	if (!host || !host_ok(host)) {
		snprintf(t->target, sizeof(t->target), "(invalid host)");
		snprintf(t->fail_reason, sizeof(t->fail_reason),
		         "proxy %s: invalid destination host name", t->name);
	} else {
		snprintf(t->target, sizeof(t->target), strchr(host, ':') ? "[%s]:%u" : "%s:%u",
		         host, port);
		if (!write_request(t, transport_output(lower), auth))
			snprintf(t->fail_reason, sizeof(t->fail_reason), "out of memory");
	}
	log_debug("connect: %s via %s%s", t->target, t->name, auth ? " (with credentials)" : "");
	if (t->fail_reason[0])
		event_active(t->pass_ev, EV_TIMEOUT, 0);
	return &t->base;
}
