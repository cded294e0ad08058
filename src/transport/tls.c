/*
 * tls — the TLS client transport layer: a GnuTLS client session whose
 * push/pull functions move ciphertext through the buffers of the layer below.
 * The user sees plaintext in this layer's own input and output buffers.
 * All work runs in "passes" (handshake, encrypt, decrypt, report) started
 * from the lower layer's callbacks or from a deferred event, never from
 * inside a user's call. Owns: the GnuTLS session, the plaintext buffers and
 * the layer below. The process-wide context owns the credentials (one per
 * trust store, loaded once) and the session resumption cache.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "transport/tls.h"

#define TLS_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define SESSION_CACHE_MAX 1024
#define RECORD_MAX 16384
#define ALPN_MAX 8

/* ---- the process-wide context ---- */

struct tls_cred {
	struct tls_cred *next;
	char *ca_file; /* NULL: the system store (or no trust anchors when !verify) */
	bool verify;
	char *client; /* the client certificate and key by file identity; NULL: none */
	gnutls_certificate_credentials_t cred;
};

struct tls_cached_session {
	struct tls_cached_session *prev, *next; /* newest first */
	char *key;
	gnutls_datum_t data;
};

struct tls_client_ctx {
	gnutls_priority_t priority;
	struct tls_cred *creds;
	struct tls_cached_session *newest, *oldest;
	size_t nsessions;
};

struct tls_client_ctx *tls_client_ctx_new(void)
{
	struct tls_client_ctx *ctx = calloc(1, sizeof(*ctx));
	const char *err_pos = NULL;

	if (!ctx)
		return NULL;
	if (gnutls_priority_init(&ctx->priority, TLS_PRIORITY, &err_pos) < 0) {
		log_error("tls: bad priority string at \"%s\"", err_pos ? err_pos : "");
		free(ctx);
		return NULL;
	}
	return ctx;
}

static void session_unlink(struct tls_client_ctx *ctx, struct tls_cached_session *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		ctx->newest = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		ctx->oldest = e->prev;
	e->prev = e->next = NULL;
	ctx->nsessions--;
}

static void session_push(struct tls_client_ctx *ctx, struct tls_cached_session *e)
{
	e->prev = NULL;
	e->next = ctx->newest;
	if (ctx->newest)
		ctx->newest->prev = e;
	else
		ctx->oldest = e;
	ctx->newest = e;
	ctx->nsessions++;
}

static void session_free(struct tls_cached_session *e)
{
	gnutls_free(e->data.data);
	free(e->key);
	free(e);
}

void tls_client_ctx_free(struct tls_client_ctx *ctx)
{
	if (!ctx)
		return;
	while (ctx->newest) {
		struct tls_cached_session *e = ctx->newest;
		session_unlink(ctx, e);
		session_free(e);
	}
	while (ctx->creds) {
		struct tls_cred *c = ctx->creds;
		ctx->creds = c->next;
		gnutls_certificate_free_credentials(c->cred);
		free(c->ca_file);
		free(c->client);
		free(c);
	}
	gnutls_priority_deinit(ctx->priority);
	free(ctx);
}

