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
#include <time.h>

#include "log.h"
#include "muxd.h"
#include "timeutil.h"
#include "transport/tls.h"
#include "transport/tls_io.h"
#include "transport/tls_sessions.h"

#define SESSION_SAVE_MS 2000 /* the session file is written at most this often after a change */
/* ... and without fsync: the loop must not wait for the disk (durably at exit) */
#define SESSION_DEFAULT_LIFETIME (6 * 3600) /* no lifetime known (TLS 1.2, no hint) */

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

struct tls_client_ctx {
	gnutls_priority_t priority;
	struct tls_cred *creds;
	struct tls_sessions *sessions;
	char *session_file;       /* NULL: memory only */
	struct event *save_timer; /* a write of session_file is due */
	bool save_warned;         /* a failed write was logged (until one works) */
};

struct tls_client_ctx *tls_client_ctx_new(void)
{
	struct tls_client_ctx *ctx = calloc(1, sizeof(*ctx));
	const char *err_pos = NULL;

	if (!ctx)
		return NULL;
	if (!(ctx->sessions = tls_sessions_new())) {
		free(ctx);
		return NULL;
	}
	if (gnutls_priority_init(&ctx->priority, TLS_IO_PRIORITY, &err_pos) < 0) {
		log_error("tls: bad priority string at \"%s\"", err_pos ? err_pos : "");
		tls_sessions_free(ctx->sessions);
		free(ctx);
		return NULL;
	}
	return ctx;
}

static void save_sessions(struct tls_client_ctx *ctx, bool durable)
{
	char dir[4096];
	const char *slash;

	if (!ctx->session_file || !tls_sessions_dirty(ctx->sessions))
		return;
	slash = strrchr(ctx->session_file, '/');
	if (slash && slash > ctx->session_file) { /* the state directory, made on demand */
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - ctx->session_file),
		         ctx->session_file);
		mkdir(dir, 0700);
	}
	if (tls_sessions_save(ctx->sessions, ctx->session_file, time(NULL), durable)) {
		ctx->save_warned = false;
	} else if (!ctx->save_warned) {
		ctx->save_warned = true;
		log_warn("tls: cannot write the session file %s: %s", ctx->session_file,
		         strerror(errno));
	}
}

static void save_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	save_sessions(arg, false);
}

bool tls_client_ctx_persist(struct tls_client_ctx *ctx, struct event_base *base, const char *path)
{
	bool same = path && ctx->session_file && strcmp(path, ctx->session_file) == 0;
	char *copy = NULL;

	if (same)
		return true;
	if (path && !(copy = strdup(path)))
		return false;
	if (!ctx->save_timer && !(ctx->save_timer = evtimer_new(base, save_cb, ctx))) {
		free(copy);
		return false;
	}
	if (!ctx->session_file && copy && tls_sessions_count(ctx->sessions) == 0) {
		const char *why = tls_sessions_load(ctx->sessions, copy, time(NULL));
		if (why)
			log_warn("tls: ignoring the session file %s: %s", copy, why);
		else if (tls_sessions_count(ctx->sessions) > 0)
			log_debug("tls: %zu sessions from %s", tls_sessions_count(ctx->sessions),
			          copy);
	}
	free(ctx->session_file);
	ctx->session_file = copy;
	return true;
}

