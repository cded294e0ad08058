/*
 * Shared scaffolding of the transport unit tests (see harness.h): the muxd
 * fixture, the time-limited loop, socket and child-process helpers, the echo
 * and one-connection scripted servers, temp dirs, and the recording client
 * with its tcp-then-proxy-layer variant.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "exchange.h"
#include "transport/tls.h"
#include "upstream/upstream.h"

struct muxd m;
static struct upstream_env env; /* m.env */
pid_t proxy_pid;

/* ---- the daemon state ---- */

void muxd_setup(unsigned parts)
{
	m.base = event_base_new();
	ck_assert_ptr_nonnull(m.base);
	if (parts & HM_CFG) {
		m.cfg = config_defaults();
		ck_assert_ptr_nonnull(m.cfg);
	}
	if (parts & HM_DNS) {
		m.dns = dns_new(m.base);
		ck_assert_ptr_nonnull(m.dns);
	}
	if (parts & HM_TLS) {
		m.tls = tls_client_ctx_new();
		ck_assert_ptr_nonnull(m.tls);
	}
	muxd_env_fill(&m, &env);
}

void muxd_env_fill(struct muxd *d, struct upstream_env *e)
{
	*e = (struct upstream_env){
	    .transport = {.base = d->base,
	                  .dns = d->dns,
	                  .tls = d->tls,
	                  .is_self = muxd_is_self_arg,
	                  .self_arg = d,
	                  .tls_leaf_issued = &d->metrics.tls_leaf_issued},
	    .window_granted = &d->window_granted,
	};
	d->env = e;
}

void muxd_teardown(void)
{
	if (m.tls)
		tls_client_ctx_free(m.tls);
	if (m.dns)
		dns_free(m.dns);
	if (m.cfg)
		config_unref(m.cfg);
	muxd_idle_trim_free(&m);
	exchange_spare_free(&m);
	event_base_free(m.base);
	memset(&m, 0, sizeof(m));
}

int run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed;
}

unsigned char *pattern_new(size_t n, unsigned seed)
{
	unsigned char *p = malloc(n);
	unsigned x = seed;

	if (!p)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245 + 12345;
		p[i] = (unsigned char)(x >> 16);
	}
	return p;
}

static void loop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
	event_base_loopbreak(m.base);
}

bool loop_run(int ms)
{
	bool fired = false;
	struct event *timer = evtimer_new(m.base, loop_timeout_cb, &fired);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	evtimer_add(timer, &tv);
	event_base_dispatch(m.base);
	event_free(timer);
	return fired;
}

/* ---- sockets ---- */

int listen_on(const char *addr, uint16_t want, uint16_t *port)
{
	struct sockaddr_storage ss = {0};
	socklen_t len;
	int one = 1, fd;

	if (strchr(addr, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(want);
		inet_pton(AF_INET6, addr, &a->sin6_addr);
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(want);
		inet_pton(AF_INET, addr, &a->sin_addr);
		len = sizeof(*a);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0) {
		close(fd);
		return -1;
	}
	len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	*port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
	                                       : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

uint16_t free_port(void)
{
	uint16_t port = 0;
	int fd = listen_on("127.0.0.1", 0, &port);

	ck_assert_int_ge(fd, 0);
	close(fd);
	return port;
}

bool wait_port(uint16_t port, int ms)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};

	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	for (int i = 0; i < ms / 10; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

		close(fd);
		if (ok)
			return true;
		usleep(10000);
	}
	return false;
}

