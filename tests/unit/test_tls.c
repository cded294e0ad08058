/*
 * Unit tests for src/transport/tls.c: the TLS client layer over a tcp layer
 * on one end of a socketpair, against a blocking GnuTLS server in a forked
 * child. Certificates (two CAs, good, foreign and expired leaves) are made
 * with the GnuTLS API at start; the trusted CA is written to a temp dir.
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "log.h"
#include "muxd.h"
#include "transport/tls.h"
#include "transport/transport.h"

#define SLACK (16 * 1024 + 1024) /* a record beyond a buffer limit */

static char tmpdir[64];
static char ca_path[128];
static char empty_path[128];
static gnutls_x509_privkey_t ca1_key, ca2_key, leaf_key;
static gnutls_x509_crt_t ca1, ca2, leaf_good, leaf_foreign, leaf_expired;
static gnutls_datum_t ticket_key;
/* One anti-replay context for every server child: GnuTLS refuses early data
 * on tickets older than the context. */
static gnutls_anti_replay_t anti_replay;

/* ---- certificates ---- */

static void must(int r, const char *what)
{
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", what, gnutls_strerror(r));
		exit(EXIT_FAILURE);
	}
}

static gnutls_x509_privkey_t new_key(void)
{
	gnutls_x509_privkey_t k;

	must(gnutls_x509_privkey_init(&k), "privkey_init");
	must(gnutls_x509_privkey_generate(k, GNUTLS_PK_ECDSA,
	                                  GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
	     "privkey_generate");
	return k;
}

/* A certificate for key, valid [now+from, now+to], signed by issuer (NULL:
 * self-signed). Leaves name localhost and 127.0.0.1. */
static gnutls_x509_crt_t new_crt(const char *cn, gnutls_x509_privkey_t key,
                                 gnutls_x509_crt_t issuer, gnutls_x509_privkey_t issuer_key,
                                 bool ca, long from, long to)
{
	static unsigned char serial = 1;
	unsigned char id[64], ip[4] = {127, 0, 0, 1};
	size_t id_len = sizeof(id);
	time_t now = time(NULL);
	gnutls_x509_crt_t c;

	must(gnutls_x509_crt_init(&c), "crt_init");
	must(gnutls_x509_crt_set_version(c, 3), "set_version");
	serial++;
	must(gnutls_x509_crt_set_serial(c, &serial, 1), "set_serial");
	must(gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_COMMON_NAME, 0, cn, strlen(cn)),
	     "set_dn");
	must(gnutls_x509_crt_set_key(c, key), "set_key");
	must(gnutls_x509_crt_set_activation_time(c, now + from), "activation");
	must(gnutls_x509_crt_set_expiration_time(c, now + to), "expiration");
	must(gnutls_x509_crt_set_basic_constraints(c, ca, -1), "basic_constraints");
	if (ca) {
		must(gnutls_x509_crt_set_key_usage(c,
		                                   GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN),
		     "key_usage");
	} else {
		must(gnutls_x509_crt_set_key_usage(c, GNUTLS_KEY_DIGITAL_SIGNATURE), "key_usage");
		must(gnutls_x509_crt_set_key_purpose_oid(c, GNUTLS_KP_TLS_WWW_SERVER, 0),
		     "purpose");
		must(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, "localhost", 9,
		                                          GNUTLS_FSAN_APPEND),
		     "san dns");
		must(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_IPADDRESS, ip, sizeof(ip),
		                                          GNUTLS_FSAN_APPEND),
		     "san ip");
	}
	must(gnutls_x509_crt_get_key_id(c, 0, id, &id_len), "get_key_id");
	must(gnutls_x509_crt_set_subject_key_id(c, id, id_len), "subject_key_id");
	if (issuer) {
		id_len = sizeof(id);
		must(gnutls_x509_crt_get_subject_key_id(issuer, id, &id_len, NULL),
		     "issuer key id");
		must(gnutls_x509_crt_set_authority_key_id(c, id, id_len), "authority_key_id");
	}
	must(gnutls_x509_crt_sign2(c, issuer ? issuer : c, issuer ? issuer_key : key,
	                           GNUTLS_DIG_SHA256, 0),
	     "sign");
	return c;
}