static struct tls_cached_session *session_find(struct tls_client_ctx *ctx, const char *key)
{
	for (struct tls_cached_session *e = ctx->newest; e; e = e->next)
		if (strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

/* Takes ownership of data (allocated by GnuTLS). */
static void session_store(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data)
{
	struct tls_cached_session *e = session_find(ctx, key);

	if (e) {
		session_unlink(ctx, e);
		gnutls_free(e->data.data);
	} else {
		e = calloc(1, sizeof(*e));
		if (e)
			e->key = strdup(key);
		if (!e || !e->key) {
			free(e);
			gnutls_free(data.data);
			return;
		}
	}
	e->data = data;
	session_push(ctx, e);
	while (ctx->nsessions > SESSION_CACHE_MAX) {
		struct tls_cached_session *old = ctx->oldest;
		session_unlink(ctx, old);
		session_free(old);
	}
}

/* A client certificate and key by file identity (path, device, inode, size,
 * mtime), so that replaced files are loaded afresh; false when one cannot be
 * examined (reason says which). */
static bool client_id(const char *cert, const char *key, char *buf, size_t size, char *reason,
                      size_t reason_len)
{
	const char *paths[2] = {cert, key};
	size_t len = 0;

	for (int i = 0; i < 2; i++) {
		struct stat st;
		int n;
		if (stat(paths[i], &st) != 0) {
			snprintf(reason, reason_len, "cannot load client %s %s: %s",
			         i ? "key" : "certificate", paths[i], strerror(errno));
			return false;
		}
		n = snprintf(buf + len, size - len, "%s%s@%llu:%llu:%lld:%lld", i ? " " : "",
		             paths[i], (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
		             (long long)st.st_size, (long long)st.st_mtime);
		if (n < 0 || (size_t)n >= size - len) {
			snprintf(reason, reason_len, "client certificate path too long");
			return false;
		}
		len += (size_t)n;
	}
	return true;
}

/*
 * The credentials for a trust store and a client certificate (NULL: none),
 * loaded on first use. Credentials that fail to load are not cached (the
 * files may be fixed later); reason says why.
 */
static gnutls_certificate_credentials_t get_cred(struct tls_client_ctx *ctx, const char *ca_file,
                                                 bool verify, const char *client_cert,
                                                 const char *client_key, char *reason,
                                                 size_t reason_len)
{
	gnutls_certificate_credentials_t cred;
	struct tls_cred *c;
	char client[2200];
	int r;

	if (!verify)
		ca_file = NULL; /* no trust anchors are consulted */
	if (client_cert && !client_key)
		client_key = client_cert; /* both in one PEM file */
	if (client_cert &&
	    !client_id(client_cert, client_key, client, sizeof(client), reason, reason_len))
		return NULL;
	for (c = ctx->creds; c; c = c->next)
		if (c->verify == verify &&
		    (ca_file ? c->ca_file && strcmp(c->ca_file, ca_file) == 0 : !c->ca_file) &&
		    (client_cert ? c->client && strcmp(c->client, client) == 0 : !c->client))
			return c->cred;
	if (gnutls_certificate_allocate_credentials(&cred) < 0) {
		snprintf(reason, reason_len, "out of memory");
		return NULL;
	}
	if (client_cert) {
		r = gnutls_certificate_set_x509_key_file(cred, client_cert, client_key,
		                                         GNUTLS_X509_FMT_PEM);
		if (r < 0) {
			snprintf(reason, reason_len,
			         "cannot load client certificate %s (key %s): %s", client_cert,
			         client_key, gnutls_strerror(r));
			goto fail;
		}
	}
	if (verify && ca_file) {
		FILE *f = fopen(ca_file, "r");
		if (!f) {
			snprintf(reason, reason_len, "cannot load CA file %s: %s", ca_file,
			         strerror(errno));
			goto fail;
		}
		fclose(f);
		r = gnutls_certificate_set_x509_trust_file(cred, ca_file, GNUTLS_X509_FMT_PEM);
		if (r <= 0) {
			snprintf(reason, reason_len, "cannot load CA file %s: %s", ca_file,
			         r == 0 ? "no certificates found" : gnutls_strerror(r));
			goto fail;
		}
	} else if (verify) {
		r = gnutls_certificate_set_x509_system_trust(cred);
		if (r <= 0) {
			snprintf(reason, reason_len, "cannot load the system trust store: %s",
			         r == 0 ? "no certificates found" : gnutls_strerror(r));
			goto fail;
		}
	}
	c = calloc(1, sizeof(*c));
	if (!c || (ca_file && !(c->ca_file = strdup(ca_file))) ||
	    (client_cert && !(c->client = strdup(client)))) {
		if (c)
			free(c->ca_file);
		free(c);
		snprintf(reason, reason_len, "out of memory");
		goto fail;
	}
	c->verify = verify;
	c->cred = cred;
	c->next = ctx->creds;
	ctx->creds = c;
	return cred;
fail:
	gnutls_certificate_free_credentials(cred);
	return NULL;
}

/* ---- the layer ---- */

enum tls_state { TLS_HANDSHAKE, TLS_OPEN, TLS_DEAD };

struct tls {
	struct transport base;
	struct tls_client_ctx *ctx;
	struct transport *lower;
	gnutls_session_t s;        /* NULL when setup failed */
	struct evbuffer *in, *out; /* plaintext */
	struct event *pass_ev;     /* runs a pass from the loop */
	enum tls_state state;
	char *host;        /* for messages */
	char *session_key; /* NULL: no resumption */
	char alpn[256];
	bool resumed;
	bool reading;      /* the user wants bytes */
	bool in_full;      /* decrypting stopped because in is full */
	bool lower_eof;    /* the layer below reported EOF */
	bool lower_failed; /* ... or an error (lower_err, lower_reason) */
	bool peer_eof;     /* plaintext ended (close_notify or EOF below) */
	bool eof_reported;
	bool shut_wanted; /* user asked for a half-close */
	bool shut_done;
	bool ticket_stored; /* session data saved for this connection */
	enum muxd_err lower_err;
	char lower_reason[256];
	char fail_reason[512]; /* a failure found in tls_client_new, reported later */
	int holds;
	bool closing;
};

static void tls_free(struct tls *t)
{
	if (t->s)
		gnutls_deinit(t->s);
	if (t->pass_ev)
		event_free(t->pass_ev);
	if (t->in)
		evbuffer_free(t->in);
	if (t->out)
		evbuffer_free(t->out);
	if (t->lower)
		transport_close(t->lower);
	free(t->host);
	free(t->session_key);
	free(t);
}

static void hold(struct tls *t)
{
	t->holds++;
}

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
static bool release(struct tls *t)
{
	if (--t->holds == 0 && t->closing) {
		tls_free(t);
		return false;
	}
	return !t->closing;
}

static void schedule(struct tls *t)
{
	if (t->pass_ev && t->state != TLS_DEAD)
		event_active(t->pass_ev, EV_TIMEOUT, 0);
}

/* GnuTLS transport functions: ciphertext to and from the layer below. */
static ssize_t push_fn(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tls *t = ptr;

	if (evbuffer_add(transport_output(t->lower), data, len) < 0) {
		gnutls_transport_set_errno(t->s, ENOMEM);
		return -1;
	}
	return (ssize_t)len;
}

static ssize_t pull_fn(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tls *t = ptr;
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
	struct tls *t = ptr;

	(void)ms;
	if (evbuffer_get_length(transport_input(t->lower)) > 0 || t->lower_eof || t->lower_failed)
		return 1;
	return 0;
}

static void apply_reading(struct tls *t)
{
	bool on = t->state == TLS_HANDSHAKE || (t->state == TLS_OPEN && t->reading);

	t->lower->ops->set_reading(t->lower, on);
}

/* Reports an event to the user and marks the layer dead (for errors). Returns
 * false when the user closed the layer. */
static bool report(struct tls *t, enum transport_event ev, enum muxd_err err, const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		t->state = TLS_DEAD;
		if (t->pass_ev)
			event_del(t->pass_ev);
	}
	t->base.cbs.on_event(t->base.ctx, ev, err, reason);
	return !t->closing;
}

static bool fail_tls(struct tls *t, const char *reason)
{
	log_debug("tls: %s: %s", t->host, reason);
	return report(t, TRANSPORT_ERROR, ERR_TLS, reason);
}

static void verify_reason(struct tls *t, char *buf, size_t len)
{
	unsigned status = gnutls_session_get_verify_cert_status(t->s);
	gnutls_datum_t out = {NULL, 0};

	if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
		snprintf(buf, len, "certificate signed by unknown authority");
	} else if (status & GNUTLS_CERT_SIGNER_NOT_CA) {
		snprintf(buf, len, "certificate signed by a certificate that is not a CA");
	} else if (status & GNUTLS_CERT_REVOKED) {
		snprintf(buf, len, "certificate has been revoked");
	} else if (status & GNUTLS_CERT_EXPIRED) {
		snprintf(buf, len, "certificate has expired");
	} else if (status & GNUTLS_CERT_NOT_ACTIVATED) {
		snprintf(buf, len, "certificate is not yet valid");
	} else if (status & GNUTLS_CERT_INSECURE_ALGORITHM) {
		snprintf(buf, len, "certificate uses an insecure algorithm");
	} else if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
		snprintf(buf, len, "certificate name does not match %s", t->host);
	} else if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) ==
	           0) {
		snprintf(buf, len, "certificate verification failed: %s", (char *)out.data);
		gnutls_free(out.data);
	} else {
		snprintf(buf, len, "certificate verification failed");
	}
}

