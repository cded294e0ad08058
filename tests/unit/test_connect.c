/*
 * Unit tests for src/transport/connect.c: the CONNECT layer over a tcp layer,
 * against a real squid (one child process for the whole run, a minimal
 * configuration in a temp dir) and against scripted fake proxies (forked
 * children) for answers squid never gives: 407, exact request checks,
 * bytes right after the 200, malformed and oversized heads. The destination
 * is an echo server (a forked child on 127.0.0.1 and ::1).
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <glob.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "muxd.h"
#include "transport/transport.h"

#define MB (1024 * 1024)
#define SQUID "/usr/sbin/squid"

static struct muxd m;
static pid_t echo_pid;
static uint16_t echo_port;
static pid_t proxy_pid; /* the fake proxy of the running test */
static pid_t squid_pid;
static uint16_t squid_port;
static char squid_dir[64], squid_name[32];

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

/* ---- squid ---- */

/* Starts squid on a free port; returns false when it cannot run here. */
static bool squid_start(void)
{
	char conf[128], port_s[16];
	pid_t parent = getpid();
	FILE *f;

	if (access(SQUID, X_OK) != 0)
		return false;
	snprintf(squid_dir, sizeof(squid_dir), "/tmp/muxd-squid-XXXXXX");
	if (!mkdtemp(squid_dir) || chmod(squid_dir, 0777) != 0)
		return false;
	snprintf(squid_name, sizeof(squid_name), "muxdtest%ld", (long)getpid());
	snprintf(conf, sizeof(conf), "%s/squid.conf", squid_dir);
	{
		uint16_t p;
		int fd = listen_on("127.0.0.1", 0, &p);

		if (fd < 0)
			return false;
		close(fd);
		squid_port = p;
	}
	f = fopen(conf, "w");
	if (!f)
		return false;
	fprintf(f,
	        "http_port 127.0.0.1:%u\n"
	        "acl SSL_ports port 1-65535\n"
	        "acl CONNECT method CONNECT\n"
	        "http_access allow CONNECT\n"
	        "http_access allow all\n"
	        "cache deny all\n"
	        "pid_filename %s/squid.pid\n"
	        "cache_log %s/cache.log\n"
	        "access_log %s/access.log\n"
	        "coredump_dir %s\n"
	        "shutdown_lifetime 0 seconds\n"
	        "pinger_enable off\n"
	        "cache_effective_user nobody\n",
	        squid_port, squid_dir, squid_dir, squid_dir, squid_dir);
	if (fclose(f) != 0)
		return false;
	snprintf(port_s, sizeof(port_s), "%u", squid_port);
	squid_pid = fork();
	if (squid_pid < 0)
		return false;
	if (squid_pid == 0) {
		int null = open("/dev/null", O_RDWR);

		child_init(parent);
		dup2(null, 1);
		dup2(null, 2);
		execl(SQUID, SQUID, "-N", "-n", squid_name, "-f", conf, (char *)NULL);
		_exit(127);
	}
	if (!wait_port(squid_port, 15000)) {
		stop_child(&squid_pid);
		return false;
	}
	return true;
}