void tls_client_ctx_free(struct tls_client_ctx *ctx)
{
	if (!ctx)
		return;
	if (ctx->save_timer) {
		save_sessions(ctx, true); /* the last write, durable */
		event_free(ctx->save_timer);
	}
	free(ctx->session_file);
	tls_sessions_free(ctx->sessions);
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

static const struct tls_session_entry *session_find(struct tls_client_ctx *ctx, const char *key)
{
	return tls_sessions_get(ctx->sessions, key, time(NULL));
}

/* Keep data (allocated by GnuTLS; freed here) under key: lifetime is the
 * ticket's (0: not known), max_early the early data it allows, alpn the
 * session's protocol. */
static void session_store_tp(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                             uint32_t lifetime, uint32_t max_early, const char *alpn,
                             const unsigned char *tp, size_t tp_len)
{
	time_t now = time(NULL), exp = gnutls_db_check_entry_expire_time(&data);
	struct tls_session_entry e = {.key = key,
	                              .data = data.data,
	                              .len = data.size,
	                              .max_early = max_early,
	                              .tp = tp,
	                              .tp_len = tp_len};

	if (lifetime == 0)
		lifetime = exp > now && exp - now < SESSION_DEFAULT_LIFETIME
		               ? (uint32_t)(exp - now)
		               : SESSION_DEFAULT_LIFETIME;
	if (lifetime > TLS_SESSION_MAX_LIFETIME)
		lifetime = TLS_SESSION_MAX_LIFETIME;
	e.expires = now + (time_t)lifetime;
	snprintf(e.alpn, sizeof(e.alpn), "%s", alpn ? alpn : "");
	if (tls_sessions_put(ctx->sessions, &e, now) && ctx->session_file && ctx->save_timer &&
	    !evtimer_pending(ctx->save_timer, NULL)) {
		struct timeval tv = ms_to_timeval(SESSION_SAVE_MS);
		evtimer_add(ctx->save_timer, &tv);
	}
	if (data.data)
		explicit_bzero(data.data, data.size);
	gnutls_free(data.data);
}

static void session_store(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                          uint32_t lifetime, uint32_t max_early, const char *alpn)
{
	session_store_tp(ctx, key, data, lifetime, max_early, alpn, NULL, 0);
}

uint32_t tls_ticket_lifetime(const gnutls_datum_t *msg)
{
	/* NewSessionTicket, TLS 1.2 (RFC 5077) and 1.3 (RFC 8446 4.6.1), starts
	 * with the lifetime in seconds */
	if (!msg || msg->size < 4)
		return 0;
	return (uint32_t)msg->data[0] << 24 | (uint32_t)msg->data[1] << 16 |
	       (uint32_t)msg->data[2] << 8 | msg->data[3];
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
	/* the protocol ALPN chose ("" until known): alpn_short, or from malloc
	 * when longer (protocol ids are up to 255 bytes) */
	char *alpn;
	char alpn_short[16];
	/* 0-RTT: the ALPN protocol the resumed session had, reported before the
	 * handshake; the server must agree */
	char early_alpn[32];
	uint32_t ticket_lifetime; /* of the last NewSessionTicket (0: none seen) */
	bool resumed;
	bool ticket_stored; /* session data saved for this connection */
};

static void tls_destroy(struct tls_io *io)
{
	struct tls *t = (struct tls *)io;

	free(t->host);
	free(t->session_key);
	if (t->alpn != t->alpn_short)
		free(t->alpn);
	free(t);
}

/* Keeps the protocol ALPN chose (n bytes of p); "" when out of memory. */
static void set_alpn(struct tls *t, const char *p, size_t n)
{
	char *dst = t->alpn_short;

	if (t->alpn != t->alpn_short)
		free(t->alpn);
	if (n >= sizeof(t->alpn_short) && !(dst = malloc(n + 1))) {
		dst = t->alpn_short;
		n = 0;
	}
	memcpy(dst, p, n);
	dst[n] = '\0';
	t->alpn = dst;
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
	/* early data only where the ticket says how much (GnuTLS leaves the
	 * limit at UINT32_MAX when it did not) */
	uint32_t early = gnutls_protocol_get_version(io->s) == GNUTLS_TLS1_3
	                     ? (uint32_t)gnutls_record_get_max_early_data_size(io->s)
	                     : 0;
	session_store(t->ctx, t->session_key, data, t->ticket_lifetime,
	              early == UINT32_MAX ? 0 : early, t->alpn);
}

/* Notes each NewSessionTicket's lifetime: the cache entry expires with it. */
static int ticket_hook(gnutls_session_t s, unsigned type, unsigned when, unsigned incoming,
                       const gnutls_datum_t *msg)
{
	struct tls *t = gnutls_session_get_ptr(s);

	(void)when;
	if (t && incoming && type == GNUTLS_HANDSHAKE_NEW_SESSION_TICKET)
		t->ticket_lifetime = tls_ticket_lifetime(msg);
	return 0;
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
	if (gnutls_alpn_get_selected_protocol(io->s, &proto) == 0)
		set_alpn(t, (const char *)proto.data, proto.size);
	else
		set_alpn(t, "", 0);
	if (io->early_max > 0) {
		io->early_accepted =
		    (gnutls_session_get_flags(io->s) & GNUTLS_SFLAGS_EARLY_DATA) != 0;
		/* the user chose its protocol by the session's ALPN; a server
		 * that changed it refused the early data (RFC 8446 4.2.10), so
		 * the request was not processed: a fresh connection, without
		 * this session, may carry it again */
		if (strcmp(t->alpn, t->early_alpn) != 0) {
			tls_io_reason(&io->fail_reason,
			              "the resumed session's protocol %s changed to %s",
			              t->early_alpn, t->alpn[0] ? t->alpn : "none");
			io->fail_err = ERR_UNPROCESSED;
			tls_sessions_remove(t->ctx->sessions, t->session_key);
			return;
		}
		if (io->early_len > 0)
			log_debug("tls: %s: %zu bytes of early data %s", t->host, io->early_len,
			          io->early_accepted ? "accepted" : "refused: sent again");
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
	const struct tls_session_entry *cached;
	gnutls_session_t s;
	char reason[512] = "";
	int r;

	cred = get_cred(t->ctx, p->ca_file, p->verify, client_cert, client_key, reason,
	                sizeof(reason));
	if (!cred) {
		tls_io_reason(&t->io.fail_reason, "%s", reason);
		return;
	}
	r = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
	if (r < 0)
		goto fail;
	if ((r = gnutls_priority_set(s, t->ctx->priority)) < 0 ||
	    (r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred)) < 0)
		goto fail_deinit;
	if (p->sni && *p->sni && !is_ip_literal(p->sni) &&
	    (r = gnutls_server_name_set(s, GNUTLS_NAME_DNS, p->sni, strlen(p->sni))) < 0)
		goto fail_deinit;
	/* GnuTLS keeps the name's pointer, not a copy: the layer's own copy
	 * outlives the caller's (a chain frees its build once up, which with
	 * 0-RTT is before the certificate is verified) */
	if (p->verify)
		gnutls_session_set_verify_cert(s, t->host && *t->host ? t->host : NULL, 0);
	if (p->alpn && (r = tls_io_set_alpn(s, p->alpn, 0)) < 0)
		goto fail_deinit;
	gnutls_session_set_ptr(s, t);
	gnutls_handshake_set_hook_function(s, GNUTLS_HANDSHAKE_NEW_SESSION_TICKET, GNUTLS_HOOK_POST,
	                                   ticket_hook);
	if (t->session_key && (cached = session_find(t->ctx, t->session_key))) {
		if (gnutls_session_set_data(s, cached->data, cached->len) < 0) {
			log_debug("tls: %s: stored session unusable: dropped", t->host);
			tls_sessions_remove(t->ctx->sessions, t->session_key);
		} else if (p->early_data && cached->max_early > 0 &&
		           (strcmp(cached->alpn, "http/1.1") == 0 ||
		            strcmp(cached->alpn, "h2") == 0)) {
			/* 0-RTT: the layer is up before the handshake, with the
			 * session's protocol (tls_io.c); HTTP/2 sends its preface
			 * and safe requests without waiting for the server's
			 * SETTINGS (upstream/h2.c) */
			t->io.early_max = cached->max_early;
			t->io.early_timeout_ms = p->early_timeout_ms;
			snprintf(t->early_alpn, sizeof(t->early_alpn), "%s", cached->alpn);
			set_alpn(t, cached->alpn, strlen(cached->alpn));
		}
	}
	tls_io_set_session(&t->io, s);
	return;
fail_deinit:
	gnutls_deinit(s);
fail:
	tls_io_reason(&t->io.fail_reason, "cannot set up the TLS session: %s", gnutls_strerror(r));
}

struct transport *tls_client_new(const struct transport_env *env, struct transport *lower,
                                 const struct tls_client_params *p, const struct transport_cbs *cbs,
                                 void *ctx)
{
	return tls_client_new_cert(env, lower, p, NULL, NULL, cbs, ctx);
}

struct transport *tls_client_new_cert(const struct transport_env *env, struct transport *lower,
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
	t->ctx = env->tls;
	t->alpn = t->alpn_short;
	ok = tls_io_init(&t->io, &tls_hooks, env->base, lower, cbs, ctx);
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
	struct tls *t = (struct tls *)base;

	return t->io.connected_reported ? t->alpn : "";
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
	const struct tls_session_entry *e = key ? session_find(ctx, key) : NULL;

	if (!e)
		return false;
	data->data = (unsigned char *)e->data;
	data->size = (unsigned)e->len;
	return true;
}

void tls_session_put(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                     uint32_t lifetime)
{
	if (!key) {
		gnutls_free(data.data);
		return;
	}
	session_store(ctx, key, data, lifetime, 0, NULL);
}

const struct tls_session_entry *tls_session_entry(struct tls_client_ctx *ctx, const char *key)
{
	return key ? session_find(ctx, key) : NULL;
}

void tls_session_put_quic(struct tls_client_ctx *ctx, const char *key, gnutls_datum_t data,
                          uint32_t lifetime, uint32_t max_early, const char *alpn,
                          const unsigned char *tp, size_t tp_len)
{
	if (!key) {
		gnutls_free(data.data);
		return;
	}
	session_store_tp(ctx, key, data, lifetime, max_early, alpn, tp, tp_len);
}

bool tls_early(struct transport *base)
{
	return ((struct tls_io *)base)->early_wait;
}

void tls_early_safe(struct transport *base, size_t n)
{
	tls_io_early_safe((struct tls_io *)base, n);
}