static void maybe_store_session(struct tls *t)
{
	gnutls_datum_t data = {NULL, 0};

	if (t->ticket_stored || !t->session_key)
		return;
	/* TLS 1.3: only a received ticket resumes; before it GnuTLS gives dummy data */
	if (gnutls_protocol_get_version(t->s) == GNUTLS_TLS1_3 &&
	    !(gnutls_session_get_flags(t->s) & GNUTLS_SFLAGS_SESSION_TICKET))
		return;
	if (gnutls_session_get_data2(t->s, &data) < 0 || data.size == 0) {
		gnutls_free(data.data);
		return;
	}
	t->ticket_stored = true;
	session_store(t->ctx, t->session_key, data);
}

/* Returns false when the layer is dead or closed. */
static bool do_handshake(struct tls *t)
{
	char reason[512];
	gnutls_datum_t proto;
	int r;

	do {
		r = gnutls_handshake(t->s);
	} while (r == GNUTLS_E_INTERRUPTED ||
	         (r < 0 && r != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(r)));
	if (r == GNUTLS_E_AGAIN) {
		if (!t->lower_eof && !t->lower_failed)
			return true;
		fail_tls(t, "connection closed during the TLS handshake");
		return false;
	}
	if (r < 0) {
		if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR)
			verify_reason(t, reason, sizeof(reason));
		else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED)
			snprintf(reason, sizeof(reason), "handshake failed: %s (%s)",
			         gnutls_strerror(r), gnutls_alert_get_name(gnutls_alert_get(t->s)));
		else if (t->lower_eof || t->lower_failed)
			snprintf(reason, sizeof(reason),
			         "connection closed during the TLS handshake");
		else
			snprintf(reason, sizeof(reason), "handshake failed: %s",
			         gnutls_strerror(r));
		fail_tls(t, reason);
		return false;
	}
	t->state = TLS_OPEN;
	t->resumed = gnutls_session_is_resumed(t->s) != 0;
	if (gnutls_alpn_get_selected_protocol(t->s, &proto) == 0 && proto.size < sizeof(t->alpn)) {
		memcpy(t->alpn, proto.data, proto.size);
		t->alpn[proto.size] = '\0';
	}
	log_debug("tls: %s for %s (%s%s%s)", t->resumed ? "resumed session" : "full handshake",
	          t->session_key ? t->session_key : t->host,
	          gnutls_protocol_get_name(gnutls_protocol_get_version(t->s)),
	          t->alpn[0] ? ", alpn " : "", t->alpn);
	maybe_store_session(t);
	apply_reading(t);
	return report(t, TRANSPORT_CONNECTED, ERR_NONE, NULL);
}