static void write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "w");

	if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		perror(path);
		exit(EXIT_FAILURE);
	}
}

static void make_certs(void)
{
	gnutls_datum_t pem;

	if (!tmpdir_new(tmpdir, sizeof(tmpdir), "tls")) {
		perror("mkdtemp");
		exit(EXIT_FAILURE);
	}
	ca1_key = new_key();
	ca2_key = new_key();
	leaf_key = new_key();
	ca1 = new_crt("muxd test CA 1", ca1_key, NULL, NULL, true, -3600, 86400);
	ca2 = new_crt("muxd test CA 2", ca2_key, NULL, NULL, true, -3600, 86400);
	leaf_good = new_crt("localhost", leaf_key, ca1, ca1_key, false, -3600, 86400);
	leaf_foreign = new_crt("localhost", leaf_key, ca2, ca2_key, false, -3600, 86400);
	leaf_expired = new_crt("localhost", leaf_key, ca1, ca1_key, false, -7200, -3600);
	must(gnutls_x509_crt_export2(ca1, GNUTLS_X509_FMT_PEM, &pem), "export");
	snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", tmpdir);
	write_file(ca_path, pem.data, pem.size);
	gnutls_free(pem.data);
	snprintf(empty_path, sizeof(empty_path), "%s/empty.pem", tmpdir);
	write_file(empty_path, "not a certificate\n", 18);
	must(gnutls_session_ticket_key_generate(&ticket_key), "ticket key");
}

static void free_certs(void)
{
	tmpdir_remove(tmpdir);
	gnutls_x509_crt_deinit(ca1);
	gnutls_x509_crt_deinit(ca2);
	gnutls_x509_crt_deinit(leaf_good);
	gnutls_x509_crt_deinit(leaf_foreign);
	gnutls_x509_crt_deinit(leaf_expired);
	gnutls_x509_privkey_deinit(ca1_key);
	gnutls_x509_privkey_deinit(ca2_key);
	gnutls_x509_privkey_deinit(leaf_key);
	gnutls_free(ticket_key.data);
}

/* ---- the server: a forked child, blocking GnuTLS ---- */

enum srv_mode {
	SRV_ECHO,          /* echo until the client's close_notify, then close_notify */
	SRV_HELLO_BYE,     /* send "hello", close_notify, close */
	SRV_HELLO_ABRUPT,  /* send "hello", close without close_notify */
	SRV_HANDSHAKE_EOF, /* read the ClientHello, close */
	SRV_STALL          /* read the ClientHello, answer nothing for 2 s */
};

struct srv_opts {
	enum srv_mode mode;
	gnutls_x509_crt_t leaf; /* NULL: leaf_good */
	const char *priority;   /* NULL: NORMAL */
	bool alpn;              /* offers h2 and http/1.1 */
	bool early;             /* takes 0-RTT early data (and its tickets allow it); echoes it
	                         * first, after "[early]" */
	int h2_only;            /* with alpn: 1 offers h2 alone, LONG_FIRST LONG_PROTO first */
};

#define LONG_PROTO "x-a-protocol-id-of-30-bytes-xx" /* longer than tls.c keeps inline */
#define LONG_FIRST 2

static void send_all(gnutls_session_t s, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = gnutls_record_send(s, p, n);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r < 0)
			_exit(3);
		p += r;
		n -= (size_t)r;
	}
}

/* Anti-replay's memory of ClientHellos (GnuTLS takes early data only with
 * anti-replay on): every one is new, each child serves one connection. */
static int replay_add(void *ptr, time_t exp, const gnutls_datum_t *key, const gnutls_datum_t *data)
{
	(void)ptr;
	(void)exp;
	(void)key;
	(void)data;
	return 0;
}