bool write_all(int fd, const void *p, size_t n)
{
	const char *s = p;

	while (n > 0) {
		ssize_t r = write(fd, s, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		s += r;
		n -= (size_t)r;
	}
	return true;
}

bool read_exact(int fd, void *p, size_t n)
{
	char *s = p;

	while (n > 0) {
		ssize_t r = read(fd, s, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		s += r;
		n -= (size_t)r;
	}
	return true;
}

/* ---- processes ---- */

void child_init(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	signal(SIGPIPE, SIG_IGN);
}

void stop_child(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGKILL);
	waitpid(*pid, NULL, 0);
	*pid = 0;
}

pid_t spawn_quiet(char *const argv[])
{
	pid_t parent = getpid(), pid = fork();

	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		child_init(parent);
		dup2(null, 1);
		dup2(null, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

void echo_loop(int fd)
{
	static char buf[65536];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (!write_all(fd, buf, (size_t)n))
			_exit(0);
	shutdown(fd, SHUT_WR);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	close(fd);
}

pid_t echo_server_start(uint16_t *port)
{
	pid_t parent = getpid(), pid;
	uint16_t p6;
	int fd4 = listen_on("127.0.0.1", 0, port), fd6;

	if (fd4 < 0) {
		perror("echo server");
		exit(EXIT_FAILURE);
	}
	fd6 = listen_on("::1", *port, &p6); /* may fail without IPv6 */
	pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(EXIT_FAILURE);
	}
	if (pid == 0) {
		struct pollfd pfd[2] = {{fd4, POLLIN, 0}, {fd6, POLLIN, 0}};

		child_init(parent);
		signal(SIGCHLD, SIG_IGN); /* no zombies */
		for (;;) {
			pid_t me = getpid();

			if (poll(pfd, fd6 >= 0 ? 2 : 1, -1) < 0)
				continue;
			for (int i = 0; i < 2; i++) {
				int c;

				if (pfd[i].fd < 0 || !(pfd[i].revents & POLLIN))
					continue;
				c = accept(pfd[i].fd, NULL, NULL);
				if (c < 0)
					continue;
				if (fork() == 0) {
					child_init(me);
					alarm(30);
					close(fd4);
					if (fd6 >= 0)
						close(fd6);
					echo_loop(c);
					_exit(0);
				}
				close(c);
			}
		}
	}
	close(fd4);
	if (fd6 >= 0)
		close(fd6);
	return pid;
}

uint16_t fork_server(void (*serve)(int fd, const void *arg), const void *arg, pid_t *pid)
{
	pid_t parent = getpid();
	uint16_t port;
	int lfd = listen_on("127.0.0.1", 0, &port);

	ck_assert_int_ge(lfd, 0);
	*pid = fork();
	ck_assert_int_ge(*pid, 0);
	if (*pid == 0) {
		int fd;

		child_init(parent);
		fd = accept(lfd, NULL, NULL);
		close(lfd);
		if (fd < 0)
			_exit(4);
		serve(fd, arg);
		_exit(5); /* not reached */
	}
	close(lfd);
	return port;
}

int reap_child(pid_t *pid)
{
	int status = -1;

	ck_assert_int_eq(waitpid(*pid, &status, 0), *pid);
	*pid = 0;
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

void serve_end(int fd, enum after after, int status)
{
	char buf[4096];

	if (after == AFTER_ECHO)
		echo_loop(fd);
	else if (after == AFTER_WAIT_EOF)
		while (read(fd, buf, sizeof(buf)) > 0)
			;
	close(fd);
	_exit(status);
}

/* ---- temp dirs ---- */

bool tmpdir_new(char *buf, size_t size, const char *name)
{
	snprintf(buf, size, "/tmp/muxd-%s-XXXXXX", name);
	return mkdtemp(buf) != NULL;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void tmpdir_remove(const char *dir)
{
	if (dir[0] && nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

/* ---- the recording client ---- */

void peaks_track(struct peaks *p, struct transport *t, struct transport *lower)
{
	size_t n;

	if ((n = evbuffer_get_length(transport_input(t))) > p->in)
		p->in = n;
	if ((n = evbuffer_get_length(transport_output(t))) > p->out)
		p->out = n;
	if (!lower)
		return;
	if ((n = evbuffer_get_length(transport_input(lower))) > p->lower_in)
		p->lower_in = n;
	if ((n = evbuffer_get_length(transport_output(lower))) > p->lower_out)
		p->lower_out = n;
}

void track(struct client *c)
{
	peaks_track(&c->max, c->t, c->track_lower ? c->lower : NULL);
}

void pump(struct client *c)
{
	struct evbuffer *out = transport_output(c->t);

	while (c->sent < c->src_len && evbuffer_get_length(out) < TRANSPORT_BUF) {
		size_t n = c->src_len - c->sent;
		if (n > 10000)
			n = 10000; /* odd sizes: records do not line up with writes */
		evbuffer_add(out, c->src + c->sent, n);
		c->sent += n;
	}
	track(c);
	if (c->src && c->sent == c->src_len && c->shutdown_after_send) {
		c->shutdown_after_send = false;
		c->t->ops->shutdown(c->t);
	}
}

void take_input(struct client *c)
{
	evbuffer_add_buffer(c->got, transport_input(c->t));
	if (c->expect && evbuffer_get_length(c->got) >= c->expect)
		event_base_loopbreak(m.base);
}

void run(struct client *c, int ms)
{
	if (loop_run(ms))
		c->timed_out = true;
}

void client_expect_got(struct client *c, const void *data, size_t n)
{
	ck_assert_uint_eq(evbuffer_get_length(c->got), n);
	ck_assert(memcmp(evbuffer_pullup(c->got, -1), data, n) == 0);
}

void client_close_layer(struct client *c)
{
	transport_close(c->t);
	c->t = NULL;
	event_base_loopbreak(m.base);
}

void client_read_close(struct client *c)
{
	evbuffer_add_buffer(c->got, transport_input(c->t));
	client_close_layer(c);
}

void client_eof(struct client *c)
{
	c->eof = true;
	take_input(c);
	event_base_loopbreak(m.base);
}

void client_error(struct client *c, enum muxd_err err, const char *reason)
{
	c->failed = true;
	c->err = err;
	snprintf(c->reason, sizeof(c->reason), "%s", reason ? reason : "");
	event_base_loopbreak(m.base);
}

/* ---- through a proxy layer ---- */

static const char *layer_name;
static proxy_layer_fn layer_make;

static void proxy_on_read(void *ctx)
{
	struct client *c = ctx;

	ck_assert(c->connected);
	c->reads++;
	track(c);
	if (c->close_on_read) {
		client_read_close(c);
		return;
	}
	take_input(c);
}

static void proxy_on_drain(void *ctx)
{
	pump(ctx);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	(void)fd;
	(void)what;
	ck_assert_int_eq(c->reads, 0); /* nothing was delivered while paused */
	c->t->ops->set_reading(c->t, true);
}

static void proxy_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct client *c = ctx;
	struct timeval ms100 = {0, 100000};

	switch (ev) {
	case TRANSPORT_CONNECTED:
		ck_assert(!c->connected && !c->failed);
		c->connected = true;
		if (c->close_on_connect) {
			client_close_layer(c);
			return;
		}
		if (c->pause_on_connect) {
			c->t->ops->set_reading(c->t, false);
			evtimer_add(c->resume_timer, &ms100);
		}
		ck_assert(c->t->ops->is_alive(c->t));
		if (c->src)
			pump(c);
		else if (!c->expect)
			event_base_loopbreak(m.base);
		break;
	case TRANSPORT_EOF:
		client_eof(c);
		break;
	case TRANSPORT_ERROR:
		ck_assert(!c->failed);
		client_error(c, err, reason);
		break;
	}
}

static const struct transport_cbs proxy_cbs = {proxy_on_read, proxy_on_drain, proxy_on_event};

static void tcp_on_read(void *ctx)
{
	(void)ctx;
	ck_abort_msg("tcp on_read before the %s layer", layer_name);
}

static void tcp_on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct client *c = ctx;

	if (ev != TRANSPORT_CONNECTED) {
		proxy_on_event(ctx, ev, err, reason);
		return;
	}
	c->t = layer_make(c, &proxy_cbs);
	ck_assert_ptr_nonnull(c->t);
	c->layer_made = true;
	ck_assert(!c->connected && !c->failed); /* nothing is reported from inside */
	ck_assert(!c->t->ops->is_alive(c->t));
	if (c->close_on_create) {
		transport_close(c->t);
		c->t = NULL;
	}
	if (c->early)
		evbuffer_add(transport_output(c->t), c->early, strlen(c->early));
}

static const struct transport_cbs tcp_cbs = {tcp_on_read, NULL, tcp_on_event};

int fake_status(void)
{
	return reap_child(&proxy_pid);
}

void proxy_setup(const char *name, proxy_layer_fn make)
{
	signal(SIGPIPE, SIG_IGN);
	layer_name = name;
	layer_make = make;
	muxd_setup(HM_CFG | HM_DNS);
}

void proxy_teardown(void)
{
	stop_child(&proxy_pid);
	muxd_teardown();
}

void proxy_open(struct client *c, uint16_t proxy_port)
{
	c->got = evbuffer_new();
	c->resume_timer = evtimer_new(m.base, resume_cb, c);
	c->proxy_port = proxy_port;
	snprintf(c->proxy_name, sizeof(c->proxy_name), "127.0.0.1:%u", proxy_port);
	c->lower = tcp_connect(TENV, "127.0.0.1", proxy_port, 5000, &tcp_cbs, c);
	ck_assert_ptr_nonnull(c->lower);
}

void proxy_done(struct client *c)
{
	if (c->t)
		transport_close(c->t);
	else if (c->lower && !c->layer_made)
		transport_close(c->lower); /* the layer was never made */
	c->t = c->lower = NULL;
	event_base_loop(m.base, EVLOOP_NONBLOCK);
	event_free(c->resume_timer);
	evbuffer_free(c->got);
}

void proxy_expect_echo(struct client *c, uint16_t proxy_port, const char *msg)
{
	proxy_open(c, proxy_port);
	c->src = (const unsigned char *)msg;
	c->src_len = strlen(msg);
	c->expect = strlen(msg);
	run(c, 5000);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(!c->timed_out);
	ck_assert(c->connected);
	ck_assert(!c->eof);
	client_expect_got(c, msg, strlen(msg));
	ck_assert(c->t->ops->is_alive(c->t));
	proxy_done(c);
}

void proxy_expect_failure(struct client *c, uint16_t proxy_port, enum muxd_err err)
{
	proxy_open(c, proxy_port);
	run(c, 5000);
	ck_assert(!c->timed_out);
	ck_assert(!c->connected);
	ck_assert(c->failed);
	ck_assert_int_eq(c->err, err);
	proxy_done(c);
}

void proxy_expect_bulk_echo(struct client *c, uint16_t proxy_port, unsigned seed, int ms)
{
	unsigned char *src = pattern_new(MB, seed);

	ck_assert_ptr_nonnull(src);
	proxy_open(c, proxy_port);
	c->src = src;
	c->src_len = MB;
	c->expect = MB;
	run(c, ms);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(!c->timed_out);
	ck_assert(!c->eof);
	ck_assert_uint_eq(c->sent, MB);
	client_expect_got(c, src, MB);
	ck_assert_uint_le(c->max.in, TRANSPORT_BUF);
	ck_assert_uint_le(c->max.out, TRANSPORT_BUF + 10000);
	proxy_done(c);
	free(src);
}

void proxy_expect_first(struct client *c, uint16_t proxy_port, const char *first)
{
	proxy_open(c, proxy_port);
	c->expect = strlen(first);
	run(c, 5000);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(c->connected);
	client_expect_got(c, first, strlen(first));
}

void proxy_expect_again(struct client *c)
{
	evbuffer_drain(c->got, evbuffer_get_length(c->got));
	c->src = (const unsigned char *)"again";
	c->src_len = 5;
	c->shutdown_after_send = true;
	c->expect = 0;
	pump(c);
	run(c, 5000);
	ck_assert(c->eof);
	client_expect_got(c, "again", 5);
}

void proxy_close_inside_callbacks(struct client c[3], void (*serve)(int fd, const void *arg),
                                  const void *arg)
{
	c[0].close_on_connect = true;
	proxy_open(&c[0], fork_server(serve, arg, &proxy_pid));
	run(&c[0], 5000);
	ck_assert(c[0].connected && !c[0].failed && !c[0].timed_out);
	proxy_done(&c[0]);
	ck_assert_int_eq(fake_status(), 0);

	c[1].close_on_read = true;
	proxy_open(&c[1], fork_server(serve, arg, &proxy_pid));
	run(&c[1], 5000);
	ck_assert(c[1].connected && !c[1].failed && !c[1].timed_out);
	ck_assert_uint_eq(evbuffer_get_length(c[1].got), 2);
	proxy_done(&c[1]);
	ck_assert_int_eq(fake_status(), 0);

	c[2].close_on_create = true;
	proxy_open(&c[2], fork_server(serve, arg, &proxy_pid));
	run(&c[2], 300);
	ck_assert(c[2].timed_out && !c[2].connected && !c[2].failed);
	proxy_done(&c[2]);
	stop_child(&proxy_pid);
}
