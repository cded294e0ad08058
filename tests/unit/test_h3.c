/*
 * Unit tests for src/upstream/h3.c and the QUIC transport under it
 * (src/transport/quic*.c): HTTP/3 upstream connections against
 * ngtcp2's example server gtlsserver (Debian package ngtcp2-server), started
 * as a child on a free UDP port of 127.0.0.1 with a certificate of a test CA
 * made by certtool. It serves a docroot:
 *   /small  1 KiB     /big  10 MiB (a pattern)
 * The same event loop drives h3_conn_new with a small owner and streams.
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dns.h"
#include "log.h"
#include "muxd.h"
#include "transport/tls.h"
#include "transport/tls_sessions.h"
#include "upstream/upstream.h"

#define MB (1024 * 1024)
#define SMALL_LEN 1024
#define BIG_LEN (10 * MB)
#define WINDOW (64 * 1024)
#define SLACK 1500 /* one packet beyond the window */

static char tmpdir[64];
static char ca_path[128], other_ca_path[128];
static unsigned char *small_data, *big_data;
static pid_t srv_pid = -1;
static uint16_t srv_port, srv_port_save;

static unsigned char pattern_byte(size_t i)
{
	return (unsigned char)((i * 7 + i / 251) % 251);
}

/* ---- fixture: certificates, docroot, gtlsserver ---- */

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd) != 0) {
		fprintf(stderr, "failed: %s\n", cmd);
		exit(EXIT_FAILURE);
	}
}

static void write_file(const char *name, const unsigned char *data, size_t len)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/docs/%s", tmpdir, name);
	f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	fclose(f);
}

static uint16_t free_udp_port(void)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

/* Whether a UDP socket is bound to 127.0.0.1:port (from /proc/net/udp). */
static bool udp_bound(uint16_t port)
{
	char line[512], want[32];
	bool found = false;
	FILE *f = fopen("/proc/net/udp", "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), "0100007F:%04X", port);
	while (fgets(line, sizeof(line), f))
		found = found || strstr(line, want) != NULL;
	fclose(f);
	return found;
}

/* gtlsserver on a free port; extra: one more option or NULL. */
static pid_t spawn_server(uint16_t *port_out, const char *extra)
{
	char key[160], crt[160], docs[160];
	uint16_t port = free_udp_port();
	pid_t pid;

	snprintf(key, sizeof(key), "%s/srv.key", tmpdir);
	snprintf(crt, sizeof(crt), "%s/srv.pem", tmpdir);
	snprintf(docs, sizeof(docs), "%s/docs", tmpdir);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char ps[8];
		snprintf(ps, sizeof(ps), "%u", port);
		if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr))
			_exit(127);
		if (extra)
			execl("/usr/sbin/gtlsserver", "gtlsserver", extra, "127.0.0.1", ps, key,
			      crt, "-d", docs, "-q", (char *)NULL);
		else
			execl("/usr/sbin/gtlsserver", "gtlsserver", "127.0.0.1", ps, key, crt, "-d",
			      docs, "-q", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 100 && !udp_bound(port); i++)
		usleep(20000);
	usleep(50000);
	*port_out = port;
	return pid;
}

static void start_server(void)
{
	srv_pid = spawn_server(&srv_port, NULL);
}

static void stop_server(void)
{
	if (srv_pid > 0) {
		kill(srv_pid, SIGTERM);
		waitpid(srv_pid, NULL, 0);
		srv_pid = -1;
	}
}

