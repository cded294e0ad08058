/*
 * tls — the TLS client transport layer: a GnuTLS client session over the
 * buffers of the layer below, run by the record pump shared with the server
 * layer (tls_io.c: the push/pull functions, the passes, the transport ops).
 * This file adds what is the client's own: the credentials, SNI, ALPN,
 * certificate verification and its messages, and session resumption, with
 * the session data stored once a ticket arrives. Owns (besides what tls_io
 * owns): the host name and the session key. The process-wide context owns
 * the credentials (one per trust store, loaded once) and the session
 * resumption cache.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "muxd.h"
#include "transport/tls.h"
#include "transport/tls_io.h"

#define SESSION_CACHE_MAX 1024

/* ---- the process-wide context ---- */

struct tls_cred {
	struct tls_cred *next;
	/* the trust anchors by file identity (config_file_id, as in pool keys): a
	 * replaced CA file is loaded afresh. NULL: the system store (or no trust
	 * anchors when !verify) */
	char *ca_file;
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
	if (gnutls_priority_init(&ctx->priority, TLS_IO_PRIORITY, &err_pos) < 0) {
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

/* A client certificate and key by file identity (config_file_id: path,
 * device, inode, size, mtime), so that replaced files are loaded afresh;
 * false when one cannot be examined (reason says which). */
static bool client_id(const char *cert, const char *key, char *buf, size_t size, char *reason,
                      size_t reason_len)
{
	const char *paths[2] = {cert, key};
	size_t len = 0;

	for (int i = 0; i < 2; i++) {
		struct stat st;
		if (stat(paths[i], &st) != 0) {
			snprintf(reason, reason_len, "cannot load client %s %s: %s",
			         i ? "key" : "certificate", paths[i], strerror(errno));
			return false;
		}
		if (i)
			buf[len++] = ' ';
		if (len >= size || !config_file_id(paths[i], buf + len, size - len)) {
			snprintf(reason, reason_len, "client certificate path too long");
			return false;
		}
		len += strlen(buf + len);
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
	char client[2200], ca_id[1200];
	int r;

	if (!verify)
		ca_file = NULL; /* no trust anchors are consulted */
	if (client_cert && !client_key)
		client_key = client_cert; /* both in one PEM file */
	if (client_cert &&
	    !client_id(client_cert, client_key, client, sizeof(client), reason, reason_len))
		return NULL;
	/* one stat per new connection, not per request: sessions are pooled */
	if (ca_file && !config_file_id(ca_file, ca_id, sizeof(ca_id))) {
		snprintf(reason, reason_len, "CA file path too long");
		return NULL;
	}
	for (c = ctx->creds; c; c = c->next)
		if (c->verify == verify &&
		    (ca_file ? c->ca_file && strcmp(c->ca_file, ca_id) == 0 : !c->ca_file) &&
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
	if (!c || (ca_file && !(c->ca_file = strdup(ca_id))) ||
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

struct tls {
	struct tls_io io; /* first: the record pump (tls_io.c) */
	struct tls_client_ctx *ctx;
	char *host;        /* for messages */
	char *session_key; /* NULL: no resumption */
	char alpn[256];
	bool resumed;
	bool ticket_stored; /* session data saved for this connection */
};

static void tls_destroy(struct tls_io *io)
{
	struct tls *t = (struct tls *)io;

	free(t->host);
	free(t->session_key);
	free(t);
}

static const char *tls_fail_name(struct tls_io *io)
{
	return ((struct tls *)io)->host;
}

static void verify_reason(struct tls *t, char *buf, size_t len)
{
	unsigned status = gnutls_session_get_verify_cert_status(t->io.s);
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

/* Runs after the handshake and after each record: saves the session data
 * once (TLS 1.3 tickets arrive as post-handshake records). */
static void maybe_store_session(struct tls_io *io)
{
	struct tls *t = (struct tls *)io;
	gnutls_datum_t data = {NULL, 0};

	if (t->ticket_stored || !t->session_key)
		return;
	/* TLS 1.3: only a received ticket resumes; before it GnuTLS gives dummy data */
	if (gnutls_protocol_get_version(io->s) == GNUTLS_TLS1_3 &&
	    !(gnutls_session_get_flags(io->s) & GNUTLS_SFLAGS_SESSION_TICKET))
		return;
	if (gnutls_session_get_data2(io->s, &data) < 0 || data.size == 0) {
		gnutls_free(data.data);
		return;
	}
	t->ticket_stored = true;
	session_store(t->ctx, t->session_key, data);
}

static void tls_handshake_failed(struct tls_io *io, int r)
{
	struct tls *t = (struct tls *)io;
	char reason[512];

	if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR)
		verify_reason(t, reason, sizeof(reason));
	else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED)
		snprintf(reason, sizeof(reason), "handshake failed: %s (%s)", gnutls_strerror(r),
		         gnutls_alert_get_name(gnutls_alert_get(io->s)));
	else if (io->lower_eof || io->lower_failed) /* also GNUTLS_E_AGAIN */
		snprintf(reason, sizeof(reason), "connection closed during the TLS handshake");
	else
		snprintf(reason, sizeof(reason), "handshake failed: %s", gnutls_strerror(r));
	tls_io_fail(io, reason);
}

static void tls_connected(struct tls_io *io)
{
	struct tls *t = (struct tls *)io;
	gnutls_datum_t proto;

	t->resumed = gnutls_session_is_resumed(io->s) != 0;
	if (gnutls_alpn_get_selected_protocol(io->s, &proto) == 0 && proto.size < sizeof(t->alpn)) {
		memcpy(t->alpn, proto.data, proto.size);
		t->alpn[proto.size] = '\0';
	}
	log_debug("tls: %s for %s (%s%s%s)", t->resumed ? "resumed session" : "full handshake",
	          t->session_key ? t->session_key : t->host,
	          gnutls_protocol_get_name(gnutls_protocol_get_version(io->s)),
	          t->alpn[0] ? ", alpn " : "", t->alpn);
	maybe_store_session(io);
}

static const struct tls_io_hooks tls_hooks = {
    .log_name = "tls",
    .fail_name = tls_fail_name,
    .handshake_failed = tls_handshake_failed,
    .connected = tls_connected,
    .after_record = maybe_store_session,
    .destroy = tls_destroy,
};

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Builds the session; on failure fills t->io.fail_reason (reported later). */
static void setup_session(struct tls *t, const struct tls_client_params *p, const char *client_cert,
                          const char *client_key)
{
	gnutls_certificate_credentials_t cred;
	struct tls_cached_session *cached;
	gnutls_session_t s;
	int r;

	cred = get_cred(t->ctx, p->ca_file, p->verify, client_cert, client_key, t->io.fail_reason,
	                sizeof(t->io.fail_reason));
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
	if (p->alpn && (r = tls_io_set_alpn(s, p->alpn, 0)) < 0)
		goto fail_deinit;
	if (t->session_key && (cached = session_find(t->ctx, t->session_key)))
		gnutls_session_set_data(s, cached->data.data, cached->data.size);
	tls_io_set_session(&t->io, s);
	return;
fail_deinit:
	gnutls_deinit(s);
fail:
	snprintf(t->io.fail_reason, sizeof(t->io.fail_reason), "cannot set up the TLS session: %s",
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
	struct tls *t = calloc(1, sizeof(*t));
	bool ok;

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->ctx = m->tls;
	ok = tls_io_init(&t->io, &tls_hooks, m, lower, cbs, ctx);
	t->host = strdup(p->sni ? p->sni : "");
	t->io.name = t->host;
	/* a session made with one client certificate never resumes with another,
	 * even when the caller's key was cut short */
	if (p->session_key && client_cert) {
		if (asprintf(&t->session_key, "%s client=%s:%s", p->session_key, client_cert,
		             client_key ? client_key : "") < 0)
			t->session_key = NULL;
	} else if (p->session_key) {
		t->session_key = strdup(p->session_key);
	}
	if (!ok || !t->host || (p->session_key && !t->session_key)) {
		tls_io_free(&t->io);
		return NULL;
	}
	setup_session(t, p, client_cert, client_key);
	/* the first pass (ClientHello, or the setup failure) runs from the loop */
	tls_io_start(&t->io);
	return &t->io.base;
}

/* base is the first member of io, io the first of struct tls */
const char *tls_alpn(struct transport *base)
{
	return ((struct tls *)base)->alpn;
}

bool tls_resumed(struct transport *base)
{
	return ((struct tls *)base)->resumed;
}

bool tls_peer_cert(struct transport *base, const void **der, size_t *len)
{
	struct tls_io *io = (struct tls_io *)base;
	unsigned n = 0;
	const gnutls_datum_t *certs = io->s ? gnutls_certificate_get_peers(io->s, &n) : NULL;

	if (!certs || n == 0)
		return false;
	*der = certs[0].data;
	*len = certs[0].size;
	return true;
}

struct transport *tls_lower(struct transport *base)
{
	return ((struct tls_io *)base)->lower;
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
