/*
 * tcp — the bottom transport layer: a socket in a libevent bufferevent.
 * Connecting resolves the host, then races the addresses (happy eyeballs,
 * RFC 8305): one attempt starts, the next 250 ms later or as soon as one
 * fails, and the first socket to connect wins; the others are closed.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
	struct bufferevent *bev;
	bool alive;
	bool shut_pending;
	bool deny_loopback; /* tcp_deny_loopback: the target is an origin */
};

static struct evbuffer *tcp_input(struct transport *t)
{
	return bufferevent_get_input(((struct tcp *)t)->bev);
}

static struct evbuffer *tcp_output(struct transport *t)
{
	return bufferevent_get_output(((struct tcp *)t)->bev);
}

static void tcp_set_reading(struct transport *t, bool on)
{
	struct tcp *c = (struct tcp *)t;
	if (on)
		bufferevent_enable(c->bev, EV_READ);
	else
		bufferevent_disable(c->bev, EV_READ);
}

static void do_shutdown(struct tcp *c)
{
	c->shut_pending = false;
	shutdown(bufferevent_getfd(c->bev), SHUT_WR);
}

static void tcp_shutdown(struct transport *t)
{
	struct tcp *c = (struct tcp *)t;

	if (!c->bev)
		return;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		do_shutdown(c);
	} else {
		c->shut_pending = true;
		bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	}
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
	if (c->bev)
		bufferevent_free(c->bev);
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

	return t->ops->close == tcp_close && c->bev &&
	       getpeername(bufferevent_getfd(c->bev), (struct sockaddr *)addr, &len) == 0;
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

static void bev_read(struct bufferevent *bev, void *arg)
{
	struct tcp *c = arg;
	(void)bev;
	c->base.cbs.on_read(c->base.ctx);
}

static void bev_write(struct bufferevent *bev, void *arg)
{
	struct tcp *c = arg;

	if (c->shut_pending && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		do_shutdown(c);
	if (c->base.cbs.on_drain)
		c->base.cbs.on_drain(c->base.ctx);
}

static void bev_event(struct bufferevent *bev, short what, void *arg)
{
	struct tcp *c = arg;
	(void)bev;

	c->alive = false;
	if (what & BEV_EVENT_EOF) {
		c->base.cbs.on_event(c->base.ctx, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	} else if (what & BEV_EVENT_ERROR) {
		int e = EVUTIL_SOCKET_ERROR();
		c->base.cbs.on_event(c->base.ctx, TRANSPORT_ERROR, ERR_CLOSED,
		                     e ? strerror(e) : "connection error");
	}
}

static bool start_bev(struct tcp *c, int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->bev = bufferevent_socket_new(c->env.base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		return false;
	}
	bufferevent_setcb(c->bev, bev_read, bev_write, bev_event, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, TRANSPORT_BUF);
	bufferevent_setwatermark(c->bev, EV_WRITE, TRANSPORT_BUF / 2, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
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
	if (!start_bev(c, fd)) {
		free(c);
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
	if (!start_bev(c, (int)fd)) {
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
