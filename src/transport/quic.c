/*
 * quic — QUIC client connections (see quic.h): packets, sendmmsg batches,
 * timers, the ngtcp2 callbacks, the GnuTLS session, and the handshake race
 * across the resolved addresses.
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
#include <time.h>
#include <unistd.h>

#include "dns.h"
#include "log.h"
#include "transport/quic.h"
#include "transport/tls.h"

#define QUIC_IDLE_TIMEOUT_MS 30000 /* max_idle_timeout */
#define QUIC_PKT_MAX 1500          /* largest UDP payload we send */
#define QUIC_BATCH 16              /* datagrams per sendmmsg */
#define QUIC_MAX_WRITE 256         /* datagrams per write-out before yielding to the loop */
#define QUIC_MAX_READ 128          /* datagrams per readable event */
#define QUIC_NVEC 16               /* stream data vectors per packet */
#define QUIC_SCID_LEN 18
#define QUIC_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE"

/* One QUIC connection attempt to one address; the winner carries the
 * connection. */
struct quic_path {
	struct quic *q;
	struct quic_path *next;
	int fd;
	struct event *io;
	struct event *expiry;
	ngtcp2_conn *conn;
	gnutls_session_t tls;
	ngtcp2_crypto_conn_ref ref;
	struct sockaddr_storage local, remote;
	socklen_t local_len, remote_len;
	char addr[64];
	bool handshake_done;
	bool dead;
	bool want_write; /* EV_WRITE armed: a batch waits */
	uint8_t (*batch)[QUIC_PKT_MAX];
	size_t batch_len[QUIC_BATCH];
	size_t nbatch, batch_sent;
};

struct quic {
	struct muxd *m;
	struct quic_cbs cbs;
	void *ctx;
	struct quic_params p; /* strings owned */
	char name[300];       /* host:port, for logs and reasons */
	struct dns_query *dq;
	struct dns_addrs addrs;
	size_t next_addr;
	struct quic_path *paths; /* attempts while warming */
	struct quic_path *a;     /* the established path */
	struct event *eyeballs;  /* start the next attempt */
	struct event *deadline;  /* set-up deadline */
	struct event *more;      /* continue a long write-out */
	enum muxd_err fail_err;  /* the most telling set-up failure so far */
	char fail_reason[512];
	uint64_t app_err; /* application error code for our CONNECTION_CLOSE */
	bool established;
	bool setup_failed; /* on_failed was called (or is due: fail_now) */
	bool fail_now;     /* the deadline event reports fail_err at once */
	bool failed;       /* the established connection is gone */
	bool stopped;      /* quic_shutdown(): nothing more */
	bool in_lib;       /* inside ngtcp2 */
	bool session_stored;
	bool close_sent;
	bool silent; /* idled out: no CONNECTION_CLOSE */
};

static ngtcp2_tstamp now_ts(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NGTCP2_SECONDS + (uint64_t)ts.tv_nsec;
}

static void set_timer(struct event *ev, uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	evtimer_add(ev, &tv);
}

/* --- freeing --- */

static void path_free(struct quic_path *a)
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
			path_free(a);
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
		path_free(a);
	}
	if (q->a)
		path_free(q->a);
	if (q->dq)
		dns_cancel(q->dq);
	if (q->eyeballs)
		event_free(q->eyeballs);
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

static void path_io_update(struct quic_path *a);

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
				path_io_update(a);
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
		path_io_update(a);
	}
	return true;
}

