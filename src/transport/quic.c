/*
 * quic — QUIC client connections (see quic.h): the handshake race across
 * the resolved addresses, the socket and timer events, the ngtcp2
 * callbacks, failures, and the API. One path's machinery is quic_path.c.
 */
#include <assert.h>
#include <errno.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "dns.h"
#include "log.h"
#include "muxd.h"
#include "timeutil.h"
#include "transport/eyeballs.h"
#include "transport/quic_int.h"

static void set_timer(struct event *ev, uint64_t ms)
{
	struct timeval tv = ms_to_timeval(ms);
	evtimer_add(ev, &tv);
}

/* --- freeing --- */

static void path_stop(struct quic_path *a)
{
	a->dead = true;
	event_del(a->io);
	evtimer_del(a->expiry);
}

/* Free the dead attempts: only at the end of an event, when no path is in
 * use. */
static void sweep(struct quic *q)
{
	struct quic_path **ap = &q->paths;

	while (*ap) {
		struct quic_path *a = *ap;
		if (a->dead) {
			*ap = a->next;
			qpath_free(a);
		} else {
			ap = &a->next;
		}
	}
}

static void send_close(struct quic *q);

void quic_free(struct quic *q)
{
	if (!q)
		return;
	if (q->established && !q->failed)
		send_close(q);
	while (q->paths) {
		struct quic_path *a = q->paths;
		q->paths = a->next;
		qpath_free(a);
	}
	if (q->a)
		qpath_free(q->a);
	if (q->dq)
		dns_cancel(q->dq);
	eyeballs_free(q->race);
	if (q->deadline)
		event_free(q->deadline);
	if (q->more)
		event_free(q->more);
	free((char *)q->p.host);
	free((char *)q->p.sni);
	free((char *)q->p.alpn);
	free((char *)q->p.ca_file);
	free((char *)q->p.session_key);
	free(q);
}

/* The end of every event quic handles: leave() may free q. */
static void done(struct quic *q)
{
	void (*leave)(void *) = q->cbs.leave;
	void *ctx = q->ctx;

	sweep(q);
	leave(ctx);
}

/* --- packets out --- */

static void conn_fail(struct quic *q, const char *reason);
static void path_failed(struct quic_path *a, enum muxd_err err, const char *reason);

/* Write out on a path; failures end the attempt or the connection. */
static void path_write(struct quic_path *a)
{
	struct quic *q = a->q;
	char buf[160];
	bool app;
	int r;

	if (a->dead || q->stopped || q->failed || q->in_lib)
		return;
	q->in_lib = true;
	r = qpath_write_pkts(a, &app);
	q->in_lib = false;
	if (q->stopped)
		return;
	if (r > 0) {
		snprintf(buf, sizeof(buf), "sending to %s failed: %s", a->addr, strerror(r));
		path_failed(a, r == ECONNREFUSED ? ERR_CONNECT : ERR_CLOSED, buf);
		return;
	}
	if (r < 0) {
		snprintf(buf, sizeof(buf), "QUIC error: %s",
		         app ? q->cbs.strerror(r) : ngtcp2_strerror(r));
		path_failed(a, ERR_CLOSED, buf);
		return;
	}
	qpath_schedule_expiry(a);
}

void quic_write(struct quic *q)
{
	if (q->established && q->a)
		path_write(q->a);
	else if (q->early && q->ea && !q->ea->dead)
		path_write(q->ea);
}

static void on_more(evutil_socket_t fd, short what, void *arg)
{
	struct quic *q = arg;

	(void)fd;
	(void)what;
	q->cbs.enter(q->ctx);
	quic_write(q);
	done(q);
}

/* --- set-up --- */

static void setup_failed(struct quic *q)
{
	if (q->setup_failed || q->established || q->stopped)
		return;
	q->setup_failed = true;
	eyeballs_stop(q->race);
	evtimer_del(q->deadline);
	for (struct quic_path *o = q->paths; o; o = o->next)
		path_stop(o);
	q->cbs.on_failed(q->ctx, q->fail_err ? q->fail_err : ERR_CONNECT, q->fail_reason);
}

