/*
 * Unit tests for src/transport/socks5.c: the SOCKS5 layer over a tcp layer,
 * against a real microsocks (a child process per test) and against scripted
 * fake SOCKS5 servers (forked children) for replies microsocks never sends.
 * The destination is an echo server (a forked child on 127.0.0.1 and ::1).
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "muxd.h"
#include "transport/transport.h"

#define MB (1024 * 1024)
#define MICROSOCKS "/usr/bin/microsocks"

static struct muxd m;
static pid_t echo_pid;
static uint16_t echo_port;
static pid_t proxy_pid; /* microsocks or a fake server of the running test */

/* ---- processes and sockets ---- */

/* A listening socket on 127.0.0.1 (port 0: any); returns the fd, sets *port. */
static int listen_on(const char *addr, uint16_t want, uint16_t *port)
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

/* A port nobody listens on (a moment ago). */
static uint16_t free_port(void)
{
	uint16_t port = 0;
	int fd = listen_on("127.0.0.1", 0, &port);

	ck_assert_int_ge(fd, 0);
	close(fd);
	return port;
}

/* In a forked child: die with the parent. */
static void child_init(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	signal(SIGPIPE, SIG_IGN);
}

static void stop_child(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGKILL);
	waitpid(*pid, NULL, 0);
	*pid = 0;
}

/* Waits until something accepts connections on 127.0.0.1:port. */
static bool wait_port(uint16_t port, int ms)
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

static bool write_all(int fd, const void *p, size_t n)
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

static bool read_exact(int fd, void *p, size_t n)
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

/* Echoes until EOF, then half-closes and waits for the peer to close. */
static void echo_loop(int fd)
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

