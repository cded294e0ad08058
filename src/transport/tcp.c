/*
 * tcp — the bottom transport layer: a socket, read and written by muxd on
 * plain events (no bufferevent: no FIONREAD per read, no epoll_ctl per
 * write, the writes of one loop pass coalesced into one send).
 * Connecting resolves the host, then races the addresses (happy eyeballs,
 * RFC 8305): one attempt starts, the next 250 ms later or as soon as one
 * fails, and the first socket to connect wins; the others are closed.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "dns.h"
#include "muxd.h"
#include "timeutil.h"
#include "transport/eyeballs.h"
#include "transport/transport.h"

struct tcp_attempt {
	int fd;
	struct event *ev;
	struct tcp *owner;
};

/*
 * Reads go straight into the input buffer's free space, without asking the
 * kernel how much is there (FIONREAD): rd_size bytes at a time, doubled
 * while reads fill it, back to the minimum when one comes back small, and
 * never more than the room left under TRANSPORT_BUF. The sizes keep
 * libevent's chain (rounded up to a power of two with its header) at 4 to
 * 64 KiB: a small message costs a small chain (16 KiB ones made glibc trim
 * and regrow the heap, a brk every 25 requests under wrk), a bulk stream
 * reaches 64 KiB per read after four reads.
 */
#define RD_MIN (4 * 1024 - 256)
#define RD_MAX (64 * 1024 - 256)

struct tcp {
	struct transport base;
	struct transport_env env;
	char host[256];
	uint16_t port;
	struct dns_query *query;
	struct tcp_attempt attempts[DNS_MAX_ADDRS]; /* by address index */
	struct eyeballs *race;
	struct event *timeout;
	int last_errno;
	/* the connected socket (fd >= 0 once connected) */
	int fd;
	struct evbuffer *in, *out;
	/* EV_READ|EV_PERSIST: added while reading is wanted and there is room */
	struct event *rd_ev;
	/* EV_WRITE|EV_PERSIST: the flush; activated on append, added on EAGAIN */
	struct event *wr_ev;
	/*
	 * The evbuffer callbacks, enabled only while they have something to do,
	 * so that the appends and drains of a request mostly skip them: the
	 * output's while no flush is scheduled (not activated, not waiting for
	 * EV_WRITE), the input's while rd_ev is deleted (at the bound, or
	 * reading off).
	 */
	struct evbuffer_cb_entry *in_cb, *out_cb;
	bool in_cb_on, out_cb_on;
	bool wr_active; /* wr_ev is activated: the flush runs in this pass */
	size_t rd_size;
	bool reading;  /* the user wants bytes (set_reading) */
	bool rd_added; /* rd_ev is pending */
	bool wr_added; /* wr_ev is pending: the socket was full */
	bool rd_eof;   /* the peer finished (or reading failed): no more reads */
	bool failed;   /* TRANSPORT_ERROR was reported: nothing more happens */
	bool alive;
	bool shut_pending;
	bool deny_loopback; /* tcp_deny_loopback: the target is an origin */
};

static struct evbuffer *tcp_input(struct transport *t)
{
	return ((struct tcp *)t)->in;
}

static struct evbuffer *tcp_output(struct transport *t)
{
	return ((struct tcp *)t)->out;
}

static void set_cb(struct evbuffer *b, struct evbuffer_cb_entry *cb, bool *on, bool want)
{
	if (*on == want)
		return;
	if (want)
		evbuffer_cb_set_flags(b, cb, EVBUFFER_CB_ENABLED);
	else
		evbuffer_cb_clear_flags(b, cb, EVBUFFER_CB_ENABLED);
	*on = want;
}

/* Add or delete the read event as wanted: reading on, room in input, the
 * peer not finished. Called on changes only, so a steady stream keeps the
 * event added (no epoll_ctl per read). The input's callback watches for
 * room only while the event is deleted. */
static void update_reading(struct tcp *c, size_t in_len)
{
	bool want = c->reading && !c->rd_eof && !c->failed && in_len < TRANSPORT_BUF;

	if (want == c->rd_added)
		return;
	if (want)
		event_add(c->rd_ev, NULL);
	else
		event_del(c->rd_ev);
	c->rd_added = want;
	set_cb(c->in, c->in_cb, &c->in_cb_on, !want);
}

