/*
 * Unit tests for src/transport/tls_server.c: the TLS server layer over a tcp
 * layer on one end of a socketpair, with leaves from a local CA in a fresh
 * temp state dir, against a blocking GnuTLS client in a forked child that
 * verifies the chain (state_dir/ca.pem) and the name, and reports through its
 * exit status. The parent runs its loop until the child has exited.
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"
#include "log.h"
#include "muxd.h"
#include "tls/ca.h"
#include "transport/tls.h"
#include "transport/transport.h"

#define SLACK (16 * 1024 + 1024) /* a record beyond a buffer limit */
#define HELLO_PART 40            /* bytes of a ClientHello sent before a pause */

/* ---- the client: a forked child, blocking GnuTLS ---- */

enum cli_mode {
	CLI_ECHO,       /* handshake, echo a short message, close_notify, expect close_notify */
	CLI_ECHO_1MB,   /* the same with 1 MB, sending and receiving concurrently */
	CLI_FAIL,       /* the handshake must fail */
	CLI_ANY,        /* handshake, then read until the end; any outcome is fine */
	CLI_GARBAGE,    /* send an HTTP request instead of a ClientHello */
	CLI_HALF_HELLO, /* send part of the ClientHello, then close */
	CLI_HELLO_EXIT, /* send the whole ClientHello, then close */
};

/* Exit statuses of the child. */
enum {
	CLI_EXIT_OK = 0,
	CLI_EXIT_SETUP = 2,
	CLI_EXIT_HANDSHAKE = 3, /* (the message says which error, e.g. a verification failure) */
	CLI_EXIT_ALPN = 4,
	CLI_EXIT_DATA = 5,
	CLI_EXIT_RESUME = 6,
	CLI_EXIT_IO = 7,
	CLI_EXIT_UNEXPECTED = 8, /* a handshake that should have failed succeeded */
};

struct cli_opts {
	enum cli_mode mode;
	const char *sni;       /* NULL: none */
	const char *verify;    /* the name to verify the leaf for */
	const char *priority;  /* NULL: NORMAL */
	const char *alpn;      /* offered, comma-separated; NULL: none */
	const char *want_alpn; /* NULL: no check; "": none selected */
	bool resume;           /* a second connection must resume the first one's session */
	bool split_hello;      /* pause after HELLO_PART bytes of the ClientHello */
};

static char state_dir[64];
static char ca_pem[128];
static const struct cli_opts *cli; /* in the child */
static int cli_fd;
static bool first_push;

static void cli_exit(int code, const char *what, int r)
{
	if (code != CLI_EXIT_OK)
		fprintf(stderr, "client: %s: %s\n", what, r ? gnutls_strerror(r) : "");
	_exit(code);
}

static ssize_t cli_push(gnutls_transport_ptr_t p, const void *data, size_t len)
{
	(void)p;
	if (first_push) {
		first_push = false;
		if (cli->mode == CLI_HALF_HELLO) {
			if (write(cli_fd, data, HELLO_PART) != HELLO_PART)
				_exit(CLI_EXIT_IO);
			_exit(CLI_EXIT_OK);
		}
		if (cli->mode == CLI_HELLO_EXIT) {
			if (write(cli_fd, data, len) != (ssize_t)len)
				_exit(CLI_EXIT_IO);
			_exit(CLI_EXIT_OK);
		}
		if (cli->split_hello && len > HELLO_PART) {
			if (write(cli_fd, data, HELLO_PART) != HELLO_PART)
				_exit(CLI_EXIT_IO);
			usleep(200 * 1000);
			return HELLO_PART;
		}
	}
	return write(cli_fd, data, len);
}

static ssize_t cli_pull(gnutls_transport_ptr_t p, void *data, size_t len)
{
	(void)p;
	return read(cli_fd, data, len);
}

static void send_all(gnutls_session_t s, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = gnutls_record_send(s, p, n);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r < 0)
			cli_exit(CLI_EXIT_IO, "send", (int)r);
		p += r;
		n -= (size_t)r;
	}
}

/* Reads until close_notify; returns how much arrived (into buf up to cap). */
static size_t recv_all(gnutls_session_t s, unsigned char *buf, size_t cap)
{
	unsigned char tmp[16384];
	size_t got = 0;

	for (;;) {
		ssize_t r = gnutls_record_recv(s, tmp, sizeof(tmp));
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r == 0)
			return got;
		if (r < 0)
			cli_exit(CLI_EXIT_IO, "recv", (int)r);
		if (got + (size_t)r > cap)
			cli_exit(CLI_EXIT_DATA, "too much data", 0);
		memcpy(buf + got, tmp, (size_t)r);
		got += (size_t)r;
	}
}

static unsigned char *pattern(size_t n)
{
	unsigned char *p = pattern_new(n, 4242);

	if (!p)
		_exit(CLI_EXIT_SETUP);
	return p;
}

