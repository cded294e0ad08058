/*
 * tls_server — the TLS server transport layer, for interception: a GnuTLS
 * server session whose push/pull functions move ciphertext through the
 * buffers of the layer below (an accepted client connection, whose input may
 * already hold the start of the ClientHello). The certificate is chosen from
 * the client's SNI while the handshake runs (a leaf from the local CA, or one
 * for the default host when there is no SNI); session tickets use the CA's
 * ticket key. Like the client layer, all work runs in passes started from the
 * lower layer's callbacks or a deferred event, never from inside a user's
 * call. Owns: the GnuTLS session, the plaintext buffers, a reference to the
 * leaf and the layer below.
 */
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls/ca.h"
#include "transport/tls.h"

#define TLS_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define RECORD_MAX 16384
#define ALPN_MAX 8
#define HOST_MAX 253
#define HOOK_REASON_MAX 600

enum srv_state { SRV_HANDSHAKE, SRV_OPEN, SRV_DEAD };

struct tls_srv {
	struct transport base;
	struct muxd *m;
	struct transport *lower;
	gnutls_session_t s;        /* NULL when setup failed */
	struct evbuffer *in, *out; /* plaintext */
	struct event *pass_ev;     /* runs a pass from the loop */
	enum srv_state state;
	struct local_ca *ca;
	struct local_ca_leaf *leaf;        /* the certificate in use; kept until after deinit */
	char *default_host;                /* NULL: none */
	char sni[HOST_MAX + 1];            /* what the client sent; "" when none */
	char host[HOST_MAX + 1];           /* the leaf's name (for messages) */
	char hook_reason[HOOK_REASON_MAX]; /* why choosing the certificate failed */
	bool reading;                      /* the user wants bytes */
	bool in_full;                      /* decrypting stopped because in is full */
	bool lower_eof;                    /* the layer below reported EOF */
	bool lower_failed;                 /* ... or an error (lower_err, lower_reason) */
	bool peer_eof;                     /* plaintext ended (close_notify or EOF below) */
	bool eof_reported;
	bool shut_wanted; /* user asked for a half-close */
	bool shut_done;
	enum muxd_err lower_err;
	char lower_reason[256];
	char fail_reason[512]; /* a failure found in tls_server_new, reported later */
	int holds;
	bool closing;
};

static void srv_free(struct tls_srv *t)
{
	if (t->s)
		gnutls_deinit(t->s);
	if (t->leaf)
		local_ca_leaf_put(t->leaf); /* after deinit: the session used its credentials */
	if (t->pass_ev)
		event_free(t->pass_ev);
	if (t->in)
		evbuffer_free(t->in);
	if (t->out)
		evbuffer_free(t->out);
	if (t->lower)
		transport_close(t->lower);
	free(t->default_host);
	free(t);
}

static void hold(struct tls_srv *t)
{
	t->holds++;
}

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
static bool release(struct tls_srv *t)
{
	if (--t->holds == 0 && t->closing) {
		srv_free(t);
		return false;
	}
	return !t->closing;
}

static void schedule(struct tls_srv *t)
{
	if (t->pass_ev && t->state != SRV_DEAD)
		event_active(t->pass_ev, EV_TIMEOUT, 0);
}

/* GnuTLS transport functions: ciphertext to and from the layer below. */
static ssize_t push_fn(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tls_srv *t = ptr;

	if (evbuffer_add(transport_output(t->lower), data, len) < 0) {
		gnutls_transport_set_errno(t->s, ENOMEM);
		return -1;
	}
	return (ssize_t)len;
}

static ssize_t pull_fn(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tls_srv *t = ptr;
	struct evbuffer *in = transport_input(t->lower);
	int n;

	if (evbuffer_get_length(in) == 0) {
		if (t->lower_eof || t->lower_failed)
			return 0;
		gnutls_transport_set_errno(t->s, EAGAIN);
		return -1;
	}
	n = evbuffer_remove(in, data, len);
	if (n < 0) {
		gnutls_transport_set_errno(t->s, EIO);
		return -1;
	}
	return n;
}