/* The output's callback schedules the flush: on while none is scheduled. */
static void update_out_cb(struct tcp *c)
{
	set_cb(c->out, c->out_cb, &c->out_cb_on, !c->wr_active && !c->wr_added && !c->failed);
}

static void tcp_set_reading(struct transport *t, bool on)
{
	struct tcp *c = (struct tcp *)t;

	if (!c->in)
		return;
	c->reading = on;
	update_reading(c, evbuffer_get_length(c->in));
}

static void do_shutdown(struct tcp *c)
{
	c->shut_pending = false;
	shutdown(c->fd, SHUT_WR);
}

static void tcp_shutdown(struct transport *t)
{
	struct tcp *c = (struct tcp *)t;

	if (!c->out)
		return;
	if (evbuffer_get_length(c->out) == 0)
		do_shutdown(c);
	else
		c->shut_pending = true; /* after the flush that empties output */
}

static void close_attempt(struct tcp_attempt *a)
{
	if (a->ev)
		event_free(a->ev);
	if (a->fd >= 0)
		close(a->fd);
	a->ev = NULL;
	a->fd = -1;
}

static void tcp_close(struct transport *t)
{
	struct tcp *c = (struct tcp *)t;

	if (c->query)
		dns_cancel(c->query);
	for (size_t i = 0; i < DNS_MAX_ADDRS; i++)
		close_attempt(&c->attempts[i]);
	eyeballs_free(c->race);
	if (c->timeout)
		event_free(c->timeout);
	if (c->rd_ev)
		event_free(c->rd_ev);
	if (c->wr_ev)
		event_free(c->wr_ev);
	if (c->in)
		evbuffer_free(c->in);
	if (c->out)
		evbuffer_free(c->out);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

static bool tcp_is_alive(struct transport *t)
{
	return ((struct tcp *)t)->alive;
}

bool tcp_peer_addr(struct transport *t, struct sockaddr_storage *addr)
{
	struct tcp *c = (struct tcp *)t;
	socklen_t len = sizeof(*addr);

	return t->ops->close == tcp_close && c->fd >= 0 &&
	       getpeername(c->fd, (struct sockaddr *)addr, &len) == 0;
}

static const struct transport_ops tcp_ops = {
    .input = tcp_input,
    .output = tcp_output,
    .set_reading = tcp_set_reading,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .is_alive = tcp_is_alive,
};

void transport_set_cbs(struct transport *t, const struct transport_cbs *cbs, void *ctx)
{
	t->cbs = *cbs;
	t->ctx = ctx;
}

/* The socket failed (err: its errno): stop everything, report once. */
static void io_failed(struct tcp *c, int err)
{
	c->alive = false;
	c->failed = true;
	update_reading(c, 0);
	if (c->wr_added)
		event_del(c->wr_ev);
	c->wr_added = false;
	update_out_cb(c);
	c->base.cbs.on_event(c->base.ctx, TRANSPORT_ERROR, ERR_CLOSED,
	                     err ? strerror(err) : "connection error");
}

/*
 * The socket calls themselves: recv and send when the bytes are in one
 * piece (the usual case: a message fits one buffer chain), recvmsg and
 * sendmsg when they span several. recv/send take the kernel's short path
 * (no iovec import, no file-position lock, no rw_verify_area): readv and
 * writev cost ~1 µs more per request in kernel time under wrk (perf,
 * docs/performance.md). MSG_NOSIGNAL: a peer's reset is an EPIPE, never a
 * SIGPIPE.
 */
#define WR_IOV 16

static ssize_t sock_read(int fd, struct iovec *iov, int n)
{
	if (n == 1)
		return recv(fd, iov[0].iov_base, iov[0].iov_len, 0);
	struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
	return recvmsg(fd, &msg, 0);
}

/* Sends what out holds (up to WR_IOV chains in one call) and drains what
 * the kernel took: bytes sent, or -1 with errno. */
static int sock_write(int fd, struct evbuffer *out)
{
	struct evbuffer_iovec vec[WR_IOV];
	int n = evbuffer_peek(out, -1, NULL, vec, WR_IOV);
	ssize_t sent;

	if (n <= 0)
		return 0;
	if (n > WR_IOV)
		n = WR_IOV;
	if (n == 1) {
		sent = send(fd, vec[0].iov_base, vec[0].iov_len, MSG_NOSIGNAL);
	} else {
		struct iovec iov[WR_IOV];
		for (int i = 0; i < n; i++) {
			iov[i].iov_base = vec[i].iov_base;
			iov[i].iov_len = vec[i].iov_len;
		}
		struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
	}
	if (sent > 0)
		evbuffer_drain(out, (size_t)sent);
	return sent > INT32_MAX ? INT32_MAX : (int)sent;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct tcp *c = arg;
	size_t len = evbuffer_get_length(c->in);
	size_t want = c->rd_size;
	struct evbuffer_iovec vec[2];
	struct iovec iov[2];
	int n;
	ssize_t got;

	(void)what;
	if (len >= TRANSPORT_BUF) { /* cannot happen: the event is deleted then */
		update_reading(c, len);
		return;
	}
	if (want > TRANSPORT_BUF - len)
		want = TRANSPORT_BUF - len;
	n = evbuffer_reserve_space(c->in, (ev_ssize_t)want, vec, 2);
	if (n <= 0) {
		io_failed(c, ENOMEM);
		return;
	}
	/* the reservation may be larger than asked: read no more than the bound */
	size_t left = want;
	for (int i = 0; i < n; i++) {
		iov[i].iov_base = vec[i].iov_base;
		iov[i].iov_len = vec[i].iov_len < left ? vec[i].iov_len : left;
		left -= iov[i].iov_len;
	}
	got = sock_read((int)fd, iov, n);
	if (got <= 0) {
		int e = got < 0 ? errno : 0;
		if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
			return; /* level-triggered: asked again when there is data */
		c->rd_eof = true;
		if (e) {
			io_failed(c, e);
			return;
		}
		c->alive = false;
		update_reading(c, len);
		c->base.cbs.on_event(c->base.ctx, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
		return;
	}
	/* commit what arrived: the vectors it filled, the last one in part */
	int used = 0;
	for (left = (size_t)got; left > 0; used++) {
		vec[used].iov_len = iov[used].iov_len < left ? iov[used].iov_len : left;
		left -= vec[used].iov_len;
	}
	if (evbuffer_commit_space(c->in, vec, used) < 0) {
		io_failed(c, ENOMEM);
		return;
	}
	if ((size_t)got == want && c->rd_size < RD_MAX)
		c->rd_size = c->rd_size * 2 + 256 > RD_MAX ? RD_MAX : c->rd_size * 2 + 256;
	else if ((size_t)got < want / 4 && c->rd_size > RD_MIN)
		c->rd_size = RD_MIN;
	update_reading(c, len + (size_t)got);
	c->base.cbs.on_read(c->base.ctx); /* last: it may close c */
}

/*
 * The flush: one send of everything the callbacks of this loop pass
 * appended (the event is activated on the first append and runs after
 * them), straight to the socket; EV_WRITE is waited for only when the socket
 * is full. Then on_drain when output is at or below TRANSPORT_BUF / 2 (0
 * once a shutdown waits for it), as libevent's write watermark did.
 */
static void on_writable(evutil_socket_t fd, short what, void *arg)
{
	struct tcp *c = arg;
	int n;

	(void)fd;
	(void)what;
	c->wr_active = false;
	if (c->failed)
		return;
	if (evbuffer_get_length(c->out) == 0) {
		if (c->wr_added)
			event_del(c->wr_ev);
		c->wr_added = false;
		update_out_cb(c);
		return;
	}
	n = sock_write(c->fd, c->out); /* its drain skips the disabled callback */
	if (n < 0) {
		int e = errno;
		if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR) {
			io_failed(c, e);
			return;
		}
		n = 0;
	}
	size_t left = evbuffer_get_length(c->out);
	if (left > 0 && !c->wr_added) {
		event_add(c->wr_ev, NULL); /* the socket is full: wait for room */
		c->wr_added = true;
	} else if (left == 0 && c->wr_added) {
		event_del(c->wr_ev);
		c->wr_added = false;
	}
	update_out_cb(c); /* before on_drain: what it appends schedules a flush */
	if (n == 0)
		return;
	if (left == 0 && c->shut_pending)
		do_shutdown(c);
	if (c->base.cbs.on_drain && left <= (c->shut_pending ? 0 : TRANSPORT_BUF / 2))
		c->base.cbs.on_drain(c->base.ctx); /* last: it may close c */
}

/* Bytes appended to output: flush after the current callbacks. Called only
 * while no flush is scheduled; the later appends of the pass skip it. */
static void out_changed(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct tcp *c = arg;

	(void)b;
	if (info->n_added > 0 && !c->wr_active && !c->wr_added && !c->failed) {
		c->wr_active = true;
		event_active(c->wr_ev, EV_WRITE, 0);
		update_out_cb(c);
	}
}

/* Bytes taken from input: reading resumes below the bound. */
static void in_changed(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct tcp *c = arg;

	(void)b;
	if (info->n_deleted > 0 && !c->rd_added)
		update_reading(c, info->orig_size + info->n_added - info->n_deleted);
}

/*
 * How many bytes not yet sent the kernel may hold for the socket. Without a
 * bound the send buffer autotunes to megabytes on a fast path: muxd would
 * read that much from the other side ahead of a slow reader, and then see
 * no room (EPOLLOUT) for seconds while the reader still takes bytes, which
 * looks like no progress to client_timeout.
 */
#define NOTSENT_LOWAT (2 * TRANSPORT_BUF)

static bool start_io(struct tcp *c, int fd)
{
	int one = 1, lowat = NOTSENT_LOWAT;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
	c->fd = fd;
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	c->rd_ev = event_new(c->env.base, fd, EV_READ | EV_PERSIST, on_readable, c);
	c->wr_ev = event_new(c->env.base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
	if (!c->in || !c->out || !c->rd_ev || !c->wr_ev ||
	    !(c->in_cb = evbuffer_add_cb(c->in, in_changed, c)) ||
	    !(c->out_cb = evbuffer_add_cb(c->out, out_changed, c)))
		return false; /* the caller's close frees what was made */
	c->in_cb_on = c->out_cb_on = true;
	c->rd_size = RD_MIN;
	c->reading = true;
	update_reading(c, 0);
	c->alive = true;
	return true;
}

struct transport *tcp_accepted(const struct transport_env *env, int fd,
                               const struct transport_cbs *cbs, void *ctx)
{
	struct tcp *c = calloc(1, sizeof(*c));

	if (!c) {
		close(fd);
		return NULL;
	}
	for (size_t i = 0; i < DNS_MAX_ADDRS; i++)
		c->attempts[i].fd = -1;
	c->base.ops = &tcp_ops;
	c->env = *env;
	transport_set_cbs(&c->base, cbs, ctx);
	c->fd = -1;
	if (!start_io(c, fd)) {
		tcp_close(&c->base); /* closes fd too */
		return NULL;
	}
	return &c->base;
}

static void fail(struct tcp *c, enum muxd_err err, const char *reason)
{
	c->base.cbs.on_event(c->base.ctx, TRANSPORT_ERROR, err, reason);
}

static void attempt_done(evutil_socket_t fd, short what, void *arg)
{
	struct tcp_attempt *a = arg;
	struct tcp *c = a->owner;
	size_t i = (size_t)(a - c->attempts);
	int err = 0;
	socklen_t len = sizeof(err);

	(void)what;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		c->last_errno = err;
		close_attempt(a);
		eyeballs_failed(c->race, i); /* may report the failure */
		return;
	}
	/* winner: keep its fd, drop everything else (the race and its timer too:
	 * a pooled connection idles for long, and they were a tenth of it) */
	a->fd = -1;
	close_attempt(a);
	eyeballs_won(c->race, i);
	eyeballs_free(c->race);
	c->race = NULL;
	event_free(c->timeout);
	c->timeout = NULL;
	if (!start_io(c, (int)fd)) {
		fail(c, ERR_CONNECT, "out of memory");
		return;
	}
	c->base.cbs.on_event(c->base.ctx, TRANSPORT_CONNECTED, ERR_NONE, NULL);
}

/* Start a non-blocking connect to address i of the race. */
static enum eyeballs_start start_attempt(void *ctx, size_t i, const struct sockaddr *sa,
                                         socklen_t len)
{
	struct tcp *c = ctx;
	struct tcp_attempt *a = &c->attempts[i];
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		c->last_errno = errno;
		return EYEBALLS_SKIP;
	}
	if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
		c->last_errno = errno;
		close(fd);
		return EYEBALLS_SKIP;
	}
	a->fd = fd;
	a->owner = c;
	a->ev = event_new(c->env.base, fd, EV_WRITE, attempt_done, a);
	if (!a->ev) {
		close_attempt(a);
		return EYEBALLS_SKIP;
	}
	event_add(a->ev, NULL);
	return EYEBALLS_RUNNING;
}

