/*
 * socks5 — a SOCKS5 (RFC 1928) hop over a connected proxy connection, with
 * username/password authentication (RFC 1929). The handshake runs through
 * the buffers of the layer below; once the proxy's reply has been read in
 * full, the layer is a transparent byte stream: input() and output() are the
 * lower layer's own buffers (zero copy, the lower layer's backpressure) and
 * the lower layer's callbacks are forwarded to the user. Bytes that followed
 * the reply stay in the lower input as the tunnel's first bytes. Work runs
 * from the lower layer's callbacks, the resolver's callback or a deferred
 * event, never from inside a user's call. Owns: the layer below, the
 * resolver query, copies of the credentials (wiped when no longer needed).
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "log.h"
#include "transport/transport.h"

#define SOCKS_VER 5
#define AUTH_VER 1
#define M_NONE 0x00
#define M_USERPASS 0x02
#define M_REFUSED 0xff
#define CMD_CONNECT 1
#define ATYP_V4 1
#define ATYP_DOMAIN 3
#define ATYP_V6 4

enum s5_state {
	S5_METHOD,   /* greeting sent; waiting for the method selection */
	S5_AUTH,     /* RFC 1929 request sent; waiting for its status */
	S5_WAIT_DNS, /* ready for the request, but the address is not known yet */
	S5_REPLY,    /* request sent; waiting for the whole reply */
	S5_OPEN,     /* a transparent byte stream */
	S5_DEAD,     /* failed and reported */
};

struct s5 {
	struct transport base;
	struct muxd *m;
	struct transport *lower;
	struct event *pass_ev;
	struct evbuffer *early_in, *early_out; /* the user's buffers before CONNECTED */
	struct dns_query *query;
	enum s5_state state;
	char *name; /* the proxy, for messages */
	char *host;
	char *user, *pass; /* NULL after use */
	uint16_t port;
	bool remote_dns;
	bool offered_auth;
	bool have_addr;
	struct sockaddr_storage addr;
	bool reading; /* the user wants bytes */
	bool opened;  /* the handshake succeeded: the lower buffers are ours */
	bool shut_wanted;
	bool lower_eof, lower_failed;
	bool peer_eof;
	enum muxd_err lower_err;
	char lower_reason[256];
	enum muxd_err fail_err; /* a failure found in socks5_connect, reported later */
	char fail_reason[600];
	int holds;
	bool closing;
};

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void s5_free(struct s5 *t)
{
	if (t->query)
		dns_cancel(t->query);
	if (t->pass_ev)
		event_free(t->pass_ev);
	if (t->early_in)
		evbuffer_free(t->early_in);
	if (t->early_out)
		evbuffer_free(t->early_out);
	if (t->lower)
		transport_close(t->lower);
	free(t->name);
	free(t->host);
	wipe_free(t->user);
	wipe_free(t->pass);
	free(t);
}

static void hold(struct s5 *t)
{
	t->holds++;
}

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
static bool release(struct s5 *t)
{
	if (--t->holds == 0 && t->closing) {
		s5_free(t);
		return false;
	}
	return !t->closing;
}

static void schedule(struct s5 *t)
{
	if (t->pass_ev && t->state != S5_DEAD && !t->closing)
		event_active(t->pass_ev, EV_TIMEOUT, 0);
}

/* Reports an event to the user; marks the layer dead on errors. Returns
 * false when the user closed the layer. Caller holds t. */
static bool report(struct s5 *t, enum transport_event ev, enum muxd_err err, const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		t->state = S5_DEAD;
		if (t->query) {
			dns_cancel(t->query);
			t->query = NULL;
		}
		if (t->pass_ev)
			event_del(t->pass_ev);
	}
	t->base.cbs.on_event(t->base.ctx, ev, err, reason);
	return !t->closing;
}

/* Fails the handshake: ERR_CONNECT "SOCKS5 proxy NAME: what". */
static void fail(struct s5 *t, const char *what)
{
	char reason[600];

	snprintf(reason, sizeof(reason), "SOCKS5 proxy %s: %s", t->name, what);
	log_debug("socks5: %s:%u: %s", t->host, t->port, reason);
	report(t, TRANSPORT_ERROR, ERR_CONNECT, reason);
}

static const char *reply_meaning(unsigned rep)
{
	static const char *const meanings[] = {
	    "succeeded",
	    "general SOCKS server failure",
	    "connection not allowed by ruleset",
	    "network unreachable",
	    "host unreachable",
	    "connection refused by destination host",
	    "TTL expired",
	    "command not supported",
	    "address type not supported",
	};

	return rep < sizeof(meanings) / sizeof(meanings[0]) ? meanings[rep] : NULL;
}

