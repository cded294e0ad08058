/*
 * tls_server — the TLS server transport layer, for interception: a GnuTLS
 * server session over the buffers of the layer below (an accepted client
 * connection, whose input may already hold the start of the ClientHello),
 * run by the record pump shared with the client layer (tls_io.c: the
 * push/pull functions, the passes, the transport ops). This file adds what
 * is the server's own: the certificate is chosen while the handshake runs (a
 * leaf from the local CA for the CONNECT host, or for the SNI's name when the
 * CONNECT host is an address); session tickets use the CA's ticket key;
 * failures are told to the client with an alert. It also reads the SNI and
 * the offered ALPN protocols from a ClientHello before any TLS session
 * exists (for the decision whether to intercept at all). Owns (besides what tls_io owns): a
 * reference to the leaf, released after the session is deinitialized.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "muxd.h"
#include "tls/ca.h"
#include "transport/tls.h"
#include "transport/tls_io.h"

#define HOST_MAX 253
#define HOOK_REASON_MAX 600

struct tls_srv {
	struct tls_io io;      /* first: the record pump (tls_io.c) */
	uint64_t *leaf_issued; /* NULL: not counted */
	struct local_ca *ca;
	struct local_ca_leaf *leaf;        /* the certificate in use; kept until after deinit */
	char *default_host;                /* NULL: none */
	char sni[HOST_MAX + 1];            /* what the client sent; "" when none */
	char host[HOST_MAX + 1];           /* the leaf's name (for messages) */
	char hook_reason[HOOK_REASON_MAX]; /* why choosing the certificate failed */
	char alpn[64];                     /* the protocol the client chose; "" when none */
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

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The leaf's name: the CONNECT host (the default host), not what the client
 * put in its SNI, so that a client cannot have muxd vouch for a name it did
 * not CONNECT to; but a DNS name in the SNI stands for an address CONNECTed
 * to (the origin is then verified for that name). NULL: no name at all. */
static const char *leaf_name(const struct tls_srv *t)
{
	if (!t->default_host)
		return t->sni[0] ? t->sni : NULL;
	if (t->sni[0] && is_ip_literal(t->default_host) && !is_ip_literal(t->sni))
		return t->sni;
	return t->default_host;
}

/*
 * Runs inside gnutls_handshake once the ClientHello is parsed, before the
 * cipher suite is chosen: picks the leaf (leaf_name) and installs its
 * credentials. A failure aborts the handshake; hook_reason says why.
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
		host = leaf_name(t);
	} else if (r == 0 || r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
		host = leaf_name(t);
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
	if (issued && t->leaf_issued)
		(*t->leaf_issued)++;
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
	snprintf(t->alpn, sizeof(t->alpn), "%s", alpn);
	log_debug("tls server: %s for %s (%s%s%s)",
	          gnutls_session_is_resumed(io->s) ? "resumed session" : "full handshake", t->host,
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
		tls_io_reason(&t->io.fail_reason, "cannot set up the TLS session: no local CA");
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
	tls_io_reason(&t->io.fail_reason, "cannot set up the TLS session: %s", gnutls_strerror(r));
}

struct transport *tls_server_new(const struct transport_env *env, struct transport *lower,
                                 const struct tls_server_params *p, const struct transport_cbs *cbs,
                                 void *ctx)
{
	struct tls_srv *t = calloc(1, sizeof(*t));
	bool ok;

	if (!t) {
		transport_close(lower);
		return NULL;
	}
	t->leaf_issued = env->tls_leaf_issued;
	t->ca = p->ca;
	ok = tls_io_init(&t->io, &srv_hooks, env->base, lower, cbs, ctx);
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

const char *tls_server_alpn(struct transport *base)
{
	return ((struct tls_srv *)base)->alpn;
}

/* ---- the SNI and ALPN of a ClientHello, before any TLS session (RFC 8446 4.1.2, RFC 6066 3,
 * RFC 7301 3.1) ---- */

static unsigned get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/* Reads the handshake message that starts the record stream (it may span
 * records) into msg, header included; *n is its length. Returns INCOMPLETE,
 * INVALID, or NO_SNI for "complete". */
static enum tls_hello gather_hello(const unsigned char *p, size_t len, unsigned char *msg,
                                   size_t *n)
{
	size_t have = 0;

	for (;;) {
		size_t frag, take;
		if (have >= 4) {
			size_t want = 4 + ((size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3]);
			if (msg[0] != 1 || want > TLS_HELLO_MAX) /* client_hello, not too long */
				return TLS_HELLO_INVALID;
			if (have >= want) {
				*n = want;
				return TLS_HELLO_NO_SNI;
			}
		}
		if (len < 5)
			return TLS_HELLO_INCOMPLETE;
		if (p[0] != 0x16 || p[1] != 3) /* a handshake record, TLS */
			return TLS_HELLO_INVALID;
		frag = get16(p + 3);
		if (frag == 0 || frag > 16384)
			return TLS_HELLO_INVALID;
		if (len < 5 + frag)
			return TLS_HELLO_INCOMPLETE;
		take = frag < TLS_HELLO_MAX - have ? frag : TLS_HELLO_MAX - have;
		memcpy(msg + have, p + 5, take);
		have += take;
		p += 5 + frag;
		len -= 5 + frag;
	}
}