/* The destination: echoes every connection (one child each). */
static void echo_server_start(void)
{
	pid_t parent = getpid();
	uint16_t p6;
	int fd4 = listen_on("127.0.0.1", 0, &echo_port), fd6;

	if (fd4 < 0) {
		perror("echo server");
		exit(EXIT_FAILURE);
	}
	fd6 = listen_on("::1", echo_port, &p6); /* may fail without IPv6 */
	echo_pid = fork();
	if (echo_pid < 0) {
		perror("fork");
		exit(EXIT_FAILURE);
	}
	if (echo_pid == 0) {
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
}

static pid_t spawn(char *const argv[])
{
	pid_t parent = getpid(), pid = fork();

	ck_assert_int_ge(pid, 0);
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

/* Runs microsocks on a free port; returns the port. */
static uint16_t microsocks_start(const char *user, const char *pass)
{
	char port_s[16];
	uint16_t port = free_port();
	char *argv[] = {MICROSOCKS, "-i",         "127.0.0.1", "-p",         port_s,
	                "-u",       (char *)user, "-P",        (char *)pass, NULL};

	snprintf(port_s, sizeof(port_s), "%u", port);
	if (!user)
		argv[5] = NULL;
	proxy_pid = spawn(argv);
	ck_assert_msg(wait_port(port, 5000), "microsocks did not start");
	return port;
}

/* ---- scripted SOCKS5 servers ---- */

enum after { AFTER_CLOSE, AFTER_ECHO, AFTER_WAIT_EOF };

struct script {
	bool close_after_greeting;
	const unsigned char *expect_req; /* NULL: not checked */
	size_t expect_len;
	const unsigned char *reply; /* after the request */
	size_t reply_len;
	enum after after;
};

/* The child's exit status: 0 when all went as scripted, 2 on a wrong request. */
static void fake_serve(int fd, const struct script *s)
{
	unsigned char b[600];
	size_t n, need;
	int status = 0;

	alarm(20);
	if (!read_exact(fd, b, 2) || b[0] != 5 || !read_exact(fd, b + 2, b[1]))
		_exit(3);
	if (s->close_after_greeting) {
		close(fd);
		_exit(0);
	}
	if (!write_all(fd, "\x05\x00", 2) || !read_exact(fd, b, 5))
		_exit(3);
	need = b[3] == 1 ? 10 : b[3] == 4 ? 22 : b[3] == 3 ? 7u + b[4] : 0;
	if (need == 0 || !read_exact(fd, b + 5, need - 5))
		_exit(3);
	n = need;
	if (s->expect_req && (n != s->expect_len || memcmp(b, s->expect_req, n) != 0))
		status = 2;
	if (s->reply_len)
		write_all(fd, s->reply, s->reply_len);
	if (s->after == AFTER_ECHO)
		echo_loop(fd);
	else if (s->after == AFTER_WAIT_EOF)
		while (read(fd, b, sizeof(b)) > 0)
			;
	close(fd);
	_exit(status);
}

/* Starts a scripted server for one connection; returns its port. */
static uint16_t fake_start(const struct script *s)
{
	pid_t parent = getpid();
	uint16_t port;
	int lfd = listen_on("127.0.0.1", 0, &port);

	ck_assert_int_ge(lfd, 0);
	proxy_pid = fork();
	ck_assert_int_ge(proxy_pid, 0);
	if (proxy_pid == 0) {
		int fd;

		child_init(parent);
		fd = accept(lfd, NULL, NULL);
		close(lfd);
		if (fd < 0)
			_exit(4);
		fake_serve(fd, s);
	}
	close(lfd);
	return port;
}

static int fake_status(void)
{
	int status = -1;

	ck_assert_int_eq(waitpid(proxy_pid, &status, 0), proxy_pid);
	proxy_pid = 0;
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* ---- the client side ---- */

struct client {
	/* the hop */
	uint16_t proxy_port;
	char proxy_name[32];
	const char *host;
	uint16_t port;
	bool remote_dns;
	const char *user, *pass;
	/* state */
	struct transport *t, *lower;
	bool layer_made; /* lower belongs to the layer */
	bool connected, eof, failed, timed_out;
	int reads; /* on_read calls */
	enum muxd_err err;
	char reason[512];
	struct evbuffer *got;
	size_t expect;            /* break the loop once this much arrived (0: never) */
	const unsigned char *src; /* bytes to send, respecting backpressure */
	size_t src_len, sent;
	bool shutdown_after_send;
	bool close_on_read;    /* close the layer inside on_read */
	bool close_on_connect; /* ... inside on_event(CONNECTED) */
	bool close_on_create;  /* ... right after socks5_connect */
	const char *early;     /* written right after socks5_connect, before CONNECTED */
	bool pause_on_connect; /* set_reading(false) on CONNECTED, on again 100 ms later */
	struct event *resume_timer;
	size_t max_in, max_out;
};

static void track(struct client *c)
{
	size_t n;

	if ((n = evbuffer_get_length(transport_input(c->t))) > c->max_in)
		c->max_in = n;
	if ((n = evbuffer_get_length(transport_output(c->t))) > c->max_out)
		c->max_out = n;
}

static void pump(struct client *c)
{
	struct evbuffer *out = transport_output(c->t);

	while (c->sent < c->src_len && evbuffer_get_length(out) < TRANSPORT_BUF) {
		size_t n = c->src_len - c->sent;
		if (n > 10000)
			n = 10000;
		evbuffer_add(out, c->src + c->sent, n);
		c->sent += n;
	}
	track(c);
	if (c->src && c->sent == c->src_len && c->shutdown_after_send) {
		c->shutdown_after_send = false;
		c->t->ops->shutdown(c->t);
	}
}

static void take_input(struct client *c)
{
	evbuffer_add_buffer(c->got, transport_input(c->t));
	if (c->expect && evbuffer_get_length(c->got) >= c->expect)
		event_base_loopbreak(m.base);
}

static void on_read(void *ctx)
{
	struct client *c = ctx;

	ck_assert(c->connected);
	c->reads++;
	track(c);
	if (c->close_on_read) {
		evbuffer_add_buffer(c->got, transport_input(c->t));
		transport_close(c->t);
		c->t = NULL;
		event_base_loopbreak(m.base);
		return;
	}
	take_input(c);
}

static void on_drain(void *ctx)
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

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct client *c = ctx;
	struct timeval ms100 = {0, 100000};

	switch (ev) {
	case TRANSPORT_CONNECTED:
		ck_assert(!c->connected && !c->failed);
		c->connected = true;
		if (c->close_on_connect) {
			transport_close(c->t);
			c->t = NULL;
			event_base_loopbreak(m.base);
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
		c->eof = true;
		take_input(c);
		event_base_loopbreak(m.base);
		break;
	case TRANSPORT_ERROR:
		ck_assert(!c->failed);
		c->failed = true;
		c->err = err;
		snprintf(c->reason, sizeof(c->reason), "%s", reason ? reason : "");
		event_base_loopbreak(m.base);
		break;
	}
}

static const struct transport_cbs client_cbs = {on_read, on_drain, on_event};

static void tcp_on_read(void *ctx)
{
	(void)ctx;
	ck_abort_msg("tcp on_read before the SOCKS5 layer");
}

static void tcp_on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct client *c = ctx;

	if (ev != TRANSPORT_CONNECTED) {
		on_event(ctx, ev, err, reason);
		return;
	}
	c->t = socks5_connect(&m, c->lower, c->proxy_name, c->host, c->port, c->remote_dns, c->user,
	                      c->pass, &client_cbs, c);
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

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	((struct client *)arg)->timed_out = true;
	event_base_loopbreak(m.base);
}

static void run(struct client *c, int ms)
{
	struct event *timer = evtimer_new(m.base, timeout_cb, c);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	evtimer_add(timer, &tv);
	event_base_dispatch(m.base);
	event_free(timer);
}

static void client_open(struct client *c, uint16_t proxy_port)
{
	c->got = evbuffer_new();
	c->resume_timer = evtimer_new(m.base, resume_cb, c);
	c->proxy_port = proxy_port;
	snprintf(c->proxy_name, sizeof(c->proxy_name), "127.0.0.1:%u", proxy_port);
	c->lower = tcp_connect(&m, "127.0.0.1", proxy_port, 5000, &tcp_cbs, c);
	ck_assert_ptr_nonnull(c->lower);
}

static void client_done(struct client *c)
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

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN);
	m.base = event_base_new();
	ck_assert_ptr_nonnull(m.base);
	m.cfg = config_defaults();
	ck_assert_ptr_nonnull(m.cfg);
	m.dns = dns_new(m.base);
	ck_assert_ptr_nonnull(m.dns);
}