static void send_auth(struct s5 *t)
{
	unsigned char msg[3 + 2 * 255];
	size_t ulen = strlen(t->user), plen = t->pass ? strlen(t->pass) : 0, n = 0;

	msg[n++] = AUTH_VER;
	msg[n++] = (unsigned char)ulen;
	memcpy(msg + n, t->user, ulen);
	n += ulen;
	msg[n++] = (unsigned char)plen;
	if (plen)
		memcpy(msg + n, t->pass, plen);
	n += plen;
	evbuffer_add(transport_output(t->lower), msg, n);
	explicit_bzero(msg, sizeof(msg));
	wipe_free(t->user);
	wipe_free(t->pass);
	t->user = t->pass = NULL;
	t->state = S5_AUTH;
}

/* Sends the CONNECT request, or waits for the resolver. */
static void send_request(struct s5 *t)
{
	unsigned char msg[4 + 1 + 255 + 2];
	size_t n = 0;

	msg[n++] = SOCKS_VER;
	msg[n++] = CMD_CONNECT;
	msg[n++] = 0;
	if (!t->remote_dns && !t->have_addr) {
		t->state = S5_WAIT_DNS;
		return;
	}
	if (t->have_addr && t->addr.ss_family == AF_INET6) {
		msg[n++] = ATYP_V6;
		memcpy(msg + n, &((struct sockaddr_in6 *)&t->addr)->sin6_addr, 16);
		n += 16;
	} else if (t->have_addr) {
		msg[n++] = ATYP_V4;
		memcpy(msg + n, &((struct sockaddr_in *)&t->addr)->sin_addr, 4);
		n += 4;
	} else {
		size_t len = strlen(t->host); /* <= 255, checked in socks5_connect */

		msg[n++] = ATYP_DOMAIN;
		msg[n++] = (unsigned char)len;
		memcpy(msg + n, t->host, len);
		n += len;
	}
	msg[n++] = (unsigned char)(t->port >> 8);
	msg[n++] = (unsigned char)(t->port & 0xff);
	evbuffer_add(transport_output(t->lower), msg, n);
	t->state = S5_REPLY;
}

/*
 * Consumes what the proxy sent so far. Returns false when the handshake
 * failed (reported; the layer may be closed); on success t->state is
 * S5_OPEN or still a handshake state waiting for more bytes.
 */
static bool step(struct s5 *t)
{
	struct evbuffer *in = transport_input(t->lower);
	char what[128];

	for (;;) {
		size_t len = evbuffer_get_length(in);
		unsigned char b[4 + 1 + 255 + 2];

		switch (t->state) {
		case S5_METHOD:
			if (len < 2)
				return true;
			evbuffer_remove(in, b, 2);
			if (b[0] != SOCKS_VER) {
				fail(t, "malformed reply (not a SOCKS5 server?)");
				return false;
			}
			if (b[1] == M_NONE) {
				send_request(t);
			} else if (b[1] == M_USERPASS && t->offered_auth) {
				send_auth(t);
			} else if (b[1] == M_REFUSED) {
				fail(t, t->offered_auth ? "no acceptable authentication method"
				                        : "authentication required");
				return false;
			} else {
				fail(t, "selected an authentication method that was not offered");
				return false;
			}
			break;
		case S5_AUTH:
			if (len < 2)
				return true;
			evbuffer_remove(in, b, 2);
			if (b[0] != AUTH_VER) {
				fail(t, "malformed authentication reply");
				return false;
			}
			if (b[1] != 0) {
				fail(t, "authentication failed");
				return false;
			}
			send_request(t);
			break;
		case S5_WAIT_DNS:
			return true; /* the proxy must not speak now; leave bytes for later */
		case S5_REPLY: {
			size_t need;

			if (len < 2)
				return true;
			evbuffer_copyout(in, b, len < 5 ? len : 5);
			if (b[0] != SOCKS_VER) {
				fail(t, "malformed reply");
				return false;
			}
			if (b[1] != 0) {
				const char *m = reply_meaning(b[1]);

				if (m)
					snprintf(what, sizeof(what), "%s", m);
				else
					snprintf(what, sizeof(what), "unknown reply code %u", b[1]);
				fail(t, what);
				return false;
			}
			if (len < 5)
				return true;
			if (b[2] != 0) {
				fail(t, "malformed reply");
				return false;
			}
			if (b[3] == ATYP_V4)
				need = 4 + 4 + 2;
			else if (b[3] == ATYP_V6)
				need = 4 + 16 + 2;
			else if (b[3] == ATYP_DOMAIN && b[4] > 0)
				need = 4 + 1 + b[4] + 2;
			else {
				fail(t, "malformed reply");
				return false;
			}
			if (len < need)
				return true;
			evbuffer_drain(in, need); /* the bound address: not needed */
			t->state = S5_OPEN;
			return true;
		}
		case S5_OPEN:
		case S5_DEAD:
			return true;
		}
	}
}