/* Drop an attempt that failed while warming. */
static void attempt_failed(struct quic_path *a, enum muxd_err err, const char *reason)
{
	struct quic *q = a->q;

	if (a->dead)
		return;
	path_stop(a);
	log_debug("quic: attempt to %s (%s) failed: %s", q->name, a->addr, reason);
	/* keep the most telling reason: TLS over a timeout over a refusal */
	if (q->fail_err == ERR_NONE || err == ERR_TLS ||
	    (err == ERR_CONNECT_TIMEOUT && q->fail_err != ERR_TLS)) {
		q->fail_err = err;
		snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
	}
	eyeballs_failed(q->race, a->index); /* the next one now, or on_failed */
}

/* The established connection cannot go on. */
static void conn_fail(struct quic *q, const char *reason)
{
	if (q->failed || q->stopped)
		return;
	send_close(q); /* nothing happens when the origin closed or we idled out */
	q->failed = true;
	if (q->a)
		path_stop(q->a);
	q->cbs.on_closed(q->ctx, ERR_CLOSED, reason);
}

static void path_failed(struct quic_path *a, enum muxd_err err, const char *reason)
{
	if (!a->q->established || a != a->q->a) {
		attempt_failed(a, err, reason);
		return;
	}
	conn_fail(a->q, reason);
}

/* --- ngtcp2 callbacks --- */

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx)
{
	(void)ctx;
	gnutls_rnd(GNUTLS_RND_RANDOM, dest, len);
}

static int get_new_cid_cb(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                          void *ud)
{
	(void)conn;
	(void)ud;
	if (gnutls_rnd(GNUTLS_RND_RANDOM, cid->data, cidlen) != 0 ||
	    gnutls_rnd(GNUTLS_RND_RANDOM, token, NGTCP2_STATELESS_RESET_TOKENLEN) != 0)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	cid->datalen = cidlen;
	return 0;
}

/* The handshake completed on a: it wins, unless another attempt did. */
static int handshake_completed_cb(ngtcp2_conn *conn, void *ud)
{
	struct quic_path *a = ud;
	struct quic *q = a->q;
	struct quic_path **pp;

	a->handshake_done = true;
	if (q->established || q->stopped || q->setup_failed)
		return 0; /* another attempt won: this one is dropped */
	if (q->early) {
		/* the streams opened early stay only when this attempt carried
		 * them and the server took its 0-RTT */
		bool kept =
		    a == q->ea && (gnutls_session_get_flags(a->tls) & GNUTLS_SFLAGS_EARLY_DATA);
		q->early = false; /* no stream callbacks from the discarding */
		log_debug("quic: 0-RTT to %s %s", q->name,
		          kept         ? "accepted"
		          : a == q->ea ? "refused: streams sent again"
		                       : "lost to another address: streams sent again");
		if (!kept) {
			if (a == q->ea && ngtcp2_conn_early_data_rejected(conn) != 0)
				return NGTCP2_ERR_CALLBACK_FAILURE;
			if (q->cbs.early_rejected)
				q->cbs.early_rejected(q->ctx);
		}
	}
	q->ea = NULL;
	q->a = a;
	if (q->cbs.on_connected(q->ctx) != 0) {
		q->a = NULL;
		return NGTCP2_ERR_CALLBACK_FAILURE;
	}
	/* the winner leaves the attempt list; the others are dropped */
	for (pp = &q->paths; *pp; pp = &(*pp)->next) {
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	}
	a->next = NULL;
	eyeballs_won(q->race, a->index); /* cancel_attempt() for the others */
	q->established = true;
	evtimer_del(q->deadline);
	log_debug("quic: handshake done with %s (%s)%s", q->name, a->addr,
	          gnutls_session_is_resumed(a->tls) ? ", resumed" : "");
	return 0;
}

static bool is_ours(struct quic_path *a)
{
	struct quic *q = a->q;

	return !q->stopped && ((q->a == a && q->established) ||
	                       (q->early && q->ea == a && !a->dead && !q->established));
}

static int cb_result(struct quic *q, int r)
{
	return r < 0 || q->stopped ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
}