static void teardown(void)
{
	stop_child(&proxy_pid);
	dns_free(m.dns);
	config_unref(m.cfg);
	event_base_free(m.base);
	memset(&m, 0, sizeof(m));
}

/* Opens a tunnel, sends msg, expects it echoed. (microsocks closes both
 * ways when one side half-closes, so the test does not half-close.) */
static void expect_echo(struct client *c, uint16_t proxy_port, const char *msg)
{
	client_open(c, proxy_port);
	c->src = (const unsigned char *)msg;
	c->src_len = strlen(msg);
	c->expect = strlen(msg);
	run(c, 5000);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(!c->timed_out);
	ck_assert(c->connected);
	ck_assert(!c->eof);
	ck_assert_uint_eq(evbuffer_get_length(c->got), strlen(msg));
	ck_assert(memcmp(evbuffer_pullup(c->got, -1), msg, strlen(msg)) == 0);
	ck_assert(c->t->ops->is_alive(c->t));
	client_done(c);
}

/* Opens a tunnel and expects it to fail with err. */
static void expect_failure(struct client *c, uint16_t proxy_port, enum muxd_err err)
{
	client_open(c, proxy_port);
	run(c, 5000);
	ck_assert(!c->timed_out);
	ck_assert(!c->connected);
	ck_assert(c->failed);
	ck_assert_int_eq(c->err, err);
	client_done(c);
}

static void expect_reason(struct client *c, const char *what)
{
	char want[600];

	snprintf(want, sizeof(want), "SOCKS5 proxy %s: %s", c->proxy_name, what);
	ck_assert_str_eq(c->reason, want);
}

/* ---- tests against microsocks ---- */

START_TEST(noauth_echo_1mb)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};
	uint16_t pp = microsocks_start(NULL, NULL);
	unsigned char *src = malloc(MB);
	unsigned x = 4242;

	ck_assert_ptr_nonnull(src);
	for (size_t i = 0; i < MB; i++) {
		x = x * 1103515245 + 12345;
		src[i] = (unsigned char)(x >> 16);
	}
	client_open(&c, pp);
	c.src = src;
	c.src_len = MB;
	c.expect = MB;
	run(&c, 10000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(!c.timed_out);
	ck_assert(!c.eof);
	ck_assert_uint_eq(c.sent, MB);
	ck_assert_uint_eq(evbuffer_get_length(c.got), MB);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), src, MB) == 0);
	ck_assert_uint_le(c.max_in, TRANSPORT_BUF);
	ck_assert_uint_le(c.max_out, TRANSPORT_BUF + 10000);
	client_done(&c);
	free(src);
}
END_TEST

