/*
 * Unit tests for src/transport/connect.c: the CONNECT layer over a tcp layer,
 * against a real squid (one child process for the whole run, a minimal
 * configuration in a temp dir) and against scripted fake proxies (forked
 * children) for answers squid never gives: 407, exact request checks,
 * bytes right after the 200, malformed and oversized heads. The destination
 * is an echo server (a forked child on 127.0.0.1 and ::1).
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "http1.h"
#include "muxd.h"
#include "transport/proxy_answer.h"
#include "transport/transport.h"

#ifndef SQUID /* -DSQUID=\"/nonexistent\" shows what happens without it */
#define SQUID "/usr/sbin/squid"
#endif

static pid_t echo_pid;
static uint16_t echo_port;
static pid_t squid_pid;
static uint16_t squid_port;
static char squid_dir[64], squid_name[32];
static const char *squid_error = "not started"; /* why squid_start failed */

/* ---- squid ---- */

/* Starts squid on a free port; returns false when it cannot run here. */
static bool squid_start(void)
{
	char conf[128];
	char *argv[] = {SQUID, "-N", "-n", squid_name, "-f", conf, NULL};
	FILE *f;

	squid_error = "not installed (scripts/install-deps installs it)";
	if (access(SQUID, X_OK) != 0)
		return false;
	squid_error = "cannot make its directory";
	if (!tmpdir_new(squid_dir, sizeof(squid_dir), "squid") || chmod(squid_dir, 0777) != 0)
		return false;
	snprintf(squid_name, sizeof(squid_name), "muxdtest%ld", (long)getpid());
	snprintf(conf, sizeof(conf), "%s/squid.conf", squid_dir);
	{
		uint16_t p;
		int fd = listen_on("127.0.0.1", 0, &p);

		squid_error = "no free port";
		if (fd < 0)
			return false;
		close(fd);
		squid_port = p;
	}
	squid_error = "cannot write its configuration";
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
	squid_error = "cannot start it";
	squid_pid = spawn_quiet(argv);
	if (squid_pid < 0)
		return false;
	if (!wait_port(squid_port, 15000)) {
		squid_error = "it did not listen within 15 s";
		stop_child(&squid_pid);
		return false;
	}
	squid_error = NULL;
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
	tmpdir_remove(squid_dir);
	snprintf(pattern, sizeof(pattern), "/dev/shm/%s-*", squid_name);
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

/* ---- scripted proxies ---- */

struct script {
	const char *expect_req; /* the whole request head; NULL: not checked */
	const char *answer;     /* sent after the request head */
	size_t answer_len;      /* 0: strlen(answer) */
	size_t filler;          /* then this many bytes of header lines, no end */
	enum after after;
};

/* The child's exit status: 0 when all went as scripted, 2 on a wrong request. */
static void fake_serve(int fd, const void *arg)
{
	const struct script *s = arg;
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
	serve_end(fd, s->after, status);
}

/* Starts a scripted proxy for one connection; returns its port. */
static uint16_t fake_start(const struct script *s)
{
	return fork_server(fake_serve, s, &proxy_pid);
}

/* ---- the client side ---- */

static struct transport *connect_layer(struct client *c, const struct transport_cbs *cbs)
{
	return h1_connect_layer_new(TENV, c->lower, c->proxy_name, c->host, c->port, c->auth, cbs,
	                            c);
}

static void setup(void)
{
	proxy_setup("CONNECT", connect_layer);
}

/* Expects the reason "proxy NAME" followed by what. */
static void expect_reason(struct client *c, const char *what)
{
	char want[600];

	snprintf(want, sizeof(want), "proxy %s%s", c->proxy_name, what);
	ck_assert_str_eq(c->reason, want);
}

/* ---- tests against squid ---- */

/* squid is in scripts/install-deps: a test that needs it fails when it is
 * missing, rather than passing without having run. */
#define NEED_SQUID()                                                                               \
	do {                                                                                       \
		if (squid_pid <= 0)                                                                \
			ck_abort_msg("%s needs squid (%s), which could not be started: %s",        \
			             __func__, SQUID, squid_error);                                \
	} while (0)

START_TEST(squid_echo_1mb)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};

	NEED_SQUID();
	proxy_expect_bulk_echo(&c, squid_port, 777, 15000);
}
END_TEST

START_TEST(squid_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port};

	NEED_SQUID();
	proxy_expect_echo(&c, squid_port, "by name");
}
END_TEST

START_TEST(squid_destination_refused)
{
	struct client c = {.host = "127.0.0.1", .port = free_port()};

	NEED_SQUID();
	proxy_expect_failure(&c, squid_port, ERR_CONNECT);
	printf("connect squid_destination_refused: %s\n", c.reason);
	expect_reason(&c, " answered 503 Service Unavailable");
}
END_TEST

/* ---- tests against scripted proxies ---- */