/* Plaintext out → ciphertext below while the layer below has room. Returns
 * a negative GnuTLS error, else whether any plaintext was taken. */
static int encrypt_pass(struct tls *t, bool *took)
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
static int decrypt_pass(struct tls *t, bool *got)
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
			maybe_store_session(t);
			continue;
		}
		maybe_store_session(t);
		if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) {
			t->peer_eof = true;
			break;
		}
		if (r == GNUTLS_E_AGAIN) {
			/* also returned after a post-handshake message (a ticket) */
			if (evbuffer_get_length(low) > 0 && evbuffer_get_length(low) < before)
				continue;
			if ((t->lower_eof || t->lower_failed) && evbuffer_get_length(low) == 0)
				t->peer_eof = true; /* a truncated record at EOF */
			break;
		}
		if (gnutls_error_is_fatal((int)r))
			return (int)r;
		/* a warning alert, a renegotiation request (refused by ignoring it) */
		if (evbuffer_get_length(low) >= before)
			break;
	}
	return 0;
}

/* One round of work; calls user callbacks last. Caller holds t. */
static void run_pass(struct tls *t)
{
	bool took = false, got = false;
	int r;

	if (t->state == TLS_DEAD)
		return;
	if (!t->s) {
		fail_tls(t, t->fail_reason);
		return;
	}
	if (t->state == TLS_HANDSHAKE && !do_handshake(t))
		return;
	if (t->state != TLS_OPEN)
		return;
	r = encrypt_pass(t, &took);
	if (r == 0)
		r = decrypt_pass(t, &got);
	if (got && t->base.cbs.on_read) {
		t->base.cbs.on_read(t->base.ctx);
		if (t->closing || t->state != TLS_OPEN)
			return;
	}
	if (r < 0) {
		log_debug("tls: %s: %s", t->host, gnutls_strerror(r));
		report(t, TRANSPORT_ERROR, ERR_CLOSED, gnutls_strerror(r));
		return;
	}
	if (took && evbuffer_get_length(t->out) < TRANSPORT_BUF / 2 && t->base.cbs.on_drain) {
		t->base.cbs.on_drain(t->base.ctx);
		if (t->closing || t->state != TLS_OPEN)
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
	struct tls *t = arg;

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
	struct tls *t = ctx;

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
	struct tls *t = arg;

	if (info->n_deleted > 0 && t->in_full && evbuffer_get_length(buf) < TRANSPORT_BUF)
		schedule(t);
}

static struct evbuffer *tls_input(struct transport *base)
{
	return ((struct tls *)base)->in;
}

static struct evbuffer *tls_output(struct transport *base)
{
	return ((struct tls *)base)->out;
}

static void tls_set_reading(struct transport *base, bool on)
{
	struct tls *t = (struct tls *)base;

	if (t->reading == on)
		return;
	t->reading = on;
	if (t->state == TLS_DEAD)
		return;
	apply_reading(t);
	if (on)
		schedule(t); /* plaintext may be waiting inside GnuTLS or below */
}

static void tls_shutdown(struct transport *base)
{
	struct tls *t = (struct tls *)base;

	if (t->shut_wanted)
		return;
	t->shut_wanted = true;
	schedule(t);
}

static void tls_close(struct transport *base)
{
	struct tls *t = (struct tls *)base;

	if (t->holds > 0) {
		t->closing = true;
		if (t->pass_ev)
			event_del(t->pass_ev);
		return;
	}
	tls_free(t);
}

static bool tls_is_alive(struct transport *base)
{
	struct tls *t = (struct tls *)base;

	return t->state == TLS_OPEN && !t->peer_eof && !t->lower_eof && !t->lower_failed &&
	       t->lower->ops->is_alive(t->lower);
}

static const struct transport_ops tls_ops = {
    .input = tls_input,
    .output = tls_output,
    .set_reading = tls_set_reading,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .is_alive = tls_is_alive,
};

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

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
	return n ? gnutls_alpn_set_protocols(s, protos, n, 0) : 0;
}

