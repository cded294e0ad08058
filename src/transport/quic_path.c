/*
 * quic_path — one address attempt of a QUIC connection (see quic_int.h):
 * its GnuTLS session and ngtcp2 connection, packets out in sendmmsg
 * batches, the expiry timer's next deadline, and naming TLS failures.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "muxd.h"
#include "transport/quic_int.h"
#include "transport/tls.h"
#include "transport/tls_sessions.h"

void qpath_free(struct quic_path *a)
{
	if (a->conn)
		ngtcp2_conn_del(a->conn);
	if (a->tls)
		gnutls_deinit(a->tls);
	if (a->io)
		event_free(a->io);
	if (a->expiry)
		event_free(a->expiry);
	if (a->fd >= 0)
		close(a->fd);
	free(a->batch);
	free(a);
}

/* Send the queued batch; false when the socket is full (EV_WRITE armed) or
 * failed (errno kept). */
static bool batch_send(struct quic_path *a, int *err)
{
	*err = 0;
	while (a->batch_sent < a->nbatch) {
		struct mmsghdr msgs[QUIC_BATCH];
		struct iovec iov[QUIC_BATCH];
		size_t n = a->nbatch - a->batch_sent;
		int r;

		memset(msgs, 0, sizeof(msgs));
		for (size_t i = 0; i < n; i++) {
			iov[i].iov_base = a->batch[a->batch_sent + i];
			iov[i].iov_len = a->batch_len[a->batch_sent + i];
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		r = sendmmsg(a->fd, msgs, (unsigned)n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
				a->want_write = true;
				qpath_io_update(a);
				return false;
			}
			*err = errno;
			if (errno == EMSGSIZE) { /* drop the packet: QUIC recovers */
				a->batch_sent++;
				continue;
			}
			return false;
		}
		a->batch_sent += (size_t)r;
	}
	a->nbatch = a->batch_sent = 0;
	if (a->want_write) {
		a->want_write = false;
		qpath_io_update(a);
	}
	return true;
}

void qpath_schedule_expiry(struct quic_path *a)
{
	ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(a->conn), now = quic_now();
	uint64_t ns;
	struct timeval tv;

	if (exp == UINT64_MAX) {
		evtimer_del(a->expiry);
		return;
	}
	ns = exp > now ? exp - now : 0;
	tv.tv_sec = (time_t)(ns / NGTCP2_SECONDS);
	tv.tv_usec = (suseconds_t)((ns % NGTCP2_SECONDS) / 1000);
	evtimer_add(a->expiry, &tv);
}

/*
 * Write packets until ngtcp2 has nothing more (or the socket is full).
 * Returns a negative ngtcp2 error, a positive errno from the socket, or 0;
 * *app: the error came from the app's callbacks.
 */
int qpath_write_pkts(struct quic_path *a, bool *app)
{
	struct quic *q = a->q;
	ngtcp2_tstamp ts = quic_now();
	size_t max = ngtcp2_conn_get_max_tx_udp_payload_size(a->conn), total = 0;
	int serr;

	*app = false;
	if (max > QUIC_PKT_MAX)
		max = QUIC_PKT_MAX;
	if (a->nbatch > 0 && !batch_send(a, &serr))
		return serr;
	for (;;) {
		int64_t sid = -1;
		bool fin = false;
		struct quic_vec qv[QUIC_NVEC];
		ngtcp2_vec vec[QUIC_NVEC];
		int nvec = 0;
		ngtcp2_ssize ndatalen = -1, n;
		ngtcp2_pkt_info pi;
		uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;

		if ((a->handshake_done && q->established && a == q->a) ||
		    (q->early && a == q->ea && !q->established)) {
			nvec = q->cbs.writev(q->ctx, &sid, &fin, qv, QUIC_NVEC);
			if (nvec < 0) {
				*app = true;
				return nvec;
			}
			for (int i = 0; i < nvec; i++)
				vec[i] = (ngtcp2_vec){qv[i].base, qv[i].len};
		}
		if (fin)
			flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
		n = ngtcp2_conn_writev_stream(a->conn, NULL, &pi, a->batch[a->nbatch], max,
		                              &ndatalen, flags, sid, vec, (size_t)nvec, ts);
		if (n < 0) {
			if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED || n == NGTCP2_ERR_STREAM_SHUT_WR) {
				q->cbs.blocked(q->ctx, sid, n == NGTCP2_ERR_STREAM_SHUT_WR);
				continue;
			}
			if (n == NGTCP2_ERR_WRITE_MORE) {
				int r = q->cbs.written(q->ctx, sid, (size_t)ndatalen);
				if (r != 0) {
					*app = true;
					return r;
				}
				continue;
			}
			return (int)n;
		}
		if (ndatalen >= 0 && sid >= 0) {
			int r = q->cbs.written(q->ctx, sid, (size_t)ndatalen);
			if (r != 0) {
				*app = true;
				return r;
			}
		}
		if (n > 0) {
			a->batch_len[a->nbatch++] = (size_t)n;
			total++;
		}
		if (a->nbatch == QUIC_BATCH || (n == 0 && a->nbatch > 0)) {
			if (!batch_send(a, &serr))
				return serr;
		}
		if (n == 0)
			break;
		if (total >= QUIC_MAX_WRITE) {
			event_active(q->more, EV_TIMEOUT, 0); /* let the loop breathe */
			break;
		}
	}
	ngtcp2_conn_update_pkt_tx_time(a->conn, ts);
	return 0;
}

