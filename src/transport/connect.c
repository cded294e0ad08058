/*
 * connect — a CONNECT tunnel (RFC 9110 9.3.6) through an HTTP/1.1 proxy
 * connection. The request goes out through the lower layer's output; the
 * answer's head is parsed strictly (http1_parse_response) from its input.
 * After a 2xx the layer is a transparent byte stream (handshake.c: the lower
 * layer's own buffers and callbacks, deferred reports, hold/release); bytes
 * that followed the head stay in the lower input as the tunnel's first bytes.
 * Owns: the layer below (through handshake.c). Proxy credentials are written
 * into the request only and never logged.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"
#include "log.h"
#include "transport/handshake.h"
#include "transport/proxy_answer.h"
#include "transport/transport.h"

struct hc {
	struct handshake hs; /* first: the layer */
	char target[300];    /* host:port, for messages */
};

static void log_failure(struct handshake *h, const char *reason)
{
	log_debug("connect: %s: %s", ((struct hc *)h)->target, reason);
}

static void fail(struct hc *t, const char *reason)
{
	handshake_fail(&t->hs, ERR_CONNECT, reason);
}

/* True when the bytes so far cannot start a status line ("HTTP/1.x "). */
static bool bad_start(const char *p, size_t len)
{
	static const char prefix[] = "HTTP/1.";

	return memcmp(p, prefix, len < 7 ? len : 7) != 0;
}

enum proxy_answer connect_parse_answer(const char *proxy_name, const char *p, size_t len,
                                       struct proxy_answer_result *out)
{
	struct http1_msg msg;
	enum http1_result r;
	size_t consumed = 0;

	out->used = 0;
	out->code = 0;
	out->reason[0] = '\0';
	if (len == 0)
		return PROXY_ANSWER_MORE;
	if (len > HTTP1_MAX_HEAD)
		len = HTTP1_MAX_HEAD;
	if (bad_start(p, len)) {
		r = HTTP1_BAD;
	} else {
		r = http1_parse_response(p, len, "CONNECT", &msg, &consumed);
		if (r == HTTP1_INCOMPLETE)
			return PROXY_ANSWER_MORE;
	}
	if (r != HTTP1_OK) {
		snprintf(out->reason, sizeof(out->reason), "proxy %s sent a malformed answer",
		         proxy_name);
		return PROXY_ANSWER_FAILED;
	}
	out->used = consumed;
	out->code = (unsigned)msg.status;
	if (msg.status >= 100 && msg.status < 200 && msg.status != 101) {
		http1_msg_free(&msg);
		return PROXY_ANSWER_NEXT; /* interim answer */
	}
	if (msg.status >= 200 && msg.status < 300) {
		snprintf(out->reason, sizeof(out->reason), "%d %.200s", msg.status,
		         msg.reason ? msg.reason : "");
		http1_msg_free(&msg);
		return PROXY_ANSWER_OPEN;
	}
	/* the parent's credentials are muxd's configuration: its 407 is
	 * muxd's failure (502), named as such */
	snprintf(out->reason, sizeof(out->reason), "proxy %s%s%d%s%.200s%s", proxy_name,
	         msg.status == 407 ? ": proxy authentication required (" : " answered ", msg.status,
	         msg.reason && *msg.reason ? " " : "", msg.reason ? msg.reason : "",
	         msg.status == 407 ? ")" : "");
	http1_msg_free(&msg);
	return PROXY_ANSWER_FAILED;
}

/*
 * Reads answer heads: interim 1xx heads are skipped, a 2xx opens the
 * tunnel, anything else fails. Returns false when the handshake failed
 * (reported; the layer may be closed); on success the state is
 * HANDSHAKE_OPEN or still HANDSHAKE_RUNNING waiting for more bytes.
 */
static bool read_head(struct handshake *h)
{
	struct hc *t = (struct hc *)h;
	struct evbuffer *in = transport_input(h->lower);
	struct proxy_answer_result r;

	for (;;) {
		size_t len = evbuffer_get_length(in);
		unsigned char *p;

		if (len == 0)
			return true;
		if (len > HTTP1_MAX_HEAD)
			len = HTTP1_MAX_HEAD;
		p = evbuffer_pullup(in, (ssize_t)len);
		if (!p) {
			fail(t, "out of memory");
			return false;
		}
		switch (connect_parse_answer(h->name, (const char *)p, len, &r)) {
		case PROXY_ANSWER_MORE:
			return true;
		case PROXY_ANSWER_FAILED:
			fail(t, r.reason);
			return false;
		case PROXY_ANSWER_NEXT:
			evbuffer_drain(in, r.used);
			break;
		case PROXY_ANSWER_OPEN:
			evbuffer_drain(in, r.used);
			log_debug("connect: %s via %s: %s", t->target, h->name, r.reason);
			h->state = HANDSHAKE_OPEN;
			return true;
		}
	}
}

static const struct handshake_ops hc_ops = {
    .label = "",
    .step = read_head,
    .log_failure = log_failure,
};

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
		char cred[HTTP1_BASIC_MAX];
		ok = http1_basic_credentials(auth, cred, sizeof(cred)) &&
		     evbuffer_add_printf(out, "Proxy-Authorization: %s\r\n", cred) >= 0;
		explicit_bzero(cred, sizeof(cred));
	}
	return ok && evbuffer_add(out, "\r\n", 2) == 0;
}

struct transport *h1_connect_layer_new(const struct transport_env *env, struct transport *lower,
                                       const char *proxy_name, const char *host, uint16_t port,
                                       const char *auth, const struct transport_cbs *cbs, void *ctx)
{
	struct hc *t = calloc(1, sizeof(*t));
	char reason[600];

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	if (!handshake_init(&t->hs, env->base, lower, &hc_ops, proxy_name, cbs, ctx)) {
		handshake_free(&t->hs);
		return NULL;
	}
	handshake_attach(&t->hs);
	if (!host || !host_ok(host)) {
		snprintf(t->target, sizeof(t->target), "(invalid host)");
		snprintf(reason, sizeof(reason), "proxy %s: invalid destination host name",
		         t->hs.name);
		handshake_fail_later(&t->hs, ERR_CONNECT, reason);
	} else {
		snprintf(t->target, sizeof(t->target), strchr(host, ':') ? "[%s]:%u" : "%s:%u",
		         host, port);
		if (!write_request(t, transport_output(lower), auth))
			handshake_fail_later(&t->hs, ERR_CONNECT, "out of memory");
	}
	log_debug("connect: %s via %s%s", t->target, t->hs.name, auth ? " (with credentials)" : "");
	return &t->hs.base;
}