START_TEST(userpass_right)
{
	struct client c = {
	    .host = "127.0.0.1", .port = echo_port, .user = "alice", .pass = "s3cret"};
	uint16_t pp = microsocks_start("alice", "s3cret");

	expect_echo(&c, pp, "with credentials");
}
END_TEST

START_TEST(userpass_wrong)
{
	struct client c = {
	    .host = "127.0.0.1", .port = echo_port, .user = "alice", .pass = "wrong"};
	uint16_t pp = microsocks_start("alice", "s3cret");

	expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "authentication failed");
}
END_TEST

START_TEST(userpass_missing)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};
	uint16_t pp = microsocks_start("alice", "s3cret");

	expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "authentication required");
}
END_TEST

START_TEST(remote_dns_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port, .remote_dns = true};
	uint16_t pp = microsocks_start(NULL, NULL);

	expect_echo(&c, pp, "resolved by the proxy");
}
END_TEST

START_TEST(local_dns_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port};
	uint16_t pp = microsocks_start(NULL, NULL);

	expect_echo(&c, pp, "resolved by muxd");
}
END_TEST

START_TEST(ipv6_literal)
{
	struct client c = {.host = "::1", .port = echo_port, .remote_dns = true};
	uint16_t pp = microsocks_start(NULL, NULL);
	uint16_t p6;
	int fd = listen_on("::1", 0, &p6);

	if (fd < 0)
		return; /* no IPv6 loopback here */
	close(fd);
	expect_echo(&c, pp, "over IPv6");
}
END_TEST

START_TEST(destination_refused)
{
	static const char *const meanings[] = {"general SOCKS server failure",
	                                       "connection not allowed by ruleset",
	                                       "network unreachable",
	                                       "host unreachable",
	                                       "connection refused by destination host",
	                                       "TTL expired",
	                                       "command not supported",
	                                       "address type not supported"};
	struct client c = {.host = "127.0.0.1", .port = free_port()};
	uint16_t pp = microsocks_start(NULL, NULL);
	char prefix[64];
	bool known = false;

	expect_failure(&c, pp, ERR_CONNECT);
	printf("socks5 destination_refused: %s\n", c.reason);
	snprintf(prefix, sizeof(prefix), "SOCKS5 proxy %s: ", c.proxy_name);
	ck_assert(strncmp(c.reason, prefix, strlen(prefix)) == 0);
	for (size_t i = 0; i < sizeof(meanings) / sizeof(meanings[0]); i++)
		known |= strcmp(c.reason + strlen(prefix), meanings[i]) == 0;
	ck_assert_msg(known, "reason: %s", c.reason);
	/* microsocks maps ECONNREFUSED to reply 5 */
	expect_reason(&c, "connection refused by destination host");
}
END_TEST

START_TEST(proxy_refused)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};

	expect_failure(&c, free_port(), ERR_CONNECT); /* reported by the tcp layer */
}
END_TEST

START_TEST(dns_failure)
{
	struct client c = {.host = "nonexistent.invalid", .port = echo_port};
	uint16_t pp = microsocks_start(NULL, NULL);

	expect_failure(&c, pp, ERR_DNS);
	ck_assert_str_eq(c.reason, "cannot resolve nonexistent.invalid: no such host");
}
END_TEST

/* ---- tests against scripted servers ---- */

