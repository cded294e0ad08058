/*
 * h3 — HTTP/3 upstream connections: QUIC (ngtcp2, TLS 1.3 through
 * ngtcp2_crypto_gnutls) on a connected UDP socket on the libevent loop, with
 * an nghttp3 client session carrying up to H3_MAX_STREAMS request/response
 * streams behind the upstream interface.
 * Owns: the UDP sockets, the ngtcp2 and nghttp3 connections, the GnuTLS
 * session, and every stream's buffers (request body until the origin
 * acknowledged it, the decoded response head, body and trailers).
 *
 * Set-up: the connection sets itself up. It resolves the host, then races
 * QUIC handshakes across the addresses (happy eyeballs: the next address
 * starts H3_EYEBALLS_MS after the previous one, or at once when it failed);
 * the first handshake to complete wins and the others are dropped. TLS names
 * and verifies the origin (sni), whatever host the packets go to. Until then
 * the connection is "warming" (free_slots 0). Success is reported as
 * on_available, failure (DNS, ICMP refusal, TLS, no handshake within
 * H3_HANDSHAKE_MS) as on_failed, after which the connection frees itself.
 * Both are called from a deferred event, never from inside ngtcp2/nghttp3.
 *
 * I/O: readable → recv() loop → ngtcp2_conn_read_pkt; writes loop over
 * nghttp3_conn_writev_stream + ngtcp2_conn_writev_stream and go out in
 * batches with sendmmsg (a batch that meets EAGAIN waits for EV_WRITE). The
 * ngtcp2 expiry drives an evtimer. The libraries are never entered
 * re-entrantly: stream operations only set flags and buffer data; requests
 * are submitted, cancels and flow-control credit applied, and packets
 * written from the deferred "kick" event. Streams are freed, and the owner
 * told about freed slots, only when no callback is running (hold/release).
 *
 * Flow control (memory stays bounded): a stream's receive window is
 * H3_STREAM_WINDOW and reopens only as the exchange takes bytes out of the
 * stream's body buffer (consumed); the connection window is H3_CONN_WINDOW so
 * that one stalled stream never blocks the others. A request body waits in a
 * per-stream buffer of at most TRANSPORT_BUF, kept until acknowledged.
 *
 * Endings: GOAWAY makes the connection take no new streams; streams at or
 * above its id fail with ERR_UNPROCESSED, the others finish, and then the
 * connection leaves with EVICT_GOAWAY. CONNECTION_CLOSE from the origin, an
 * idle timeout or a fatal error fail the unfinished streams with ERR_CLOSED;
 * the owner hears on_closed (EVICT_DEAD when no stream ran, else EVICT_COUNT).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "log.h"
#include "transport/tls.h"
#include "transport/transport.h"
#include "upstream/fields.h"
#include "upstream/streams.h"
#include "upstream/upstream.h"

#define H3_MAX_STREAMS 256                /* streams per connection, whatever the peer allows */
#define H3_STREAM_WINDOW (64 * 1024)      /* per-stream receive window */
#define H3_CONN_WINDOW (16 * 1024 * 1024) /* connection receive window */
#define H3_IDLE_TIMEOUT_MS 30000          /* QUIC max_idle_timeout */
#define H3_HANDSHAKE_MS 10000             /* set-up deadline */
#define H3_EYEBALLS_MS 250                /* stagger between address attempts */
#define H3_PKT_MAX 1500                   /* largest UDP payload we send */
#define H3_BATCH 16                       /* datagrams per sendmmsg */
#define H3_MAX_WRITE 256                  /* datagrams per write-out before yielding to the loop */
#define H3_MAX_READ 128                   /* datagrams per readable event */
#define H3_BLOCK 16384                    /* request body block */
#define H3_SCID_LEN 18
#define H3_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE"

/* Request body bytes; stay put (nghttp3 points at them) until acknowledged. */
struct h3_block {
	struct h3_block *next;
	size_t len;
	uint8_t data[H3_BLOCK];
};

struct h3_conn;

struct h3_stream {
	struct mux_stream ms; /* first; ms.id: -1 until the request is submitted */
	struct h3_conn *c;
	bool submit_pending;            /* send_head() was called; submit from the kick */
	bool cancel_pending;            /* reset the stream from the kick */
	bool resume;                    /* more request body for nghttp3 */
	struct sbuf req;                /* the request head: name\0value\0... */
	size_t nreq;                    /* fields in req */
	struct h3_block *blocks, *last; /* request body, oldest first */
	size_t blk_off;                 /* acknowledged bytes at the front of blocks */
	uint64_t queued;                /* request body bytes buffered so far (total) */
	uint64_t handed;                /* ... given to nghttp3 */
	uint64_t acked;                 /* ... acknowledged by the origin */
	size_t credit;                  /* consumed bytes to give back from the kick */
};

/* One QUIC connection attempt to one address; the winner carries the
 * connection. */
struct h3_path {
	struct h3_conn *c;
	struct h3_path *next;
	int fd;
	struct event *io;
	struct event *expiry;
	ngtcp2_conn *q;
	gnutls_session_t tls;
	ngtcp2_crypto_conn_ref ref;
	struct sockaddr_storage local, remote;
	socklen_t local_len, remote_len;
	char addr[64];
	bool handshake_done;
	bool dead;
	bool want_write; /* EV_WRITE armed: a batch waits */
	uint8_t (*batch)[H3_PKT_MAX];
	size_t batch_len[H3_BATCH];
	size_t nbatch, batch_sent;
};

struct h3_conn {
	struct mux_conn mc; /* first; mc.name: host:port for logs */
	struct h3_params p; /* strings owned */
	struct dns_query *dq;
	struct dns_addrs addrs;
	size_t next_addr;
	struct h3_path *paths; /* attempts while warming */
	struct h3_path *a;     /* the established path */
	nghttp3_conn *h3;
	struct event *eyeballs; /* start the next attempt */
	struct event *deadline; /* set-up deadline */
	enum muxd_err fail_err; /* the most telling set-up failure so far */
	char fail_reason[512];
	int64_t goaway_id;
	uint64_t app_err; /* HTTP/3 error code for our CONNECTION_CLOSE */
	bool established;
	bool setup_failed; /* tell on_failed from the kick */
	bool in_lib;       /* inside ngtcp2/nghttp3 */
	bool session_stored;
	bool close_sent;
	bool silent; /* idled out: no CONNECTION_CLOSE */
};

#define H3S(p) ((struct h3_stream *)(p))

static ngtcp2_tstamp now_ts(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NGTCP2_SECONDS + (uint64_t)ts.tv_nsec;
}

static const char *origin(const struct h3_conn *c)
{
	return mux_origin(&c->mc);
}

/* --- freeing --- */

static void stream_free(struct mux_stream *ms)
{
	struct h3_stream *s = H3S(ms);

	while (s->blocks) {
		struct h3_block *b = s->blocks;
		s->blocks = b->next;
		free(b);
	}
	free(s->req.p);
	mux_stream_free_bufs(ms);
	free(s);
}

