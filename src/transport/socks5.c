/*
 * socks5 — a SOCKS5 (RFC 1928) hop over a connected proxy connection, with
 * username/password authentication (RFC 1929). The handshake runs through
 * the buffers of the layer below; once the proxy's reply has been read in
 * full, the layer is a transparent byte stream (handshake.c: the lower
 * layer's own buffers and callbacks, deferred reports, hold/release). Bytes
 * that followed the reply stay in the lower input as the tunnel's first
 * bytes. Work runs from the lower layer's callbacks, the resolver's callback
 * or a deferred event, never from inside a user's call. Owns: the layer below
 * (through handshake.c), the resolver query, copies of the credentials (wiped
 * when no longer needed).
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "log.h"
#include "muxd.h"
#include "transport/handshake.h"
#include "transport/proxy_answer.h"
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

enum s5_step {
	S5_METHOD,   /* greeting sent; waiting for the method selection */
	S5_AUTH,     /* RFC 1929 request sent; waiting for its status */
	S5_WAIT_DNS, /* ready for the request, but the address is not known yet */
	S5_REPLY,    /* request sent; waiting for the whole reply */
};

struct s5 {
	struct handshake hs; /* first: the layer */
	struct dns_query *query;
	enum s5_step step;
	char *host;
	char *user, *pass; /* NULL after use */
	uint16_t port;
	bool remote_dns;
	bool offered_auth;
	bool have_addr;
	struct sockaddr_storage addr;
};

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void s5_fini(struct handshake *h)
{
	struct s5 *t = (struct s5 *)h;

	if (t->query)
		dns_cancel(t->query);
	free(t->host);
	wipe_free(t->user);
	wipe_free(t->pass);
}

/* The layer failed: no more resolving. */
static void s5_dead(struct handshake *h)
{
	struct s5 *t = (struct s5 *)h;

	if (t->query) {
		dns_cancel(t->query);
		t->query = NULL;
	}
}

static void log_failure(struct handshake *h, const char *reason)
{
	struct s5 *t = (struct s5 *)h;

	log_debug("socks5: %s:%u: %s", t->host, t->port, reason);
}

/* Fails the handshake: ERR_CONNECT "SOCKS5 proxy NAME: what". */
static void fail(struct s5 *t, const char *what)
{
	char reason[600];

	snprintf(reason, sizeof(reason), "SOCKS5 proxy %s: %.128s", t->hs.name, what);
	handshake_fail(&t->hs, ERR_CONNECT, reason);
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
	evbuffer_add(transport_output(t->hs.lower), msg, n);
	explicit_bzero(msg, sizeof(msg));
	wipe_free(t->user);
	wipe_free(t->pass);
	t->user = t->pass = NULL;
	t->step = S5_AUTH;
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
		t->step = S5_WAIT_DNS;
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
	evbuffer_add(transport_output(t->hs.lower), msg, n);
	t->step = S5_REPLY;
}

enum proxy_answer socks5_parse_answer(enum socks5_phase phase, bool offered_auth,
                                      const unsigned char *b, size_t len,
                                      struct proxy_answer_result *out)
{
	const char *m;
	size_t need;

	out->used = 0;
	out->code = 0;
	out->reason[0] = '\0';
	if (len < 2)
		return PROXY_ANSWER_MORE;
	switch (phase) {
	case SOCKS5_PHASE_METHOD:
		out->used = 2;
		out->code = b[1];
		if (b[0] != SOCKS_VER)
			m = "malformed reply (not a SOCKS5 server?)";
		else if (b[1] == M_NONE || (b[1] == M_USERPASS && offered_auth))
			return PROXY_ANSWER_NEXT;
		else if (b[1] == M_REFUSED)
			m = offered_auth ? "no acceptable authentication method"
			                 : "authentication required";
		else
			m = "selected an authentication method that was not offered";
		break;
	case SOCKS5_PHASE_AUTH:
		out->used = 2;
		if (b[0] != AUTH_VER)
			m = "malformed authentication reply";
		else if (b[1] != 0)
			m = "authentication failed";
		else
			return PROXY_ANSWER_NEXT;
		break;
	default: /* SOCKS5_PHASE_REPLY */
		if (b[0] != SOCKS_VER) {
			m = "malformed reply";
			break;
		}
		if (b[1] != 0) {
			if ((m = reply_meaning(b[1])) == NULL) {
				snprintf(out->reason, sizeof(out->reason), "unknown reply code %u",
				         b[1]);
				return PROXY_ANSWER_FAILED;
			}
			break;
		}
		if (len < 5)
			return PROXY_ANSWER_MORE;
		if (b[2] != 0) {
			m = "malformed reply";
			break;
		}
		if (b[3] == ATYP_V4)
			need = 4 + 4 + 2;
		else if (b[3] == ATYP_V6)
			need = 4 + 16 + 2;
		else if (b[3] == ATYP_DOMAIN && b[4] > 0)
			need = 4 + 1 + b[4] + 2;
		else {
			m = "malformed reply";
			break;
		}
		if (len < need)
			return PROXY_ANSWER_MORE;
		out->used = need; /* the bound address: not needed */
		return PROXY_ANSWER_OPEN;
	}
	snprintf(out->reason, sizeof(out->reason), "%s", m);
	return PROXY_ANSWER_FAILED;
}