static void global_setup(void)
{
	const char *tmpl[] = {
	    "cn = \"Test CA\"\nca\ncert_signing_key\nexpiration_days = 30\n",
	    "cn = \"Other CA\"\nca\ncert_signing_key\nexpiration_days = 30\n",
	    ("cn = \"localhost\"\ndns_name = \"localhost\"\nip_address = \"127.0.0.1\"\n"
	     "tls_www_server\nexpiration_days = 30\n"),
	};
	const char *names[] = {"ca.tmpl", "other.tmpl", "srv.tmpl"};

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_h3.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	for (int i = 0; i < 3; i++) {
		char path[160];
		FILE *f;
		snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
		f = fopen(path, "w");
		ck_assert_ptr_nonnull(f);
		fputs(tmpl[i], f);
		fclose(f);
	}
	sh("(cd %s && certtool --generate-privkey --key-type=ecdsa --outfile ca.key && "
	   "certtool --generate-self-signed --load-privkey ca.key --template ca.tmpl "
	   "--outfile ca.pem && "
	   "certtool --generate-privkey --key-type=ecdsa --outfile other.key && "
	   "certtool --generate-self-signed --load-privkey other.key --template other.tmpl "
	   "--outfile other.pem && "
	   "certtool --generate-privkey --key-type=ecdsa --outfile srv.key && "
	   "certtool --generate-certificate --load-privkey srv.key --load-ca-certificate ca.pem "
	   "--load-ca-privkey ca.key --template srv.tmpl --outfile srv.pem && mkdir docs) "
	   ">/dev/null 2>&1",
	   tmpdir);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", tmpdir);
	snprintf(other_ca_path, sizeof(other_ca_path), "%s/other.pem", tmpdir);
	small_data = malloc(SMALL_LEN);
	big_data = malloc(BIG_LEN);
	for (size_t i = 0; i < SMALL_LEN; i++)
		small_data[i] = (unsigned char)('a' + i % 26);
	for (size_t i = 0; i < BIG_LEN; i++)
		big_data[i] = pattern_byte(i);
	write_file("small", small_data, SMALL_LEN);
	write_file("big", big_data, BIG_LEN);
	start_server();
}

static void global_teardown(void)
{
	stop_server();
	sh("rm -rf %s", tmpdir);
	free(small_data);
	free(big_data);
}

/* ---- the daemon side ---- */

static struct muxd m;
static struct upstream_env env; /* from m */
static struct upstream_conn *conn;

static struct owner {
	int available;
	int closed;
	enum evict_reason why;
	int failed;
	enum muxd_err err;
	char reason[512];
} own;

static void on_available(void *o, struct upstream_conn *c)
{
	(void)o;
	ck_assert_ptr_eq(c, conn);
	own.available++;
}

static void on_closed(void *o, struct upstream_conn *c, enum evict_reason why)
{
	(void)o;
	ck_assert_ptr_eq(c, conn);
	own.closed++;
	own.why = why;
	conn = NULL;
}

static void on_failed(void *o, struct upstream_conn *c, enum muxd_err err, const char *reason)
{
	(void)o;
	ck_assert_ptr_eq(c, conn);
	own.failed++;
	own.err = err;
	snprintf(own.reason, sizeof(own.reason), "%s", reason);
	conn = NULL;
}

static const struct upstream_owner_cbs owner_cbs = {on_available, on_closed, on_failed};

static void setup(void)
{
	memset(&m, 0, sizeof(m));
	memset(&own, 0, sizeof(own));
	m.base = event_base_new();
	m.cfg = config_defaults();
	m.dns = dns_new(m.base);
	m.tls = tls_client_ctx_new();
	env = (struct upstream_env){
	    {m.base, m.dns, m.tls, NULL, NULL, NULL}, &m.window_granted, NULL};
	ck_assert_ptr_nonnull(m.base);
	ck_assert_ptr_nonnull(m.dns);
	ck_assert_ptr_nonnull(m.tls);
	if (getenv("H3_DEBUG"))
		log_set_level(LOG_DEBUG);
	conn = NULL;
}

static void teardown(void)
{
	if (conn)
		conn->ops->close(conn);
	conn = NULL;
	dns_free(m.dns);
	tls_client_ctx_free(m.tls);
	config_unref(m.cfg);
	event_base_free(m.base);
}

static bool timed_out;

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	timed_out = true;
}