static void schedule_expiry(struct quic_path *a)
{
	ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(a->conn), now = now_ts();
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

static void conn_fail(struct quic *q, const char *reason);
static void path_failed(struct quic_path *a, enum muxd_err err, const char *reason);

/*
 * Write packets until ngtcp2 has nothing more (or the socket is full).
 * Returns a negative ngtcp2 error, a positive errno from the socket, or 0;
 * *app: the error came from the app's callbacks.
 */
static int write_pkts(struct quic_path *a, bool *app)
{
	struct quic *q = a->q;
	ngtcp2_tstamp ts = now_ts();
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

		if (a->handshake_done && q->established && a == q->a) {
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
	r = write_pkts(a, &app);
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
	schedule_expiry(a);
}

void quic_write(struct quic *q)
{
	if (q->established && q->a)
		path_write(q->a);
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
	evtimer_del(q->eyeballs);
	evtimer_del(q->deadline);
	for (struct quic_path *o = q->paths; o; o = o->next)
		path_stop(o);
	q->cbs.on_failed(q->ctx, q->fail_err ? q->fail_err : ERR_CONNECT, q->fail_reason);
}

static void start_next(struct quic *q);

/* Drop an attempt that failed while warming. */
static void attempt_failed(struct quic_path *a, enum muxd_err err, const char *reason)
{
	struct quic *q = a->q;
	bool alive = false;

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
	for (struct quic_path *o = q->paths; o; o = o->next)
		alive = alive || !o->dead;
	if (q->next_addr < q->addrs.n) {
		evtimer_del(q->eyeballs);
		start_next(q);
		return;
	}
	if (!alive)
		setup_failed(q);
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

	(void)conn;
	a->handshake_done = true;
	if (q->established || q->stopped || q->setup_failed)
		return 0; /* another attempt won: this one is dropped */
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
	for (struct quic_path *o = q->paths; o; o = o->next)
		path_stop(o);
	q->established = true;
	evtimer_del(q->eyeballs);
	evtimer_del(q->deadline);
	log_debug("quic: handshake done with %s (%s)%s", q->name, a->addr,
	          gnutls_session_is_resumed(a->tls) ? ", resumed" : "");
	return 0;
}

static bool is_ours(struct quic_path *a)
{
	return a->q->a == a && a->q->established && !a->q->stopped;
}

static int cb_result(struct quic *q, int r)
{
	return r < 0 || q->stopped ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
}

static void maybe_store_session(struct quic *q)
{
	gnutls_datum_t data = {NULL, 0};

	if (q->session_stored || !q->p.session_key || !q->a || !q->a->tls)
		return;
	if (!(gnutls_session_get_flags(q->a->tls) & GNUTLS_SFLAGS_SESSION_TICKET))
		return;
	if (gnutls_session_get_data2(q->a->tls, &data) < 0 || data.size == 0) {
		gnutls_free(data.data);
		return;
	}
	q->session_stored = true;
	tls_session_put(q->m->tls, q->p.session_key, data);
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

static void tls_failure(struct quic_path *a, char *buf, size_t len)
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

static void read_error(struct quic_path *a, int rv)
{
	struct quic *q = a->q;
	char buf[256];

	if (!a->handshake_done || !q->established) {
		if (rv == NGTCP2_ERR_CRYPTO || rv == NGTCP2_ERR_CALLBACK_FAILURE) {
			tls_failure(a, buf, sizeof(buf));
			attempt_failed(a, ERR_TLS, buf);
		} else if (rv == NGTCP2_ERR_DRAINING) {
			ngtcp2_connection_close_error cc;
			ngtcp2_conn_get_connection_close_error(a->conn, &cc);
			if ((cc.error_code & ~0xffULL) == NGTCP2_CRYPTO_ERROR) {
				tls_failure(a, buf, sizeof(buf));
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

/* Returns false when the path (or connection) ended. */
static bool path_read(struct quic_path *a)
{
	struct quic *q = a->q;
	uint8_t buf[65536];
	ngtcp2_path path = {
	    {(ngtcp2_sockaddr *)&a->local, a->local_len},
	    {(ngtcp2_sockaddr *)&a->remote, a->remote_len},
	    NULL,
	};
	ngtcp2_pkt_info pi = {0};

	for (int i = 0; i < QUIC_MAX_READ; i++) {
		ssize_t n = recv(a->fd, buf, sizeof(buf), 0);
		int rv;

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
		q->in_lib = true;
		rv = ngtcp2_conn_read_pkt(a->conn, &path, &pi, buf, (size_t)n, now_ts());
		q->in_lib = false;
		if (q->stopped || a->dead || q->failed)
			return false;
		if (rv != 0) {
			read_error(a, rv);
			return false;
		}
	}
	if (q->established && a == q->a)
		maybe_store_session(q);
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
	rv = ngtcp2_conn_handle_expiry(a->conn, now_ts());
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

static void path_io_update(struct quic_path *a)
{
	short what = EV_READ | EV_PERSIST | (a->want_write ? EV_WRITE : 0);

	if (a->dead)
		return;
	event_del(a->io);
	event_assign(a->io, a->q->m->base, a->fd, what, on_io, a);
	event_add(a->io, NULL);
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
static bool tls_setup(struct quic_path *a, char *reason, size_t len)
{
	struct quic *q = a->q;
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t alpn = {(unsigned char *)q->p.alpn, (unsigned)strlen(q->p.alpn)}, cached;
	int r;

	cred = tls_client_creds(q->m->tls, q->p.ca_file, q->p.verify, reason, len);
	if (!cred)
		return false;
	if ((r = gnutls_init(&a->tls, GNUTLS_CLIENT | GNUTLS_NO_END_OF_EARLY_DATA)) < 0) {
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
	if (q->p.session_key && tls_session_get(q->m->tls, q->p.session_key, &cached))
		gnutls_session_set_data(a->tls, cached.data, cached.size);
	a->ref.get_conn = get_conn_cb;
	a->ref.user_data = a;
	gnutls_session_set_ptr(a->tls, &a->ref);
	return true;
fail:
	snprintf(reason, len, "cannot set up TLS for QUIC: %s",
	         r < 0 ? gnutls_strerror(r) : "ngtcp2_crypto_gnutls");
	return false;
}

static bool conn_setup(struct quic_path *a, char *reason, size_t len)
{
	static const ngtcp2_callbacks cb = {
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
	st.initial_ts = now_ts();
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
	r = ngtcp2_conn_client_new(&a->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cb, &st,
	                           &tp, NULL, a);
	if (r != 0) {
		a->conn = NULL;
		snprintf(reason, len, "cannot create the QUIC connection: %s", ngtcp2_strerror(r));
		return false;
	}
	ngtcp2_conn_set_tls_native_handle(a->conn, a->tls);
	return true;
}

static void addr_name(const struct sockaddr_storage *ss, char *buf, size_t len)
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

/* Start a QUIC handshake to the next address. */
static void start_next(struct quic *q)
{
	char reason[256];
	struct quic_path *a;

	while (q->next_addr < q->addrs.n) {
		const struct sockaddr_storage *ss = &q->addrs.addr[q->next_addr++];
		socklen_t sl = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		                                         : sizeof(struct sockaddr_in);

		if (!(a = calloc(1, sizeof(*a)))) {
			snprintf(reason, sizeof(reason), "out of memory");
			goto failed_early;
		}
		a->q = q;
		a->fd = -1;
		memcpy(&a->remote, ss, sl);
		a->remote_len = sl;
		addr_name(ss, a->addr, sizeof(a->addr));
		a->next = q->paths;
		q->paths = a;
		a->batch = malloc(QUIC_BATCH * sizeof(*a->batch));
		a->io = event_new(q->m->base, -1, 0, on_io, a);
		a->expiry = evtimer_new(q->m->base, on_expiry, a);
		if (!a->batch || !a->io || !a->expiry) {
			snprintf(reason, sizeof(reason), "out of memory");
			goto failed;
		}
		a->fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		a->local_len = sizeof(a->local);
		if (a->fd < 0 || connect(a->fd, (const struct sockaddr *)ss, sl) != 0 ||
		    getsockname(a->fd, (struct sockaddr *)&a->local, &a->local_len) != 0) {
			snprintf(reason, sizeof(reason), "%s: %s", a->addr, strerror(errno));
			a->dead = true;
			if (q->fail_err == ERR_NONE) {
				q->fail_err = ERR_CONNECT;
				snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
			}
			continue;
		}
		if (!tls_setup(a, reason, sizeof(reason)) ||
		    !conn_setup(a, reason, sizeof(reason))) {
			a->dead = true;
			q->fail_err = ERR_TLS;
			snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
			q->next_addr = q->addrs.n; /* the same for every address */
			break;
		}
		log_debug("quic: connecting to %s at %s", q->name, a->addr);
		path_io_update(a);
		path_write(a); /* the Initial packet */
		if (q->next_addr < q->addrs.n && !a->dead)
			set_timer(q->eyeballs, QUIC_EYEBALLS_MS);
		return;
	}
	for (struct quic_path *o = q->paths; o; o = o->next)
		if (!o->dead)
			return;
	setup_failed(q);
	return;
failed:
	a->dead = true;
failed_early:
	q->fail_err = ERR_CONNECT;
	snprintf(q->fail_reason, sizeof(q->fail_reason), "%s", reason);
	setup_failed(q);
}

static void on_eyeballs(evutil_socket_t fd, short what, void *arg)
{
	struct quic *q = arg;

	(void)fd;
	(void)what;
	q->cbs.enter(q->ctx);
	if (!q->established && !q->setup_failed && !q->stopped)
		start_next(q);
	done(q);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct quic *q = arg;

	(void)fd;
	(void)what;
	q->cbs.enter(q->ctx);
	if (!q->established && !q->setup_failed) {
		if (!q->fail_now) {
			q->fail_err = ERR_CONNECT_TIMEOUT;
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
		q->addrs = *addrs;
		start_next(q);
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
	n = ngtcp2_conn_write_connection_close(a->conn, NULL, &pi, buf, sizeof(buf), &cc, now_ts());
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
	evtimer_del(q->eyeballs);
	evtimer_del(q->deadline);
	event_del(q->more);
}

/* --- the established connection --- */

static ngtcp2_conn *live_conn(const struct quic *q)
{
	return q->a && q->a->conn && !q->failed ? q->a->conn : NULL;
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

struct quic *quic_connect(struct muxd *m, const struct quic_params *p, const struct quic_cbs *cbs,
                          void *ctx)
{
	struct quic *q = calloc(1, sizeof(*q));
	bool v6 = p->host && strchr(p->host, ':');
	bool ok = true;

	if (!q)
		return NULL;
	q->m = m;
	q->cbs = *cbs;
	q->ctx = ctx;
	q->p = *p;
	q->p.host = dup_or_null(p->host ? p->host : "", &ok);
	q->p.sni = dup_or_null(p->sni ? p->sni : "", &ok);
	q->p.alpn = dup_or_null(p->alpn ? p->alpn : "", &ok);
	q->p.ca_file = dup_or_null(p->ca_file, &ok);
	q->p.session_key = dup_or_null(p->session_key, &ok);
	snprintf(q->name, sizeof(q->name), v6 ? "[%s]:%u" : "%s:%u", p->host ? p->host : "",
	         (unsigned)p->port);
	q->eyeballs = evtimer_new(m->base, on_eyeballs, q);
	q->deadline = evtimer_new(m->base, on_deadline, q);
	q->more = event_new(m->base, -1, 0, on_more, q);
	if (!ok || !q->eyeballs || !q->deadline || !q->more) {
		quic_free(q);
		return NULL;
	}
	set_timer(q->deadline, QUIC_HANDSHAKE_MS);
	q->dq = dns_resolve(m->dns, q->p.host, p->port, on_resolved, q);
	if (!q->dq) { /* reported from the deadline event, never from in here */
		q->fail_err = ERR_DNS;
		snprintf(q->fail_reason, sizeof(q->fail_reason), "cannot resolve %s", q->p.host);
		q->fail_now = true;
		evtimer_del(q->deadline);
		event_active(q->deadline, EV_TIMEOUT, 0);
	}
	return q;
}