struct sender {
	gnutls_session_t s;
	const unsigned char *src;
};

static void *sender_main(void *arg)
{
	struct sender *sn = arg;

	for (size_t off = 0; off < MB; off += 10000)
		send_all(sn->s, sn->src + off, MB - off < 10000 ? MB - off : 10000);
	gnutls_bye(sn->s, GNUTLS_SHUT_WR);
	return NULL;
}

static int set_alpn(gnutls_session_t s, const char *list)
{
	gnutls_datum_t protos[4];
	unsigned n = 0;
	char *copy = strdup(list), *save = NULL;

	for (char *p = strtok_r(copy, ",", &save); p && n < 4; p = strtok_r(NULL, ",", &save)) {
		protos[n].data = (unsigned char *)p;
		protos[n++].size = (unsigned)strlen(p);
	}
	return gnutls_alpn_set_protocols(s, protos, n, 0); /* copies; copy leaks in the child */
}

/* One connection over fd; session data in/out for resumption. */
static void cli_conn(int fd, gnutls_certificate_credentials_t cred, gnutls_datum_t *data,
                     bool must_resume)
{
	gnutls_session_t s;
	gnutls_datum_t proto;
	int r;

	cli_fd = fd;
	first_push = true;
	if (cli->mode == CLI_GARBAGE) {
		static const char req[] = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
		char buf[256];
		if (write(fd, req, sizeof(req) - 1) != sizeof(req) - 1)
			_exit(CLI_EXIT_IO);
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		return;
	}
	if (gnutls_init(&s, GNUTLS_CLIENT) < 0 ||
	    gnutls_priority_set_direct(s, cli->priority ? cli->priority : "NORMAL", NULL) < 0 ||
	    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred) < 0)
		cli_exit(CLI_EXIT_SETUP, "session", 0);
	if (cli->sni && gnutls_server_name_set(s, GNUTLS_NAME_DNS, cli->sni, strlen(cli->sni)) < 0)
		cli_exit(CLI_EXIT_SETUP, "sni", 0);
	if (cli->alpn && set_alpn(s, cli->alpn) < 0)
		cli_exit(CLI_EXIT_SETUP, "alpn", 0);
	gnutls_session_set_verify_cert(s, cli->verify, 0);
	if (data->size)
		gnutls_session_set_data(s, data->data, data->size);
	gnutls_transport_set_push_function(s, cli_push);
	gnutls_transport_set_pull_function(s, cli_pull);
	do {
		r = gnutls_handshake(s);
	} while (r < 0 && !gnutls_error_is_fatal(r));
	if (cli->mode == CLI_FAIL) {
		if (r >= 0)
			cli_exit(CLI_EXIT_UNEXPECTED, "handshake succeeded", 0);
		return;
	}
	if (cli->mode == CLI_ANY) {
		unsigned char buf[256];
		if (r >= 0)
			while (gnutls_record_recv(s, buf, sizeof(buf)) > 0)
				;
		return;
	}
	if (r < 0)
		cli_exit(CLI_EXIT_HANDSHAKE, "handshake", r);
	if (cli->want_alpn && !*cli->want_alpn) {
		if (gnutls_alpn_get_selected_protocol(s, &proto) == 0)
			cli_exit(CLI_EXIT_ALPN, "an ALPN protocol selected", 0);
	} else if (cli->want_alpn) {
		if (gnutls_alpn_get_selected_protocol(s, &proto) < 0)
			cli_exit(CLI_EXIT_ALPN, "no ALPN protocol selected", 0);
		if (proto.size != strlen(cli->want_alpn) ||
		    memcmp(proto.data, cli->want_alpn, proto.size) != 0)
			cli_exit(CLI_EXIT_ALPN, "another ALPN protocol selected", 0);
	}
	if (!!gnutls_session_is_resumed(s) != must_resume)
		cli_exit(CLI_EXIT_RESUME, must_resume ? "not resumed" : "resumed", 0);
	if (cli->mode == CLI_ECHO_1MB) {
		unsigned char *src = pattern(MB), *got = malloc(MB);
		struct sender sn = {s, src};
		pthread_t th;
		if (!got || pthread_create(&th, NULL, sender_main, &sn) != 0)
			_exit(CLI_EXIT_SETUP);
		if (recv_all(s, got, MB) != MB || memcmp(got, src, MB) != 0)
			cli_exit(CLI_EXIT_DATA, "echo differs", 0);
		pthread_join(th, NULL);
		free(src);
		free(got);
	} else {
		static const unsigned char msg[] = "hello through the interception layer";
		unsigned char got[256];
		send_all(s, msg, sizeof(msg));
		/* the echo also brings the TLS 1.3 ticket in */
		size_t n = 0;
		while (n < sizeof(msg)) {
			ssize_t k = gnutls_record_recv(s, got + n, sizeof(got) - n);
			if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
				continue;
			if (k <= 0)
				cli_exit(CLI_EXIT_IO, "recv echo", (int)k);
			n += (size_t)k;
		}
		if (memcmp(got, msg, sizeof(msg)) != 0)
			cli_exit(CLI_EXIT_DATA, "echo differs", 0);
		if (data->size == 0 && gnutls_session_get_data2(s, data) < 0)
			cli_exit(CLI_EXIT_RESUME, "no session data", 0);
		gnutls_bye(s, GNUTLS_SHUT_WR);
		if (recv_all(s, got, sizeof(got)) != 0)
			cli_exit(CLI_EXIT_DATA, "data after the echo", 0);
	}
	gnutls_deinit(s);
}