static void cancel_attempt(void *ctx, size_t i)
{
	close_attempt(&((struct tcp *)ctx)->attempts[i]);
}

/* Every address failed. */
static void race_failed(void *ctx)
{
	struct tcp *c = ctx;
	char reason[300];
	int e = c->last_errno ? c->last_errno : ECONNREFUSED;
	bool no_fds = e == EMFILE || e == ENFILE;

	snprintf(reason, sizeof(reason), "%s",
	         e == ECONNREFUSED ? "connection refused"
	         : no_fds          ? "out of file descriptors"
	                           : strerror(e));
	fail(c, no_fds ? ERR_BUDGET : ERR_CONNECT, reason);
}

static const struct eyeballs_cbs tcp_race_cbs = {
    .start = start_attempt,
    .cancel = cancel_attempt,
    .failed = race_failed,
};

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	fail(arg, ERR_CONNECT_TIMEOUT, "connect timed out");
}

static void resolved(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	struct tcp *c = ctx;
	char msg[300];

	c->query = NULL;
	if (err) {
		snprintf(msg, sizeof(msg), "cannot resolve: %s", reason);
		fail(c, ERR_DNS, msg);
		return;
	}
	/* never to muxd itself (whatever the name was), nor, when asked, to
	 * the host's loopback services */
	for (size_t i = 0; i < addrs->n; i++) {
		const struct sockaddr *sa = (const struct sockaddr *)&addrs->addr[i];
		if (c->env.is_self && c->env.is_self(c->env.self_arg, sa)) {
			fail(c, ERR_LOOP, "it is muxd's own listen address");
			return;
		}
		if (c->deny_loopback && muxd_is_loopback(sa)) {
			fail(c, ERR_FORBIDDEN,
			     "loopback targets are refused (deny_loopback_targets)");
			return;
		}
	}
	eyeballs_run(c->race, addrs);
}