static void path_free(struct h3_path *a)
{
	if (a->q)
		ngtcp2_conn_del(a->q);
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

static void send_close(struct h3_conn *c);

static void conn_free(struct mux_conn *mc)
{
	struct h3_conn *c = (struct h3_conn *)mc;

	if (c->established && !mc->failed)
		send_close(c);
	mux_conn_free_base(mc);
	if (c->h3)
		nghttp3_conn_del(c->h3);
	while (c->paths) {
		struct h3_path *a = c->paths;
		c->paths = a->next;
		path_free(a);
	}
	if (c->a)
		path_free(c->a);
	if (c->dq)
		dns_cancel(c->dq);
	if (c->eyeballs)
		event_free(c->eyeballs);
	if (c->deadline)
		event_free(c->deadline);
	free((char *)c->p.host);
	free((char *)c->p.sni);
	free((char *)c->p.ca_file);
	free((char *)c->p.session_key);
	free(c);
}

/* Free finished streams (their credit goes back to the connection window)
 * and dead attempts; close after GOAWAY; offer freed slots. Runs with
 * exactly one hold, when no callback is running. */
static void settle(struct mux_conn *mc)
{
	struct h3_conn *c = (struct h3_conn *)mc;
	struct h3_path **ap = &c->paths;
	unsigned live, freed;

	while (*ap) {
		struct h3_path *a = *ap;
		if (a->dead) {
			*ap = a->next;
			path_free(a);
		} else {
			ap = &a->next;
		}
	}
	for (struct mux_stream *ms = mc->streams; ms; ms = ms->next)
		if (!ms->user && !ms->open && H3S(ms)->credit > 0 && c->a && c->a->q && !mc->failed)
			ngtcp2_conn_extend_max_offset(c->a->q, H3S(ms)->credit);
	mux_sweep(mc, &live, &freed);
	if (c->established)
		mux_settle_tail(mc, live, freed);
}

/* Detaching: reset the stream from the kick; its unconsumed bytes become
 * credit. */
static void detach(struct mux_stream *ms, bool reset)
{
	struct h3_stream *s = H3S(ms);

	s->submit_pending = false;
	if (reset)
		s->cancel_pending = true;
	s->credit += ms->unconsumed;
	ms->unconsumed = 0;
}

static void give(struct mux_stream *ms, size_t n)
{
	H3S(ms)->credit += n;
}

static void resume(struct mux_stream *ms)
{
	H3S(ms)->resume = true;
}

/* --- packets out --- */

static void path_io_update(struct h3_path *a);

/* Send the queued batch; false when the socket is full (EV_WRITE armed) or
 * failed (errno kept). */
static bool batch_send(struct h3_path *a, int *err)
{
	*err = 0;
	while (a->batch_sent < a->nbatch) {
		struct mmsghdr msgs[H3_BATCH];
		struct iovec iov[H3_BATCH];
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

static void schedule_expiry(struct h3_path *a)
{
	ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(a->q), now = now_ts();
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

static void conn_fail(struct h3_conn *c, enum muxd_err err, const char *reason, bool dead);
static void path_failed(struct h3_path *a, enum muxd_err err, const char *reason);

/*
 * Write packets until ngtcp2 has nothing more (or the socket is full).
 * Returns a negative ngtcp2/nghttp3 error, a positive errno from the socket,
 * or 0.
 */
static int write_pkts(struct h3_path *a)
{
	struct h3_conn *c = a->c;
	ngtcp2_tstamp ts = now_ts();
	size_t max = ngtcp2_conn_get_max_tx_udp_payload_size(a->q), total = 0;
	int serr;

	if (max > H3_PKT_MAX)
		max = H3_PKT_MAX;
	if (a->nbatch > 0 && !batch_send(a, &serr))
		return serr;
	for (;;) {
		int64_t sid = -1;
		int fin = 0;
		nghttp3_vec vec[16];
		nghttp3_ssize nvec = 0;
		ngtcp2_ssize ndatalen = -1, n;
		ngtcp2_pkt_info pi;
		uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;

		if (a->handshake_done && c->h3 && a == c->a) {
			nvec = nghttp3_conn_writev_stream(c->h3, &sid, &fin, vec, 16);
			if (nvec < 0)
				return (int)nvec;
		}
		if (fin)
			flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
		n = ngtcp2_conn_writev_stream(a->q, NULL, &pi, a->batch[a->nbatch], max, &ndatalen,
		                              flags, sid, (const ngtcp2_vec *)vec, (size_t)nvec,
		                              ts);
		if (n < 0) {
			if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
				nghttp3_conn_block_stream(c->h3, sid);
				continue;
			}
			if (n == NGTCP2_ERR_STREAM_SHUT_WR) {
				nghttp3_conn_shutdown_stream_write(c->h3, sid);
				continue;
			}
			if (n == NGTCP2_ERR_WRITE_MORE) {
				int r = nghttp3_conn_add_write_offset(c->h3, sid, (size_t)ndatalen);
				if (r != 0)
					return r;
				continue;
			}
			return (int)n;
		}
		if (ndatalen >= 0 && sid >= 0) {
			int r = nghttp3_conn_add_write_offset(c->h3, sid, (size_t)ndatalen);
			if (r != 0)
				return r;
		}
		if (n > 0) {
			a->batch_len[a->nbatch++] = (size_t)n;
			total++;
		}
		if (a->nbatch == H3_BATCH || (n == 0 && a->nbatch > 0)) {
			if (!batch_send(a, &serr))
				return serr;
		}
		if (n == 0)
			break;
		if (total >= H3_MAX_WRITE) {
			mux_kick(&c->mc); /* let the loop breathe; continue from the kick */
			break;
		}
	}
	ngtcp2_conn_update_pkt_tx_time(a->q, ts);
	return 0;
}

static const char *errno_reason(int e, char *buf, size_t len)
{
	snprintf(buf, len, "%s", strerror(e));
	return buf;
}

/* Write out on a path; failures end the attempt or the connection. */
static void path_write(struct h3_path *a)
{
	struct h3_conn *c = a->c;
	char buf[160], why[64];
	int r;

	if (a->dead || c->mc.freeing || c->mc.failed || c->in_lib)
		return;
	c->in_lib = true;
	r = write_pkts(a);
	c->in_lib = false;
	if (c->mc.freeing)
		return;
	if (r > 0) {
		snprintf(buf, sizeof(buf), "sending to %s failed: %s", a->addr,
		         errno_reason(r, why, sizeof(why)));
		path_failed(a, r == ECONNREFUSED ? ERR_CONNECT : ERR_CLOSED, buf);
		return;
	}
	if (r < 0) {
		snprintf(buf, sizeof(buf), "QUIC error: %s",
		         r > -500 && r <= -100 && r > -300 ? ngtcp2_strerror(r)
		                                           : nghttp3_strerror(r));
		path_failed(a, ERR_CLOSED, buf);
		return;
	}
	schedule_expiry(a);
}

/* --- set-up --- */

static void setup_failed(struct h3_conn *c)
{
	if (c->setup_failed || c->established)
		return;
	c->setup_failed = true;
	mux_kick(&c->mc);
}

static void start_next(struct h3_conn *c);

/* Drop an attempt that failed while warming. */
static void attempt_failed(struct h3_path *a, enum muxd_err err, const char *reason)
{
	struct h3_conn *c = a->c;
	bool alive = false;

	if (a->dead)
		return;
	a->dead = true;
	event_del(a->io);
	evtimer_del(a->expiry);
	log_debug("h3: attempt to %s (%s) failed: %s", origin(c), a->addr, reason);
	/* keep the most telling reason: TLS over a timeout over a refusal */
	if (c->fail_err == ERR_NONE || err == ERR_TLS ||
	    (err == ERR_CONNECT_TIMEOUT && c->fail_err != ERR_TLS)) {
		c->fail_err = err;
		snprintf(c->fail_reason, sizeof(c->fail_reason), "%s", reason);
	}
	for (struct h3_path *o = c->paths; o; o = o->next)
		alive = alive || !o->dead;
	if (c->next_addr < c->addrs.n) {
		evtimer_del(c->eyeballs);
		start_next(c);
		return;
	}
	if (!alive)
		setup_failed(c);
	mux_kick(&c->mc); /* settle frees it */
}

static void path_failed(struct h3_path *a, enum muxd_err err, const char *reason)
{
	if (!a->c->established || a != a->c->a) {
		attempt_failed(a, err, reason);
		return;
	}
	conn_fail(a->c, ERR_CLOSED, reason, false);
}

/* --- ngtcp2 callbacks --- */

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx)
{
	(void)ctx;
	gnutls_rnd(GNUTLS_RND_RANDOM, dest, len);
}

static int get_new_cid_cb(ngtcp2_conn *q, ngtcp2_cid *cid, uint8_t *token, size_t cidlen, void *ud)
{
	(void)q;
	(void)ud;
	if (gnutls_rnd(GNUTLS_RND_RANDOM, cid->data, cidlen) != 0 ||
	    gnutls_rnd(GNUTLS_RND_RANDOM, token, NGTCP2_STATELESS_RESET_TOKENLEN) != 0)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	cid->datalen = cidlen;
	return 0;
}

static int h3_setup(struct h3_conn *c, struct h3_path *a);

static int handshake_completed_cb(ngtcp2_conn *q, void *ud)
{
	struct h3_path *a = ud;

	(void)q;
	a->handshake_done = true;
	if (a->c->established || a->c->mc.freeing)
		return 0; /* another attempt won: this one is dropped */
	return h3_setup(a->c, a) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static bool is_ours(struct h3_path *a)
{
	return a->c->a == a && a->c->h3 && !a->c->mc.freeing;
}

/* Reopens the stream's and the connection's receive windows by n bytes. */
static void give_window(ngtcp2_conn *q, int64_t id, uint64_t n)
{
	ngtcp2_conn_extend_max_stream_offset(q, id, n);
	ngtcp2_conn_extend_max_offset(q, n);
}

/* The origin will send no more on stream id (reset, or STOP_SENDING). */
static int shutdown_read(struct h3_path *a, int64_t id)
{
	if (!is_ours(a))
		return 0;
	return nghttp3_conn_shutdown_stream_read(a->c->h3, id) == 0 ? 0
	                                                            : NGTCP2_ERR_CALLBACK_FAILURE;
}

static void maybe_store_session(struct h3_conn *c)
{
	gnutls_datum_t data = {NULL, 0};

	if (c->session_stored || !c->p.session_key || !c->a || !c->a->tls)
		return;
	if (!(gnutls_session_get_flags(c->a->tls) & GNUTLS_SFLAGS_SESSION_TICKET))
		return;
	if (gnutls_session_get_data2(c->a->tls, &data) < 0 || data.size == 0) {
		gnutls_free(data.data);
		return;
	}
	c->session_stored = true;
	tls_session_put(c->mc.m->tls, c->p.session_key, data);
}

static int recv_stream_data_cb(ngtcp2_conn *q, uint32_t flags, int64_t id, uint64_t offset,
                               const uint8_t *data, size_t len, void *ud, void *sud)
{
	struct h3_path *a = ud;
	struct h3_conn *c = a->c;
	nghttp3_ssize n;

	(void)offset;
	(void)sud;
	if (!is_ours(a))
		return c->mc.freeing ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
	n = nghttp3_conn_read_stream(c->h3, id, data, len, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
	if (c->mc.freeing)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	if (n < 0) {
		log_debug("h3: %s: nghttp3_conn_read_stream: %s", origin(c),
		          nghttp3_strerror((int)n));
		c->app_err = nghttp3_err_infer_quic_app_error_code((int)n);
		return NGTCP2_ERR_CALLBACK_FAILURE;
	}
	give_window(q, id, (uint64_t)n);
	return 0;
}

static int acked_offset_cb(ngtcp2_conn *q, int64_t id, uint64_t offset, uint64_t len, void *ud,
                           void *sud)
{
	struct h3_path *a = ud;

	(void)q;
	(void)offset;
	(void)sud;
	if (!is_ours(a))
		return 0;
	return nghttp3_conn_add_ack_offset(a->c->h3, id, len) == 0 ? 0
	                                                           : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int stream_close_cb(ngtcp2_conn *q, uint32_t flags, int64_t id, uint64_t code, void *ud,
                           void *sud)
{
	struct h3_path *a = ud;
	int r;

	(void)q;
	(void)sud;
	if (!is_ours(a))
		return 0;
	if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET))
		code = NGHTTP3_H3_NO_ERROR;
	r = nghttp3_conn_close_stream(a->c->h3, id, code);
	if (r != 0 && r != NGHTTP3_ERR_STREAM_NOT_FOUND)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	return a->c->mc.freeing ? NGTCP2_ERR_CALLBACK_FAILURE : 0;
}

static int stream_reset_cb(ngtcp2_conn *q, int64_t id, uint64_t final_size, uint64_t code, void *ud,
                           void *sud)
{
	struct h3_path *a = ud;
	struct h3_stream *s = sud;

	(void)q;
	(void)final_size;
	(void)code;
	if (s && is_ours(a))
		s->ms.peer_reset = true;
	return shutdown_read(a, id);
}

static int stream_stop_sending_cb(ngtcp2_conn *q, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct h3_path *a = ud;

	(void)q;
	(void)code;
	(void)sud;
	return shutdown_read(a, id);
}

static int extend_max_stream_data_cb(ngtcp2_conn *q, int64_t id, uint64_t max, void *ud, void *sud)
{
	struct h3_path *a = ud;

	(void)q;
	(void)max;
	(void)sud;
	if (!is_ours(a))
		return 0;
	return nghttp3_conn_unblock_stream(a->c->h3, id) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int extend_max_bidi_cb(ngtcp2_conn *q, uint64_t max, void *ud)
{
	struct h3_path *a = ud;

	(void)q;
	(void)max;
	if (is_ours(a) && a->c->established) {
		a->c->mc.want_available = true;
		mux_kick(&a->c->mc);
	}
	return 0;
}

/* --- nghttp3 callbacks --- */

static int h3_acked_cb(nghttp3_conn *h, int64_t id, uint64_t len, void *ud, void *sud)
{
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	(void)ud;
	if (!s)
		return 0;
	s->acked += len;
	s->blk_off += len;
	while (s->blocks && s->blk_off >= s->blocks->len &&
	       (s->blocks->next || s->blocks->len == H3_BLOCK)) {
		struct h3_block *b = s->blocks;
		s->blk_off -= b->len;
		s->blocks = b->next;
		if (!s->blocks)
			s->last = NULL;
		free(b);
	}
	if (s->ms.user && !s->ms.send_ended && s->queued - s->acked < TRANSPORT_BUF / 2) {
		s->ms.send_ready = true;
		mux_kick(&s->c->mc); /* on_send_ready from the kick */
	}
	return 0;
}

static int h3_stream_close_cb(nghttp3_conn *h, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;
	char text[24];

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	snprintf(text, sizeof(text), "0x%llx", (unsigned long long)code);
	mux_stream_closed(&s->ms, code == NGHTTP3_H3_REQUEST_REJECTED, false, text);
	return 0;
}

static int h3_recv_data_cb(nghttp3_conn *h, int64_t id, const uint8_t *data, size_t len, void *ud,
                           void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user) {
		/* nobody wants it: give the window back at once */
		give_window(c->a->q, id, len);
		return 0;
	}
	s->ms.got_any = true;
	if (len == 0)
		return 0;
	if (evbuffer_add(s->ms.body, data, len) != 0) {
		s->credit += len;
		s->ms.bad = "out of memory";
		return 0;
	}
	mux_got_body(&s->ms, len);
	return 0;
}

static int h3_deferred_consume_cb(nghttp3_conn *h, int64_t id, size_t n, void *ud, void *sud)
{
	struct h3_conn *c = ud;

	(void)h;
	(void)sud;
	give_window(c->a->q, id, n);
	return 0;
}

static int h3_begin_headers_cb(nghttp3_conn *h, int64_t id, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s)
		return 0;
	mux_begin_head(&s->ms);
	return 0;
}

static int h3_recv_header_cb(nghttp3_conn *h, int64_t id, int32_t token, nghttp3_rcbuf *name,
                             nghttp3_rcbuf *value, uint8_t flags, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;
	nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);

	(void)h;
	(void)id;
	(void)token;
	(void)flags;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user || s->ms.bad)
		return 0;
	s->ms.bad = mux_head_field(&s->ms, n.base, n.len, v.base, v.len);
	return 0;
}