/* Stops squid and removes its files (and its shared memory segments). */
static void squid_stop(void)
{
	char pattern[160];
	glob_t g;

	if (squid_pid > 0) {
		kill(squid_pid, SIGTERM);
		for (int i = 0; i < 300; i++) {
			if (waitpid(squid_pid, NULL, WNOHANG) == squid_pid) {
				squid_pid = 0;
				break;
			}
			usleep(10000);
		}
		stop_child(&squid_pid);
	}
	if (!squid_dir[0])
		return;
	snprintf(pattern, sizeof(pattern), "%s/*", squid_dir);
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
	rmdir(squid_dir);
	snprintf(pattern, sizeof(pattern), "/dev/shm/%s-*", squid_name);
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

/* ---- scripted proxies ---- */

enum after { AFTER_CLOSE, AFTER_ECHO, AFTER_WAIT_EOF };

struct script {
	const char *expect_req; /* the whole request head; NULL: not checked */
	const char *answer;     /* sent after the request head */
	size_t answer_len;      /* 0: strlen(answer) */
	size_t filler;          /* then this many bytes of header lines, no end */
	enum after after;
};

/* The child's exit status: 0 when all went as scripted, 2 on a wrong request. */
static void fake_serve(int fd, const struct script *s)
{
	static char head[8192];
	size_t n = 0;
	int status = 0;

	alarm(20);
	while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
		if (n == sizeof(head) - 1 || !read_exact(fd, head + n, 1))
			_exit(3);
		n++;
	}
	head[n] = '\0';
	if (s->expect_req && strcmp(head, s->expect_req) != 0) {
		fprintf(stderr, "fake proxy: unexpected request:\n%s", head);
		status = 2;
	}
	if (s->answer)
		write_all(fd, s->answer, s->answer_len ? s->answer_len : strlen(s->answer));
	for (size_t i = 0; i < s->filler; i += 16)
		if (!write_all(fd, "X-Filler: 1234\r\n", 16))
			break;
	if (s->after == AFTER_ECHO)
		echo_loop(fd);
	else if (s->after == AFTER_WAIT_EOF)
		while (read(fd, head, sizeof(head)) > 0)
			;
	close(fd);
	_exit(status);
}

/* Starts a scripted proxy for one connection; returns its port. */
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
	const char *auth;
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
	bool close_on_create;  /* ... right after h1_connect_new */
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
	ck_abort_msg("tcp on_read before the CONNECT layer");
}

static void tcp_on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct client *c = ctx;

	if (ev != TRANSPORT_CONNECTED) {
		on_event(ctx, ev, err, reason);
		return;
	}
	c->t =
	    h1_connect_new(&m, c->lower, c->proxy_name, c->host, c->port, c->auth, &client_cbs, c);
	ck_assert_ptr_nonnull(c->t);
	c->layer_made = true;
	ck_assert(!c->connected && !c->failed); /* nothing is reported from inside */
	ck_assert(!c->t->ops->is_alive(c->t));
	if (c->close_on_create) {
		transport_close(c->t);
		c->t = NULL;
	}
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

/* Opens a tunnel, sends msg, expects it echoed (no half-close: a proxy may
 * close both ways when one side half-closes). */
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

/* Expects the reason "proxy NAME" followed by what. */
static void expect_reason(struct client *c, const char *what)
{
	char want[600];

	snprintf(want, sizeof(want), "proxy %s%s", c->proxy_name, what);
	ck_assert_str_eq(c->reason, want);
}

/* ---- tests against squid ---- */

#define NEED_SQUID()                                                                               \
	do {                                                                                       \
		if (squid_pid <= 0) {                                                              \
			printf("connect: squid is not running; %s skipped\n", __func__);           \
			return;                                                                    \
		}                                                                                  \
	} while (0)

START_TEST(squid_echo_1mb)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};
	unsigned char *src = malloc(MB);
	unsigned x = 777;

	NEED_SQUID();
	ck_assert_ptr_nonnull(src);
	for (size_t i = 0; i < MB; i++) {
		x = x * 1103515245 + 12345;
		src[i] = (unsigned char)(x >> 16);
	}
	client_open(&c, squid_port);
	c.src = src;
	c.src_len = MB;
	c.expect = MB;
	run(&c, 15000);
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

START_TEST(squid_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port};

	NEED_SQUID();
	expect_echo(&c, squid_port, "by name");
}
END_TEST

START_TEST(squid_destination_refused)
{
	struct client c = {.host = "127.0.0.1", .port = free_port()};

	NEED_SQUID();
	expect_failure(&c, squid_port, ERR_CONNECT);
	printf("connect squid_destination_refused: %s\n", c.reason);
	expect_reason(&c, " answered 503 Service Unavailable");
}
END_TEST

/* ---- tests against scripted proxies ---- */

START_TEST(proxy_refused)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};

	expect_failure(&c, free_port(), ERR_CONNECT); /* reported by the tcp layer */
}
END_TEST

