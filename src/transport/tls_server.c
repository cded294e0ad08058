/*
 * tls_server — the TLS server transport layer, for interception: a GnuTLS
 * server session over the buffers of the layer below (an accepted client
 * connection, whose input may already hold the start of the ClientHello),
 * run by the record pump shared with the client layer (tls_io.c: the
 * push/pull functions, the passes, the transport ops). This file adds what
 * is the server's own: the certificate is chosen from the client's SNI while
 * the handshake runs (a leaf from the local CA, or one for the default host
 * when there is no SNI); session tickets use the CA's ticket key; failures
 * are told to the client with an alert. Owns (besides what tls_io owns): a
 * reference to the leaf, released after the session is deinitialized.
 */
#include <ctype.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls/ca.h"
#include "transport/tls.h"
#include "transport/tls_io.h"

#define HOST_MAX 253
#define HOOK_REASON_MAX 600

struct tls_srv {
	struct tls_io io; /* first: the record pump (tls_io.c) */
	struct muxd *m;
	struct local_ca *ca;
	struct local_ca_leaf *leaf;        /* the certificate in use; kept until after deinit */
	char *default_host;                /* NULL: none */
	char sni[HOST_MAX + 1];            /* what the client sent; "" when none */
	char host[HOST_MAX + 1];           /* the leaf's name (for messages) */
	char hook_reason[HOOK_REASON_MAX]; /* why choosing the certificate failed */
};

/* Runs after tls_io_free has deinitialized the session. */
static void srv_destroy(struct tls_io *io)
{
	struct tls_srv *t = (struct tls_srv *)io;

	if (t->leaf)
		local_ca_leaf_put(t->leaf); /* after deinit: the session used its credentials */
	free(t->default_host);
	free(t);
}

static const char *srv_fail_name(struct tls_io *io)
{
	struct tls_srv *t = (struct tls_srv *)io;

	return t->sni[0] ? t->sni : "(no SNI)";
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

static void srv_handshake_failed(struct tls_io *io, int r)
{
	struct tls_srv *t = (struct tls_srv *)io;
	char reason[HOOK_REASON_MAX + 64];

	if (t->hook_reason[0]) {
		snprintf(reason, sizeof(reason), "TLS handshake with the client failed: %s",
		         t->hook_reason);
	} else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
		snprintf(reason, sizeof(reason), "TLS handshake with the client failed: %s (%s)",
		         gnutls_strerror(r), gnutls_alert_get_name(gnutls_alert_get(io->s)));
	} else if (io->lower_eof || io->lower_failed) { /* also GNUTLS_E_AGAIN */
		snprintf(reason, sizeof(reason), "client closed during the TLS handshake");
	} else {
		snprintf(reason, sizeof(reason), "TLS handshake with the client failed: %s",
		         gnutls_strerror(r));
	}
	/* tell the client why, when it can still hear it (best effort) */
	if (!io->lower_eof && !io->lower_failed && r != GNUTLS_E_FATAL_ALERT_RECEIVED)
		gnutls_alert_send_appropriate(io->s, r);
	tls_io_fail(io, reason);
}

static void srv_connected(struct tls_io *io)
{
	struct tls_srv *t = (struct tls_srv *)io;
	gnutls_datum_t proto;
	char alpn[64] = "";

	if (gnutls_alpn_get_selected_protocol(io->s, &proto) == 0 && proto.size < sizeof(alpn)) {
		memcpy(alpn, proto.data, proto.size);
		alpn[proto.size] = '\0';
	}
	log_debug("tls server: %s for %s (%s%s%s)",
	          gnutls_session_is_resumed(io->s) ? "resumed session" : "full handshake",
	          t->sni[0] ? t->sni : t->host,
	          gnutls_protocol_get_name(gnutls_protocol_get_version(io->s)),
	          alpn[0] ? ", alpn " : "", alpn);
}

static const struct tls_io_hooks srv_hooks = {
    .log_name = "tls server",
    .fail_name = srv_fail_name,
    .handshake_failed = srv_handshake_failed,
    .connected = srv_connected,
    .after_record = NULL,
    .destroy = srv_destroy,
};

/* Builds the session; on failure fills t->io.fail_reason (reported later). */
static void setup_session(struct tls_srv *t, const struct tls_server_params *p)
{
	const gnutls_datum_t *ticket_key;
	gnutls_session_t s;
	int r;

	if (!t->ca) {
		snprintf(t->io.fail_reason, sizeof(t->io.fail_reason),
		         "cannot set up the TLS session: no local CA");
		return;
	}
	r = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
	if (r < 0)
		goto fail;
	if ((r = gnutls_priority_set_direct(s, TLS_IO_PRIORITY, NULL)) < 0)
		goto fail_deinit;
	if (p->alpn && (r = tls_io_set_alpn(s, p->alpn, GNUTLS_ALPN_SERVER_PRECEDENCE)) < 0)
		goto fail_deinit;
	ticket_key = local_ca_ticket_key(t->ca);
	if (ticket_key && (r = gnutls_session_ticket_enable_server(s, ticket_key)) < 0)
		goto fail_deinit;
	gnutls_session_set_ptr(s, t);
	gnutls_handshake_set_post_client_hello_function(s, post_client_hello);
	tls_io_set_session(&t->io, s);
	return;
fail_deinit:
	gnutls_deinit(s);
fail:
	snprintf(t->io.fail_reason, sizeof(t->io.fail_reason), "cannot set up the TLS session: %s",
	         gnutls_strerror(r));
}

struct transport *tls_server_new(struct muxd *m, struct transport *lower,
                                 const struct tls_server_params *p, const struct transport_cbs *cbs,
                                 void *ctx)
{
	struct tls_srv *t = calloc(1, sizeof(*t));
	bool ok;

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->m = m;
	t->ca = p->ca;
	ok = tls_io_init(&t->io, &srv_hooks, m, lower, cbs, ctx);
	t->io.name = t->host;
	if (p->default_host && *p->default_host)
		t->default_host = strdup(p->default_host);
	if (!ok || (p->default_host && *p->default_host && !t->default_host)) {
		tls_io_free(&t->io);
		return NULL;
	}
	setup_session(t, p);
	/* the first pass runs from the loop: it takes the part of the ClientHello
	 * already waiting in lower's input, or reports the setup failure */
	tls_io_start(&t->io);
	return &t->io.base;
}

/* base is the first member of io, io the first of struct tls_srv */
const char *tls_server_sni(struct transport *base)
{
	return ((struct tls_srv *)base)->sni;
}