START_TEST(proxy_refused)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};

	proxy_expect_failure(&c, free_port(), ERR_CONNECT); /* reported by the tcp layer */
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

	proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
	/* DESIGN's words for the 502, with the parent's status line */
	expect_reason(&c, ": proxy authentication required (407 Proxy Authentication Required)");
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(answer_without_reason_phrase)
{
	struct script s = {.answer = "HTTP/1.1 403 \r\n\r\n", .after = AFTER_WAIT_EOF};
	struct client c = {.host = "example.com", .port = 443};

	proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
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
	proxy_expect_first(&c, fake_start(&s), "FIRST");
	/* then an echo with a half-close */
	proxy_expect_again(&c);
	ck_assert(!c.t->ops->is_alive(c.t));
	proxy_done(&c);
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
		proxy_open(&c, fake_start(&s));
		run(&c, 5000);
		ck_assert_msg(!c.failed, "failed: %s", c.reason);
		ck_assert(c.connected);
		proxy_done(&c);
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

	proxy_expect_first(&c, fake_start(&s), "hi");
	proxy_done(&c);
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

		proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
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

	proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
	expect_reason(&c, " sent a malformed answer");
	fake_status();
}
END_TEST

START_TEST(proxy_closes_early)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\nX: y\r\n", .after = AFTER_CLOSE};
	struct client c = {.host = "example.com", .port = 443};

	proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
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
	proxy_expect_failure(&c, port, ERR_CONNECT);
	expect_reason(&c, ": invalid destination host name");
	close(lfd);
}
END_TEST

/* Reading paused on CONNECTED: the bytes after the 200 wait, then come. */
START_TEST(pause_on_connect)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nFIRST", .after = AFTER_WAIT_EOF};
	struct client c = {.host = "example.com", .port = 443, .pause_on_connect = true};

	proxy_expect_first(&c, fake_start(&s), "FIRST");
	proxy_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

/* A 200 and EOF in one go: CONNECTED, the bytes, then EOF. */
START_TEST(answer_then_eof)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nbye", .after = AFTER_CLOSE};
	struct client c = {.host = "example.com", .port = 443};

	proxy_open(&c, fake_start(&s));
	c.expect = 1000;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected && c.eof);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 3);
	proxy_done(&c);
	ck_assert_int_eq(fake_status(), 0);
}
END_TEST

START_TEST(close_inside_callbacks)
{
	struct script s = {.answer = "HTTP/1.1 200 OK\r\n\r\nhi", .after = AFTER_WAIT_EOF};
	struct client c[3] = {{.host = "example.com", .port = 443},
	                      {.host = "example.com", .port = 443},
	                      {.host = "example.com", .port = 443}};

	proxy_close_inside_callbacks(c, fake_serve, &s);
}
END_TEST

/* The answers' parser alone (connect_parse_answer): verdicts, lengths and
 * reasons on whole and partial heads. */
START_TEST(parse_answer)
{
	static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\nFIRST";
	static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200";
	static const char auth[] = "HTTP/1.1 407 Proxy Authentication Required\r\n"
	                           "Content-Length: 3\r\n\r\nno.";
	struct proxy_answer_result r;
	char big[HTTP1_MAX_HEAD + 10];

	for (size_t n = 0; n < sizeof(ok) - 6; n++)
		ck_assert_int_eq(connect_parse_answer("P", ok, n, &r), PROXY_ANSWER_MORE);
	ck_assert_int_eq(connect_parse_answer("P", ok, sizeof(ok) - 1, &r), PROXY_ANSWER_OPEN);
	ck_assert_uint_eq(r.used, sizeof(ok) - 6);
	ck_assert_uint_eq(r.code, 200);
	ck_assert_str_eq(r.reason, "200 Connection established");

	ck_assert_int_eq(connect_parse_answer("P", interim, sizeof(interim) - 1, &r),
	                 PROXY_ANSWER_NEXT);
	ck_assert_uint_eq(r.used, 25);
	ck_assert_uint_eq(r.code, 100);

	ck_assert_int_eq(connect_parse_answer("P", auth, sizeof(auth) - 1, &r),
	                 PROXY_ANSWER_FAILED);
	ck_assert_str_eq(
	    r.reason, "proxy P: proxy authentication required (407 Proxy Authentication Required)");
	ck_assert_int_eq(connect_parse_answer("P", "HTTP/1.1 101 Switching\r\n\r\n", 27, &r),
	                 PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "proxy P answered 101 Switching");
	ck_assert_int_eq(connect_parse_answer("P", "SSH-2", 5, &r), PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "proxy P sent a malformed answer");
	ck_assert_uint_eq(r.code, 0);

	/* no head within HTTP1_MAX_HEAD bytes */
	memset(big, 'a', sizeof(big));
	memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
	ck_assert_int_eq(connect_parse_answer("P", big, HTTP1_MAX_HEAD - 1, &r), PROXY_ANSWER_MORE);
	ck_assert_int_eq(connect_parse_answer("P", big, sizeof(big), &r), PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "proxy P sent a malformed answer");
}
END_TEST

static Suite *connect_suite(void)
{
	Suite *s = suite_create("connect");
	TCase *t = tcase_create("connect");

	tcase_add_checked_fixture(t, setup, proxy_teardown);
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
	t = tcase_create("parse");
	tcase_add_test(t, parse_answer);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	int failed;

	signal(SIGPIPE, SIG_IGN);
	echo_pid = echo_server_start(&echo_port);
	if (!squid_start())
		printf("connect: squid could not be started (%s): the squid tests will fail\n",
		       squid_error);
	failed = run_suite(connect_suite());
	squid_stop();
	stop_child(&echo_pid);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