/* Run the loop until cond() holds; false after ms milliseconds. */
static bool run_until(bool (*cond)(void), int ms)
{
	struct event *t = evtimer_new(m.base, on_deadline, NULL);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	timed_out = false;
	evtimer_add(t, &tv);
	while (!cond() && !timed_out)
		event_base_loop(m.base, EVLOOP_ONCE);
	event_free(t);
	return cond();
}

static void run_for(int ms)
{
	struct event *t = evtimer_new(m.base, on_deadline, NULL);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	timed_out = false;
	evtimer_add(t, &tv);
	while (!timed_out)
		event_base_loop(m.base, EVLOOP_ONCE);
	event_free(t);
}

static bool ready_or_failed(void)
{
	return own.available > 0 || own.failed > 0;
}

static bool failed(void)
{
	return own.failed > 0;
}

static bool use_early; /* the next connections and requests may use 0-RTT */

static void connect_to(const char *host, uint16_t port, const char *sni, const char *ca,
                       bool verify, const char *session_key)
{
	struct h3_params p = {
	    .host = host,
	    .port = port,
	    .sni = sni,
	    .authority = sni,
	    .ca_file = ca,
	    .verify = verify,
	    .session_key = session_key,
	    .early_data = use_early,
	};

	struct upstream_params prm;
	upstream_params_init(&prm, m.cfg);
	conn = h3_conn_new(&env, &prm, &p, &owner_cbs, &own);
	ck_assert_ptr_nonnull(conn);
	ck_assert_int_eq(conn->proto, PROTO_H3);
	ck_assert(conn->warming);
	ck_assert_uint_eq(conn->ops->free_slots(conn), 0);
}

static void connect_ok(const char *sni, const char *ca, bool verify, const char *session_key)
{
	connect_to("127.0.0.1", srv_port, sni, ca, verify, session_key);
	ck_assert_msg(run_until(ready_or_failed, 5000), "no handshake");
	ck_assert_msg(own.failed == 0, "set-up failed: %s", own.reason);
	ck_assert_int_eq(own.available, 1);
	ck_assert(!conn->warming);
	ck_assert_uint_gt(conn->ops->free_slots(conn), 0);
}

/* ---- streams ---- */

struct req {
	struct upstream_stream *s;
	const unsigned char *expect;
	size_t expect_len;
	int status;
	enum http1_body framing;
	uint64_t content_length;
	size_t got;
	bool mismatch;
	bool ended, errored;
	enum muxd_err err;
	bool paused;         /* do not take body bytes */
	size_t max_buffered; /* largest body buffer seen */
	bool cancel_on_body; /* cancel at the first body bytes */
	bool cancelled;
};

static void r_head(void *ctx, const struct http1_msg *head)
{
	struct req *r = ctx;

	r->status = head->status;
	r->framing = head->body;
	r->content_length = head->content_length;
}

static void take(struct req *r)
{
	struct evbuffer *b = r->s->ops->body(r->s);
	size_t n = evbuffer_get_length(b);
	unsigned char *p = evbuffer_pullup(b, (ssize_t)n);

	if (n == 0)
		return;
	if (r->got + n > r->expect_len || memcmp(p, r->expect + r->got, n) != 0)
		r->mismatch = true;
	r->got += n;
	evbuffer_drain(b, n);
	r->s->ops->consumed(r->s);
}

static void r_body(void *ctx)
{
	struct req *r = ctx;
	size_t n = evbuffer_get_length(r->s->ops->body(r->s));

	if (n > r->max_buffered)
		r->max_buffered = n;
	if (r->cancel_on_body) {
		r->cancelled = true;
		r->s->ops->cancel(r->s);
		return;
	}
	if (!r->paused)
		take(r);
}

static void r_end(void *ctx, const char *trailers)
{
	struct req *r = ctx;

	(void)trailers;
	r->ended = true;
}