/* Never waits: GnuTLS asks this only to learn whether bytes are there. */
static int pull_timeout_fn(gnutls_transport_ptr_t ptr, unsigned ms)
{
	struct tls_srv *t = ptr;

	(void)ms;
	if (evbuffer_get_length(transport_input(t->lower)) > 0 || t->lower_eof || t->lower_failed)
		return 1;
	return 0;
}

static void apply_reading(struct tls_srv *t)
{
	bool on = t->state == SRV_HANDSHAKE || (t->state == SRV_OPEN && t->reading);

	t->lower->ops->set_reading(t->lower, on);
}

/* Reports an event to the user and marks the layer dead (for errors). Returns
 * false when the user closed the layer. */
static bool report(struct tls_srv *t, enum transport_event ev, enum muxd_err err,
                   const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		t->state = SRV_DEAD;
		if (t->pass_ev)
			event_del(t->pass_ev);
	}
	t->base.cbs.on_event(t->base.ctx, ev, err, reason);
	return !t->closing;
}

static bool fail_tls(struct tls_srv *t, const char *reason)
{
	log_debug("tls server: %s: %s", t->sni[0] ? t->sni : "(no SNI)", reason);
	return report(t, TRANSPORT_ERROR, ERR_TLS, reason);
}

/* A host name as it may appear in a certificate request: no control bytes,
 * spaces or other surprises from the wire. */
static bool sane_host(const char *s, size_t len)
{
	if (len == 0 || len > HOST_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return false;
	}
	return true;
}

/*
 * Runs inside gnutls_handshake once the ClientHello is parsed, before the
 * cipher suite is chosen: picks the leaf for the SNI (or the default host)
 * and installs its credentials. A failure aborts the handshake; hook_reason
 * says why.
 */
static int post_client_hello(gnutls_session_t s)
{
	struct tls_srv *t = gnutls_session_get_ptr(s);
	char name[HOST_MAX + 2], err[256];
	size_t len = sizeof(name);
	unsigned type = 0;
	bool issued = false;
	const char *host;
	int r;

	if (t->leaf)
		return 0; /* a second ClientHello (after a HelloRetryRequest) */
	r = gnutls_server_name_get(s, name, &len, &type, 0);
	if (r == 0 && type == GNUTLS_NAME_DNS) {
		if (strlen(name) != len || !sane_host(name, len)) {
			snprintf(t->hook_reason, sizeof(t->hook_reason),
			         "the client sent an invalid server name");
			return GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER;
		}
		memcpy(t->sni, name, strlen(name) + 1);
		host = t->sni;
	} else if (r == 0 || r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
		host = t->default_host;
		if (!host) {
			snprintf(t->hook_reason, sizeof(t->hook_reason),
			         "the client sent no server name and there is no default host");
			return GNUTLS_E_NO_CERTIFICATE_FOUND;
		}
	} else if (r == GNUTLS_E_SHORT_MEMORY_BUFFER) {
		snprintf(t->hook_reason, sizeof(t->hook_reason),
		         "the client sent an invalid server name");
		return GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER;
	} else {
		snprintf(t->hook_reason, sizeof(t->hook_reason), "cannot read the server name: %s",
		         gnutls_strerror(r));
		return r;
	}
	snprintf(t->host, sizeof(t->host), "%s", host);
	err[0] = '\0';
	t->leaf = local_ca_leaf_get(t->ca, host, &issued, err, sizeof(err));
	if (!t->leaf) {
		snprintf(t->hook_reason, sizeof(t->hook_reason), "no certificate for %s: %s", host,
		         err[0] ? err : "the local CA failed");
		return GNUTLS_E_CERTIFICATE_ERROR;
	}
	if (issued)
		t->m->metrics.tls_leaf_issued++;
	r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, local_ca_leaf_creds(t->leaf));
	if (r < 0) {
		snprintf(t->hook_reason, sizeof(t->hook_reason),
		         "cannot use the certificate for %s: %s", host, gnutls_strerror(r));
		return r;
	}
	return 0;
}