/*
 * Consumes what the proxy sent so far. Returns false when the handshake
 * failed (reported; the layer may be closed); on success the state is
 * HANDSHAKE_OPEN or still HANDSHAKE_RUNNING waiting for more bytes.
 */
static bool step(struct handshake *h)
{
	struct s5 *t = (struct s5 *)h;
	struct evbuffer *in = transport_input(h->lower);
	struct proxy_answer_result r;

	for (;;) {
		size_t len = evbuffer_get_length(in);
		unsigned char b[4 + 1 + 255 + 2];
		enum socks5_phase phase = t->step == S5_METHOD ? SOCKS5_PHASE_METHOD
		                          : t->step == S5_AUTH ? SOCKS5_PHASE_AUTH
		                                               : SOCKS5_PHASE_REPLY;

		if (t->step == S5_WAIT_DNS)
			return true; /* the proxy must not speak now; leave bytes for later */
		if (len > sizeof(b))
			len = sizeof(b);
		evbuffer_copyout(in, b, len);
		switch (socks5_parse_answer(phase, t->offered_auth, b, len, &r)) {
		case PROXY_ANSWER_MORE:
			return true;
		case PROXY_ANSWER_FAILED:
			fail(t, r.reason);
			return false;
		case PROXY_ANSWER_OPEN:
			evbuffer_drain(in, r.used);
			log_debug("socks5: %s:%u via %s: connected", t->host, t->port, h->name);
			h->state = HANDSHAKE_OPEN;
			return true;
		case PROXY_ANSWER_NEXT:
			evbuffer_drain(in, r.used);
			if (t->step == S5_METHOD && r.code == M_USERPASS)
				send_auth(t);
			else
				send_request(t);
			break;
		}
	}
}

static void resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct s5 *t = ctx;
	char msg[600];

	t->query = NULL;
	handshake_hold(&t->hs);
	if (err || addrs->n == 0) {
		snprintf(msg, sizeof(msg), "cannot resolve %s: %s", t->host,
		         reason ? reason : "no address");
		log_debug("socks5: %s", msg);
		handshake_report(&t->hs, TRANSPORT_ERROR, ERR_DNS, msg);
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
		if (t->hs.state == HANDSHAKE_RUNNING && t->step == S5_WAIT_DNS)
			send_request(t);
	}
	handshake_release(&t->hs);
}

static const struct handshake_ops s5_ops = {
    .label = "SOCKS5 ",
    .step = step,
    .log_failure = log_failure,
    .dead = s5_dead,
    .fini = s5_fini,
};

/* Records a failure found while starting: ERR_CONNECT "SOCKS5 proxy NAME:
 * what", reported from the deferred event. */
static void fail_later(struct s5 *t, const char *what)
{
	char reason[600];

	snprintf(reason, sizeof(reason), "SOCKS5 proxy %s: %s", t->hs.name, what);
	handshake_fail_later(&t->hs, ERR_CONNECT, reason);
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

struct transport *socks5_connect(const struct transport_env *env, struct transport *lower,
                                 const char *proxy_name, const char *host, uint16_t port,
                                 bool remote_dns, const char *user, const char *pass,
                                 const struct transport_cbs *cbs, void *ctx)
{
	struct s5 *t = calloc(1, sizeof(*t));
	unsigned char greeting[4];
	char reason[600];
	size_t n = 0;
	bool ok;

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	ok = handshake_init(&t->hs, env->base, lower, &s5_ops, proxy_name, cbs, ctx);
	t->port = port;
	t->remote_dns = remote_dns;
	t->host = strdup(host ? host : "");
	if (user && *user) {
		t->offered_auth = true;
		t->user = strdup(user);
		t->pass = strdup(pass ? pass : "");
	}
	if (!ok || !t->host || (t->offered_auth && (!t->user || !t->pass))) {
		handshake_free(&t->hs);
		return NULL;
	}
	handshake_attach(&t->hs);

	if (!*t->host || strlen(t->host) > 255) {
		fail_later(t, "bad destination host name");
	} else if (t->offered_auth && (strlen(t->user) > 255 || strlen(t->pass) > 255)) {
		fail_later(t, "user name or password longer than 255 bytes");
	} else {
		greeting[n++] = SOCKS_VER;
		greeting[n++] = t->offered_auth ? 2 : 1;
		greeting[n++] = M_NONE;
		if (t->offered_auth)
			greeting[n++] = M_USERPASS;
		evbuffer_add(transport_output(lower), greeting, n);
		t->step = S5_METHOD;
		if (!remote_dns || is_ip_literal(t->host)) {
			t->remote_dns = false;
			t->query = dns_resolve(env->dns, t->host, port, resolved, t);
			if (!t->query) {
				snprintf(reason, sizeof(reason), "cannot resolve %s: out of memory",
				         t->host);
				handshake_fail_later(&t->hs, ERR_DNS, reason);
			}
		}
	}
	log_debug("socks5: %s:%u via %s%s", t->host, port, t->hs.name,
	          t->remote_dns ? " (remote DNS)" : "");
	return &t->hs.base;
}