static void r_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct req *r = ctx;

	(void)nothing;
	if (getenv("H3_DEBUG"))
		fprintf(stderr, "stream error: %s\n", reason);
	r->errored = true;
	r->err = err;
}

static const struct upstream_stream_cbs req_cbs = {r_head, r_body, r_end, r_error, NULL};

static void get(struct req *r, const char *path, const unsigned char *expect, size_t len)
{
	char authority[64];
	struct upstream_field f[] = {{"User-Agent", 10, "test_h3", 7}, {"Connection", 10, "x", 1}};
	struct upstream_request rq = {
	    .method = "GET",
	    .scheme = "https",
	    .authority = authority,
	    .path = path,
	    .fields = f,
	    .nfields = 2,
	    .has_body = false,
	    .content_length = -1,
	    .early_data = use_early,
	};

	snprintf(authority, sizeof(authority), "localhost:%u", srv_port);
	memset(r, 0, sizeof(*r));
	r->expect = expect;
	r->expect_len = len;
	r->s = conn->ops->open_stream(conn, &req_cbs, r);
	ck_assert_ptr_nonnull(r->s);
	upstream_stream_send_head(r->s, &rq);
}

static struct req *reqs;
static size_t nreqs;

static bool all_done(void)
{
	for (size_t i = 0; i < nreqs; i++)
		if (!reqs[i].ended && !reqs[i].errored && !reqs[i].cancelled)
			return false;
	return true;
}

static void wait_all(struct req *r, size_t n, int ms)
{
	reqs = r;
	nreqs = n;
	ck_assert_msg(run_until(all_done, ms), "requests did not finish");
}

static void check_ok(const struct req *r)
{
	ck_assert_msg(!r->errored, "stream failed (%d)", r->err);
	ck_assert(r->ended);
	ck_assert_int_eq(r->status, 200);
	ck_assert(!r->mismatch);
	ck_assert_uint_eq(r->got, r->expect_len);
}

/* ---- tests ---- */

START_TEST(get_small)
{
	struct req r;

	connect_ok("localhost", ca_path, true, NULL);
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
	ck_assert_int_eq(r.framing, HTTP1_BODY_LENGTH);
	ck_assert_uint_eq(r.content_length, SMALL_LEN);
	ck_assert_uint_eq(conn->requests, 1);
	/* the slot comes back once QUIC closed the stream */
	run_for(100);
	ck_assert(conn->ops->is_idle(conn));
	ck_assert_uint_gt(conn->ops->free_slots(conn), 0);
	ck_assert_int_eq(own.closed, 0);
}
END_TEST

static struct req *paused_req;

static bool paused_full(void)
{
	return paused_req->max_buffered >= WINDOW - 2 * SLACK || paused_req->errored;
}

START_TEST(get_big_bounded)
{
	struct req r;

	connect_ok("localhost", ca_path, true, NULL);
	get(&r, "/big", big_data, BIG_LEN);
	r.paused = true;
	paused_req = &r;
	ck_assert(run_until(paused_full, 5000));
	run_for(300); /* the origin must wait for us now */
	ck_assert(!r.errored);
	ck_assert_uint_le(evbuffer_get_length(r.s->ops->body(r.s)), WINDOW + SLACK);
	ck_assert_uint_le(r.max_buffered, WINDOW + SLACK);
	ck_assert_uint_eq(r.got, 0);
	r.paused = false;
	take(&r);
	wait_all(&r, 1, 20000);
	check_ok(&r);
	ck_assert_uint_le(r.max_buffered, WINDOW + SLACK);
}
END_TEST

START_TEST(concurrent_10)
{
	struct req r[10];

	connect_ok("localhost", ca_path, true, NULL);
	ck_assert_uint_ge(conn->ops->free_slots(conn), 10);
	for (int i = 0; i < 10; i++) {
		if (i % 2)
			get(&r[i], "/small", small_data, SMALL_LEN);
		else
			get(&r[i], "/big", big_data, BIG_LEN);
	}
	ck_assert(!conn->ops->is_idle(conn));
	wait_all(r, 10, 30000);
	for (int i = 0; i < 10; i++)
		check_ok(&r[i]);
	ck_assert_uint_eq(conn->requests, 10);
	ck_assert_int_eq(own.closed, 0);
	ck_assert_int_eq(own.failed, 0);
}
END_TEST