/* A response head (interim or final) arrived complete. */
static void got_head(struct h3_stream *s, bool end)
{
	if (s->ms.bad || s->ms.status < 100) {
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE,
		                 s->ms.bad ? s->ms.bad : "malformed response (no valid :status)",
		                 false, true);
		return;
	}
	mux_got_head(&s->ms, end);
}

static int h3_end_headers_cb(nghttp3_conn *h, int64_t id, int fin, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (s && s->ms.user)
		got_head(s, fin != 0);
	return 0;
}

static int h3_end_trailers_cb(nghttp3_conn *h, int64_t id, int fin, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	(void)fin;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (s && s->ms.user && s->ms.bad)
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE, s->ms.bad, false, true);
	return 0;
}

static int h3_end_stream_cb(nghttp3_conn *h, int64_t id, void *ud, void *sud)
{
	struct h3_conn *c = ud;
	struct h3_stream *s = sud;

	(void)h;
	(void)id;
	if (c->mc.freeing)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	if (!s || !s->ms.user)
		return 0;
	if (!s->ms.got_final) {
		mux_stream_error(&s->ms, ERR_BAD_RESPONSE, "response ended without a final head",
		                 !s->ms.got_any, true);
		return 0;
	}
	mux_remote_end(&s->ms);
	return 0;
}