static void cli_main(const struct cli_opts *o, int fd1, int fd2)
{
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t data = {NULL, 0};

	alarm(20);
	cli = o;
	if (gnutls_certificate_allocate_credentials(&cred) < 0 ||
	    gnutls_certificate_set_x509_trust_file(cred, ca_pem, GNUTLS_X509_FMT_PEM) != 1)
		cli_exit(CLI_EXIT_SETUP, "trust file", 0);
	cli_conn(fd1, cred, &data, false);
	close(fd1);
	if (o->resume) {
		cli_conn(fd2, cred, &data, true);
		close(fd2);
	}
	_exit(CLI_EXIT_OK);
}

/* ---- the server side (this process) ---- */

static struct local_ca *ca;
static struct event *sigchld_ev;
static pid_t child;
static int child_status;
static bool child_done, timed_out;

struct conn {
	struct transport *t, *lower;
	size_t pre_want; /* before the TLS layer: wait for this much ClientHello */
	bool connected, eof, failed, shut, alive_at_connect;
	bool close_on_connect;
	enum muxd_err err;
	char reason[512];
	char sni[256];
	size_t echoed;
	struct peaks max;
};

/* The application: echo, bounded by the output buffer; half-close after EOF. */
static void echo_move(struct conn *c)
{
	struct evbuffer *in = transport_input(c->t), *out = transport_output(c->t);
	size_t used = evbuffer_get_length(out);
	int n;

	peaks_track(&c->max, c->t, c->lower);
	if (used < TRANSPORT_BUF) {
		n = evbuffer_remove_buffer(in, out, TRANSPORT_BUF - used);
		if (n > 0)
			c->echoed += (size_t)n;
	}
	peaks_track(&c->max, c->t, c->lower);
	if (c->eof && evbuffer_get_length(in) == 0 && !c->shut) {
		c->shut = true;
		c->t->ops->shutdown(c->t);
	}
}

static void on_read(void *ctx)
{
	struct conn *c = ctx;

	if (!c->t) { /* before the TLS layer: only collect the ClientHello */
		if (evbuffer_get_length(transport_input(c->lower)) >= c->pre_want)
			event_base_loopbreak(m.base);
		return;
	}
	echo_move(c);
}

static void on_drain(void *ctx)
{
	struct conn *c = ctx;

	if (c->t)
		echo_move(c);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct conn *c = ctx;

	if (!c->t) { /* before the TLS layer */
		c->failed = true;
		event_base_loopbreak(m.base);
		return;
	}
	switch (ev) {
	case TRANSPORT_CONNECTED:
		ck_assert(!c->connected);
		c->connected = true;
		c->alive_at_connect = c->t->ops->is_alive(c->t);
		snprintf(c->sni, sizeof(c->sni), "%s", tls_server_sni(c->t));
		if (c->close_on_connect) {
			transport_close(c->t);
			c->t = NULL;
		}
		break;
	case TRANSPORT_EOF:
		ck_assert(!c->eof);
		c->eof = true;
		echo_move(c);
		break;
	case TRANSPORT_ERROR:
		ck_assert(!c->failed);
		c->failed = true;
		c->err = err;
		snprintf(c->reason, sizeof(c->reason), "%s", reason ? reason : "");
		transport_close(c->t); /* inside the callback */
		c->t = NULL;
		break;
	}
	if (child_done)
		event_base_loopbreak(m.base);
}

static const struct transport_cbs cbs = {on_read, on_drain, on_event};

static void sigchld_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (!child_done && waitpid(child, &child_status, WNOHANG) == child) {
		child_done = true;
		event_base_loopbreak(m.base);
	}
}

static void run_loop(int ms)
{
	timed_out = loop_run(ms);
}

/* Run until the child exits; returns its exit status. */
static int run_until_child_exits(void)
{
	run_loop(10000);
	if (!child_done) {
		kill(child, SIGKILL);
		ck_assert_int_eq(waitpid(child, &child_status, 0), child);
		child_done = true;
		ck_abort_msg("the client did not finish");
	}
	ck_assert(WIFEXITED(child_status));
	return WEXITSTATUS(child_status);
}