START_TEST(cancel_one)
{
	struct req r[4];

	connect_ok("localhost", ca_path, true, NULL);
	for (int i = 0; i < 3; i++)
		get(&r[i], "/big", big_data, BIG_LEN);
	r[1].cancel_on_body = true;
	wait_all(r, 3, 30000);
	ck_assert(r[1].cancelled);
	ck_assert(!r[1].ended && !r[1].errored);
	check_ok(&r[0]);
	check_ok(&r[2]);
	/* the connection carries on */
	ck_assert_int_eq(own.closed, 0);
	get(&r[3], "/small", small_data, SMALL_LEN);
	wait_all(&r[3], 1, 5000);
	check_ok(&r[3]);
	run_for(200);
	ck_assert(conn->ops->is_idle(conn));
}
END_TEST

START_TEST(not_found)
{
	struct req r;

	connect_ok("localhost", ca_path, true, NULL);
	get(&r, "/nope", NULL, 0);
	wait_all(&r, 1, 5000);
	ck_assert(!r.errored);
	ck_assert(r.ended);
	ck_assert_int_eq(r.status, 404);
}
END_TEST

START_TEST(wrong_ca)
{
	connect_to("127.0.0.1", srv_port, "localhost", other_ca_path, true, NULL);
	ck_assert(run_until(failed, 5000));
	ck_assert_int_eq(own.available, 0);
	ck_assert_int_eq(own.err, ERR_TLS);
	ck_assert_msg(strstr(own.reason, "unknown authority"), "reason: %s", own.reason);
	ck_assert_ptr_null(conn);
	run_for(50); /* nothing more happens */
	ck_assert_int_eq(own.failed, 1);
	ck_assert_int_eq(own.closed, 0);
}
END_TEST

START_TEST(name_mismatch)
{
	connect_to("127.0.0.1", srv_port, "example.com", ca_path, true, NULL);
	ck_assert(run_until(failed, 5000));
	ck_assert_int_eq(own.err, ERR_TLS);
	ck_assert_msg(strstr(own.reason, "name does not match"), "reason: %s", own.reason);
}
END_TEST

START_TEST(no_verify)
{
	struct req r;

	connect_ok("localhost", other_ca_path, false, NULL);
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
}
END_TEST

START_TEST(ip_literal_sni)
{
	struct req r;

	connect_ok("127.0.0.1", ca_path, true, NULL);
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
}
END_TEST