/* STOP_SENDING or RESET_STREAM from nghttp3: stop sending on the stream. */
static int h3_shutdown_write_cb(nghttp3_conn *h, int64_t id, uint64_t code, void *ud, void *sud)
{
	struct h3_conn *c = ud;

	(void)h;
	(void)sud;
	ngtcp2_conn_shutdown_stream_write(c->a->q, id, code);
	return 0;
}

/* GOAWAY: streams at or above id were not processed and never will be. */
static int h3_shutdown_cb(nghttp3_conn *h, int64_t id, void *ud)
{
	struct h3_conn *c = ud;

	(void)h;
	log_debug("h3: GOAWAY from %s (stream id %lld)", origin(c), (long long)id);
	c->mc.goaway = true;
	c->goaway_id = id;
	c->mc.base.reusable = false;
	for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
		if (s->ms.user && (s->ms.id < 0 || s->ms.id >= id) && !s->ms.got_any) {
			s->ms.err_pending = true;
			s->ms.err = ERR_UNPROCESSED;
			s->ms.err_reason = "stream not processed by origin (GOAWAY)";
		}
	}
	mux_kick(&c->mc);
	return 0;
}

/* The handshake completed on a: it wins; the HTTP/3 session starts on it. */
static int h3_setup(struct h3_conn *c, struct h3_path *a)
{
	static const nghttp3_callbacks cb = {
	    .acked_stream_data = h3_acked_cb,
	    .stream_close = h3_stream_close_cb,
	    .recv_data = h3_recv_data_cb,
	    .deferred_consume = h3_deferred_consume_cb,
	    .begin_headers = h3_begin_headers_cb,
	    .recv_header = h3_recv_header_cb,
	    .end_headers = h3_end_headers_cb,
	    .begin_trailers = h3_begin_headers_cb,
	    .recv_trailer = h3_recv_header_cb,
	    .end_trailers = h3_end_trailers_cb,
	    .stop_sending = h3_shutdown_write_cb,
	    .end_stream = h3_end_stream_cb,
	    .reset_stream = h3_shutdown_write_cb,
	    .shutdown = h3_shutdown_cb,
	};
	nghttp3_settings st;
	int64_t ctrl, qenc, qdec;
	struct h3_path **pp;

	nghttp3_settings_default(&st);
	st.qpack_max_dtable_capacity = 4096;
	st.qpack_blocked_streams = 100;
	if (nghttp3_conn_client_new(&c->h3, &cb, &st, nghttp3_mem_default(), c) != 0) {
		c->h3 = NULL;
		return -1;
	}
	if (ngtcp2_conn_open_uni_stream(a->q, &ctrl, NULL) != 0 ||
	    nghttp3_conn_bind_control_stream(c->h3, ctrl) != 0 ||
	    ngtcp2_conn_open_uni_stream(a->q, &qenc, NULL) != 0 ||
	    ngtcp2_conn_open_uni_stream(a->q, &qdec, NULL) != 0 ||
	    nghttp3_conn_bind_qpack_streams(c->h3, qenc, qdec) != 0) {
		nghttp3_conn_del(c->h3);
		c->h3 = NULL;
		return -1;
	}
	/* the winner leaves the attempt list; the others are dropped */
	for (pp = &c->paths; *pp; pp = &(*pp)->next) {
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	}
	a->next = NULL;
	for (struct h3_path *o = c->paths; o; o = o->next) {
		o->dead = true;
		event_del(o->io);
		evtimer_del(o->expiry);
	}
	c->a = a;
	c->established = true;
	c->mc.base.warming = false;
	c->mc.want_available = true;
	evtimer_del(c->eyeballs);
	evtimer_del(c->deadline);
	log_debug("h3: handshake done with %s (%s)%s", origin(c), a->addr,
	          gnutls_session_is_resumed(a->tls) ? ", resumed" : "");
	mux_kick(&c->mc);
	return 0;
}