START_TEST(proxy_closes_early)
{
	struct script s = {.close_after_greeting = true};
	struct client c = {.host = "127.0.0.1", .port = echo_port};
	uint16_t pp = fake_start(&s);
	char want[128];

	expect_failure(&c, pp, ERR_CONNECT);
	snprintf(want, sizeof(want), "SOCKS5 proxy %s closed the connection during the handshake",
	         c.proxy_name);
	ck_assert_str_eq(c.reason, want);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(reply_codes)
{
	static const char *const meanings[] = {
	    NULL,
	    "general SOCKS server failure",
	    "connection not allowed by ruleset",
	    "network unreachable",
	    "host unreachable",
	    "connection refused by destination host",
	    "TTL expired",
	    "command not supported",
	    "address type not supported",
	    "unknown reply code 9",
	};

	for (unsigned code = 1; code <= 9; code++) {
		unsigned char reply[10] = {5, (unsigned char)code, 0, 1, 0, 0, 0, 0, 0, 0};
		struct script s = {.reply = reply, .reply_len = 10, .after = AFTER_WAIT_EOF};
		struct client c = {.host = "127.0.0.1", .port = echo_port};

		expect_failure(&c, fake_start(&s), ERR_CONNECT);
		expect_reason(&c, meanings[code]);
		ck_assert_int_eq(fake_status(), 0);
	}
}
END_TEST

/* The request names the host (socks5h) and the reply's bound address is a
 * domain; the destination's first bytes come in the same segment. */
START_TEST(domain_reply_and_first_bytes)
{
	static const unsigned char req[] = {5,   1,   0,   3,   9,   'l', 'o',  'c',
	                                    'a', 'l', 'h', 'o', 's', 't', 0x1f, 0x90};
	static const unsigned char reply[] = {5,   0,   0, 3,  7,   'e', 'x', 'a', 'm', 'p',
	                                      'l', 'e', 0, 80, 'F', 'I', 'R', 'S', 'T'};
	struct script s = {.expect_req = req,
	                   .expect_len = sizeof(req),
	                   .reply = reply,
	                   .reply_len = sizeof(reply),
	                   .after = AFTER_ECHO};
	struct client c = {.host = "localhost", .port = 8080, .remote_dns = true};

	client_open(&c, fake_start(&s));
	c.expect = 5;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "FIRST", 5) == 0);
	/* then an ordinary echo */
	evbuffer_drain(c.got, 5);
	c.src = (const unsigned char *)"again";
	c.src_len = 5;
	c.shutdown_after_send = true;
	c.expect = 0;
	pump(&c);
	run(&c, 5000);
	ck_assert(c.eof);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "again", 5) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

/* socks5 (local DNS): "localhost" goes out as 127.0.0.1; an IPv6 bound
 * address in the reply; reading paused on CONNECTED delays the first bytes. */
START_TEST(local_dns_request_and_pause)
{
	static const unsigned char req[] = {5, 1, 0, 1, 127, 0, 0, 1, 0x01, 0xbb};
	unsigned char reply[4 + 16 + 2 + 5] = {5, 0, 0, 4};
	struct script s = {.expect_req = req,
	                   .expect_len = sizeof(req),
	                   .reply = reply,
	                   .reply_len = sizeof(reply),
	                   .after = AFTER_WAIT_EOF};
	struct client c = {.host = "localhost", .port = 443, .pause_on_connect = true};

	memcpy(reply + 22, "FIRST", 5);
	client_open(&c, fake_start(&s));
	c.expect = 5;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_int_ge(c.reads, 1);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "FIRST", 5) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(malformed_replies)
{
	static const struct {
		unsigned char b[8];
		size_t n;
		const char *reason;
	} cases[] = {
	    {{4, 0, 0, 1}, 4, "malformed reply"},    /* wrong version */
	    {{5, 0, 0, 9, 0}, 5, "malformed reply"}, /* unknown address type */
	    {{5, 0, 0, 3, 0}, 5, "malformed reply"}, /* empty domain */
	    {{5, 0, 7, 1, 0}, 5, "malformed reply"}, /* reserved byte set */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct script s = {
		    .reply = cases[i].b, .reply_len = cases[i].n, .after = AFTER_WAIT_EOF};
		struct client c = {.host = "127.0.0.1", .port = echo_port};

		expect_failure(&c, fake_start(&s), ERR_CONNECT);
		expect_reason(&c, cases[i].reason);
		ck_assert_int_eq(fake_status(), 0);
	}
	/* a truncated reply, then EOF */
	{
		static const unsigned char part[] = {5, 0, 0, 3, 200, 'x'};
		struct script s = {.reply = part, .reply_len = sizeof(part)};
		struct client c = {.host = "127.0.0.1", .port = echo_port};
		char want[128];

		expect_failure(&c, fake_start(&s), ERR_CONNECT);
		snprintf(want, sizeof(want),
		         "SOCKS5 proxy %s closed the connection during the handshake",
		         c.proxy_name);
		ck_assert_str_eq(c.reason, want);
		ck_assert_int_eq(fake_status(), 0);
	}
}
END_TEST