/* Builds the session; on failure fills t->fail_reason (reported later). */
static void setup_session(struct tls *t, const struct tls_client_params *p, const char *client_cert,
                          const char *client_key)
{
	gnutls_certificate_credentials_t cred;
	struct tls_cached_session *cached;
	gnutls_session_t s;
	int r;

	cred = get_cred(t->ctx, p->ca_file, p->verify, client_cert, client_key, t->fail_reason,
	                sizeof(t->fail_reason));
	if (!cred)
		return;
	r = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
	if (r < 0)
		goto fail;
	if ((r = gnutls_priority_set(s, t->ctx->priority)) < 0 ||
	    (r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred)) < 0)
		goto fail_deinit;
	if (p->sni && *p->sni && !is_ip_literal(p->sni) &&
	    (r = gnutls_server_name_set(s, GNUTLS_NAME_DNS, p->sni, strlen(p->sni))) < 0)
		goto fail_deinit;
	if (p->verify)
		gnutls_session_set_verify_cert(s, p->sni && *p->sni ? p->sni : NULL, 0);
	if (p->alpn && (r = set_alpn(s, p->alpn)) < 0)
		goto fail_deinit;
	if (t->session_key && (cached = session_find(t->ctx, t->session_key)))
		gnutls_session_set_data(s, cached->data.data, cached->data.size);
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