/* Returns false when the layer is dead or closed. */
static bool do_handshake(struct tls_srv *t)
{
	char reason[HOOK_REASON_MAX + 64];
	gnutls_datum_t proto;
	char alpn[64] = "";
	int r;

	do {
		r = gnutls_handshake(t->s);
	} while (r == GNUTLS_E_INTERRUPTED ||
	         (r < 0 && r != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(r)));
	if (r == GNUTLS_E_AGAIN) {
		if (!t->lower_eof && !t->lower_failed)
			return true;
		fail_tls(t, "client closed during the TLS handshake");
		return false;
	}
	if (r < 0) {
		if (t->hook_reason[0]) {
			snprintf(reason, sizeof(reason), "TLS handshake with the client failed: %s",
			         t->hook_reason);
		} else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
			snprintf(reason, sizeof(reason),
			         "TLS handshake with the client failed: %s (%s)",
			         gnutls_strerror(r), gnutls_alert_get_name(gnutls_alert_get(t->s)));
		} else if (t->lower_eof || t->lower_failed) {
			snprintf(reason, sizeof(reason), "client closed during the TLS handshake");
		} else {
			snprintf(reason, sizeof(reason), "TLS handshake with the client failed: %s",
			         gnutls_strerror(r));
		}
		/* tell the client why, when it can still hear it (best effort) */
		if (!t->lower_eof && !t->lower_failed && r != GNUTLS_E_FATAL_ALERT_RECEIVED)
			gnutls_alert_send_appropriate(t->s, r);
		fail_tls(t, reason);
		return false;
	}
	t->state = SRV_OPEN;
	if (gnutls_alpn_get_selected_protocol(t->s, &proto) == 0 && proto.size < sizeof(alpn)) {
		memcpy(alpn, proto.data, proto.size);
		alpn[proto.size] = '\0';
	}
	log_debug("tls server: %s for %s (%s%s%s)",
	          gnutls_session_is_resumed(t->s) ? "resumed session" : "full handshake",
	          t->sni[0] ? t->sni : t->host,
	          gnutls_protocol_get_name(gnutls_protocol_get_version(t->s)),
	          alpn[0] ? ", alpn " : "", alpn);
	apply_reading(t);
	return report(t, TRANSPORT_CONNECTED, ERR_NONE, NULL);
}

/* Plaintext out → ciphertext below while the layer below has room. Returns
 * a negative GnuTLS error, else 0; *took says whether plaintext was taken. */
static int encrypt_pass(struct tls_srv *t, bool *took)
{
	struct evbuffer *low = transport_output(t->lower);

	*took = false;
	while (evbuffer_get_length(t->out) > 0 && evbuffer_get_length(low) < TRANSPORT_BUF) {
		size_t n = evbuffer_get_length(t->out);
		unsigned char *p;
		ssize_t r;

		if (n > RECORD_MAX)
			n = RECORD_MAX;
		p = evbuffer_pullup(t->out, (ssize_t)n);
		if (!p)
			return GNUTLS_E_MEMORY_ERROR;
		r = gnutls_record_send(t->s, p, n);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			break;
		if (r < 0)
			return (int)r;
		evbuffer_drain(t->out, (size_t)r);
		*took = true;
	}
	if (t->shut_wanted && !t->shut_done && evbuffer_get_length(t->out) == 0) {
		int r = gnutls_bye(t->s, GNUTLS_SHUT_WR);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			return 0;
		t->shut_done = true;
		t->lower->ops->shutdown(t->lower);
	}
	return 0;
}

/* Ciphertext below → plaintext in while in has room. Returns a negative
 * GnuTLS error, else 0; *got says whether plaintext arrived. */
static int decrypt_pass(struct tls_srv *t, bool *got)
{
	struct evbuffer *low = transport_input(t->lower);

	*got = false;
	t->in_full = false;
	while (t->reading && !t->peer_eof) {
		struct evbuffer_iovec v;
		size_t before;
		ssize_t r;

		if (evbuffer_get_length(t->in) >= TRANSPORT_BUF) {
			t->in_full = true;
			break;
		}
		if (evbuffer_get_length(low) == 0 && gnutls_record_check_pending(t->s) == 0 &&
		    !t->lower_eof && !t->lower_failed)
			break;
		if (evbuffer_reserve_space(t->in, RECORD_MAX, &v, 1) < 1)
			return GNUTLS_E_MEMORY_ERROR;
		before = evbuffer_get_length(low);
		r = gnutls_record_recv(t->s, v.iov_base, v.iov_len);
		if (r > 0) {
			v.iov_len = (size_t)r;
			evbuffer_commit_space(t->in, &v, 1);
			*got = true;
			continue;
		}
		if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) {
			t->peer_eof = true;
			break;
		}
		if (r == GNUTLS_E_AGAIN) {
			/* also returned after a post-handshake message (a key update) */
			if (evbuffer_get_length(low) > 0 && evbuffer_get_length(low) < before)
				continue;
			if ((t->lower_eof || t->lower_failed) && evbuffer_get_length(low) == 0)
				t->peer_eof = true; /* a truncated record at EOF */
			break;
		}
		if (gnutls_error_is_fatal((int)r))
			return (int)r;
		/* a warning alert, a renegotiation attempt (refused by ignoring it) */
		if (evbuffer_get_length(low) >= before)
			break;
	}
	return 0;
}