static int recv_stream_data_cb(ngtcp2_conn *conn, uint32_t flags, int64_t id, uint64_t offset,
                               const uint8_t *data, size_t len, void *ud, void *sud)
{
	struct quic_path *a = ud;
	struct quic *q = a->q;
	int64_t n;

	(void)offset;
	if (!is_ours(a))
		return q->stopped ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
	n = q->cbs.recv_data(q->ctx, id, data, len, flags & NGTCP2_STREAM_DATA_FLAG_FIN, sud);
	if (n < 0 || q->stopped)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	ngtcp2_conn_extend_max_stream_offset(conn, id, (uint64_t)n);
	ngtcp2_conn_extend_max_offset(conn, (uint64_t)n);
	return 0;
}

static int acked_offset_cb(ngtcp2_conn *conn, int64_t id, uint64_t offset, uint64_t len, void *ud,
                           void *sud)
{
	struct quic_path *a = ud;

	(void)conn;
	(void)offset;
	if (!is_ours(a))
		return 0;
	return a->q->cbs.acked(a->q->ctx, id, len, sud) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int stream_close_cb(ngtcp2_conn *conn, uint32_t flags, int64_t id, uint64_t code, void *ud,
                           void *sud)
{
	struct quic_path *a = ud;

	(void)conn;
	if (!is_ours(a))
		return 0;
	return cb_result(a->q, a->q->cbs.stream_close(
	                           a->q->ctx, id,
	                           flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET, code, sud));
}

static int stream_reset_cb(ngtcp2_conn *conn, int64_t id, uint64_t final_size, uint64_t code,
                           void *ud, void *sud)
{
	struct quic_path *a = ud;

	(void)conn;
	(void)final_size;
	(void)code;
	if (!is_ours(a))
		return 0;
	return a->q->cbs.read_shut(a->q->ctx, id, true, sud) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int stream_stop_sending_cb(ngtcp2_conn *conn, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct quic_path *a = ud;

	(void)conn;
	(void)code;
	if (!is_ours(a))
		return 0;
	return a->q->cbs.read_shut(a->q->ctx, id, false, sud) == 0 ? 0
	                                                           : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int extend_max_stream_data_cb(ngtcp2_conn *conn, int64_t id, uint64_t max, void *ud,
                                     void *sud)
{
	struct quic_path *a = ud;

	(void)conn;
	(void)max;
	(void)sud;
	if (!is_ours(a))
		return 0;
	return a->q->cbs.unblocked(a->q->ctx, id) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int extend_max_bidi_cb(ngtcp2_conn *conn, uint64_t max, void *ud)
{
	struct quic_path *a = ud;

	(void)conn;
	(void)max;
	if (is_ours(a))
		a->q->cbs.more_streams(a->q->ctx);
	return 0;
}

/* --- packets in --- */

static void read_error(struct quic_path *a, int rv)
{
	struct quic *q = a->q;
	char buf[256];

	if (!a->handshake_done || !q->established) {
		if (rv == NGTCP2_ERR_CRYPTO || rv == NGTCP2_ERR_CALLBACK_FAILURE) {
			qpath_tls_failure(a, buf, sizeof(buf));
			attempt_failed(a, ERR_TLS, buf);
		} else if (rv == NGTCP2_ERR_DRAINING) {
			ngtcp2_connection_close_error cc;
			ngtcp2_conn_get_connection_close_error(a->conn, &cc);
			if ((cc.error_code & ~0xffULL) == NGTCP2_CRYPTO_ERROR) {
				qpath_tls_failure(a, buf, sizeof(buf));
				attempt_failed(a, ERR_TLS, buf);
			} else {
				snprintf(
				    buf, sizeof(buf),
				    "QUIC handshake failed: origin closed the connection (0x%llx)",
				    (unsigned long long)cc.error_code);
				attempt_failed(a, ERR_CONNECT, buf);
			}
		} else if (rv == NGTCP2_ERR_RECV_VERSION_NEGOTIATION) {
			attempt_failed(a, ERR_CONNECT,
			               "QUIC handshake failed: no common QUIC version");
		} else {
			snprintf(buf, sizeof(buf), "QUIC handshake failed: %s",
			         ngtcp2_strerror(rv));
			attempt_failed(a, ERR_CONNECT, buf);
		}
		return;
	}
	if (rv == NGTCP2_ERR_DRAINING) {
		log_debug("quic: %s closed the connection", q->name);
		conn_fail(q, "connection closed by origin");
	} else {
		snprintf(buf, sizeof(buf), "QUIC error: %s", ngtcp2_strerror(rv));
		log_debug("quic: %s: %s", q->name, buf);
		conn_fail(q, buf);
	}
}

/* Hands one received buffer (GRO: datagrams of gso bytes each, the last
 * shorter) to ngtcp2. Returns false when the path (or connection) ended. */
static bool path_input(struct quic_path *a, const uint8_t *p, size_t len, size_t gso)
{
	struct quic *q = a->q;
	ngtcp2_path path = {
	    {(ngtcp2_sockaddr *)&a->local, a->local_len},
	    {(ngtcp2_sockaddr *)&a->remote, a->remote_len},
	    NULL,
	};
	ngtcp2_pkt_info pi = {0};

	if (gso == 0)
		gso = len;
	while (len > 0) {
		size_t n = len < gso ? len : gso;
		int rv;

		q->in_lib = true;
		rv = ngtcp2_conn_read_pkt(a->conn, &path, &pi, p, n, quic_now());
		q->in_lib = false;
		if (q->stopped || a->dead || q->failed)
			return false;
		if (rv != 0) {
			read_error(a, rv);
			return false;
		}
		p += n;
		len -= n;
	}
	return true;
}

/* The UDP_GRO segment size in a received message's control data, or 0. */
static size_t gro_size(struct msghdr *h)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
		if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
			int v;
			memcpy(&v, CMSG_DATA(c), sizeof(v));
			return v > 0 ? (size_t)v : 0;
		}
	}
	return 0;
}

/* Returns false when the path (or connection) ended. Datagrams come in
 * batches per recvmmsg (one syscall per batch, not per datagram: a download
 * is ~75 k datagrams per 100 MiB): with UDP_GRO one 64 KiB buffer holding a
 * sender's coalesced burst, else QUIC_RX_BATCH datagrams of QUIC_RX_SLOT. */
static bool path_read(struct quic_path *a)
{
	struct quic *q = a->q;
	static_assert(QUIC_RX_BATCH * QUIC_RX_SLOT >= 65536, "a GRO buffer fits");
	uint8_t buf[QUIC_RX_BATCH * QUIC_RX_SLOT];
	struct mmsghdr msgs[QUIC_RX_BATCH];
	struct iovec iov[QUIC_RX_BATCH];
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl[QUIC_RX_BATCH];
	unsigned nmsg = a->gro ? 1 : QUIC_RX_BATCH;
	size_t slot = a->gro ? sizeof(buf) : QUIC_RX_SLOT;

	for (int got = 0; got < QUIC_MAX_READ;) {
		int n;

		memset(msgs, 0, sizeof(msgs));
		for (unsigned i = 0; i < nmsg; i++) {
			iov[i].iov_base = buf + i * slot;
			iov[i].iov_len = slot;
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			if (a->gro) {
				msgs[i].msg_hdr.msg_control = ctl[i].b;
				msgs[i].msg_hdr.msg_controllen = sizeof(ctl[i].b);
			}
		}
		n = recvmmsg(a->fd, msgs, nmsg, 0, NULL);
		if (n < 0) {
			char why[160];
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			snprintf(why, sizeof(why), "%s: %s", a->addr,
			         errno == ECONNREFUSED ? "refused (ICMP port unreachable)"
			                               : strerror(errno));
			if (!q->established || a != q->a)
				attempt_failed(a, ERR_CONNECT, why);
			else
				conn_fail(q, why);
			return false;
		}
		got += n;
		for (int i = 0; i < n; i++) {
			struct msghdr *h = &msgs[i].msg_hdr;

			/* larger than the max_udp_payload_size we announced: lost */
			if (h->msg_flags & MSG_TRUNC)
				continue;
			if (!path_input(a, iov[i].iov_base, msgs[i].msg_len,
			                a->gro ? gro_size(h) : 0))
				return false;
		}
		if ((unsigned)n < nmsg)
			break; /* drained */
	}
	if (q->established && a == q->a)
		qpath_store_session(q);
	return true;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct quic_path *a = arg;
	struct quic *q = a->q;

	(void)fd;
	q->cbs.enter(q->ctx);
	if ((what & EV_READ) && !a->dead && !q->stopped && !q->failed)
		path_read(a);
	if (!a->dead && !q->stopped && !q->failed)
		path_write(a);
	done(q);
}

static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
	struct quic_path *a = arg;
	struct quic *q = a->q;
	int rv;

	(void)fd;
	(void)what;
	q->cbs.enter(q->ctx);
	if (a->dead || q->stopped || q->failed)
		goto out;
	q->in_lib = true;
	rv = ngtcp2_conn_handle_expiry(a->conn, quic_now());
	q->in_lib = false;
	if (q->stopped)
		goto out;
	if (rv == NGTCP2_ERR_IDLE_CLOSE) {
		if (!q->established || a != q->a) {
			attempt_failed(a, ERR_CONNECT_TIMEOUT, "QUIC handshake timed out");
		} else {
			log_debug("quic: connection to %s idle: closed", q->name);
			q->silent = true;
			conn_fail(q, "QUIC idle timeout");
		}
		goto out;
	}
	if (rv == NGTCP2_ERR_HANDSHAKE_TIMEOUT) {
		attempt_failed(a, ERR_CONNECT_TIMEOUT, "QUIC handshake timed out");
		goto out;
	}
	if (rv != 0) {
		char buf[128];
		snprintf(buf, sizeof(buf), "QUIC error: %s", ngtcp2_strerror(rv));
		path_failed(a, ERR_CLOSED, buf);
		goto out;
	}
	path_write(a);
out:
	done(q);
}