START_TEST(answer_407)
{
	struct script s = {.expect_req = "CONNECT example.com:443 HTTP/1.1\r\n"
	                                 "Host: example.com:443\r\n\r\n",
	                   .answer = "HTTP/1.1 407 Proxy Authentication Required\r\n"
	                             "Proxy-Authenticate: Basic realm=\"x\"\r\n"
	                             "Content-Length: 5\r\n\r\nnope.",
	                   .after = AFTER_CLOSE};
	struct client c = {.host = "example.com", .port = 443};

	expect_failure(&c, fake_start(&s), ERR_CONNECT);
	expect_reason(&c, " answered 407 Proxy Authentication Required");
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(answer_without_reason_phrase)
{
	struct script s = {.answer = "HTTP/1.1 403 \r\n\r\n", .after = AFTER_WAIT_EOF};
	struct client c = {.host = "example.com", .port = 443};

	expect_failure(&c, fake_start(&s), ERR_CONNECT);
	expect_reason(&c, " answered 403");
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

/* Proxy-Authorization is right, and the tunnel's first bytes come in the
 * same segment as the 200. */
START_TEST(auth_and_first_bytes)
{
	char req[256];
	struct script s = {.expect_req = req,
	                   .answer = "HTTP/1.1 200 Connection established\r\n\r\nFIRST",
	                   .after = AFTER_ECHO};
	struct client c = {.host = "127.0.0.1", .port = echo_port, .auth = "user:pass"};

	snprintf(req, sizeof(req),
	         "CONNECT 127.0.0.1:%u HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
	         "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
	         echo_port, echo_port);
	client_open(&c, fake_start(&s));
	c.expect = 5;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "FIRST", 5) == 0);
	/* then an echo with a half-close */
	evbuffer_drain(c.got, 5);
	c.src = (const unsigned char *)"again";
	c.src_len = 5;
	c.shutdown_after_send = true;
	c.expect = 0;
	pump(&c);
	run(&c, 5000);
	ck_assert(c.eof);
	ck_assert(!c.t->ops->is_alive(c.t));
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "again", 5) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(auth_encodings)
{
	static const char *const cases[][2] = {
	    {"Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="},
	    {"u:p", "dTpw"},
	    {"us:p", "dXM6cA=="},
	    {"use:p", "dXNlOnA="},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char req[256];
		struct script s = {.expect_req = req,
		                   .answer = "HTTP/1.0 200 OK\r\n\r\n",
		                   .after = AFTER_WAIT_EOF};
		struct client c = {.host = "h.example", .port = 80, .auth = cases[i][0]};

		snprintf(req, sizeof(req),
		         "CONNECT h.example:80 HTTP/1.1\r\nHost: h.example:80\r\n"
		         "Proxy-Authorization: Basic %s\r\n\r\n",
		         cases[i][1]);
		client_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert_msg(!c.failed, "failed: %s", c.reason);
		ck_assert(c.connected);
		client_done(&c);
		ck_assert_int_eq(fake_status(), 0);
	}
}
END_TEST

START_TEST(ipv6_literal_and_interim)
{
	struct script s = {.expect_req = "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
	                   .answer = "HTTP/1.1 100 Continue\r\n\r\n"
	                             "HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nhi",
	                   .after = AFTER_WAIT_EOF};
	struct client c = {.host = "::1", .port = 8443};

	client_open(&c, fake_start(&s));
	c.expect = 2;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 2);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "hi", 2) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(malformed_answers)
{
	static const char *const answers[] = {
	    "SSH-2.0-OpenSSH_9.2\r\n",                /* not HTTP at all */
	    "HTTP/1.1 200 OK\nX: y\n\n",              /* bare LF */
	    "HTTP/1.1 2000 OK\r\n\r\n",               /* bad status code */
	    "HTTP/2.0 200 OK\r\n\r\n",                /* wrong version */
	    "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", /* bad field name */
	    "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",  /* obs-fold */
	};

	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		struct script s = {.answer = answers[i], .after = AFTER_WAIT_EOF};
		struct client c = {.host = "example.com", .port = 443};

		expect_failure(&c, fake_start(&s), ERR_CONNECT);
		ck_assert_int_eq(fake_status(), 0);
		expect_reason(&c, " sent a malformed answer");
	}
}
END_TEST