/* One round of work; calls user callbacks last. Caller holds t. */
static void run_pass(struct tls_srv *t)
{
	bool took = false, got = false;
	int r;

	if (t->state == SRV_DEAD)
		return;
	if (!t->s) {
		fail_tls(t, t->fail_reason);
		return;
	}
	if (t->state == SRV_HANDSHAKE && !do_handshake(t))
		return;
	if (t->state != SRV_OPEN)
		return;
	r = encrypt_pass(t, &took);
	if (r == 0)
		r = decrypt_pass(t, &got);
	if (got && t->base.cbs.on_read) {
		t->base.cbs.on_read(t->base.ctx);
		if (t->closing || t->state != SRV_OPEN)
			return;
	}
	if (r < 0) {
		log_debug("tls server: %s: %s", t->host, gnutls_strerror(r));
		report(t, TRANSPORT_ERROR, ERR_CLOSED, gnutls_strerror(r));
		return;
	}
	if (took && evbuffer_get_length(t->out) < TRANSPORT_BUF / 2 && t->base.cbs.on_drain) {
		t->base.cbs.on_drain(t->base.ctx);
		if (t->closing || t->state != SRV_OPEN)
			return;
	}
	if (t->lower_failed && (!t->reading || t->peer_eof)) {
		report(t, TRANSPORT_ERROR, t->lower_err, t->lower_reason);
		return;
	}
	if (t->peer_eof && !t->eof_reported) {
		t->eof_reported = true;
		report(t, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tls_srv *t = arg;

	(void)fd;
	(void)what;
	hold(t);
	run_pass(t);
	release(t);
}

static void lower_on_read(void *ctx)
{
	pass_cb(-1, 0, ctx);
}

static void lower_on_drain(void *ctx)
{
	pass_cb(-1, 0, ctx);
}

static void lower_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct tls_srv *t = ctx;

	if (ev == TRANSPORT_EOF) {
		t->lower_eof = true;
	} else if (ev == TRANSPORT_ERROR) {
		t->lower_failed = true;
		t->lower_err = err;
		snprintf(t->lower_reason, sizeof(t->lower_reason), "%s",
		         reason ? reason : "connection error");
	} else {
		return; /* CONNECTED: lower was connected already */
	}
	pass_cb(-1, 0, t);
}

/* Plaintext buffer callbacks: only schedule a pass, never call the user. */
static void out_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	(void)buf;
	if (info->n_added > 0)
		schedule(arg);
}

static void in_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct tls_srv *t = arg;

	if (info->n_deleted > 0 && t->in_full && evbuffer_get_length(buf) < TRANSPORT_BUF)
		schedule(t);
}

static struct evbuffer *srv_input(struct transport *base)
{
	return ((struct tls_srv *)base)->in;
}

static struct evbuffer *srv_output(struct transport *base)
{
	return ((struct tls_srv *)base)->out;
}

static void srv_set_reading(struct transport *base, bool on)
{
	struct tls_srv *t = (struct tls_srv *)base;

	if (t->reading == on)
		return;
	t->reading = on;
	if (t->state == SRV_DEAD)
		return;
	apply_reading(t);
	if (on)
		schedule(t); /* plaintext may be waiting inside GnuTLS or below */
}

static void srv_shutdown(struct transport *base)
{
	struct tls_srv *t = (struct tls_srv *)base;

	if (t->shut_wanted)
		return;
	t->shut_wanted = true;
	schedule(t);
}