/* --- packets in --- */

static void tls_failure(struct h3_path *a, char *buf, size_t len)
{
	unsigned status = a->tls ? gnutls_session_get_verify_cert_status(a->tls) : 0;
	ngtcp2_connection_close_error cc;

	if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
		snprintf(buf, len,
		         "QUIC handshake failed: certificate signed by unknown authority");
	else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
		snprintf(buf, len, "QUIC handshake failed: certificate name does not match %s",
		         a->c->p.sni);
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
		ngtcp2_conn_get_connection_close_error(a->q, &cc);
		if (cc.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT &&
		    (cc.error_code & ~0xffULL) == NGTCP2_CRYPTO_ERROR)
			snprintf(buf, len, "QUIC handshake failed: TLS alert %s from origin",
			         gnutls_alert_get_strname(
			             (gnutls_alert_description_t)(cc.error_code & 0xff)));
		else
			snprintf(buf, len, "QUIC handshake failed: TLS error");
	}
}

static void read_error(struct h3_path *a, int rv)
{
	struct h3_conn *c = a->c;
	char buf[256];

	if (!a->handshake_done || !c->established) {
		if (rv == NGTCP2_ERR_CRYPTO || rv == NGTCP2_ERR_CALLBACK_FAILURE) {
			tls_failure(a, buf, sizeof(buf));
			attempt_failed(a, ERR_TLS, buf);
		} else if (rv == NGTCP2_ERR_DRAINING) {
			ngtcp2_connection_close_error cc;
			ngtcp2_conn_get_connection_close_error(a->q, &cc);
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
		log_debug("h3: %s closed the connection", origin(c));
		conn_fail(c, ERR_CLOSED, "connection closed by origin", false);
	} else {
		snprintf(buf, sizeof(buf), "QUIC error: %s", ngtcp2_strerror(rv));
		log_debug("h3: %s: %s", origin(c), buf);
		conn_fail(c, ERR_CLOSED, buf, false);
	}
}

/* Returns false when the path (or connection) ended. */
static bool path_read(struct h3_path *a)
{
	struct h3_conn *c = a->c;
	uint8_t buf[65536];
	ngtcp2_path path = {
	    {(ngtcp2_sockaddr *)&a->local, a->local_len},
	    {(ngtcp2_sockaddr *)&a->remote, a->remote_len},
	    NULL,
	};
	ngtcp2_pkt_info pi = {0};

	for (int i = 0; i < H3_MAX_READ; i++) {
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
			if (!c->established || a != c->a)
				attempt_failed(a, ERR_CONNECT, why);
			else
				conn_fail(c, ERR_CLOSED, why, false);
			return false;
		}
		c->in_lib = true;
		rv = ngtcp2_conn_read_pkt(a->q, &path, &pi, buf, (size_t)n, now_ts());
		c->in_lib = false;
		if (c->mc.freeing || a->dead || c->mc.failed)
			return false;
		if (rv != 0) {
			read_error(a, rv);
			return false;
		}
	}
	if (c->established && a == c->a)
		maybe_store_session(c);
	return true;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct h3_path *a = arg;
	struct h3_conn *c = a->c;

	(void)fd;
	mux_hold(&c->mc);
	if ((what & EV_READ) && !a->dead && !c->mc.freeing && !c->mc.failed)
		path_read(a);
	if (!a->dead && !c->mc.freeing && !c->mc.failed)
		path_write(a);
	mux_release(&c->mc);
}