START_TEST(nothing_listening)
{
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	connect_to("127.0.0.1", free_udp_port(), "localhost", ca_path, true, NULL);
	ck_assert(run_until(failed, 12000));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_msg(own.err == ERR_CONNECT || own.err == ERR_CONNECT_TIMEOUT, "err %d: %s",
	              own.err, own.reason);
	if (getenv("H3_DEBUG"))
		fprintf(
		    stderr, "nothing listening: %s after %ld ms\n", own.reason,
		    (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
	ck_assert_int_eq(own.available, 0);
}
END_TEST

START_TEST(dns_failure)
{
	connect_to("no-such-host.invalid", srv_port, "localhost", ca_path, true, NULL);
	ck_assert(run_until(failed, 5000));
	ck_assert_int_eq(own.err, ERR_DNS);
}
END_TEST

START_TEST(localhost_name)
{
	struct req r;

	/* "localhost" resolves to both families; ::1 has no server */
	connect_to("localhost", srv_port, "localhost", ca_path, true, NULL);
	ck_assert(run_until(ready_or_failed, 5000));
	ck_assert_msg(own.failed == 0, "set-up failed: %s", own.reason);
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
}
END_TEST

START_TEST(close_while_warming)
{
	connect_to("127.0.0.1", srv_port, "localhost", ca_path, true, NULL);
	conn->ops->close(conn);
	conn = NULL;
	run_for(300);
	ck_assert_int_eq(own.available + own.failed + own.closed, 0);
}
END_TEST

START_TEST(close_with_streams)
{
	struct req r;

	connect_ok("localhost", ca_path, true, NULL);
	get(&r, "/big", big_data, BIG_LEN);
	r.paused = true;
	paused_req = &r;
	ck_assert(run_until(paused_full, 5000));
	conn->ops->close(conn);
	conn = NULL;
	run_for(100);
	ck_assert(!r.ended && !r.errored);
	ck_assert_int_eq(own.closed, 0);
}
END_TEST

START_TEST(session_cached)
{
	struct req r;
	gnutls_datum_t d;

	connect_ok("localhost", ca_path, true, "h3:localhost");
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
	run_for(100);
	ck_assert(tls_session_get(m.tls, "h3|h3:localhost", &d));
	ck_assert(!tls_session_get(m.tls, "h3:localhost", &d)); /* TCP's key stays apart */
	conn->ops->close(conn);
	conn = NULL;
	memset(&own, 0, sizeof(own));
	/* a second connection resumes (or at least works) with the cached data */
	connect_ok("localhost", ca_path, true, "h3:localhost");
	get(&r, "/small", small_data, SMALL_LEN);
	wait_all(&r, 1, 5000);
	check_ok(&r);
}
END_TEST

/* 0-RTT: the ticket comes with the server's transport parameters; the next
 * connection takes streams before its handshake is done (no peer certificate
 * yet), submits the safe request as 0-RTT and holds the other until the
 * handshake; both answer. */
START_TEST(early_data)
{
	struct req r[2];
	const struct tls_session_entry *e;
	struct sockaddr_storage ss;
	const void *cert;
	size_t len;

	use_early = true;
	connect_ok("localhost", ca_path, true, "h3:localhost");
	ck_assert(conn->ops->peer(conn, &ss, &cert, &len)); /* a full handshake: done first */
	get(&r[0], "/small", small_data, SMALL_LEN);
	wait_all(r, 1, 5000);
	check_ok(&r[0]);
	run_for(100);
	e = tls_session_entry(m.tls, "h3|h3:localhost");
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_gt(e->tp_len, 0);
	conn->ops->close(conn);
	conn = NULL;
	memset(&own, 0, sizeof(own));
	connect_ok("localhost", ca_path, true, "h3:localhost");
	ck_assert(!conn->ops->peer(conn, &ss, &cert, &len)); /* available before the handshake */
	get(&r[0], "/small", small_data, SMALL_LEN);
	use_early = false; /* not replay-safe: waits for the handshake */
	get(&r[1], "/small", small_data, SMALL_LEN);
	wait_all(r, 2, 5000);
	check_ok(&r[0]);
	check_ok(&r[1]);
	ck_assert(conn->ops->peer(conn, &ss, &cert, &len));
	ck_assert_int_eq(own.closed, 0);
}
END_TEST

static bool closed(void)
{
	return own.closed > 0;
}

START_TEST(idle_timeout)
{
	struct req r;
	uint16_t port;
	pid_t pid = spawn_server(&port, "--timeout=1s");

	connect_to("127.0.0.1", port, "localhost", ca_path, true, NULL);
	ck_assert(run_until(ready_or_failed, 5000));
	ck_assert_msg(own.failed == 0, "set-up failed: %s", own.reason);
	srv_port_save = srv_port;
	srv_port = port;
	get(&r, "/small", small_data, SMALL_LEN);
	srv_port = srv_port_save;
	wait_all(&r, 1, 5000);
	check_ok(&r);
	/* no stream runs: the connection leaves silently once idle */
	ck_assert(run_until(closed, 6000));
	ck_assert_int_eq(own.why, EVICT_DEAD);
	ck_assert_int_eq(own.failed, 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}
END_TEST

static struct req *big_req;

static bool big_started(void)
{
	return big_req->got > 0 || big_req->errored;
}

START_TEST(origin_dies)
{
	struct req r;
	uint16_t port;
	pid_t pid = spawn_server(&port, NULL);

	connect_to("127.0.0.1", port, "localhost", ca_path, true, NULL);
	ck_assert(run_until(ready_or_failed, 5000));
	ck_assert_msg(own.failed == 0, "set-up failed: %s", own.reason);
	get(&r, "/big", big_data, BIG_LEN);
	big_req = &r;
	ck_assert(run_until(big_started, 5000));
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	/* ICMP port unreachable (or, without it, the idle timeout) ends it */
	wait_all(&r, 1, 40000);
	ck_assert(r.errored);
	ck_assert_int_eq(r.err, ERR_CLOSED);
	ck_assert_int_eq(own.closed, 1);
	ck_assert_int_eq(own.why, EVICT_COUNT);
}
END_TEST

/* A request body of 1 MiB, fed as send_space() allows. */
static size_t up_sent;

static void up_feed(void *ctx)
{
	struct req *r = ctx;
	size_t space;

	while ((space = r->s->ops->send_space(r->s)) > 0 && up_sent < MB) {
		size_t n = space < MB - up_sent ? space : MB - up_sent;
		if (n > 20000)
			n = 20000;
		r->s->ops->send_body(r->s, big_data + up_sent, n);
		up_sent += n;
	}
	if (up_sent == MB)
		r->s->ops->send_end(r->s, NULL);
}

static const struct upstream_stream_cbs up_cbs = {r_head, r_body, r_end, r_error, up_feed};

START_TEST(upload)
{
	struct req r;
	char authority[64];
	struct upstream_request rq = {
	    .method = "POST",
	    .scheme = "https",
	    .authority = authority,
	    .path = "/small",
	    .has_body = true,
	    .content_length = MB,
	};

	connect_ok("localhost", ca_path, true, NULL);
	snprintf(authority, sizeof(authority), "localhost:%u", srv_port);
	memset(&r, 0, sizeof(r));
	r.expect = small_data;
	r.expect_len = SMALL_LEN;
	up_sent = 0;
	r.s = conn->ops->open_stream(conn, &up_cbs, &r);
	ck_assert_ptr_nonnull(r.s);
	upstream_stream_send_head(r.s, &rq);
	up_feed(&r);
	ck_assert_uint_lt(up_sent, MB); /* bounded by send_space */
	wait_all(&r, 1, 20000);
	check_ok(&r);
	ck_assert_uint_eq(up_sent, MB);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("h3");
	TCase *t = tcase_create("h3");

	tcase_add_unchecked_fixture(t, global_setup, global_teardown);
	tcase_add_checked_fixture(t, setup, teardown);
	tcase_set_timeout(t, 60);
	tcase_add_test(t, get_small);
	tcase_add_test(t, get_big_bounded);
	tcase_add_test(t, concurrent_10);
	tcase_add_test(t, cancel_one);
	tcase_add_test(t, not_found);
	tcase_add_test(t, wrong_ca);
	tcase_add_test(t, name_mismatch);
	tcase_add_test(t, no_verify);
	tcase_add_test(t, ip_literal_sni);
	tcase_add_test(t, nothing_listening);
	tcase_add_test(t, dns_failure);
	tcase_add_test(t, localhost_name);
	tcase_add_test(t, close_while_warming);
	tcase_add_test(t, close_with_streams);
	tcase_add_test(t, session_cached);
	tcase_add_test(t, early_data);
	tcase_add_test(t, upload);
	tcase_add_test(t, idle_timeout);
	tcase_add_test(t, origin_dies);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failures;

	signal(SIGPIPE, SIG_IGN);
	srunner_run_all(sr, CK_NORMAL);
	failures = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