void tcp_deny_loopback(struct transport *t)
{
	((struct tcp *)t)->deny_loopback = true;
}

struct transport *tcp_connect(const struct transport_env *env, const char *host, uint16_t port,
                              uint64_t timeout_ms, const struct transport_cbs *cbs, void *ctx)
{
	struct tcp *c = calloc(1, sizeof(*c));
	struct timeval tv = ms_to_timeval(timeout_ms);

	if (!c)
		return NULL;
	for (size_t i = 0; i < DNS_MAX_ADDRS; i++)
		c->attempts[i].fd = -1;
	c->base.ops = &tcp_ops;
	c->env = *env;
	c->fd = -1;
	transport_set_cbs(&c->base, cbs, ctx);
	snprintf(c->host, sizeof(c->host), "%s", host);
	c->port = port;
	c->race = eyeballs_new(env->base, EYEBALLS_DELAY_MS, &tcp_race_cbs, c);
	c->timeout = evtimer_new(env->base, timeout_cb, c);
	if (!c->race || !c->timeout)
		goto fail;
	if (timeout_ms > 0)
		evtimer_add(c->timeout, &tv);
	c->query = dns_resolve(env->dns, host, port, resolved, c);
	if (!c->query)
		goto fail;
	return &c->base;
fail:
	tcp_close(&c->base);
	return NULL;
}