START_TEST(oversized_head)
{
	struct script s = {
	    .answer = "HTTP/1.1 200 OK\r\n", .filler = 100 * 1024, .after = AFTER_WAIT_EOF};
	struct client c = {.host = "example.com", .port = 443};

	expect_failure(&c, fake_start(&s), ERR_CONNECT);
	expect_reason(&c, " sent a malformed answer");
	fake_status();
}
END_TEST

START_TEST(proxy_closes_early)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\nX: y\r\n", .after = AFTER_CLOSE};
	struct client c = {.host = "example.com", .port = 443};

	expect_failure(&c, fake_start(&s), ERR_CONNECT);
	expect_reason(&c, " closed the connection during the handshake");
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(invalid_host)
{
	struct client c = {.host = "evil\r\nX-Injected: 1", .port = 443};
	uint16_t port;
	int lfd = listen_on("127.0.0.1", 0, &port);

	ck_assert_int_ge(lfd, 0);
	expect_failure(&c, port, ERR_CONNECT);
	expect_reason(&c, ": invalid destination host name");
	close(lfd);
}
END_TEST

/* Reading paused on CONNECTED: the bytes after the 200 wait, then come. */
START_TEST(pause_on_connect)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nFIRST", .after = AFTER_WAIT_EOF};
	struct client c = {.host = "example.com", .port = 443, .pause_on_connect = true};

	client_open(&c, fake_start(&s));
	c.expect = 5;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	ck_assert(memcmp(evbuffer_pullup(c.got, -1), "FIRST", 5) == 0);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

/* A 200 and EOF in one go: CONNECTED, the bytes, then EOF. */
START_TEST(answer_then_eof)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nbye", .after = AFTER_CLOSE};
	struct client c = {.host = "example.com", .port = 443};

	client_open(&c, fake_start(&s));
	c.expect = 1000;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected && c.eof);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 3);
	client_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(close_inside_callbacks)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nhi", .after = AFTER_WAIT_EOF};

	{
		struct client c = {.host = "example.com", .port = 443, .close_on_connect = true};

		client_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert(c.connected && !c.failed && !c.timed_out);
		client_done(&c);
		ck_assert_int_eq(fake_status(), 0);
	}
	{
		struct client c = {.host = "example.com", .port = 443, .close_on_read = true};

		client_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert(c.connected && !c.failed && !c.timed_out);
		ck_assert_uint_eq(evbuffer_get_length(c.got), 2);
		client_done(&c);
		ck_assert_int_eq(fake_status(), 0);
	}
	{
		struct client c = {.host = "example.com", .port = 443, .close_on_create = true};

		client_open(&c, fake_start(&s));
		run(&c, 300);
		ck_assert(c.timed_out && !c.connected && !c.failed);
		client_done(&c);
		stop_child(&proxy_pid);
	}
}
END_TEST

static Suite *connect_suite(void)
{
	Suite *s = suite_create("connect");
	TCase *t = tcase_create("connect");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_set_timeout(t, 30);
	tcase_add_test(t, squid_echo_1mb);
	tcase_add_test(t, squid_localhost);
	tcase_add_test(t, squid_destination_refused);
	tcase_add_test(t, proxy_refused);
	tcase_add_test(t, answer_407);
	tcase_add_test(t, answer_without_reason_phrase);
	tcase_add_test(t, auth_and_first_bytes);
	tcase_add_test(t, auth_encodings);
	tcase_add_test(t, ipv6_literal_and_interim);
	tcase_add_test(t, malformed_answers);
	tcase_add_test(t, oversized_head);
	tcase_add_test(t, proxy_closes_early);
	tcase_add_test(t, invalid_host);
	tcase_add_test(t, pause_on_connect);
	tcase_add_test(t, answer_then_eof);
	tcase_add_test(t, close_inside_callbacks);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	signal(SIGPIPE, SIG_IGN);
	echo_server_start();
	if (!squid_start())
		printf("connect: squid could not be started; squid tests are skipped\n");
	sr = srunner_create(connect_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	squid_stop();
	stop_child(&echo_pid);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