static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
	struct h3_path *a = arg;
	struct h3_conn *c = a->c;
	int rv;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	if (a->dead || c->mc.freeing || c->mc.failed)
		goto out;
	c->in_lib = true;
	rv = ngtcp2_conn_handle_expiry(a->q, now_ts());
	c->in_lib = false;
	if (c->mc.freeing)
		goto out;
	if (rv == NGTCP2_ERR_IDLE_CLOSE) {
		if (!c->established || a != c->a) {
			attempt_failed(a, ERR_CONNECT_TIMEOUT, "QUIC handshake timed out");
		} else {
			log_debug("h3: connection to %s idle: closed", origin(c));
			c->silent = true;
			conn_fail(c, ERR_CLOSED, "QUIC idle timeout", false);
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
	mux_release(&c->mc);
}

static void path_io_update(struct h3_path *a)
{
	short what = EV_READ | EV_PERSIST | (a->want_write ? EV_WRITE : 0);

	if (a->dead)
		return;
	event_del(a->io);
	event_assign(a->io, a->c->mc.m->base, a->fd, what, on_io, a);
	event_add(a->io, NULL);
}

static ngtcp2_conn *get_conn_cb(ngtcp2_crypto_conn_ref *ref)
{
	return ((struct h3_path *)ref->user_data)->q;
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The GnuTLS session for an attempt; reason filled on failure. */
static bool tls_setup(struct h3_path *a, char *reason, size_t len)
{
	struct h3_conn *c = a->c;
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t alpn = {(unsigned char *)"h3", 2}, cached;
	int r;

	cred = tls_client_creds(c->mc.m->tls, c->p.ca_file, c->p.verify, reason, len);
	if (!cred)
		return false;
	if ((r = gnutls_init(&a->tls, GNUTLS_CLIENT | GNUTLS_NO_END_OF_EARLY_DATA)) < 0) {
		a->tls = NULL;
		goto fail;
	}
	if ((r = gnutls_priority_set_direct(a->tls, H3_PRIORITY, NULL)) < 0 ||
	    (r = gnutls_credentials_set(a->tls, GNUTLS_CRD_CERTIFICATE, cred)) < 0 ||
	    (r = ngtcp2_crypto_gnutls_configure_client_session(a->tls)) != 0 ||
	    (r = gnutls_alpn_set_protocols(a->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY)) < 0)
		goto fail;
	if (c->p.sni && *c->p.sni && !is_ip_literal(c->p.sni) &&
	    (r = gnutls_server_name_set(a->tls, GNUTLS_NAME_DNS, c->p.sni, strlen(c->p.sni))) < 0)
		goto fail;
	if (c->p.verify)
		gnutls_session_set_verify_cert(a->tls, c->p.sni && *c->p.sni ? c->p.sni : NULL, 0);
	if (c->p.session_key && tls_session_get(c->mc.m->tls, c->p.session_key, &cached))
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

static bool quic_setup(struct h3_path *a, char *reason, size_t len)
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
	scid.datalen = H3_SCID_LEN;
	if (gnutls_rnd(GNUTLS_RND_RANDOM, dcid.data, dcid.datalen) != 0 ||
	    gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, scid.datalen) != 0) {
		snprintf(reason, len, "no random bytes");
		return false;
	}
	ngtcp2_settings_default(&st);
	st.initial_ts = now_ts();
	st.max_window = H3_CONN_WINDOW;
	st.max_stream_window = H3_STREAM_WINDOW;
	st.handshake_timeout = (uint64_t)H3_HANDSHAKE_MS * NGTCP2_MILLISECONDS;
	ngtcp2_transport_params_default(&tp);
	tp.initial_max_stream_data_bidi_local = H3_STREAM_WINDOW;
	tp.initial_max_stream_data_bidi_remote = H3_STREAM_WINDOW;
	tp.initial_max_stream_data_uni = H3_STREAM_WINDOW;
	tp.initial_max_data = H3_CONN_WINDOW;
	tp.initial_max_streams_bidi = 0;
	tp.initial_max_streams_uni = 16;
	tp.max_idle_timeout = (uint64_t)H3_IDLE_TIMEOUT_MS * NGTCP2_MILLISECONDS;
	r = ngtcp2_conn_client_new(&a->q, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cb, &st, &tp,
	                           NULL, a);
	if (r != 0) {
		a->q = NULL;
		snprintf(reason, len, "cannot create the QUIC connection: %s", ngtcp2_strerror(r));
		return false;
	}
	ngtcp2_conn_set_tls_native_handle(a->q, a->tls);
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
static void start_next(struct h3_conn *c)
{
	char reason[256];
	struct h3_path *a;

	while (c->next_addr < c->addrs.n) {
		const struct sockaddr_storage *ss = &c->addrs.addr[c->next_addr++];
		socklen_t sl = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		                                         : sizeof(struct sockaddr_in);

		if (!(a = calloc(1, sizeof(*a)))) {
			snprintf(reason, sizeof(reason), "out of memory");
			goto failed_early;
		}
		a->c = c;
		a->fd = -1;
		memcpy(&a->remote, ss, sl);
		a->remote_len = sl;
		addr_name(ss, a->addr, sizeof(a->addr));
		a->next = c->paths;
		c->paths = a;
		a->batch = malloc(H3_BATCH * sizeof(*a->batch));
		a->io = event_new(c->mc.m->base, -1, 0, on_io, a);
		a->expiry = evtimer_new(c->mc.m->base, on_expiry, a);
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
			if (c->fail_err == ERR_NONE) {
				c->fail_err = ERR_CONNECT;
				snprintf(c->fail_reason, sizeof(c->fail_reason), "%s", reason);
			}
			continue;
		}
		if (!tls_setup(a, reason, sizeof(reason)) ||
		    !quic_setup(a, reason, sizeof(reason))) {
			a->dead = true;
			c->fail_err = ERR_TLS;
			snprintf(c->fail_reason, sizeof(c->fail_reason), "%s", reason);
			c->next_addr = c->addrs.n; /* the same for every address */
			break;
		}
		log_debug("h3: connecting to %s at %s", origin(c), a->addr);
		path_io_update(a);
		path_write(a); /* the Initial packet */
		if (c->next_addr < c->addrs.n && !a->dead)
			mux_set_timer(c->eyeballs, H3_EYEBALLS_MS);
		mux_kick(&c->mc);
		return;
	}
	for (struct h3_path *o = c->paths; o; o = o->next)
		if (!o->dead)
			return;
	setup_failed(c);
	mux_kick(&c->mc);
	return;
failed:
	a->dead = true;
failed_early:
	c->fail_err = ERR_CONNECT;
	snprintf(c->fail_reason, sizeof(c->fail_reason), "%s", reason);
	setup_failed(c);
	mux_kick(&c->mc);
}

static void on_eyeballs(evutil_socket_t fd, short what, void *arg)
{
	struct h3_conn *c = arg;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	if (!c->established && !c->setup_failed)
		start_next(c);
	mux_release(&c->mc);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct h3_conn *c = arg;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	if (!c->established && !c->setup_failed) {
		c->fail_err = ERR_CONNECT_TIMEOUT;
		snprintf(c->fail_reason, sizeof(c->fail_reason),
		         "QUIC handshake with %s not done within %d s", origin(c),
		         H3_HANDSHAKE_MS / 1000);
		setup_failed(c);
	}
	mux_release(&c->mc);
}

static void on_resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct h3_conn *c = ctx;

	mux_hold(&c->mc);
	c->dq = NULL;
	if (err != 0 || !addrs || addrs->n == 0) {
		c->fail_err = ERR_DNS;
		snprintf(c->fail_reason, sizeof(c->fail_reason), "cannot resolve %s: %s", c->p.host,
		         reason ? reason : "no address");
		setup_failed(c);
	} else {
		c->addrs = *addrs;
		start_next(c);
	}
	mux_release(&c->mc);
}

/* --- the connection going down --- */

static void close_paths(struct h3_conn *c)
{
	if (c->a) {
		c->a->dead = true;
		event_del(c->a->io);
		evtimer_del(c->a->expiry);
	}
}

static void conn_fail(struct h3_conn *c, enum muxd_err err, const char *reason, bool dead)
{
	bool running;

	if (c->mc.failed || c->mc.freeing)
		return;
	if (c->established)
		send_close(c); /* nothing happens when the origin closed or we idled out */
	running = mux_mark_failed(&c->mc);
	close_paths(c);
	mux_fail_streams(&c->mc, err, reason, dead, running);
}

/* Best effort CONNECTION_CLOSE (c->app_err) on the established path. */
static void send_close(struct h3_conn *c)
{
	struct h3_path *a = c->a;
	ngtcp2_connection_close_error cc;
	ngtcp2_pkt_info pi;
	uint8_t buf[H3_PKT_MAX];
	ngtcp2_ssize n;

	if (c->close_sent || c->silent || !a || a->fd < 0 || !a->q ||
	    ngtcp2_conn_is_in_closing_period(a->q) || ngtcp2_conn_is_in_draining_period(a->q))
		return;
	c->close_sent = true;
	ngtcp2_connection_close_error_default(&cc);
	ngtcp2_connection_close_error_set_application_error(&cc, c->app_err, NULL, 0);
	n = ngtcp2_conn_write_connection_close(a->q, NULL, &pi, buf, sizeof(buf), &cc, now_ts());
	if (n > 0 && send(a->fd, buf, (size_t)n, 0) < 0)
		log_debug("h3: CONNECTION_CLOSE to %s not sent: %s", origin(c), strerror(errno));
}

