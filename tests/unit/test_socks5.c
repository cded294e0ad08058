/*
 * Unit tests for src/transport/socks5.c: the SOCKS5 layer over a tcp layer,
 * against a real microsocks (a child process per test) and against scripted
 * fake SOCKS5 servers (forked children) for replies microsocks never sends.
 * The destination is an echo server (a forked child on 127.0.0.1 and ::1).
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "muxd.h"
#include "transport/proxy_answer.h"
#include "transport/transport.h"

#define MICROSOCKS "/usr/bin/microsocks"

static pid_t echo_pid;
static uint16_t echo_port;

/* ---- microsocks ---- */

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
	proxy_pid = spawn_quiet(argv);
	ck_assert_int_ge(proxy_pid, 0);
	ck_assert_msg(wait_port(port, 5000), "microsocks did not start");
	return port;
}

/* ---- scripted SOCKS5 servers ---- */

struct script {
	bool close_after_greeting;
	const unsigned char *expect_req; /* NULL: not checked */
	size_t expect_len;
	const unsigned char *reply; /* after the request */
	size_t reply_len;
	enum after after;
};

/* The child's exit status: 0 when all went as scripted, 2 on a wrong request. */
static void fake_serve(int fd, const void *arg)
{
	const struct script *s = arg;
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
	serve_end(fd, s->after, status);
}

/* Starts a scripted server for one connection; returns its port. */
static uint16_t fake_start(const struct script *s)
{
	return fork_server(fake_serve, s, &proxy_pid);
}

/* ---- the client side ---- */

static struct transport *socks5_layer(struct client *c, const struct transport_cbs *cbs)
{
	return socks5_connect(TENV, c->lower, c->proxy_name, c->host, c->port, c->remote_dns,
	                      c->user, c->pass, cbs, c);
}

static void setup(void)
{
	proxy_setup("SOCKS5", socks5_layer);
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

	proxy_expect_bulk_echo(&c, pp, 4242, 10000);
}
END_TEST

START_TEST(userpass_right)
{
	struct client c = {
	    .host = "127.0.0.1", .port = echo_port, .user = "alice", .pass = "s3cret"};
	uint16_t pp = microsocks_start("alice", "s3cret");

	proxy_expect_echo(&c, pp, "with credentials");
}
END_TEST

START_TEST(userpass_wrong)
{
	struct client c = {
	    .host = "127.0.0.1", .port = echo_port, .user = "alice", .pass = "wrong"};
	uint16_t pp = microsocks_start("alice", "s3cret");

	proxy_expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "authentication failed");
}
END_TEST

START_TEST(userpass_missing)
{
	struct client c = {.host = "127.0.0.1", .port = echo_port};
	uint16_t pp = microsocks_start("alice", "s3cret");

	proxy_expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "authentication required");
}
END_TEST

START_TEST(remote_dns_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port, .remote_dns = true};
	uint16_t pp = microsocks_start(NULL, NULL);

	proxy_expect_echo(&c, pp, "resolved by the proxy");
}
END_TEST

START_TEST(local_dns_localhost)
{
	struct client c = {.host = "localhost", .port = echo_port};
	uint16_t pp = microsocks_start(NULL, NULL);

	proxy_expect_echo(&c, pp, "resolved by muxd");
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
	proxy_expect_echo(&c, pp, "over IPv6");
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

	proxy_expect_failure(&c, pp, ERR_CONNECT);
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

	proxy_expect_failure(&c, free_port(), ERR_CONNECT); /* reported by the tcp layer */
}
END_TEST