static void serve(int fd, const struct srv_opts *o)
{
	gnutls_certificate_credentials_t cred;
	gnutls_x509_crt_t leaf = o->leaf ? o->leaf : leaf_good;
	gnutls_datum_t protos[3] = {{(unsigned char *)"h2", 2}, {(unsigned char *)"http/1.1", 8}};
	gnutls_datum_t long_protos[3] = {
	    {(unsigned char *)LONG_PROTO, sizeof(LONG_PROTO) - 1}, protos[0], protos[1]};
	gnutls_session_t s;
	static char buf[32768];
	int r;

	alarm(20);
	if (o->mode == SRV_HANDSHAKE_EOF || o->mode == SRV_STALL) {
		if (read(fd, buf, sizeof(buf)) <= 0)
			_exit(1);
		if (o->mode == SRV_STALL)
			sleep(2);
		close(fd);
		_exit(0);
	}
	if (gnutls_certificate_allocate_credentials(&cred) < 0 ||
	    gnutls_certificate_set_x509_key(cred, &leaf, 1, leaf_key) < 0 ||
	    gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NO_SIGNAL |
	                        (o->early ? GNUTLS_ENABLE_EARLY_DATA : 0)) < 0 ||
	    (o->early && gnutls_record_set_max_early_data_size(s, 16384) < 0) ||
	    gnutls_priority_set_direct(s, o->priority ? o->priority : "NORMAL", NULL) < 0 ||
	    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred) < 0 ||
	    gnutls_session_ticket_enable_server(s, &ticket_key) < 0)
		_exit(2);
	if (o->alpn && o->h2_only == LONG_FIRST)
		gnutls_alpn_set_protocols(s, long_protos, 3, GNUTLS_ALPN_SERVER_PRECEDENCE);
	else if (o->alpn)
		gnutls_alpn_set_protocols(s, protos, o->h2_only ? 1 : 2,
		                          GNUTLS_ALPN_SERVER_PRECEDENCE);
	if (o->early) {
		gnutls_anti_replay_set_add_function(anti_replay, replay_add);
		gnutls_anti_replay_enable(s, anti_replay);
	}
	gnutls_transport_set_int(s, fd);
	do {
		r = gnutls_handshake(s);
	} while (r < 0 && !gnutls_error_is_fatal(r));
	if (r < 0)
		_exit(1);
	if (o->early) {
		ssize_t n = gnutls_record_recv_early_data(s, buf, sizeof(buf));
		if (n > 0) {
			send_all(s, "[early]", 7);
			send_all(s, buf, (size_t)n);
		}
	}
	switch (o->mode) {
	case SRV_ECHO:
		for (;;) {
			ssize_t n = gnutls_record_recv(s, buf, sizeof(buf));
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
				continue;
			if (n <= 0)
				break;
			send_all(s, buf, (size_t)n);
		}
		gnutls_bye(s, GNUTLS_SHUT_WR);
		break;
	case SRV_HELLO_BYE:
		send_all(s, "hello", 5);
		gnutls_bye(s, GNUTLS_SHUT_WR);
		break;
	case SRV_HELLO_ABRUPT:
		send_all(s, "hello", 5);
		break;
	case SRV_HANDSHAKE_EOF:
	case SRV_STALL:
		break;
	}
	close(fd);
	_exit(0);
}

static pid_t server_start(const struct srv_opts *o, int *client_fd)
{
	int sv[2];
	pid_t pid;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(sv[0]);
		serve(sv[1], o);
	}
	close(sv[1]);
	evutil_make_socket_nonblocking(sv[0]); /* tcp_accepted wants it so */
	*client_fd = sv[0];
	return pid;
}

static void server_wait(pid_t pid)
{
	int status;

	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
}

/* ---- the client side ---- */

static bool mark_early; /* on CONNECTED before the handshake: what was sent is replay-safe */
static bool early_seen; /* the last CONNECTED came before the handshake (tls_early) */

static void drain_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	take_input(arg);
}

static void on_read(void *ctx)
{
	struct client *c = ctx;
	struct timeval ms = {0, 1000};

	track(c);
	if (c->close_on_read) {
		client_read_close(c);
		return;
	}
	if (c->slow) {
		/* let the input fill up; drain it all a little later */
		if (evbuffer_get_length(transport_input(c->t)) >= TRANSPORT_BUF &&
		    !evtimer_pending(c->drain_timer, NULL))
			evtimer_add(c->drain_timer, &ms);
		return;
	}
	take_input(c);
}