void qpath_store_session(struct quic *q)
{
	gnutls_datum_t data = {NULL, 0};
	const ngtcp2_transport_params *rtp;
	uint8_t tp[TLS_SESSION_MAX_TP];
	ngtcp2_ssize tplen = 0;
	size_t early;

	if (q->session_stored || !q->p.session_key || !q->a || !q->a->tls)
		return;
	if (!(gnutls_session_get_flags(q->a->tls) & GNUTLS_SFLAGS_SESSION_TICKET))
		return;
	if (gnutls_session_get_data2(q->a->tls, &data) < 0 || data.size == 0) {
		gnutls_free(data.data);
		return;
	}
	q->session_stored = true;
	/* 0-RTT sends under the parameters the server gave this connection
	 * (RFC 9000 7.4.1): they go with the ticket */
	rtp = ngtcp2_conn_get_remote_transport_params(q->a->conn);
	if (rtp)
		tplen = ngtcp2_encode_transport_params(
		    tp, sizeof(tp), NGTCP2_TRANSPORT_PARAMS_TYPE_ENCRYPTED_EXTENSIONS, rtp);
	early = gnutls_record_get_max_early_data_size(q->a->tls);
	tls_session_put_quic(q->env.tls, q->p.session_key, data, q->ticket_lifetime,
	                     early > UINT32_MAX ? UINT32_MAX : (uint32_t)early, q->p.alpn, tp,
	                     tplen > 0 ? (size_t)tplen : 0);
}

/* Notes each NewSessionTicket's lifetime: the cache entry expires with it. */
static int ticket_hook(gnutls_session_t s, unsigned type, unsigned when, unsigned incoming,
                       const gnutls_datum_t *msg)
{
	ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(s);
	struct quic_path *a = ref ? ref->user_data : NULL;

	(void)when;
	if (a && incoming && type == GNUTLS_HANDSHAKE_NEW_SESSION_TICKET)
		a->q->ticket_lifetime = tls_ticket_lifetime(msg);
	return 0;
}

void qpath_tls_failure(struct quic_path *a, char *buf, size_t len)
{
	unsigned status = a->tls ? gnutls_session_get_verify_cert_status(a->tls) : 0;
	ngtcp2_connection_close_error cc;

	if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
		snprintf(buf, len,
		         "QUIC handshake failed: certificate signed by unknown authority");
	else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
		snprintf(buf, len, "QUIC handshake failed: certificate name does not match %s",
		         a->q->p.sni);
	else if (status & GNUTLS_CERT_EXPIRED)
		snprintf(buf, len, "QUIC handshake failed: certificate has expired");
	else if (status & GNUTLS_CERT_NOT_ACTIVATED)
		snprintf(buf, len, "QUIC handshake failed: certificate is not yet valid");
	else if (status & GNUTLS_CERT_SIGNER_NOT_CA)
		snprintf(
		    buf, len,
		    "QUIC handshake failed: certificate signed by a certificate that is not a CA");
	else if (status & GNUTLS_CERT_INSECURE_ALGORITHM)
		snprintf(buf, len, "QUIC handshake failed: certificate uses an insecure algorithm");
	else if (status)
		snprintf(buf, len, "QUIC handshake failed: certificate verification failed");
	else {
		ngtcp2_conn_get_connection_close_error(a->conn, &cc);
		if (cc.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT &&
		    (cc.error_code & ~0xffULL) == NGTCP2_CRYPTO_ERROR)
			snprintf(buf, len, "QUIC handshake failed: TLS alert %s from origin",
			         gnutls_alert_get_strname(
			             (gnutls_alert_description_t)(cc.error_code & 0xff)));
		else
			snprintf(buf, len, "QUIC handshake failed: TLS error");
	}
}