/* Closing the layer from inside its callbacks, or before anything happened
 * (with the local resolution pending), is safe and silent. */
START_TEST(close_inside_callbacks)
{
	static const unsigned char reply[] = {5, 0, 0, 1, 0, 0, 0, 0, 0, 0, 'h', 'i'};
	struct script s = {.reply = reply, .reply_len = sizeof(reply), .after = AFTER_WAIT_EOF};

	{
		struct client c = {.host = "127.0.0.1", .port = 1, .close_on_connect = true};

		client_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert(c.connected && !c.failed && !c.timed_out);
		client_done(&c);
		ck_assert_int_eq(fake_status(), 0);
	}
	{
		struct client c = {.host = "127.0.0.1", .port = 1, .close_on_read = true};

		client_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert(c.connected && !c.failed && !c.timed_out);
		ck_assert_uint_eq(evbuffer_get_length(c.got), 2);
		client_done(&c);
		ck_assert_int_eq(fake_status(), 0);
	}
	{
		struct client c = {.host = "localhost", .port = 1, .close_on_create = true};

		client_open(&c, fake_start(&s));
		run(&c, 300);
		ck_assert(c.timed_out && !c.connected && !c.failed);
		client_done(&c);
		stop_child(&proxy_pid);
	}
}
END_TEST

/* Bytes written before CONNECTED go out after the handshake. */
START_TEST(early_write)
{
	static const unsigned char req[] = {5, 1, 0, 1, 127, 0, 0, 1, 0x01, 0xbb};
	static const unsigned char reply[] = {5, 0, 0, 1, 0, 0, 0, 0, 0, 0};
	struct script s = {.expect_req = req,
	                   .expect_len = sizeof(req),
	                   .reply = reply,
	                   .reply_len = sizeof(reply),
	                   .after = AFTER_ECHO};
	struct client c = {.host = "127.0.0.1", .port = 443, .early = "early bytes"};

	client_open(&c, fake_start(&s));
	c.expect = strlen(c.early);
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_uint_eq(evbuffer_get_length(c.got), strlen(c.early));
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), c.early, strlen(c.early)) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

/* User names and passwords longer than RFC 1929 allows fail before sending. */
START_TEST(credentials_too_long)
{
	char user[300];
	struct client c = {.host = "127.0.0.1", .port = echo_port, .pass = "x"};
	uint16_t pp = microsocks_start("alice", "s3cret");

	memset(user, 'u', sizeof(user) - 1);
	user[sizeof(user) - 1] = '\0';
	c.user = user;
	expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "user name or password longer than 255 bytes");
}
END_TEST

static Suite *socks5_suite(void)
{
	Suite *s = suite_create("socks5");
	TCase *t = tcase_create("socks5");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_set_timeout(t, 30);
	tcase_add_test(t, noauth_echo_1mb);
	tcase_add_test(t, userpass_right);
	tcase_add_test(t, userpass_wrong);
	tcase_add_test(t, userpass_missing);
	tcase_add_test(t, remote_dns_localhost);
	tcase_add_test(t, local_dns_localhost);
	tcase_add_test(t, ipv6_literal);
	tcase_add_test(t, destination_refused);
	tcase_add_test(t, proxy_refused);
	tcase_add_test(t, dns_failure);
	tcase_add_test(t, proxy_closes_early);
	tcase_add_test(t, reply_codes);
	tcase_add_test(t, domain_reply_and_first_bytes);
	tcase_add_test(t, local_dns_request_and_pause);
	tcase_add_test(t, malformed_replies);
	tcase_add_test(t, close_inside_callbacks);
	tcase_add_test(t, credentials_too_long);
	tcase_add_test(t, early_write);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	signal(SIGPIPE, SIG_IGN);
	if (access(MICROSOCKS, X_OK) != 0) {
		fprintf(stderr, "%s is missing (apt-get install microsocks)\n", MICROSOCKS);
		return EXIT_FAILURE;
	}
	echo_server_start();
	sr = srunner_create(socks5_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	stop_child(&echo_pid);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