static void on_drain(void *ctx)
{
	pump(ctx);
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct client *c = ctx;

	switch (ev) {
	case TRANSPORT_CONNECTED:
		ck_assert(!c->connected);
		c->connected = true;
		if (c->close_on_connect) {
			client_close_layer(c);
			return;
		}
		if (c->pause_on_connect)
			c->t->ops->set_reading(c->t, false);
		early_seen = tls_early(c->t);
		if (c->src) {
			pump(c);
			if (mark_early && early_seen)
				tls_early_safe(c->t, evbuffer_get_length(transport_output(c->t)));
		} else if (!c->expect)
			event_base_loopbreak(m.base);
		break;
	case TRANSPORT_EOF:
		client_eof(c);
		break;
	case TRANSPORT_ERROR:
		client_error(c, err, reason);
		break;
	}
}

static const struct transport_cbs client_cbs = {on_read, on_drain, on_event};

static void setup(void)
{
	muxd_setup(HM_TLS);
}

static void client_open(struct client *c, const struct srv_opts *so,
                        const struct tls_client_params *p)
{
	int fd;

	if (!c->got) {
		c->got = evbuffer_new();
		c->drain_timer = evtimer_new(m.base, drain_timer_cb, c);
	}
	c->track_lower = true;
	c->pid = server_start(so, &fd);
	c->lower = tcp_accepted(TENV, fd, &client_cbs, c);
	ck_assert_ptr_nonnull(c->lower);
	c->t = tls_client_new(TENV, c->lower, p, &client_cbs, c);
	ck_assert_ptr_nonnull(c->t);
	ck_assert(!c->connected && !c->failed); /* nothing is reported from inside new */
	ck_assert(!c->t->ops->is_alive(c->t));
	ck_assert_str_eq(tls_alpn(c->t), "");
}

/* Close the layer, reap the server, reset the per-connection state. */
static void client_done(struct client *c)
{
	if (c->t)
		transport_close(c->t);
	c->t = c->lower = NULL;
	event_base_loop(m.base, EVLOOP_NONBLOCK); /* libevent closes the socket from the loop */
	server_wait(c->pid);
	c->connected = c->eof = c->failed = c->timed_out = false;
	c->err = ERR_NONE;
	c->reason[0] = '\0';
	evbuffer_drain(c->got, evbuffer_get_length(c->got));
}

static void client_free(struct client *c)
{
	if (c->drain_timer)
		event_free(c->drain_timer);
	if (c->got)
		evbuffer_free(c->got);
}

static const struct tls_client_params good = {"localhost", "http/1.1", NULL, true, NULL, false, 0};

static struct tls_client_params params(const char *sni, const char *ca_file, bool verify)
{
	struct tls_client_params p = good;

	p.sni = sni;
	p.ca_file = ca_file;
	p.verify = verify;
	return p;
}

/* Connect and expect a TLS failure with exactly this reason. */
static void expect_failure(const struct srv_opts *so, const struct tls_client_params *p,
                           const char *reason)
{
	struct client c = {0};

	client_open(&c, so, p);
	run(&c, 5000);
	ck_assert(!c.timed_out);
	ck_assert(!c.connected);
	ck_assert(c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_str_eq(c.reason, reason);
	client_done(&c);
	client_free(&c);
}

/* Connect, send msg, expect it echoed, shut down, expect EOF. */
static void expect_echo(struct client *c, const struct srv_opts *so,
                        const struct tls_client_params *p, const char *msg)
{
	client_open(c, so, p);
	c->src = (const unsigned char *)msg;
	c->src_len = strlen(msg);
	c->sent = 0;
	c->shutdown_after_send = true;
	run(c, 5000);
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(!c->timed_out);
	ck_assert(c->connected);
	ck_assert(c->eof);
	client_expect_got(c, msg, strlen(msg));
	ck_assert(!c->t->ops->is_alive(c->t));
}

/* ---- tests ---- */

static void echo_1mb(bool slow)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};
	unsigned char *src = pattern_new(MB, 12345);

	ck_assert_ptr_nonnull(src);
	client_open(&c, &so, &p);
	c.src = src;
	c.src_len = MB;
	c.shutdown_after_send = true;
	c.slow = slow;
	run(&c, 8000);
	ck_assert_msg(!c.failed, "failed: %s", c.reason);
	ck_assert(!c.timed_out);
	ck_assert(c.eof);
	ck_assert_uint_eq(c.sent, MB);
	client_expect_got(&c, src, MB);
	ck_assert_uint_le(c.max.in, TRANSPORT_BUF + SLACK);
	ck_assert_uint_le(c.max.out, TRANSPORT_BUF + 10000);
	ck_assert_uint_le(c.max.lower_in, 2 * TRANSPORT_BUF);
	ck_assert_uint_le(c.max.lower_out, TRANSPORT_BUF + SLACK);
	if (slow)
		ck_assert_uint_ge(c.max.in, TRANSPORT_BUF); /* decrypting did stop and resume */
	client_done(&c);
	client_free(&c);
	free(src);
}