/* --- the kick --- */

static void submit(struct h3_stream *s);

static void apply_credit(struct h3_conn *c)
{
	for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
		if (s->credit == 0)
			continue;
		if (s->ms.id >= 0 && c->a && c->a->q)
			give_window(c->a->q, s->ms.id, s->credit);
		s->credit = 0;
	}
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct h3_conn *c = arg;

	(void)fd;
	(void)what;
	mux_hold(&c->mc);
	if (c->setup_failed && !c->mc.told) {
		c->mc.told = true;
		c->mc.base.reusable = false;
		log_debug("h3: set-up for %s failed: %s", origin(c), c->fail_reason);
		c->mc.base.owner_cbs.on_failed(c->mc.base.owner, &c->mc.base,
		                               c->fail_err ? c->fail_err : ERR_CONNECT,
		                               c->fail_reason);
		c->mc.freeing = true;
		mux_release(&c->mc);
		return;
	}
	mux_deliver_errors(&c->mc);
	if (c->established && !c->mc.failed && !c->mc.freeing) {
		for (struct h3_stream *s = H3S(c->mc.streams); s; s = H3S(s->ms.next)) {
			if (s->submit_pending && s->ms.user)
				submit(s);
			if (s->cancel_pending && s->ms.open && s->ms.id >= 0) {
				s->cancel_pending = false;
				nghttp3_conn_shutdown_stream_read(c->h3, s->ms.id);
				ngtcp2_conn_shutdown_stream(c->a->q, s->ms.id,
				                            NGHTTP3_H3_REQUEST_CANCELLED);
			}
			if (s->resume && s->ms.open && s->ms.id >= 0) {
				s->resume = false;
				nghttp3_conn_resume_stream(c->h3, s->ms.id);
			}
		}
		apply_credit(c);
		path_write(c->a);
	}
	mux_send_ready(&c->mc);
	mux_offer(&c->mc);
	mux_release(&c->mc);
}

/* --- stream operations --- */

static bool add_field(struct sbuf *b, size_t *n, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
	size_t at = b->len;

	if (!sbuf_add(b, name, nlen) || !sbuf_add(b, "", 1) || !sbuf_add(b, value, vlen) ||
	    !sbuf_add(b, "", 1))
		return false;
	for (size_t k = at; k < at + nlen; k++)
		if (b->p[k] >= 'A' && b->p[k] <= 'Z')
			b->p[k] = (char)(b->p[k] - 'A' + 'a');
	(*n)++;
	return true;
}

/* nv array over a name\0value\0... list (values may hold no NUL). */
static nghttp3_nv *nv_list(const struct sbuf *b, size_t n)
{
	nghttp3_nv *nv = calloc(n ? n : 1, sizeof(*nv));
	const char *p = b->p;

	if (!nv)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(p), vl = strlen(p + nl + 1);
		nv[i] =
		    (nghttp3_nv){(uint8_t *)p, (uint8_t *)p + nl + 1, nl, vl, NGHTTP3_NV_FLAG_NONE};
		p += nl + vl + 2;
	}
	return nv;
}

static void submit_trailers(struct h3_stream *s)
{
	struct sbuf tb = {0};
	size_t n = 0;
	char *p = s->ms.trailers_out.p, *name, *v;
	nghttp3_nv *nv;

	while (n < HTTP1_MAX_FIELDS && (p = fields_next_line(p, &name, &v)))
		if (name && !fields_dropped(name, strlen(name), v, strlen(v)))
			add_field(&tb, &n, name, strlen(name), v, strlen(v));
	if (n > 0 && (nv = nv_list(&tb, n))) {
		nghttp3_conn_submit_trailers(s->c->h3, s->ms.id, nv, n);
		free(nv);
	}
	free(tb.p);
}

/* The request body: what send_body() buffered, then the end (and trailers).
 * Handed-out bytes stay in their blocks until acknowledged. */
static nghttp3_ssize read_data(nghttp3_conn *h, int64_t id, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *ud, void *sud)
{
	struct h3_stream *s = sud;
	uint64_t skip = s->handed - s->acked + s->blk_off; /* into the block list */
	size_t nv = 0;

	(void)h;
	(void)id;
	(void)ud;
	for (struct h3_block *b = s->blocks; b && nv < veccnt; b = b->next) {
		if (skip >= b->len) {
			skip -= b->len;
			continue;
		}
		vec[nv].base = b->data + skip;
		vec[nv].len = b->len - (size_t)skip;
		s->handed += vec[nv].len;
		skip = 0;
		nv++;
	}
	if (nv > 0 && s->ms.user && !s->ms.remote_ended)
		mux_arm(&s->ms);
	if (s->handed == s->queued && s->ms.send_ended) {
		*pflags |= NGHTTP3_DATA_FLAG_EOF;
		s->ms.eof_sent = true;
		if (s->ms.trailers_out.len > 0) {
			*pflags |= NGHTTP3_DATA_FLAG_NO_END_STREAM;
			submit_trailers(s);
		}
		return (nghttp3_ssize)nv;
	}
	if (nv == 0)
		return NGHTTP3_ERR_WOULDBLOCK;
	return (nghttp3_ssize)nv;
}

/* Submit the request built by send_head (from the kick). */
static void submit(struct h3_stream *s)
{
	struct h3_conn *c = s->c;
	nghttp3_data_reader dr = {read_data};
	nghttp3_nv *nv;
	int64_t id;
	int r;

	s->submit_pending = false;
	r = ngtcp2_conn_open_bidi_stream(c->a->q, &id, s);
	if (r != 0) {
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot open an HTTP/3 stream");
		mux_kick(&c->mc);
		return;
	}
	nv = nv_list(&s->req, s->nreq);
	if (nv)
		r = nghttp3_conn_submit_request(c->h3, id, nv, s->nreq, s->ms.req_body ? &dr : NULL,
		                                s);
	free(nv);
	if (!nv || r != 0) {
		ngtcp2_conn_shutdown_stream(c->a->q, id, NGHTTP3_H3_REQUEST_CANCELLED);
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot submit the HTTP/3 request");
		mux_kick(&c->mc);
		return;
	}
	s->ms.id = id;
	s->ms.open = true;
	mux_arm(&s->ms);
}