static void setup(void)
{
	char err[256] = "";

	muxd_setup(HM_CFG);
	ck_assert(tmpdir_new(state_dir, sizeof(state_dir), "tlss"));
	ck_assert_int_eq(rmdir(state_dir), 0); /* the CA creates it (0700) */
	snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", state_dir);
	ca = local_ca_open(state_dir, 16, err, sizeof(err));
	ck_assert_msg(ca != NULL, "local_ca_open: %s", err);
	sigchld_ev = evsignal_new(m.base, SIGCHLD, sigchld_cb, NULL);
	ck_assert_int_eq(evsignal_add(sigchld_ev, NULL), 0);
	child = 0;
	child_done = false;
}

static void teardown(void)
{
	event_base_loop(m.base, EVLOOP_NONBLOCK);
	event_free(sigchld_ev);
	local_ca_free(ca);
	ca = NULL;
	muxd_teardown();
	tmpdir_remove(state_dir);
}

/*
 * Start the child on n (1 or 2) connections; each gets a tcp layer and, unless
 * pre_want is set, a TLS server layer at once.
 */
static void start(const struct cli_opts *o, struct conn *conns, int n,
                  const struct tls_server_params *p)
{
	int sv[2][2] = {{-1, -1}, {-1, -1}};

	for (int i = 0; i < n; i++)
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i]), 0);
	child_done = false;
	child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		for (int i = 0; i < n; i++)
			close(sv[i][0]);
		cli_main(o, sv[0][1], n > 1 ? sv[1][1] : -1);
	}
	for (int i = 0; i < n; i++) {
		close(sv[i][1]);
		evutil_make_socket_nonblocking(sv[i][0]); /* tcp_accepted wants it so */
		conns[i].lower = tcp_accepted(TENV, sv[i][0], &cbs, &conns[i]);
		ck_assert_ptr_nonnull(conns[i].lower);
		if (conns[i].pre_want)
			continue;
		conns[i].t = tls_server_new(TENV, conns[i].lower, p, &cbs, &conns[i]);
		ck_assert_ptr_nonnull(conns[i].t);
		ck_assert(!conns[i].t->ops->is_alive(conns[i].t));
	}
}

/* The child may exit before its last bytes (an alert, EOF) are processed here. */
static void wait_failed(struct conn *c)
{
	if (!c->failed)
		run_loop(5000); /* breaks at the failure: the child is gone */
}

static void conn_close(struct conn *c)
{
	if (c->t)
		transport_close(c->t);
	c->t = NULL;
}

static const struct tls_server_params params_default = {NULL, "127.0.0.1", "http/1.1"};

static struct tls_server_params params(void)
{
	struct tls_server_params p = params_default;

	p.ca = ca;
	return p;
}

/* One short echo connection; the child's status must be CLI_EXIT_OK. */
static void expect_echo(const struct cli_opts *o, const struct tls_server_params *p, struct conn *c)
{
	start(o, c, 1, p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(c->connected && c->alive_at_connect);
	ck_assert(c->eof && c->shut);
	ck_assert(!c->t->ops->is_alive(c->t));
	conn_close(c);
}

/* ---- tests ---- */

START_TEST(sni_echo_1mb)
{
	struct cli_opts o = {
	    CLI_ECHO_1MB, "api.example.com", "api.example.com", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected && c.alive_at_connect);
	ck_assert_str_eq(c.sni, "api.example.com");
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1);
	ck_assert(c.eof && c.shut);
	ck_assert_uint_eq(c.echoed, MB);
	ck_assert_uint_le(c.max.in, TRANSPORT_BUF + SLACK);
	ck_assert_uint_le(c.max.out, TRANSPORT_BUF);
	ck_assert_uint_le(c.max.lower_in, 2 * TRANSPORT_BUF);
	ck_assert_uint_le(c.max.lower_out, TRANSPORT_BUF + SLACK);
	ck_assert(!c.t->ops->is_alive(c.t));
	conn_close(&c);
}
END_TEST

START_TEST(sni_leaf_cached)
{
	struct cli_opts o = {
	    CLI_ECHO, "www.example.org", "www.example.org", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();

	for (int i = 0; i < 2; i++) {
		struct conn c = {0};
		expect_echo(&o, &p, &c);
		ck_assert_str_eq(c.sni, "www.example.org");
	}
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1); /* the second one came from the cache */
}
END_TEST

START_TEST(no_sni_default_host)
{
	struct cli_opts o = {CLI_ECHO, NULL, "127.0.0.1", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	expect_echo(&o, &p, &c);
	ck_assert_str_eq(c.sni, "");
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1);
}
END_TEST