struct transport *tls_client_new(struct muxd *m, struct transport *lower,
                                 const struct tls_client_params *p, const struct transport_cbs *cbs,
                                 void *ctx)
{
	return tls_client_new_cert(m, lower, p, NULL, NULL, cbs, ctx);
}

struct transport *tls_client_new_cert(struct muxd *m, struct transport *lower,
                                      const struct tls_client_params *p, const char *client_cert,
                                      const char *client_key, const struct transport_cbs *cbs,
                                      void *ctx)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};
	struct tls *t = calloc(1, sizeof(*t));

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->base.ops = &tls_ops;
	transport_set_cbs(&t->base, cbs, ctx);
	t->ctx = m->tls;
	t->lower = lower;
	t->reading = true;
	t->in = evbuffer_new();
	t->out = evbuffer_new();
	t->pass_ev = event_new(m->base, -1, 0, pass_cb, t);
	t->host = strdup(p->sni ? p->sni : "");
	/* a session made with one client certificate never resumes with another,
	 * even when the caller's key was cut short */
	if (p->session_key && client_cert) {
		if (asprintf(&t->session_key, "%s client=%s:%s", p->session_key, client_cert,
		             client_key ? client_key : "") < 0)
			t->session_key = NULL;
	} else if (p->session_key) {
		t->session_key = strdup(p->session_key);
	}
	if (!t->in || !t->out || !t->pass_ev || !t->host || (p->session_key && !t->session_key) ||
	    !evbuffer_add_cb(t->in, in_changed, t) || !evbuffer_add_cb(t->out, out_changed, t)) {
		tls_free(t);
		return NULL;
	}
	transport_set_cbs(lower, &lower_cbs, t);
	setup_session(t, p, client_cert, client_key);
	apply_reading(t);
	/* the first pass (ClientHello, or the setup failure) runs from the loop */
	event_active(t->pass_ev, EV_TIMEOUT, 0);
	return &t->base;
}

const char *tls_alpn(struct transport *base)
{
	return ((struct tls *)base)->alpn;
}

bool tls_resumed(struct transport *base)
{
	return ((struct tls *)base)->resumed;
}

/* ---- for layers that run their own GnuTLS session (HTTP/3 over QUIC) ---- */

gnutls_certificate_credentials_t tls_client_creds(struct tls_client_ctx *ctx, const char *ca_file,
                                                  bool verify, char *reason, size_t reason_len)
{
	return get_cred(ctx, ca_file, verify, NULL, NULL, reason, reason_len);
}

gnutls_priority_t tls_client_priority(struct tls_client_ctx *ctx)
{
	return ctx->priority;
}

bool tls_session_get(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t *data)
{
	struct tls_cached_session *e = key ? session_find(ctx, key) : NULL;

	if (!e)
		return false;
	*data = e->data;
	return true;
}

void tls_session_put(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data)
{
	if (!key) {
		gnutls_free(data.data);
		return;
	}
	session_store(ctx, key, data);
}