static void srv_close(struct transport *base)
{
	struct tls_srv *t = (struct tls_srv *)base;

	if (t->holds > 0) {
		t->closing = true;
		if (t->pass_ev)
			event_del(t->pass_ev);
		return;
	}
	srv_free(t);
}

static bool srv_is_alive(struct transport *base)
{
	struct tls_srv *t = (struct tls_srv *)base;

	return t->state == SRV_OPEN && !t->peer_eof && !t->lower_eof && !t->lower_failed &&
	       t->lower->ops->is_alive(t->lower);
}

static const struct transport_ops srv_ops = {
    .input = srv_input,
    .output = srv_output,
    .set_reading = srv_set_reading,
    .shutdown = srv_shutdown,
    .close = srv_close,
    .is_alive = srv_is_alive,
};

static int set_alpn(gnutls_session_t s, const char *list)
{
	gnutls_datum_t protos[ALPN_MAX];
	unsigned n = 0;
	const char *p = list;

	while (*p && n < ALPN_MAX) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > 0 && len < 256) {
			protos[n].data = (unsigned char *)p;
			protos[n].size = (unsigned)len;
			n++;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return n ? gnutls_alpn_set_protocols(s, protos, n, GNUTLS_ALPN_SERVER_PRECEDENCE) : 0;
}

/* Builds the session; on failure fills t->fail_reason (reported later). */
static void setup_session(struct tls_srv *t, const struct tls_server_params *p)
{
	const gnutls_datum_t *ticket_key;
	gnutls_session_t s;
	int r;

	if (!t->ca) {
		snprintf(t->fail_reason, sizeof(t->fail_reason),
		         "cannot set up the TLS session: no local CA");
		return;
	}
	r = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
	if (r < 0)
		goto fail;
	if ((r = gnutls_priority_set_direct(s, TLS_PRIORITY, NULL)) < 0)
		goto fail_deinit;
	if (p->alpn && (r = set_alpn(s, p->alpn)) < 0)
		goto fail_deinit;
	ticket_key = local_ca_ticket_key(t->ca);
	if (ticket_key && (r = gnutls_session_ticket_enable_server(s, ticket_key)) < 0)
		goto fail_deinit;
	gnutls_session_set_ptr(s, t);
	gnutls_handshake_set_post_client_hello_function(s, post_client_hello);
	gnutls_transport_set_ptr(s, t);
	gnutls_transport_set_push_function(s, push_fn);
	gnutls_transport_set_pull_function(s, pull_fn);
	gnutls_transport_set_pull_timeout_function(s, pull_timeout_fn);
	t->s = s;
	return;
fail_deinit:
	gnutls_deinit(s);
fail:
	snprintf(t->fail_reason, sizeof(t->fail_reason), "cannot set up the TLS session: %s",
	         gnutls_strerror(r));
}

struct transport *tls_server_new(struct muxd *m, struct transport *lower,
                                 const struct tls_server_params *p, const struct transport_cbs *cbs,
                                 void *ctx)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};
	struct tls_srv *t = calloc(1, sizeof(*t));

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->base.ops = &srv_ops;
	transport_set_cbs(&t->base, cbs, ctx);
	t->m = m;
	t->lower = lower;
	t->ca = p->ca;
	t->reading = true;
	t->in = evbuffer_new();
	t->out = evbuffer_new();
	t->pass_ev = event_new(m->base, -1, 0, pass_cb, t);
	if (p->default_host && *p->default_host)
		t->default_host = strdup(p->default_host);
	if (!t->in || !t->out || !t->pass_ev ||
	    (p->default_host && *p->default_host && !t->default_host) ||
	    !evbuffer_add_cb(t->in, in_changed, t) || !evbuffer_add_cb(t->out, out_changed, t)) {
		srv_free(t);
		return NULL;
	}
	transport_set_cbs(lower, &lower_cbs, t);
	setup_session(t, p);
	apply_reading(t);
	/* the first pass runs from the loop: it takes the part of the ClientHello
	 * already waiting in lower's input, or reports the setup failure */
	event_active(t->pass_ev, EV_TIMEOUT, 0);
	return &t->base;
}

const char *tls_server_sni(struct transport *base)
{
	return ((struct tls_srv *)base)->sni;
}