START_TEST(no_sni_no_default_host)
{
	struct cli_opts o = {CLI_FAIL, NULL, "127.0.0.1", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	p.default_host = NULL;
	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert(!c.connected && c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_str_eq(c.reason, "TLS handshake with the client failed: the client sent no "
	                           "server name and there is no default host");
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 0);
}
END_TEST

START_TEST(sni_wrong_name_rejected_by_client)
{
	/* the leaf names the SNI, so a client verifying another name refuses it */
	struct cli_opts o = {CLI_FAIL, "a.example.com", "b.example.com", NULL, NULL, NULL, false,
	                     false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	wait_failed(&c);
	ck_assert(!c.connected && c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
}
END_TEST

/* The leaf names the CONNECT host (the default host), not another name the
 * client put in its SNI. */
START_TEST(sni_other_than_connect_host)
{
	struct cli_opts ok = {CLI_ECHO, "bank.example", "localhost", NULL,
	                      NULL,     NULL,           false,       false};
	struct cli_opts refused = {CLI_FAIL, "bank.example", "bank.example", NULL,
	                           NULL,     NULL,           false,          false};
	struct tls_server_params p = params();
	struct conn c = {0}, d = {0};

	p.default_host = "localhost";
	expect_echo(&ok, &p, &c);
	ck_assert_str_eq(c.sni, "bank.example");
	start(&refused, &d, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	wait_failed(&d);
	ck_assert(!d.connected && d.failed);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1); /* localhost, once */
}
END_TEST

/* A ClientHello made by hand around the extensions ext[0..elen) (NULL: no
 * extensions block at all), in records of at most record_max bytes. Returns
 * its length. */
static size_t hand_hello_ext(unsigned char *out, const unsigned char *ext, size_t elen,
                             size_t record_max)
{
	unsigned char body[1400];
	size_t n = 0, len = 0;

	body[n++] = 3, body[n++] = 3;       /* legacy_version */
	memset(body + n, 7, 32), n += 32;   /* random */
	body[n++] = 0;                      /* session id */
	body[n++] = 0, body[n++] = 2;       /* cipher suites */
	body[n++] = 0x13, body[n++] = 0x01; /* TLS_AES_128_GCM_SHA256 */
	body[n++] = 1, body[n++] = 0;       /* compression: null */
	if (ext) {
		ck_assert_uint_le(n + 2 + elen, sizeof(body));
		body[n++] = (unsigned char)(elen >> 8), body[n++] = (unsigned char)elen;
		memcpy(body + n, ext, elen), n += elen;
	}
	unsigned char msg[sizeof(body) + 4] = {1, 0, (unsigned char)(n >> 8), (unsigned char)n};
	memcpy(msg + 4, body, n);
	for (size_t off = 0; off < n + 4; off += record_max) {
		size_t frag = n + 4 - off < record_max ? n + 4 - off : record_max;
		out[len++] = 0x16, out[len++] = 3, out[len++] = 1;
		out[len++] = (unsigned char)(frag >> 8), out[len++] = (unsigned char)frag;
		memcpy(out + len, msg + off, frag), len += frag;
	}
	return len;
}

/* Appends a server_name extension for sni to ext at *n. */
static void ext_sni(unsigned char *ext, size_t *n, const char *sni)
{
	size_t sl = strlen(sni);

	ext[(*n)++] = 0, ext[(*n)++] = 0; /* server_name */
	ext[(*n)++] = (unsigned char)((sl + 5) >> 8), ext[(*n)++] = (unsigned char)(sl + 5);
	ext[(*n)++] = (unsigned char)((sl + 3) >> 8), ext[(*n)++] = (unsigned char)(sl + 3);
	ext[(*n)++] = 0; /* host_name */
	ext[(*n)++] = (unsigned char)(sl >> 8), ext[(*n)++] = (unsigned char)sl;
	memcpy(ext + *n, sni, sl), *n += sl;
}

/* Appends an ALPN extension offering the comma-separated protocols. */
static void ext_alpn(unsigned char *ext, size_t *n, const char *protos)
{
	size_t start = *n, list = 0;

	ext[(*n)++] = 0, ext[(*n)++] = 16; /* application_layer_protocol_negotiation */
	*n += 4;                           /* extension and list lengths, below */
	while (*protos) {
		size_t pl = strcspn(protos, ",");
		ext[(*n)++] = (unsigned char)pl;
		memcpy(ext + *n, protos, pl), *n += pl;
		list += 1 + pl;
		protos += pl + (protos[pl] == ',');
	}
	ext[start + 2] = (unsigned char)((list + 2) >> 8),
	            ext[start + 3] = (unsigned char)(list + 2);
	ext[start + 4] = (unsigned char)(list >> 8), ext[start + 5] = (unsigned char)list;
}

/* A ClientHello made by hand: an extension before server_name (when sni is
 * set), in records of at most record_max bytes. Returns its length. */
static size_t hand_hello(unsigned char *out, const char *sni, size_t record_max)
{
	unsigned char ext[600];
	size_t n = 0;

	if (!sni)
		return hand_hello_ext(out, NULL, 0, record_max);
	ext[n++] = 0, ext[n++] = 0x0a, ext[n++] = 0, ext[n++] = 0; /* empty groups */
	ext_sni(ext, &n, sni);
	return hand_hello_ext(out, ext, n, record_max);
}

START_TEST(client_hello_sni_parser)
{
	unsigned char b[2048];
	char name[256];
	size_t n;

	n = hand_hello(b, "foo_bar.internal", 1000);
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, sizeof(name)), TLS_HELLO_SNI);
	ck_assert_str_eq(name, "foo_bar.internal");
	ck_assert(!tls_server_name_acceptable(name));
	ck_assert(tls_server_name_acceptable("api-1.example.com"));
	ck_assert(!tls_server_name_acceptable(""));
	n = hand_hello(b, "split.example", 7); /* the message across many records */
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, sizeof(name)), TLS_HELLO_SNI);
	ck_assert_str_eq(name, "split.example");
	ck_assert_int_eq(tls_client_hello_sni(b, n - 1, name, sizeof(name)), TLS_HELLO_INCOMPLETE);
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, 5), TLS_HELLO_INVALID); /* no room */
	n = hand_hello(b, NULL, 1000);
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, sizeof(name)), TLS_HELLO_NO_SNI);
	n = hand_hello(b, "nul.example", 1000);
	b[n - 4] = '\0';
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, sizeof(name)), TLS_HELLO_INVALID);
	ck_assert_int_eq(tls_client_hello_sni((const unsigned char *)"GET / HTTP/1.1\r\n", 16, name,
	                                      sizeof(name)),
	                 TLS_HELLO_INVALID);
	n = hand_hello(b, "x.example", 1000);
	b[5] = 2; /* a ServerHello */
	ck_assert_int_eq(tls_client_hello_sni(b, n, name, sizeof(name)), TLS_HELLO_INVALID);
}
END_TEST