static void send_head(struct mux_stream *ms, const struct upstream_request *r)
{
	struct h3_stream *s = H3S(ms);
	struct h3_conn *c = s->c;
	char clen[24];
	bool ok;

	if (!s->ms.user || s->ms.head_sent)
		return;
	s->ms.head_sent = true;
	s->ms.is_head = strcmp(r->method, "HEAD") == 0;
	ok = add_field(&s->req, &s->nreq, ":method", 7, r->method, strlen(r->method)) &&
	     add_field(&s->req, &s->nreq, ":scheme", 7, r->scheme, strlen(r->scheme)) &&
	     add_field(&s->req, &s->nreq, ":authority", 10, r->authority, strlen(r->authority)) &&
	     add_field(&s->req, &s->nreq, ":path", 5, r->path, strlen(r->path));
	for (size_t i = 0; ok && i < r->nfields; i++) {
		const struct upstream_field *f = &r->fields[i];
		if (fields_dropped(f->name, f->name_len, f->value, f->value_len) ||
		    memchr(f->value, '\0', f->value_len))
			continue;
		ok = add_field(&s->req, &s->nreq, f->name, f->name_len, f->value, f->value_len);
	}
	if (ok && r->has_body && r->content_length >= 0) {
		int len = snprintf(clen, sizeof(clen), "%lld", (long long)r->content_length);
		ok = add_field(&s->req, &s->nreq, "content-length", 14, clen, (size_t)len);
	}
	s->ms.req_body = r->has_body;
	s->ms.eof_sent = !r->has_body;
	if (c->mc.failed)
		mux_fail_later(&s->ms, ERR_CLOSED, "connection closed");
	else if (!ok)
		mux_fail_later(&s->ms, ERR_UNPROCESSED, "cannot open an HTTP/3 stream");
	else
		s->submit_pending = true;
	mux_kick(&c->mc);
}

static uint64_t send_used(const struct mux_stream *ms)
{
	return H3S(ms)->queued - H3S(ms)->acked;
}

static void send_buffer(struct mux_stream *ms, const void *data, size_t len)
{
	struct h3_stream *s = H3S(ms);
	const uint8_t *p = data;

	while (len > 0) {
		struct h3_block *b = s->last;
		size_t n;
		if (!b || b->len == H3_BLOCK) {
			if (!(b = malloc(sizeof(*b))))
				break;
			b->next = NULL;
			b->len = 0;
			if (s->last)
				s->last->next = b;
			else
				s->blocks = b;
			s->last = b;
		}
		n = H3_BLOCK - b->len < len ? H3_BLOCK - b->len : len;
		memcpy(b->data + b->len, p, n);
		b->len += n;
		s->queued += n;
		p += n;
		len -= n;
	}
}

static const struct mux_ops h3_mux_ops = {
    .name = "h3",
    .window = H3_STREAM_WINDOW,
    .conn_free = conn_free,
    .settle = settle,
    .stream_free = stream_free,
    .detach = detach,
    .give = give,
    .resume = resume,
    .send_head = send_head,
    .send_used = send_used,
    .send_buffer = send_buffer,
};

/* --- connection operations --- */

static unsigned h3_free_slots(struct upstream_conn *uc)
{
	struct h3_conn *c = (struct h3_conn *)uc;
	uint64_t left;
	unsigned live = 0, unsubmitted = 0;

	if (!uc->reusable || !c->established || c->mc.goaway || c->mc.failed || c->mc.told ||
	    c->mc.freeing)
		return 0;
	for (const struct mux_stream *s = c->mc.streams; s; s = s->next) {
		live += s->user || s->open;
		unsubmitted += s->user && s->id < 0;
	}
	left = ngtcp2_conn_get_streams_bidi_left(c->a->q);
	left = left > unsubmitted ? left - unsubmitted : 0;
	if (live >= H3_MAX_STREAMS)
		return 0;
	if (left > H3_MAX_STREAMS - live)
		left = H3_MAX_STREAMS - live;
	return (unsigned)left;
}

static struct upstream_stream *h3_open_stream(struct upstream_conn *uc,
                                              const struct upstream_stream_cbs *cbs, void *ctx)
{
	struct h3_conn *c = (struct h3_conn *)uc;
	struct h3_stream *s;

	if (h3_free_slots(uc) == 0)
		return NULL;
	if (!(s = H3S(mux_stream_new(&c->mc, sizeof(*s), cbs, ctx))))
		return NULL;
	if (!s->ms.body || !s->ms.timer) {
		stream_free(&s->ms);
		return NULL;
	}
	s->c = c;
	s->ms.id = -1;
	mux_stream_link(&s->ms);
	return &s->ms.base;
}

static void h3_close(struct upstream_conn *uc)
{
	struct h3_conn *c = (struct h3_conn *)uc;

	if (c->established && !c->mc.failed && !c->in_lib)
		send_close(c);
	close_paths(c);
	mux_close(&c->mc);
}

static const struct upstream_conn_ops h3_conn_ops = {
    .open_stream = h3_open_stream,
    .free_slots = h3_free_slots,
    .is_idle = mux_is_idle,
    .close = h3_close,
};

struct upstream_conn *h3_conn_new(struct muxd *m, const struct h3_params *p,
                                  const struct upstream_owner_cbs *owner_cbs, void *owner)
{
	struct h3_conn *c = calloc(1, sizeof(*c));
	bool v6 = p->host && strchr(p->host, ':');
	bool ok;

	if (!c)
		return NULL;
	ok = mux_conn_init(&c->mc, m, &h3_mux_ops, &h3_conn_ops, PROTO_H3, owner_cbs, owner,
	                   on_kick);
	c->goaway_id = INT64_MAX;
	c->app_err = NGHTTP3_H3_NO_ERROR;
	c->p = *p;
	c->p.host = p->host ? strdup(p->host) : NULL;
	c->p.sni = strdup(p->sni ? p->sni : (p->host ? p->host : ""));
	c->p.authority = NULL;
	c->p.ca_file = p->ca_file ? strdup(p->ca_file) : NULL;
	if (p->session_key) {
		/* apart from TCP's: a QUIC ticket is TLS 1.3 with QUIC parameters */
		size_t n = strlen(p->session_key) + 4;
		char *k = malloc(n);
		if (k)
			snprintf(k, n, "h3|%s", p->session_key);
		c->p.session_key = k;
	}
	snprintf(c->mc.name, sizeof(c->mc.name), v6 ? "[%s]:%u" : "%s:%u", p->host ? p->host : "",
	         (unsigned)p->port);
	c->eyeballs = evtimer_new(m->base, on_eyeballs, c);
	c->deadline = evtimer_new(m->base, on_deadline, c);
	if (!c->p.host || !c->p.sni || (p->ca_file && !c->p.ca_file) ||
	    (p->session_key && !c->p.session_key) || !ok || !c->eyeballs || !c->deadline) {
		conn_free(&c->mc);
		return NULL;
	}
	mux_set_timer(c->deadline, H3_HANDSHAKE_MS);
	c->dq = dns_resolve(m->dns, c->p.host, p->port, on_resolved, c);
	if (!c->dq) {
		c->fail_err = ERR_DNS;
		snprintf(c->fail_reason, sizeof(c->fail_reason), "cannot resolve %s", c->p.host);
		setup_failed(c);
	}
	return &c->mc.base;
}