static ngtcp2_conn *get_conn_cb(ngtcp2_crypto_conn_ref *ref)
{
	return ((struct quic_path *)ref->user_data)->conn;
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The GnuTLS session for an attempt; reason filled on failure. */
bool qpath_tls_setup(struct quic_path *a, char *reason, size_t len)
{
	struct quic *q = a->q;
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t alpn = {(unsigned char *)q->p.alpn, (unsigned)strlen(q->p.alpn)};
	const struct tls_session_entry *cached =
	    q->p.session_key ? tls_session_entry(q->env.tls, q->p.session_key) : NULL;
	unsigned flags = GNUTLS_CLIENT | GNUTLS_NO_END_OF_EARLY_DATA;
	int r;

	cred = tls_client_creds(q->env.tls, q->p.ca_file, q->p.verify, reason, len);
	if (!cred)
		return false;
	/* 0-RTT on one attempt only, with a ticket that came with the server's
	 * transport parameters */
	if (cached && q->p.early_data && !q->early_tried && cached->tp_len > 0 &&
	    ngtcp2_decode_transport_params(&a->early_tp,
	                                   NGTCP2_TRANSPORT_PARAMS_TYPE_ENCRYPTED_EXTENSIONS,
	                                   cached->tp, cached->tp_len) == 0) {
		a->early = true;
		q->early_tried = true;
		flags |= GNUTLS_ENABLE_EARLY_DATA;
	}
	if ((r = gnutls_init(&a->tls, flags)) < 0) {
		a->tls = NULL;
		goto fail;
	}
	if ((r = gnutls_priority_set_direct(a->tls, QUIC_PRIORITY, NULL)) < 0 ||
	    (r = gnutls_credentials_set(a->tls, GNUTLS_CRD_CERTIFICATE, cred)) < 0 ||
	    (r = ngtcp2_crypto_gnutls_configure_client_session(a->tls)) != 0 ||
	    (r = gnutls_alpn_set_protocols(a->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY)) < 0)
		goto fail;
	if (q->p.sni && *q->p.sni && !is_ip_literal(q->p.sni) &&
	    (r = gnutls_server_name_set(a->tls, GNUTLS_NAME_DNS, q->p.sni, strlen(q->p.sni))) < 0)
		goto fail;
	if (q->p.verify)
		gnutls_session_set_verify_cert(a->tls, q->p.sni && *q->p.sni ? q->p.sni : NULL, 0);
	if (cached && gnutls_session_set_data(a->tls, cached->data, cached->len) < 0)
		a->early = false;
	a->ref.get_conn = get_conn_cb;
	a->ref.user_data = a;
	gnutls_session_set_ptr(a->tls, &a->ref);
	gnutls_handshake_set_hook_function(a->tls, GNUTLS_HANDSHAKE_NEW_SESSION_TICKET,
	                                   GNUTLS_HOOK_POST, ticket_hook);
	return true;
fail:
	snprintf(reason, len, "cannot set up TLS for QUIC: %s",
	         r < 0 ? gnutls_strerror(r) : "ngtcp2_crypto_gnutls");
	return false;
}

bool qpath_conn_new(struct quic_path *a, const ngtcp2_callbacks *cb, char *reason, size_t len)
{
	struct quic *q = a->q;
	ngtcp2_path path = {
	    {(ngtcp2_sockaddr *)&a->local, a->local_len},
	    {(ngtcp2_sockaddr *)&a->remote, a->remote_len},
	    NULL,
	};
	ngtcp2_cid dcid, scid;
	ngtcp2_settings st;
	ngtcp2_transport_params tp;
	int r;

	dcid.datalen = NGTCP2_MIN_INITIAL_DCIDLEN + 10;
	scid.datalen = QUIC_SCID_LEN;
	if (gnutls_rnd(GNUTLS_RND_RANDOM, dcid.data, dcid.datalen) != 0 ||
	    gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, scid.datalen) != 0) {
		snprintf(reason, len, "no random bytes");
		return false;
	}
	ngtcp2_settings_default(&st);
	st.initial_ts = quic_now();
	st.max_window = q->p.conn_window;
	st.max_stream_window = q->p.stream_window;
	st.handshake_timeout = (uint64_t)QUIC_HANDSHAKE_MS * NGTCP2_MILLISECONDS;
	ngtcp2_transport_params_default(&tp);
	tp.initial_max_stream_data_bidi_local = q->p.stream_window;
	tp.initial_max_stream_data_bidi_remote = q->p.stream_window;
	tp.initial_max_stream_data_uni = q->p.stream_window;
	tp.initial_max_data = q->p.conn_window;
	tp.initial_max_streams_bidi = 0;
	tp.initial_max_streams_uni = q->p.max_uni_streams;
	tp.max_idle_timeout = (uint64_t)QUIC_IDLE_TIMEOUT_MS * NGTCP2_MILLISECONDS;
	tp.max_udp_payload_size = QUIC_RX_SLOT; /* path_read's slots */
	r = ngtcp2_conn_client_new(&a->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, cb, &st, &tp,
	                           NULL, a);
	if (r != 0) {
		a->conn = NULL;
		snprintf(reason, len, "cannot create the QUIC connection: %s", ngtcp2_strerror(r));
		return false;
	}
	ngtcp2_conn_set_tls_native_handle(a->conn, a->tls);
	if (a->early)
		ngtcp2_conn_set_early_remote_transport_params(a->conn, &a->early_tp);
	return true;
}

void qpath_addr_name(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		port = ntohs(s6->sin6_port);
		snprintf(buf, len, "[%s]:%u", host, port);
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		port = ntohs(s4->sin_port);
		snprintf(buf, len, "%s:%u", host, port);
	}
}