/* The offered ALPN protocols, read with the SNI, strictly. */
START_TEST(client_hello_alpn_parser)
{
	unsigned char b[2048], ext[1200];
	struct tls_hello_info info;
	char longlist[700] = "";
	size_t n, e;

	e = 0; /* ALPN before and after the SNI */
	ext_alpn(ext, &e, "h2,http/1.1");
	ext_sni(ext, &e, "api.example");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_SNI);
	ck_assert_str_eq(info.sni, "api.example");
	ck_assert(info.alpn && info.alpn_h2 && info.alpn_http11);
	ck_assert_str_eq(info.alpn_list, "h2,http/1.1");
	e = 0;
	ext_sni(ext, &e, "api.example");
	ext_alpn(ext, &e, "acme-tls/1");
	n = hand_hello_ext(b, ext, e, 9); /* across many records */
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_SNI);
	ck_assert(info.alpn && !info.alpn_h2 && !info.alpn_http11);
	ck_assert_str_eq(info.alpn_list, "acme-tls/1");
	ck_assert_int_eq(tls_client_hello_parse(b, n - 1, &info), TLS_HELLO_INCOMPLETE);
	e = 0; /* names that look alike are other protocols */
	ext_alpn(ext, &e, "h2c,http/1.10,HTTP/1.1,h3");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_NO_SNI);
	ck_assert(info.alpn && !info.alpn_h2 && !info.alpn_http11);
	ck_assert_str_eq(info.sni, "");
	e = 0;
	ext_alpn(ext, &e, "grpc-exp,http/1.1");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_NO_SNI);
	ck_assert(info.alpn && !info.alpn_h2 && info.alpn_http11);
	n = hand_hello(b, "plain.example", 1000); /* no ALPN at all */
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_SNI);
	ck_assert(!info.alpn && !info.alpn_h2 && !info.alpn_http11);
	ck_assert_str_eq(info.alpn_list, "");
	e = 0; /* bytes a log line must not carry */
	ext_alpn(ext, &e, "a b");
	ext[e - 2] = '\n';
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_NO_SNI);
	ck_assert_str_eq(info.alpn_list, "a?b");
	for (int i = 0; i < 60; i++) /* a long list: cut short, h2 still seen at its end */
		strcat(longlist, "proto-x,");
	strcat(longlist, "h2");
	e = 0;
	ext_alpn(ext, &e, longlist);
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_NO_SNI);
	ck_assert(info.alpn_h2);
	ck_assert_uint_lt(strlen(info.alpn_list), sizeof(info.alpn_list));
	ck_assert_str_eq(info.alpn_list + strlen(info.alpn_list) - 3, "...");

	/* malformed: an empty list, an empty name, a name past the list, a list
	 * length other than the extension's, a second ALPN or server_name */
	e = 0;
	ext[e++] = 0, ext[e++] = 16, ext[e++] = 0, ext[e++] = 2, ext[e++] = 0, ext[e++] = 0;
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext[e++] = 0, ext[e++] = 16, ext[e++] = 0, ext[e++] = 0;
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext_alpn(ext, &e, "h2,,x");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext_alpn(ext, &e, "h2");
	ext[6] = 3; /* "h2" said to be 3 bytes long */
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext_alpn(ext, &e, "h2");
	ext[5] = 2; /* the list shorter than the extension */
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext_alpn(ext, &e, "h2");
	ext_alpn(ext, &e, "http/1.1");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0;
	ext_sni(ext, &e, "one.example");
	ext_sni(ext, &e, "two.example");
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
	e = 0; /* an extension running past the end hides nothing after the SNI */
	ext_sni(ext, &e, "one.example");
	ext[e++] = 0, ext[e++] = 16, ext[e++] = 0, ext[e++] = 9, ext[e++] = 0;
	n = hand_hello_ext(b, ext, e, 1000);
	ck_assert_int_eq(tls_client_hello_parse(b, n, &info), TLS_HELLO_INVALID);
}
END_TEST