/* The handshake finished: hand the stream to the user. Caller holds t. */
static void become_open(struct s5 *t)
{
	struct evbuffer *in = transport_input(t->lower);

	log_debug("socks5: %s:%u via %s: connected", t->host, t->port, t->name);
	t->opened = true;
	if (evbuffer_get_length(t->early_out) > 0)
		evbuffer_add_buffer(transport_output(t->lower), t->early_out);
	if (t->shut_wanted)
		t->lower->ops->shutdown(t->lower);
	t->lower->ops->set_reading(t->lower, t->reading);
	if (!report(t, TRANSPORT_CONNECTED, ERR_NONE, NULL) || t->state != S5_OPEN)
		return;
	if (t->reading && evbuffer_get_length(in) > 0 && t->base.cbs.on_read) {
		t->base.cbs.on_read(t->base.ctx);
		if (t->closing || t->state != S5_OPEN)
			return;
	}
	if (t->lower_failed)
		report(t, TRANSPORT_ERROR, t->lower_err, t->lower_reason);
	else if (t->lower_eof && !t->peer_eof) {
		t->peer_eof = true;
		report(t, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
}

/* One round of work. Caller holds t. */
static void run_pass(struct s5 *t)
{
	if (t->state == S5_DEAD)
		return;
	if (t->fail_err != ERR_NONE) {
		log_debug("socks5: %s:%u: %s", t->host, t->port, t->fail_reason);
		report(t, TRANSPORT_ERROR, t->fail_err, t->fail_reason);
		return;
	}
	if (t->state == S5_OPEN) {
		/* resumed reading, or bytes that came with the reply */
		if (t->reading && evbuffer_get_length(transport_input(t->lower)) > 0 &&
		    t->base.cbs.on_read)
			t->base.cbs.on_read(t->base.ctx);
		return;
	}
	if (!step(t))
		return;
	if (t->state == S5_OPEN) {
		become_open(t);
		return;
	}
	if (t->lower_eof || t->lower_failed) {
		char reason[600];

		snprintf(reason, sizeof(reason),
		         "SOCKS5 proxy %s closed the connection during the handshake", t->name);
		log_debug("socks5: %s:%u: %s", t->host, t->port, reason);
		report(t, TRANSPORT_ERROR, ERR_CONNECT, reason);
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct s5 *t = arg;

	(void)fd;
	(void)what;
	hold(t);
	run_pass(t);
	release(t);
}

static void resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct s5 *t = ctx;
	char msg[600];

	t->query = NULL;
	hold(t);
	if (err || addrs->n == 0) {
		snprintf(msg, sizeof(msg), "cannot resolve %s: %s", t->host,
		         reason ? reason : "no address");
		log_debug("socks5: %s", msg);
		report(t, TRANSPORT_ERROR, ERR_DNS, msg);
	} else {
		/* one address can be tried through the proxy: IPv4 when there is
		 * one (the resolver lists IPv6 first for happy eyeballs) */
		t->addr = addrs->addr[0];
		for (size_t i = 0; i < addrs->n; i++)
			if (addrs->addr[i].ss_family == AF_INET) {
				t->addr = addrs->addr[i];
				break;
			}
		t->have_addr = true;
		if (t->state == S5_WAIT_DNS)
			send_request(t);
	}
	release(t);
}

static void lower_on_read(void *ctx)
{
	struct s5 *t = ctx;

	if (t->state == S5_OPEN) {
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
	struct s5 *t = ctx;

	if (t->state != S5_OPEN || !t->base.cbs.on_drain)
		return;
	hold(t);
	t->base.cbs.on_drain(t->base.ctx);
	release(t);
}

static void lower_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct s5 *t = ctx;

	if (ev == TRANSPORT_CONNECTED || t->state == S5_DEAD)
		return; /* lower was connected already */
	if (t->state == S5_OPEN) {
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

static struct evbuffer *s5_input(struct transport *base)
{
	struct s5 *t = (struct s5 *)base;

	return t->opened ? transport_input(t->lower) : t->early_in;
}

static struct evbuffer *s5_output(struct transport *base)
{
	struct s5 *t = (struct s5 *)base;

	return t->opened ? transport_output(t->lower) : t->early_out;
}

static void s5_set_reading(struct transport *base, bool on)
{
	struct s5 *t = (struct s5 *)base;

	if (t->reading == on)
		return;
	t->reading = on;
	if (t->state != S5_OPEN)
		return; /* the handshake always reads; applied when it ends */
	t->lower->ops->set_reading(t->lower, on);
	if (on && evbuffer_get_length(transport_input(t->lower)) > 0)
		schedule(t);
}

static void s5_shutdown(struct transport *base)
{
	struct s5 *t = (struct s5 *)base;

	if (t->state == S5_OPEN)
		t->lower->ops->shutdown(t->lower);
	else
		t->shut_wanted = true;
}

static void s5_close(struct transport *base)
{
	struct s5 *t = (struct s5 *)base;

	if (t->holds > 0) {
		t->closing = true;
		if (t->pass_ev)
			event_del(t->pass_ev);
		return;
	}
	s5_free(t);
}

static bool s5_is_alive(struct transport *base)
{
	struct s5 *t = (struct s5 *)base;

	return t->state == S5_OPEN && !t->peer_eof && t->lower->ops->is_alive(t->lower);
}

static const struct transport_ops s5_ops = {
    .input = s5_input,
    .output = s5_output,
    .set_reading = s5_set_reading,
    .shutdown = s5_shutdown,
    .close = s5_close,
    .is_alive = s5_is_alive,
};

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

struct transport *socks5_connect(struct muxd *m, struct transport *lower, const char *proxy_name,
                                 const char *host, uint16_t port, bool remote_dns, const char *user,
                                 const char *pass, const struct transport_cbs *cbs, void *ctx)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};
	struct s5 *t = calloc(1, sizeof(*t));
	unsigned char greeting[4];
	size_t n = 0;

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->base.ops = &s5_ops;
	transport_set_cbs(&t->base, cbs, ctx);
	t->m = m;
	t->lower = lower;
	t->reading = true;
	t->port = port;
	t->remote_dns = remote_dns;
	t->name = strdup(proxy_name ? proxy_name : "");
	t->host = strdup(host ? host : "");
	t->early_in = evbuffer_new();
	t->early_out = evbuffer_new();
	t->pass_ev = event_new(m->base, -1, 0, pass_cb, t);
	if (user && *user) {
		t->offered_auth = true;
		t->user = strdup(user);
		t->pass = strdup(pass ? pass : "");
	}
	if (!t->name || !t->host || !t->early_in || !t->early_out || !t->pass_ev ||
	    (t->offered_auth && (!t->user || !t->pass))) {
		s5_free(t);
		return NULL;
	}
	transport_set_cbs(lower, &lower_cbs, t);
	lower->ops->set_reading(lower, true);

	if (!*t->host || strlen(t->host) > 255) {
		t->fail_err = ERR_CONNECT;
		snprintf(t->fail_reason, sizeof(t->fail_reason),
		         "SOCKS5 proxy %s: bad destination host name", t->name);
	} else if (t->offered_auth && (strlen(t->user) > 255 || strlen(t->pass) > 255)) {
		t->fail_err = ERR_CONNECT;
		snprintf(t->fail_reason, sizeof(t->fail_reason),
		         "SOCKS5 proxy %s: user name or password longer than 255 bytes", t->name);
	} else {
		greeting[n++] = SOCKS_VER;
		greeting[n++] = t->offered_auth ? 2 : 1;
		greeting[n++] = M_NONE;
		if (t->offered_auth)
			greeting[n++] = M_USERPASS;
		evbuffer_add(transport_output(lower), greeting, n);
		t->state = S5_METHOD;
		if (!remote_dns || is_ip_literal(t->host)) {
			t->remote_dns = false;
			t->query = dns_resolve(m->dns, t->host, port, resolved, t);
			if (!t->query) {
				t->fail_err = ERR_DNS;
				snprintf(t->fail_reason, sizeof(t->fail_reason),
				         "cannot resolve %s: out of memory", t->host);
			}
		}
	}
	log_debug("socks5: %s:%u via %s%s", t->host, port, t->name,
	          t->remote_dns ? " (remote DNS)" : "");
	if (t->fail_err != ERR_NONE)
		event_active(t->pass_ev, EV_TIMEOUT, 0);
	return &t->base;
}