START_TEST(echo_1mb_fast_reader)
{
	echo_1mb(false);
}
END_TEST

START_TEST(echo_1mb_slow_reader)
{
	echo_1mb(true);
}
END_TEST

START_TEST(echo_tls12)
{
	struct srv_opts so = {SRV_ECHO, NULL, "NORMAL:-VERS-ALL:+VERS-TLS1.2", false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	expect_echo(&c, &so, &p, "over TLS 1.2");
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(tls11_server_refused)
{
	struct srv_opts so = {SRV_ECHO, NULL, "NORMAL:-VERS-ALL:+VERS-TLS1.1", false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	client_open(&c, &so, &p);
	run(&c, 5000);
	ck_assert(c.failed);
	ck_assert_int_eq(c.err, ERR_TLS);
	ck_assert_msg(strncmp(c.reason, "handshake failed: ", 18) == 0 ||
	                  strcmp(c.reason, "connection closed during the TLS handshake") == 0,
	              "reason: %s", c.reason);
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(unknown_authority)
{
	struct srv_opts so = {SRV_ECHO, leaf_foreign, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);

	expect_failure(&so, &p, "certificate signed by unknown authority");
}
END_TEST

START_TEST(unknown_authority_system_store)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", NULL, true);

	expect_failure(&so, &p, "certificate signed by unknown authority");
}
END_TEST

START_TEST(name_mismatch)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("example.com", ca_path, true);

	expect_failure(&so, &p, "certificate name does not match example.com");
}
END_TEST

START_TEST(ip_literal)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("127.0.0.1", ca_path, true);
	struct client c = {0};

	expect_echo(&c, &so, &p, "by address");
	client_done(&c);
	client_free(&c);
	p.sni = "127.0.0.2";
	expect_failure(&so, &p, "certificate name does not match 127.0.0.2");
	p.sni = "::1";
	expect_failure(&so, &p, "certificate name does not match ::1");
}
END_TEST

START_TEST(expired)
{
	struct srv_opts so = {SRV_ECHO, leaf_expired, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);

	expect_failure(&so, &p, "certificate has expired");
}
END_TEST

START_TEST(no_verify)
{
	struct srv_opts so = {SRV_ECHO, leaf_foreign, NULL, false, false, false};
	struct tls_client_params p = params("example.com", ca_path, false);
	struct client c = {0};

	expect_echo(&c, &so, &p, "unverified");
	client_done(&c);
	so.leaf = leaf_expired;
	p.ca_file = "/nonexistent/ca.pem"; /* not consulted */
	expect_echo(&c, &so, &p, "expired but unverified");
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(missing_ca_file)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", "/nonexistent/ca.pem", true);
	char reason[256];

	expect_failure(&so, &p,
	               "cannot load CA file /nonexistent/ca.pem: No such file or directory");
	p.ca_file = empty_path;
	snprintf(reason, sizeof(reason), "cannot load CA file %s: no certificates found",
	         empty_path);
	expect_failure(&so, &p, reason);
	/* a good file still works afterwards, and twice (cached credentials) */
	p.ca_file = ca_path;
	for (int i = 0; i < 2; i++) {
		struct client c = {0};
		expect_echo(&c, &so, &p, "after");
		client_done(&c);
		client_free(&c);
	}
}
END_TEST

START_TEST(alpn)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, true, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct {
		const char *offer, *want;
	} cases[] = {
	    {"h2,http/1.1", "h2"}, {"http/1.1", "http/1.1"}, {NULL, ""}, {"http/1.1,h2", "h2"}};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct client c = {0};
		p.alpn = cases[i].offer;
		client_open(&c, &so, &p);
		run(&c, 5000);
		ck_assert_msg(c.connected, "%s", c.reason);
		ck_assert_str_eq(tls_alpn(c.t), cases[i].want);
		ck_assert(c.t->ops->is_alive(c.t));
		client_done(&c);
		client_free(&c);
	}
	/* a protocol id longer than the layer keeps inline */
	so.h2_only = LONG_FIRST;
	for (int i = 0; i < 2; i++) {
		struct client c = {0};
		p.alpn = i ? "h2," LONG_PROTO : "h2";
		client_open(&c, &so, &p);
		run(&c, 5000);
		ck_assert_msg(c.connected, "%s", c.reason);
		ck_assert_str_eq(tls_alpn(c.t), i ? LONG_PROTO : "h2");
		client_done(&c);
		client_free(&c);
	}
	so.h2_only = 0;
	/* a server without ALPN: nothing chosen */
	so.alpn = false;
	p.alpn = "h2,http/1.1";
	struct client c = {0};
	client_open(&c, &so, &p);
	run(&c, 5000);
	ck_assert(c.connected);
	ck_assert_str_eq(tls_alpn(c.t), "");
	client_done(&c);
	client_free(&c);
}
END_TEST