/* The server_name extension's data ext[0..elen): the first host_name copied
 * to info->sni. NO_SNI when the list holds none, SNI, or INVALID. */
static enum tls_hello read_server_name(const unsigned char *ext, size_t elen,
                                       struct tls_hello_info *info)
{
	size_t j;

	if (elen < 2 || 2 + get16(ext) != elen)
		return TLS_HELLO_INVALID;
	for (j = 2; j + 3 <= elen; j += 3 + get16(ext + j + 1)) {
		unsigned nlen = get16(ext + j + 1);
		if (j + 3 + nlen > elen)
			return TLS_HELLO_INVALID;
		if (ext[j] != 0) /* host_name */
			continue;
		if (nlen == 0 || nlen >= sizeof(info->sni) || memchr(ext + j + 3, '\0', nlen))
			return TLS_HELLO_INVALID;
		memcpy(info->sni, ext + j + 3, nlen);
		info->sni[nlen] = '\0';
		return TLS_HELLO_SNI;
	}
	return j == elen ? TLS_HELLO_NO_SNI : TLS_HELLO_INVALID;
}

/* The ALPN extension's data (RFC 7301 3.1: a non-empty list of non-empty
 * names): what it offers, into info. False when malformed. */
static bool read_alpn(const unsigned char *ext, size_t elen, struct tls_hello_info *info)
{
	size_t j, out = 0, cap = sizeof(info->alpn_list);
	bool cut = false;

	if (elen < 3 || 2 + get16(ext) != elen)
		return false;
	info->alpn = true;
	for (j = 2; j < elen; j += 1 + ext[j]) {
		size_t nlen = ext[j];
		const unsigned char *name = ext + j + 1;
		if (nlen == 0 || j + 1 + nlen > elen)
			return false;
		info->alpn_h2 = info->alpn_h2 || (nlen == 2 && memcmp(name, "h2", 2) == 0);
		info->alpn_http11 =
		    info->alpn_http11 || (nlen == 8 && memcmp(name, "http/1.1", 8) == 0);
		if (cut)
			continue;
		if (out + (out ? 1 : 0) + nlen + 4 > cap) { /* no room for it and "...": cut */
			memcpy(info->alpn_list + out, "...", 4);
			cut = true;
			continue;
		}
		if (out)
			info->alpn_list[out++] = ',';
		for (size_t k = 0; k < nlen; k++)
			info->alpn_list[out++] =
			    (char)(name[k] >= 0x21 && name[k] <= 0x7e ? name[k] : '?');
		info->alpn_list[out] = '\0';
	}
	return true;
}

enum tls_hello tls_client_hello_parse(const unsigned char *p, size_t len,
                                      struct tls_hello_info *info)
{
	static unsigned char msg[TLS_HELLO_MAX]; /* one event loop thread */
	size_t n = 0, i;
	enum tls_hello r = gather_hello(p, len, msg, &n), sni = TLS_HELLO_NO_SNI;
	bool seen_sni = false, seen_alpn = false;

	memset(info, 0, sizeof(*info));
	if (r != TLS_HELLO_NO_SNI)
		return r;
	/* version, random, session id, cipher suites, compression methods */
	i = 4 + 2 + 32;
	if (i + 1 > n || (i += 1 + msg[i]) + 2 > n || (i += 2 + get16(msg + i)) + 1 > n ||
	    (i += 1 + msg[i]) > n)
		return TLS_HELLO_INVALID;
	if (i == n)
		return TLS_HELLO_NO_SNI; /* no extensions at all */
	if (i + 2 > n || i + 2 + get16(msg + i) != n)
		return TLS_HELLO_INVALID;
	for (i += 2; i + 4 <= n; i += 4 + get16(msg + i + 2)) {
		unsigned type = get16(msg + i), elen = get16(msg + i + 2);
		if (i + 4 + elen > n)
			return TLS_HELLO_INVALID;
		if (type == 0) { /* server_name */
			if (seen_sni)
				return TLS_HELLO_INVALID;
			seen_sni = true;
			sni = read_server_name(msg + i + 4, elen, info);
			if (sni == TLS_HELLO_INVALID)
				return TLS_HELLO_INVALID;
		} else if (type == 16) { /* application_layer_protocol_negotiation */
			if (seen_alpn || !read_alpn(msg + i + 4, elen, info))
				return TLS_HELLO_INVALID;
			seen_alpn = true;
		}
	}
	return i == n ? sni : TLS_HELLO_INVALID;
}

enum tls_hello tls_client_hello_sni(const unsigned char *p, size_t len, char *name, size_t size)
{
	struct tls_hello_info info;
	enum tls_hello r = tls_client_hello_parse(p, len, &info);

	if (r != TLS_HELLO_SNI)
		return r;
	if (strlen(info.sni) >= size)
		return TLS_HELLO_INVALID;
	memcpy(name, info.sni, strlen(info.sni) + 1);
	return TLS_HELLO_SNI;
}

bool tls_server_name_acceptable(const char *name)
{
	if (!*name)
		return false;
	for (const char *c = name; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.')
			return false;
	return true;
}