START_TEST(sni_invalid)
{
	struct cli_opts o = {CLI_FAIL, "a!b.example", "a!b.example", NULL,
	                     NULL,     NULL,          false,         false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert(!c.connected && c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
	/* GnuTLS itself refuses such a name before the certificate is chosen */
	ck_assert_msg(strncmp(c.reason, "TLS handshake with the client failed: ", 38) == 0, "%s",
	              c.reason);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 0);
}
END_TEST

static void resumption(const char *priority)
{
	struct cli_opts o = {
	    CLI_ECHO, "api.example.com", "api.example.com", priority, NULL, NULL, true, false};
	struct tls_server_params p = params();
	struct conn c[2] = {{0}, {0}};

	log_set_level(LOG_DEBUG);
	start(&o, c, 2, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK); /* the child checked both */
	for (int i = 0; i < 2; i++) {
		ck_assert_msg(!c[i].failed, "failed: %s", c[i].reason);
		ck_assert(c[i].connected && c[i].eof);
		ck_assert_str_eq(c[i].sni, "api.example.com");
		conn_close(&c[i]);
	}
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1);
	log_set_level(LOG_WARN);
}

START_TEST(resumption_tls13)
{
	resumption("NORMAL:-VERS-ALL:+VERS-TLS1.3");
}
END_TEST

START_TEST(resumption_tls12)
{
	resumption("NORMAL:-VERS-ALL:+VERS-TLS1.2");
}
END_TEST

START_TEST(alpn)
{
	struct {
		const char *server, *offer, *want;
	} cases[] = {
	    {"http/1.1", "h2,http/1.1", "http/1.1"},
	    {"h2,http/1.1", "http/1.1,h2", "h2"}, /* the server's preference wins */
	    {"http/1.1", "http/1.1", "http/1.1"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cli_opts o = {CLI_ECHO,
		                     "api.example.com",
		                     "api.example.com",
		                     NULL,
		                     cases[i].offer,
		                     cases[i].want,
		                     false,
		                     false};
		struct tls_server_params p = params();
		struct conn c = {0};

		p.alpn = cases[i].server;
		expect_echo(&o, &p, &c);
	}
}
END_TEST

START_TEST(alpn_no_overlap)
{
	/* nothing in common: the handshake goes on without ALPN */
	struct cli_opts o = {CLI_ECHO, "api.example.com", "api.example.com", NULL, "h2", "", false,
	                     false};
	struct tls_server_params p = params();
	struct conn c = {0};

	expect_echo(&o, &p, &c);
	/* a server without ALPN: nothing selected either */
	o.alpn = "h2,http/1.1";
	p.alpn = NULL;
	memset(&c, 0, sizeof(c));
	expect_echo(&o, &p, &c);
}
END_TEST

/* The ClientHello (whole, or its first bytes) is already in the tcp layer's
 * input when the TLS layer is created. */
static void preread(bool split)
{
	struct cli_opts o = {
	    CLI_ECHO, "api.example.com", "api.example.com", NULL, NULL, NULL, false, split};
	struct tls_server_params p = params();
	struct conn c = {0};
	struct evbuffer *in;
	unsigned char hdr[5];

	c.pre_want = split ? HELLO_PART : 5;
	start(&o, &c, 1, &p);
	run_loop(5000);
	ck_assert(!timed_out && !c.failed);
	in = transport_input(c.lower);
	if (!split) { /* wait for the whole record */
		ck_assert_int_eq(evbuffer_copyout(in, hdr, 5), 5);
		ck_assert_int_eq(hdr[0], 22); /* handshake */
		c.pre_want = 5 + ((size_t)hdr[3] << 8 | hdr[4]);
		while (evbuffer_get_length(in) < c.pre_want) {
			run_loop(5000);
			ck_assert(!timed_out && !c.failed);
		}
	}
	ck_assert_uint_ge(evbuffer_get_length(in), c.pre_want);
	if (split)
		ck_assert_uint_eq(evbuffer_get_length(in), HELLO_PART); /* the rest comes later */
	{ /* GnuTLS's own ClientHello, as the interception peek reads it */
		size_t len = evbuffer_get_length(in);
		const unsigned char *b = evbuffer_pullup(in, -1);
		char name[256];
		if (split) {
			ck_assert_int_eq(tls_client_hello_sni(b, len, name, sizeof(name)),
			                 TLS_HELLO_INCOMPLETE);
		} else {
			ck_assert_int_eq(tls_client_hello_sni(b, len, name, sizeof(name)),
			                 TLS_HELLO_SNI);
			ck_assert_str_eq(name, "api.example.com");
			for (size_t k = 0; k < len; k++)
				ck_assert_int_eq(tls_client_hello_sni(b, k, name, sizeof(name)),
				                 TLS_HELLO_INCOMPLETE);
		}
	}
	c.t = tls_server_new(TENV, c.lower, &p, &cbs, &c);
	ck_assert_ptr_nonnull(c.t);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(c.connected && c.eof);
	ck_assert_str_eq(c.sni, "api.example.com");
	conn_close(&c);
}

START_TEST(clienthello_preread_whole)
{
	preread(false);
}
END_TEST

START_TEST(clienthello_preread_part)
{
	preread(true);
}
END_TEST

START_TEST(garbage)
{
	struct cli_opts o = {CLI_GARBAGE, NULL, NULL, NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert(!c.connected && c.failed && !c.t);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_msg(strncmp(c.reason, "TLS handshake with the client failed: ", 38) == 0, "%s",
	              c.reason);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 0);
}
END_TEST

static void closed_mid_handshake(enum cli_mode mode)
{
	struct cli_opts o = {mode, "api.example.com", "api.example.com", NULL, NULL, NULL, false,
	                     false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	wait_failed(&c);
	ck_assert(!c.connected && c.failed && !c.t);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_str_eq(c.reason, "client closed during the TLS handshake");
}

START_TEST(closed_during_hello)
{
	closed_mid_handshake(CLI_HALF_HELLO);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 0);
}
END_TEST

START_TEST(closed_after_hello)
{
	/* the leaf was chosen; the layer must still drop its reference */
	closed_mid_handshake(CLI_HELLO_EXIT);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 1);
}
END_TEST