START_TEST(dns_failure)
{
	struct client c = {.host = "nonexistent.invalid", .port = echo_port};
	uint16_t pp = microsocks_start(NULL, NULL);

	proxy_expect_failure(&c, pp, ERR_DNS);
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

	proxy_expect_failure(&c, pp, ERR_CONNECT);
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

		proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
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

	proxy_expect_first(&c, fake_start(&s), "FIRST");
	/* then an ordinary echo */
	proxy_expect_again(&c);
	proxy_done(&c);
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
	proxy_expect_first(&c, fake_start(&s), "FIRST");
	ck_assert_int_ge(c.reads, 1);
	proxy_done(&c);
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

		proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
		expect_reason(&c, cases[i].reason);
		ck_assert_int_eq(fake_status(), 0);
	}
	/* a truncated reply, then EOF */
	{
		static const unsigned char part[] = {5, 0, 0, 3, 200, 'x'};
		struct script s = {.reply = part, .reply_len = sizeof(part)};
		struct client c = {.host = "127.0.0.1", .port = echo_port};
		char want[128];

		proxy_expect_failure(&c, fake_start(&s), ERR_CONNECT);
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
	struct client c[3] = {{.host = "127.0.0.1", .port = 1},
	                      {.host = "127.0.0.1", .port = 1},
	                      {.host = "localhost", .port = 1}};

	proxy_close_inside_callbacks(c, fake_serve, &s);
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

	proxy_expect_first(&c, fake_start(&s), c.early);
	proxy_done(&c);
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
	proxy_expect_failure(&c, pp, ERR_CONNECT);
	expect_reason(&c, "user name or password longer than 255 bytes");
}
END_TEST

/* The answers' parser alone (socks5_parse_answer): verdicts, lengths and
 * reasons, phase by phase, on whole and partial answers. */
START_TEST(parse_answer)
{
	static const unsigned char v4[] = {5, 0, 0, 1, 10, 0, 0, 1, 0, 80, 'x'};
	static const unsigned char dom[] = {5, 0, 0, 3, 2, 'h', 'i', 1, 187};
	unsigned char v6[22] = {5, 0, 0, 4};
	struct proxy_answer_result r;

	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_METHOD, false, v4, 1, &r),
	                 PROXY_ANSWER_MORE);
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_METHOD, false, (const unsigned char *)"\5\0", 2, &r),
	    PROXY_ANSWER_NEXT);
	ck_assert(r.used == 2 && r.code == 0);
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_METHOD, true, (const unsigned char *)"\5\2", 2, &r),
	    PROXY_ANSWER_NEXT);
	ck_assert(r.used == 2 && r.code == 2);
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_METHOD, false, (const unsigned char *)"\5\2", 2, &r),
	    PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "selected an authentication method that was not offered");
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_METHOD, false, (const unsigned char *)"\5\377", 2, &r),
	    PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "authentication required");
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_AUTH, true, (const unsigned char *)"\1\1", 2, &r),
	    PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "authentication failed");
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_AUTH, true, (const unsigned char *)"\1\0", 2, &r),
	    PROXY_ANSWER_NEXT);

	for (size_t n = 0; n < 10; n++)
		ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, v4, n, &r),
		                 PROXY_ANSWER_MORE);
	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, v4, sizeof(v4), &r),
	                 PROXY_ANSWER_OPEN);
	ck_assert_uint_eq(r.used, 10); /* the 'x' is the tunnel's */
	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, v6, 21, &r),
	                 PROXY_ANSWER_MORE);
	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, v6, 22, &r),
	                 PROXY_ANSWER_OPEN);
	ck_assert_uint_eq(r.used, 22);
	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, dom, sizeof(dom), &r),
	                 PROXY_ANSWER_OPEN);
	ck_assert_uint_eq(r.used, 9);
	/* a failure code is final as soon as it is seen */
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_REPLY, false, (const unsigned char *)"\5\5", 2, &r),
	    PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "connection refused by destination host");
	ck_assert_int_eq(
	    socks5_parse_answer(SOCKS5_PHASE_REPLY, false, (const unsigned char *)"\5\200", 2, &r),
	    PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "unknown reply code 128");
	v6[3] = 3; /* a domain of length 0 */
	ck_assert_int_eq(socks5_parse_answer(SOCKS5_PHASE_REPLY, false, v6, 5, &r),
	                 PROXY_ANSWER_FAILED);
	ck_assert_str_eq(r.reason, "malformed reply");
}
END_TEST

static Suite *socks5_suite(void)
{
	Suite *s = suite_create("socks5");
	TCase *t = tcase_create("socks5");

	tcase_add_checked_fixture(t, setup, proxy_teardown);
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
	t = tcase_create("parse");
	tcase_add_test(t, parse_answer);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	int failed;

	signal(SIGPIPE, SIG_IGN);
	if (access(MICROSOCKS, X_OK) != 0) {
		fprintf(stderr, "%s is missing (apt-get install microsocks)\n", MICROSOCKS);
		return EXIT_FAILURE;
	}
	echo_pid = echo_server_start(&echo_port);
	failed = run_suite(socks5_suite());
	stop_child(&echo_pid);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