static void resumption(const char *server_priority)
{
	struct srv_opts so = {SRV_ECHO, NULL, server_priority, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	log_set_level(LOG_DEBUG);
	p.session_key = "https://localhost:443";
	expect_echo(&c, &so, &p, "first");
	ck_assert(!tls_resumed(c.t));
	client_done(&c);
	expect_echo(&c, &so, &p, "second");
	ck_assert(tls_resumed(c.t));
	client_done(&c);
	expect_echo(&c, &so, &p, "third"); /* the resumed connection stored a fresh ticket */
	ck_assert(tls_resumed(c.t));
	client_done(&c);
	p.session_key = "https://other:443";
	expect_echo(&c, &so, &p, "other key");
	ck_assert(!tls_resumed(c.t));
	client_done(&c);
	p.session_key = NULL;
	expect_echo(&c, &so, &p, "no key");
	ck_assert(!tls_resumed(c.t));
	client_done(&c);
	client_free(&c);
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

#define TLS13 "NORMAL:-VERS-ALL:+VERS-TLS1.3"

/* Connect (0-RTT allowed), send msg marked replay-safe, expect want back. */
static void early_echo(struct client *c, const struct srv_opts *so,
                       const struct tls_client_params *p, const char *msg, const char *want)
{
	mark_early = true;
	client_open(c, so, p);
	c->src = (const unsigned char *)msg;
	c->src_len = strlen(msg);
	c->sent = 0;
	c->shutdown_after_send = true;
	run(c, 5000);
	mark_early = false;
	ck_assert_msg(!c->failed, "failed: %s", c->reason);
	ck_assert(c->connected && c->eof);
	client_expect_got(c, want, strlen(want));
}

/* A first connection that leaves a ticket allowing early data. */
static struct tls_client_params early_params(struct client *c)
{
	struct srv_opts so = {SRV_ECHO, NULL, TLS13, true, true, false};
	struct tls_client_params p = params("localhost", ca_path, true);

	p.session_key = "https://localhost:443 early";
	p.early_data = true;
	early_echo(c, &so, &p, "first", "first");
	ck_assert(!early_seen); /* nothing to resume yet: a normal handshake */
	ck_assert(!tls_resumed(c->t));
	client_done(c);
	return p;
}

START_TEST(early_data_accepted)
{
	struct srv_opts so = {SRV_ECHO, NULL, TLS13, true, true, false};
	struct client c = {0};
	struct tls_client_params p = early_params(&c);

	early_echo(&c, &so, &p, "GET / HTTP/1.1\r\n\r\n", "[early]GET / HTTP/1.1\r\n\r\n");
	ck_assert(early_seen);
	ck_assert(tls_resumed(c.t));
	ck_assert_str_eq(tls_alpn(c.t), "http/1.1");
	client_done(&c);
	/* not allowed by the caller: a resumed handshake, nothing early */
	p.early_data = false;
	early_echo(&c, &so, &p, "late", "late");
	ck_assert(!early_seen && tls_resumed(c.t));
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(early_data_not_marked_waits_for_the_handshake)
{
	struct srv_opts so = {SRV_ECHO, NULL, TLS13, true, true, false};
	struct client c = {0};
	struct tls_client_params p = early_params(&c);

	/* CONNECTED before the handshake, but the bytes are not marked safe */
	client_open(&c, &so, &p);
	c.src = (const unsigned char *)"POST";
	c.src_len = 4;
	c.sent = 0;
	c.shutdown_after_send = true;
	run(&c, 5000);
	ck_assert_msg(!c.failed, "%s", c.reason);
	ck_assert(early_seen);
	ck_assert(c.eof);
	client_expect_got(&c, "POST", 4);
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(early_data_refused_is_sent_again)
{
	struct srv_opts refuses = {SRV_ECHO, NULL, TLS13, true, false, false};
	struct client c = {0};
	struct tls_client_params p = early_params(&c);

	/* the same ticket key, but this server takes no early data */
	early_echo(&c, &refuses, &p, "GET /again", "GET /again");
	ck_assert(early_seen);
	ck_assert(tls_resumed(c.t));
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(early_alpn_change_fails_unprocessed)
{
	struct srv_opts h2_only = {SRV_ECHO, NULL, TLS13, true, true, true};
	struct srv_opts so = {SRV_ECHO, NULL, TLS13, true, true, false};
	struct client c = {0};
	struct tls_client_params p = early_params(&c);

	/* the server no longer speaks http/1.1, which the user was told */
	mark_early = true;
	client_open(&c, &h2_only, &p);
	c.src = (const unsigned char *)"GET";
	c.src_len = 3;
	c.sent = 0;
	run(&c, 5000);
	mark_early = false;
	ck_assert(early_seen && c.failed);
	ck_assert_int_eq(c.err, ERR_UNPROCESSED); /* the exchange may send it again */
	ck_assert_msg(strstr(c.reason, "protocol http/1.1 changed to none") != NULL, "%s",
	              c.reason);
	client_done(&c);
	/* that session is gone: the next connection is a full handshake */
	early_echo(&c, &so, &p, "again", "again");
	ck_assert(!early_seen && !tls_resumed(c.t));
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(early_handshake_has_a_deadline)
{
	struct srv_opts stall = {SRV_STALL, NULL, TLS13, true, true, false};
	struct client c = {0};
	struct tls_client_params p = early_params(&c);

	p.early_timeout_ms = 200;
	client_open(&c, &stall, &p);
	c.src = (const unsigned char *)"GET";
	c.src_len = 3;
	c.sent = 0;
	mark_early = true;
	run(&c, 3000);
	mark_early = false;
	ck_assert(early_seen && c.connected);
	ck_assert(!c.timed_out);
	ck_assert(c.failed);
	ck_assert_int_eq(c.err, ERR_CONNECT_TIMEOUT);
	ck_assert_msg(strstr(c.reason, "timed out after 200 ms") != NULL, "%s", c.reason);
	client_done(&c);
	client_free(&c);
}
END_TEST

static void peer_close(enum srv_mode mode)
{
	struct srv_opts so = {mode, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	client_open(&c, &so, &p);
	c.expect = 0;
	run(&c, 5000); /* connected (hello and EOF may come in the same pass) */
	ck_assert(c.connected);
	if (!c.eof)
		run(&c, 5000); /* hello, then EOF */
	ck_assert(!c.timed_out);
	ck_assert_msg(!c.failed, "%s", c.reason);
	ck_assert(c.eof);
	client_expect_got(&c, "hello", 5);
	ck_assert(!c.t->ops->is_alive(c.t));
	client_done(&c);
	client_free(&c);
}

START_TEST(peer_close_notify)
{
	peer_close(SRV_HELLO_BYE);
}
END_TEST

START_TEST(peer_close_abrupt)
{
	peer_close(SRV_HELLO_ABRUPT);
}
END_TEST

START_TEST(pause_reading)
{
	struct srv_opts so = {SRV_HELLO_BYE, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	c.pause_on_connect = true;
	client_open(&c, &so, &p);
	run(&c, 5000);
	ck_assert(c.connected);
	run(&c, 100); /* hello and close_notify wait below */
	ck_assert(c.timed_out);
	ck_assert(!c.eof && !c.failed);
	ck_assert_uint_eq(evbuffer_get_length(transport_input(c.t)), 0);
	c.timed_out = false;
	c.t->ops->set_reading(c.t, true);
	run(&c, 5000);
	ck_assert(!c.timed_out);
	ck_assert(c.eof);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(closed_during_handshake)
{
	struct srv_opts so = {SRV_HANDSHAKE_EOF, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);

	expect_failure(&so, &p, "connection closed during the TLS handshake");
}
END_TEST

START_TEST(close_inside_callbacks)
{
	struct srv_opts so = {SRV_HELLO_BYE, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", ca_path, true);
	struct client c = {0};

	c.close_on_connect = true;
	client_open(&c, &so, &p);
	run(&c, 5000);
	ck_assert(c.connected && !c.t);
	run(&c, 50); /* nothing fires on the closed layer */
	client_done(&c);

	c.close_on_connect = false;
	c.close_on_read = true;
	c.expect = 5;
	client_open(&c, &so, &p);
	run(&c, 5000);
	ck_assert(!c.t);
	ck_assert_uint_eq(evbuffer_get_length(c.got), 5);
	run(&c, 50);
	ck_assert(!c.eof && !c.failed);
	client_done(&c);
	client_free(&c);
}
END_TEST

START_TEST(close_before_connect)
{
	struct srv_opts so = {SRV_ECHO, NULL, NULL, false, false, false};
	struct tls_client_params p = params("localhost", "/nonexistent/ca.pem", true);
	struct client c = {0};

	/* closed before the first pass ran: neither the handshake nor the
	 * pending CA failure may run afterwards */
	client_open(&c, &so, &p);
	transport_close(c.t);
	c.t = NULL;
	run(&c, 50);
	ck_assert(!c.connected && !c.failed);
	client_done(&c);
	p.ca_file = ca_path;
	client_open(&c, &so, &p);
	transport_close(c.t);
	c.t = NULL;
	run(&c, 50);
	ck_assert(!c.connected && !c.failed);
	client_done(&c);
	client_free(&c);
}
END_TEST

static Suite *tls_suite(void)
{
	Suite *s = suite_create("tls");
	TCase *t = tcase_create("tls");

	tcase_add_checked_fixture(t, setup, muxd_teardown);
	tcase_set_timeout(t, 15);
	tcase_add_test(t, echo_1mb_fast_reader);
	tcase_add_test(t, echo_1mb_slow_reader);
	tcase_add_test(t, echo_tls12);
	tcase_add_test(t, tls11_server_refused);
	tcase_add_test(t, unknown_authority);
	tcase_add_test(t, unknown_authority_system_store);
	tcase_add_test(t, name_mismatch);
	tcase_add_test(t, ip_literal);
	tcase_add_test(t, expired);
	tcase_add_test(t, no_verify);
	tcase_add_test(t, missing_ca_file);
	tcase_add_test(t, alpn);
	tcase_add_test(t, resumption_tls13);
	tcase_add_test(t, resumption_tls12);
	tcase_add_test(t, peer_close_notify);
	tcase_add_test(t, peer_close_abrupt);
	tcase_add_test(t, pause_reading);
	tcase_add_test(t, closed_during_handshake);
	tcase_add_test(t, close_inside_callbacks);
	tcase_add_test(t, close_before_connect);
	tcase_add_test(t, early_data_accepted);
	tcase_add_test(t, early_data_not_marked_waits_for_the_handshake);
	tcase_add_test(t, early_data_refused_is_sent_again);
	tcase_add_test(t, early_handshake_has_a_deadline);
	tcase_add_test(t, early_alpn_change_fails_unprocessed);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	int failed;

	signal(SIGPIPE, SIG_IGN);
	make_certs();
	if (gnutls_anti_replay_init(&anti_replay) < 0)
		return EXIT_FAILURE;
	failed = run_suite(tls_suite());
	free_certs();
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