void qpath_io_update(struct quic_path *a)
{
	short what = EV_READ | EV_PERSIST | (a->want_write ? EV_WRITE : 0);

	if (a->dead)
		return;
	event_del(a->io);
	event_assign(a->io, a->q->env.base, a->fd, what, on_io, a);
	event_add(a->io, NULL);
}

static const ngtcp2_callbacks ngtcp2_cbs = {
    .client_initial = ngtcp2_crypto_client_initial_cb,
    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
    .handshake_completed = handshake_completed_cb,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = recv_stream_data_cb,
    .acked_stream_data_offset = acked_offset_cb,
    .stream_close = stream_close_cb,
    .recv_retry = ngtcp2_crypto_recv_retry_cb,
    .extend_max_local_streams_bidi = extend_max_bidi_cb,
    .rand = rand_cb,
    .get_new_connection_id = get_new_cid_cb,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = stream_reset_cb,
    .extend_max_stream_data = extend_max_stream_data_cb,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .stream_stop_sending = stream_stop_sending_cb,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

static enum eyeballs_start out_of_memory(struct quic *q)
{
	q->fail_err = ERR_CONNECT;
	snprintf(q->fail_reason, sizeof(q->fail_reason), "out of memory");
	setup_failed(q);
	return EYEBALLS_STOP;
}

/* The race starts a QUIC handshake to address i. */
static enum eyeballs_start start_attempt(void *ctx, size_t i, const struct sockaddr *sa,
                                         socklen_t sl)
{
	struct quic *q = ctx;
	char reason[256];
	struct quic_path *a = calloc(1, sizeof(*a));

	if (!a)
		return out_of_memory(q);
	a->q = q;
	a->fd = -1;
	a->index = i;
	memcpy(&a->remote, sa, sl);
	a->remote_len = sl;
	qpath_addr_name(&a->remote, a->addr, sizeof(a->addr));
	a->next = q->paths;
	q->paths = a;
	a->batch = malloc(QUIC_BATCH * sizeof(*a->batch));
	a->io = event_new(q->env.base, -1, 0, on_io, a);
	a->expiry = evtimer_new(q->env.base, on_expiry, a);
	if (!a->batch || !a->io || !a->expiry) {
		a->dead = true;
		return out_of_memory(q);
	}
	a->fd = socket(sa->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->fd >= 0) {
		/* a download's burst outruns the default 208 KiB between two
		 * passes: drops the origin's congestion control takes for loss
		 * (the kernel caps this at net.core.rmem_max; best effort) */
		int rcvbuf = QUIC_RCVBUF;
		int one = 1;
		(void)setsockopt(a->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
		a->gro = setsockopt(a->fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
	}
	a->local_len = sizeof(a->local);
	if (a->fd < 0 || connect(a->fd, sa, sl) != 0 ||
	    getsockname(a->fd, (struct sockaddr *)&a->local, &a->local_len) != 0) {
		snprintf(reason, sizeof(reason), "%s: %s", a->addr, strerror(errno));
		a->dead = true;
		if (q->fail_err == ERR_NONE) {
			q->fail_err = ERR_CONNECT;
			snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
		}
		return EYEBALLS_SKIP;
	}
	if (!qpath_tls_setup(a, reason, sizeof(reason)) ||
	    !qpath_conn_new(a, &ngtcp2_cbs, reason, sizeof(reason))) {
		a->dead = true;
		q->fail_err = ERR_TLS;
		snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
		return EYEBALLS_STOP; /* the same for every address */
	}
	log_debug("quic: connecting to %s at %s%s", q->name, a->addr,
	          a->early ? " (resuming, 0-RTT)" : "");
	qpath_io_update(a);
	if (a->early && q->cbs.on_early && !q->ea && !q->stopped && !q->setup_failed) {
		/* 0-RTT: the app opens its streams before the first packet, so
		 * that their data rides the Initial's datagram (its later packets
		 * would wait for pacing, longer than the handshake on a short
		 * path) */
		q->ea = a;
		q->early = true;
		if (q->cbs.on_early(q->ctx) != 0) {
			q->early = false;
			q->ea = NULL;
		} else if (q->p.early_timeout_ms > 0 && q->p.early_timeout_ms < QUIC_HANDSHAKE_MS) {
			/* requests wait on this handshake now: they go elsewhere
			 * sooner when it does not end */
			evtimer_del(q->deadline);
			set_timer(q->deadline, q->p.early_timeout_ms);
		}
	}
	if (q->early && q->ea == a)
		event_active(q->more, EV_TIMEOUT, 0); /* after the app's own event, which writes */
	else
		path_write(a); /* the Initial packet; a failure tells the race at once */
	return EYEBALLS_RUNNING;
}

/* Another attempt won. */
static void cancel_attempt(void *ctx, size_t i)
{
	for (struct quic_path *o = ((struct quic *)ctx)->paths; o; o = o->next)
		if (o->index == i)
			path_stop(o);
}

static void race_failed(void *ctx)
{
	setup_failed(ctx);
}

static void race_enter(void *ctx)
{
	struct quic *q = ctx;

	q->cbs.enter(q->ctx);
}

static void race_leave(void *ctx)
{
	done(ctx);
}

static const struct eyeballs_cbs quic_race_cbs = {
    .start = start_attempt,
    .cancel = cancel_attempt,
    .failed = race_failed,
    .enter = race_enter,
    .leave = race_leave,
};

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct quic *q = arg;

	(void)fd;
	(void)what;
	q->cbs.enter(q->ctx);
	if (!q->established && !q->setup_failed) {
		if (!q->fail_now) {
			bool early = q->early && q->p.early_timeout_ms > 0 &&
			             q->p.early_timeout_ms < QUIC_HANDSHAKE_MS;
			q->fail_err = ERR_CONNECT_TIMEOUT;
			if (early)
				snprintf(q->fail_reason, sizeof(q->fail_reason),
				         "QUIC handshake with %s (0-RTT) not done within %llu ms",
				         q->name, (unsigned long long)q->p.early_timeout_ms);
			else
				snprintf(q->fail_reason, sizeof(q->fail_reason),
				         "QUIC handshake with %s not done within %d s", q->name,
				         QUIC_HANDSHAKE_MS / 1000);
		}
		setup_failed(q);
	}
	done(q);
}

static void on_resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct quic *q = ctx;

	q->cbs.enter(q->ctx);
	q->dq = NULL;
	if (err != 0 || !addrs || addrs->n == 0) {
		q->fail_err = ERR_DNS;
		snprintf(q->fail_reason, sizeof(q->fail_reason), "cannot resolve %s: %s", q->p.host,
		         reason ? reason : "no address");
		setup_failed(q);
	} else if (!q->stopped && !q->setup_failed) {
		eyeballs_run(q->race, addrs);
	}
	done(q);
}

/* --- the connection going down --- */

/* Best effort CONNECTION_CLOSE (q->app_err) on the established path. */
static void send_close(struct quic *q)
{
	struct quic_path *a = q->a;
	ngtcp2_connection_close_error cc;
	ngtcp2_pkt_info pi;
	uint8_t buf[QUIC_PKT_MAX];
	ngtcp2_ssize n;

	if (!q->established || q->close_sent || q->silent || !a || a->fd < 0 || !a->conn ||
	    ngtcp2_conn_is_in_closing_period(a->conn) || ngtcp2_conn_is_in_draining_period(a->conn))
		return;
	q->close_sent = true;
	ngtcp2_connection_close_error_default(&cc);
	ngtcp2_connection_close_error_set_application_error(&cc, q->app_err, NULL, 0);
	n = ngtcp2_conn_write_connection_close(a->conn, NULL, &pi, buf, sizeof(buf), &cc,
	                                       quic_now());
	if (n > 0 && send(a->fd, buf, (size_t)n, 0) < 0)
		log_debug("quic: CONNECTION_CLOSE to %s not sent: %s", q->name, strerror(errno));
}

void quic_shutdown(struct quic *q)
{
	if (q->stopped)
		return;
	if (!q->failed && !q->in_lib)
		send_close(q);
	q->stopped = true;
	if (q->a)
		path_stop(q->a);
	for (struct quic_path *o = q->paths; o; o = o->next)
		path_stop(o);
	eyeballs_stop(q->race);
	evtimer_del(q->deadline);
	event_del(q->more);
}

/* --- the established connection --- */

static ngtcp2_conn *live_conn(const struct quic *q)
{
	if (q->a && q->a->conn && !q->failed)
		return q->a->conn;
	/* before the handshake: the attempt carrying 0-RTT */
	return q->early && q->ea && !q->ea->dead && !q->stopped && !q->setup_failed ? q->ea->conn
	                                                                            : NULL;
}

void quic_keep_alive(struct quic *q, uint64_t ms)
{
	ngtcp2_conn *conn = live_conn(q);
	const ngtcp2_transport_params *tp;
	uint64_t idle = QUIC_IDLE_TIMEOUT_MS;

	if (!conn)
		return;
	/* within half of the idle timeout in force (the shorter of ours and
	 * the origin's) */
	tp = ngtcp2_conn_get_remote_transport_params(conn);
	if (tp && tp->max_idle_timeout > 0 && tp->max_idle_timeout / NGTCP2_MILLISECONDS < idle)
		idle = tp->max_idle_timeout / NGTCP2_MILLISECONDS;
	if (ms > idle / 2)
		ms = idle / 2;
	ngtcp2_conn_set_keep_alive_timeout(conn, (ms ? ms : 1) * NGTCP2_MILLISECONDS);
	if (!q->in_lib)
		qpath_schedule_expiry(q->a);
}

bool quic_peer(const struct quic *q, struct sockaddr_storage *addr, const void **cert, size_t *len)
{
	unsigned n = 0;
	const gnutls_datum_t *certs;

	if (!live_conn(q) || !q->established || !q->a->tls)
		return false;
	certs = gnutls_certificate_get_peers(q->a->tls, &n);
	if (!certs || n == 0)
		return false;
	*addr = q->a->remote;
	*cert = certs[0].data;
	*len = certs[0].size;
	return true;
}

int quic_open_bidi(struct quic *q, int64_t *id, void *sud)
{
	ngtcp2_conn *conn = live_conn(q);

	return conn && ngtcp2_conn_open_bidi_stream(conn, id, sud) == 0 ? 0 : -1;
}

int quic_open_uni(struct quic *q, int64_t *id)
{
	ngtcp2_conn *conn = live_conn(q);

	return conn && ngtcp2_conn_open_uni_stream(conn, id, NULL) == 0 ? 0 : -1;
}

uint64_t quic_bidi_left(const struct quic *q)
{
	ngtcp2_conn *conn = live_conn(q);

	return conn ? ngtcp2_conn_get_streams_bidi_left(conn) : 0;
}

void quic_extend_offsets(struct quic *q, int64_t id, uint64_t n)
{
	ngtcp2_conn *conn = live_conn(q);

	if (conn) {
		ngtcp2_conn_extend_max_stream_offset(conn, id, n);
		ngtcp2_conn_extend_max_offset(conn, n);
	}
}

void quic_extend_stream_offset(struct quic *q, int64_t id, uint64_t n)
{
	ngtcp2_conn *conn = live_conn(q);

	if (conn)
		ngtcp2_conn_extend_max_stream_offset(conn, id, n);
}

uint64_t quic_rtt_us(const struct quic *q)
{
	ngtcp2_conn *conn = live_conn(q);
	ngtcp2_conn_stat st;

	if (!conn)
		return 0;
	ngtcp2_conn_get_conn_stat(conn, &st);
	return st.first_rtt_sample_ts && st.first_rtt_sample_ts != UINT64_MAX
	           ? st.smoothed_rtt / NGTCP2_MICROSECONDS
	           : 0;
}

void quic_extend_conn_offset(struct quic *q, uint64_t n)
{
	ngtcp2_conn *conn = live_conn(q);

	if (conn)
		ngtcp2_conn_extend_max_offset(conn, n);
}

void quic_shutdown_stream(struct quic *q, int64_t id, uint64_t code)
{
	ngtcp2_conn *conn = live_conn(q);

	if (conn)
		ngtcp2_conn_shutdown_stream(conn, id, code);
}

void quic_shutdown_stream_write(struct quic *q, int64_t id, uint64_t code)
{
	ngtcp2_conn *conn = live_conn(q);

	if (conn)
		ngtcp2_conn_shutdown_stream_write(conn, id, code);
}

void quic_set_app_error(struct quic *q, uint64_t code)
{
	q->app_err = code;
}

/* --- set-up --- */

static char *dup_or_null(const char *s, bool *ok)
{
	char *d = s ? strdup(s) : NULL;

	*ok = *ok && (!s || d);
	return d;
}

struct quic *quic_connect(const struct transport_env *env, const struct quic_params *p,
                          const struct quic_cbs *cbs, void *ctx)
{
	struct quic *q = calloc(1, sizeof(*q));
	bool v6 = p->host && strchr(p->host, ':');
	bool ok = true;

	if (!q)
		return NULL;
	q->env = *env;
	q->cbs = *cbs;
	q->ctx = ctx;
	q->p = *p;
	q->p.host = dup_or_null(p->host ? p->host : "", &ok);
	q->p.sni = dup_or_null(p->sni ? p->sni : "", &ok);
	q->p.alpn = dup_or_null(p->alpn ? p->alpn : "", &ok);
	q->p.ca_file = dup_or_null(p->ca_file, &ok);
	q->p.session_key = NULL;
	if (p->session_key) {
		/* apart from TCP's: a QUIC ticket is TLS 1.3 with QUIC parameters */
		size_t n = strlen(q->p.alpn ? q->p.alpn : "") + strlen(p->session_key) + 2;
		char *k = malloc(n);
		if (k)
			snprintf(k, n, "%s|%s", q->p.alpn ? q->p.alpn : "", p->session_key);
		q->p.session_key = k;
		ok = ok && k;
	}
	snprintf(q->name, sizeof(q->name), v6 ? "[%s]:%u" : "%s:%u", p->host ? p->host : "",
	         (unsigned)p->port);
	q->race = eyeballs_new(env->base, EYEBALLS_DELAY_MS, &quic_race_cbs, q);
	q->deadline = evtimer_new(env->base, on_deadline, q);
	q->more = event_new(env->base, -1, 0, on_more, q);
	if (!ok || !q->race || !q->deadline || !q->more) {
		quic_free(q);
		return NULL;
	}
	set_timer(q->deadline, QUIC_HANDSHAKE_MS);
	q->dq = dns_resolve(env->dns, q->p.host, p->port, on_resolved, q);
	if (!q->dq) { /* reported from the deadline event, never from in here */
		q->fail_err = ERR_DNS;
		snprintf(q->fail_reason, sizeof(q->fail_reason), "cannot resolve %s", q->p.host);
		q->fail_now = true;
		evtimer_del(q->deadline);
		event_active(q->deadline, EV_TIMEOUT, 0);
	}
	return q;
}