START_TEST(close_on_connect)
{
	struct cli_opts o = {CLI_ANY, "api.example.com", "api.example.com", NULL, NULL, NULL, false,
	                     false};
	struct tls_server_params p = params();
	struct conn c = {0};

	c.close_on_connect = true;
	start(&o, &c, 1, &p);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert(c.connected && !c.t);
	ck_assert(!c.eof && !c.failed);
	run_loop(50); /* nothing fires on the closed layer */
	ck_assert(!c.eof && !c.failed);
}
END_TEST

START_TEST(close_before_first_pass)
{
	struct cli_opts o = {
	    CLI_FAIL, "api.example.com", "api.example.com", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	start(&o, &c, 1, &p);
	conn_close(&c);
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	run_loop(50);
	ck_assert(!c.connected && !c.failed);
	ck_assert_uint_eq(m.metrics.tls_leaf_issued, 0);
}
END_TEST

START_TEST(no_ca)
{
	struct cli_opts o = {
	    CLI_FAIL, "api.example.com", "api.example.com", NULL, NULL, NULL, false, false};
	struct tls_server_params p = params();
	struct conn c = {0};

	p.ca = NULL;
	start(&o, &c, 1, &p);
	ck_assert(!c.failed); /* reported from the loop, not from inside tls_server_new */
	ck_assert_int_eq(run_until_child_exits(), CLI_EXIT_OK);
	ck_assert(c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_str_eq(c.reason, "cannot set up the TLS session: no local CA");
}
END_TEST

static Suite *tls_server_suite(void)
{
	Suite *s = suite_create("tls_server");
	TCase *t = tcase_create("tls_server");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_set_timeout(t, 30);
	tcase_add_test(t, sni_echo_1mb);
	tcase_add_test(t, sni_leaf_cached);
	tcase_add_test(t, no_sni_default_host);
	tcase_add_test(t, no_sni_no_default_host);
	tcase_add_test(t, sni_wrong_name_rejected_by_client);
	tcase_add_test(t, sni_invalid);
	tcase_add_test(t, sni_other_than_connect_host);
	tcase_add_test(t, client_hello_sni_parser);
	tcase_add_test(t, client_hello_alpn_parser);
	tcase_add_test(t, resumption_tls13);
	tcase_add_test(t, resumption_tls12);
	tcase_add_test(t, alpn);
	tcase_add_test(t, alpn_no_overlap);
	tcase_add_test(t, clienthello_preread_whole);
	tcase_add_test(t, clienthello_preread_part);
	tcase_add_test(t, garbage);
	tcase_add_test(t, closed_during_hello);
	tcase_add_test(t, closed_after_hello);
	tcase_add_test(t, close_on_connect);
	tcase_add_test(t, close_before_first_pass);
	tcase_add_test(t, no_ca);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	return run_suite(tls_server_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
