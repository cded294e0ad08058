/*
 * Unit tests for the socket I/O of src/transport/tcp.c: a transport made
 * with tcp_accepted on one end of a connected pair (a socketpair, or a
 * loopback TCP connection where a reset is needed), the test holding the
 * other end. Checks the calling rules of transport.h: the read bound and
 * backpressure on and off, writes deferred to the loop and done straight
 * away when the socket has room, partial writes and EAGAIN with on_drain at
 * the low watermark, EOF with data pending, a peer's reset reported once,
 * shutdown after the output drained, and close from inside each callback.
 * And the cost: the appends of a pass schedule one flush (event_active is
 * counted by wrapping libevent's).
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "timeutil.h"

struct rec {
	struct transport *t;
	int reads, drains, eofs, errors;
	enum muxd_err err;
	char reason[128];
	bool take;           /* on_read moves the input to got */
	bool close_on_read;  /* close the transport inside on_read */
	bool close_on_drain; /* ... inside on_drain */
	bool close_on_eof;   /* ... inside on_event(EOF) */
	bool write_then_close;
	bool stop_on_read;   /* set_reading(false) inside on_read */
	size_t in_at_eof;    /* input length when EOF came */
	size_t out_at_drain; /* output length at the last on_drain */
	struct evbuffer *got;
};

static struct rec r;
static int peer = -1; /* the test's end */

/* event_active, counted: this definition wins over libevent's for the
 * calls from tcp.c (linked into this program) and forwards to it. */
static int n_active;

void event_active(struct event *ev, int res, short ncalls)
{
	static void (*real)(struct event *, int, short);

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "event_active");
	n_active++;
	real(ev, res, ncalls);
}

static void rec_read(void *ctx)
{
	struct rec *x = ctx;

	x->reads++;
	if (x->take)
		evbuffer_add_buffer(x->got, transport_input(x->t));
	if (x->stop_on_read)
		x->t->ops->set_reading(x->t, false);
	if (x->write_then_close) {
		evbuffer_add(transport_output(x->t), "bye", 3); /* flush now active */
		transport_close(x->t);
		x->t = NULL;
	} else if (x->close_on_read) {
		transport_close(x->t);
		x->t = NULL;
	}
}

static void rec_drain(void *ctx)
{
	struct rec *x = ctx;

	x->drains++;
	x->out_at_drain = evbuffer_get_length(transport_output(x->t));
	if (x->close_on_drain) {
		transport_close(x->t);
		x->t = NULL;
	}
}

static void rec_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct rec *x = ctx;

	if (ev == TRANSPORT_EOF) {
		x->eofs++;
		x->in_at_eof = evbuffer_get_length(transport_input(x->t));
		if (x->close_on_eof) {
			transport_close(x->t);
			x->t = NULL;
		}
	} else if (ev == TRANSPORT_ERROR) {
		x->errors++;
		x->err = err;
		snprintf(x->reason, sizeof(x->reason), "%s", reason ? reason : "");
	}
}

static const struct transport_cbs rec_cbs = {rec_read, rec_drain, rec_event};

/* ---- waiting for a condition, polled every few ms, with a deadline ---- */

static bool (*cond_fn)(void);

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (cond_fn())
		event_base_loopbreak(m.base);
}

static bool until(bool (*cond)(void), int ms)
{
	struct event *tick;
	struct timeval tv = {0, 2000};

	if (cond())
		return true;
	cond_fn = cond;
	tick = event_new(m.base, -1, EV_PERSIST, tick_cb, NULL);
	event_add(tick, &tv);
	loop_run(ms);
	event_free(tick);
	return cond();
}

/* One pass of the loop (what is active, and what is ready now). */
static void one_pass(void)
{
	event_base_loop(m.base, EVLOOP_NONBLOCK);
}

/* ---- fixtures ---- */

static void make_transport(int fd)
{
	r.t = tcp_accepted(TENV, fd, &rec_cbs, &r);
	ck_assert_ptr_nonnull(r.t);
}

static void pair_unix(void)
{
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	peer = sv[1];
	make_transport(sv[0]);
}

static void pair_tcp(void)
{
	uint16_t port;
	int lfd = listen_on("127.0.0.1", 0, &port), fd;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};

	ck_assert_int_ge(lfd, 0);
	sa.sin_addr.s_addr = htonl(0x7f000001);
	peer = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(peer, (struct sockaddr *)&sa, sizeof(sa)), 0);
	fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	close(lfd);
	fcntl(peer, F_SETFL, fcntl(peer, F_GETFL) | O_NONBLOCK);
	make_transport(fd);
}

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN);
	muxd_setup(0);
	memset(&r, 0, sizeof(r));
	r.got = evbuffer_new();
	peer = -1;
}

static void teardown(void)
{
	if (r.t)
		transport_close(r.t);
	r.t = NULL;
	evbuffer_free(r.got);
	if (peer >= 0)
		close(peer);
	peer = -1;
	one_pass();
	muxd_teardown();
}

/* Writes up to n bytes of p from the peer without blocking; returns how many. */
static size_t peer_write(const unsigned char *p, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = write(peer, p + done, n - done);
		if (w <= 0)
			break;
		done += (size_t)w;
	}
	return done;
}

/* Reads what the peer has now (non-blocking) into b; -1 at EOF, else how many. */
static long peer_read(struct evbuffer *b)
{
	char buf[16384];
	long total = 0;

	for (;;) {
		ssize_t n = read(peer, buf, sizeof(buf));
		if (n == 0)
			return total ? total : -1;
		if (n < 0)
			return total;
		evbuffer_add(b, buf, (size_t)n);
		total += n;
	}
}

static size_t in_len(void)
{
	return evbuffer_get_length(transport_input(r.t));
}

static size_t out_len(void)
{
	return evbuffer_get_length(transport_output(r.t));
}

/* ---- read bound and backpressure ---- */

static bool input_full(void)
{
	return in_len() == TRANSPORT_BUF;
}

static size_t total_sent;

static bool full_or_all(void)
{
	return input_full() || evbuffer_get_length(r.got) + in_len() == total_sent;
}

START_TEST(read_bound_and_backpressure)
{
	unsigned char *src = pattern_new(4 * TRANSPORT_BUF, 1);
	size_t sent;

	pair_unix();
	sent = peer_write(src, 4 * TRANSPORT_BUF);
	total_sent = sent;
	ck_assert_uint_gt(sent, 2 * TRANSPORT_BUF); /* more than the bound waits in the kernel */
	ck_assert(until(input_full, 5000));
	/* the bound holds: reading stopped there, however long the loop runs */
	for (int i = 0; i < 20; i++)
		one_pass();
	ck_assert_uint_eq(in_len(), TRANSPORT_BUF);
	/* taking some bytes out resumes reading, up to the bound again */
	evbuffer_add_buffer(r.got, transport_input(r.t));
	ck_assert(until(input_full, 5000));
	/* reading off: nothing more arrives even with room */
	r.t->ops->set_reading(r.t, false);
	evbuffer_add_buffer(r.got, transport_input(r.t));
	int reads = r.reads;
	for (int i = 0; i < 20; i++)
		one_pass();
	ck_assert_int_eq(r.reads, reads);
	ck_assert_uint_eq(in_len(), 0);
	/* on again: the rest arrives, in order */
	r.t->ops->set_reading(r.t, true);
	r.take = true;
	while (evbuffer_get_length(r.got) < sent) {
		size_t before = evbuffer_get_length(r.got);
		until(full_or_all, 5000);
		evbuffer_add_buffer(r.got, transport_input(r.t));
		ck_assert_uint_gt(evbuffer_get_length(r.got), before);
	}
	ck_assert_uint_eq(evbuffer_get_length(r.got), sent);
	ck_assert_mem_eq(evbuffer_pullup(r.got, -1), src, sent);
	free(src);
}
END_TEST

static bool got_one_read(void)
{
	return r.reads > 0;
}

START_TEST(stop_reading_inside_on_read)
{
	pair_unix();
	r.stop_on_read = true;
	peer_write((const unsigned char *)"abc", 3);
	ck_assert(until(got_one_read, 5000));
	ck_assert_uint_eq(in_len(), 3);
	peer_write((const unsigned char *)"def", 3);
	for (int i = 0; i < 20; i++)
		one_pass();
	ck_assert_int_eq(r.reads, 1);
	ck_assert_uint_eq(in_len(), 3);
}
END_TEST

/* ---- writes ---- */

START_TEST(writes_wait_for_the_loop_then_go_at_once)
{
	struct evbuffer *b = evbuffer_new();

	pair_unix();
	/* three appends from outside the loop: nothing written yet */
	evbuffer_add(transport_output(r.t), "GET ", 4);
	evbuffer_add(transport_output(r.t), "/ ", 2);
	evbuffer_add(transport_output(r.t), "HTTP/1.1\r\n", 10);
	ck_assert_int_eq(peer_read(b), 0);
	/* one pass: all of it is in the socket and on_drain reported it */
	one_pass();
	ck_assert_uint_eq(out_len(), 0);
	ck_assert_int_eq(peer_read(b), 16);
	ck_assert_mem_eq(evbuffer_pullup(b, -1), "GET / HTTP/1.1\r\n", 16);
	ck_assert_int_eq(r.drains, 1);
	ck_assert_uint_eq(r.out_at_drain, 0);
	evbuffer_free(b);
}
END_TEST

/* A user's own callback on the output (the client session watches its
 * socket's buffers for progress): sees every append. */
static int user_appends;

static void user_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b;
	(void)arg;
	if (info->n_added > 0)
		user_appends++;
}

/* Many appends in one pass (a request head written in pieces) schedule one
 * flush, not one each: the output's callback is off while a flush is
 * scheduled, and on again once it ran. A user's callback on the same buffer
 * still sees every append. */
START_TEST(appends_of_a_pass_schedule_one_flush)
{
	struct evbuffer *b = evbuffer_new();
	struct evbuffer *out;

	pair_unix();
	out = transport_output(r.t);
	evbuffer_add_cb(out, user_cb, NULL);
	n_active = user_appends = 0;
	for (int i = 0; i < 20; i++)
		evbuffer_add(out, "0123456789", 10);
	ck_assert_int_eq(n_active, 1);
	ck_assert_int_eq(user_appends, 20);
	one_pass();
	ck_assert_uint_eq(out_len(), 0);
	ck_assert_int_eq(peer_read(b), 200);
	/* the flush ran: the next append schedules the next one */
	evbuffer_add(out, "x", 1);
	evbuffer_add(out, "y", 1);
	ck_assert_int_eq(n_active, 2);
	one_pass();
	ck_assert_int_eq(peer_read(b), 2);
	ck_assert_int_eq(user_appends, 22);
	evbuffer_free(b);
}
END_TEST

/* A user that echoes: the reply leaves in the same loop pass as the read. */
static void echo_read(void *ctx)
{
	struct rec *x = ctx;

	x->reads++;
	evbuffer_add_buffer(transport_output(x->t), transport_input(x->t));
}

START_TEST(reply_written_in_the_pass_that_read)
{
	static const struct transport_cbs echo_cbs = {echo_read, rec_drain, rec_event};
	struct evbuffer *b = evbuffer_new();

	pair_unix();
	transport_set_cbs(r.t, &echo_cbs, &r);
	peer_write((const unsigned char *)"ping", 4);
	one_pass(); /* reads, and writes what on_read appended */
	ck_assert_int_eq(r.reads, 1);
	ck_assert_int_eq(peer_read(b), 4);
	ck_assert_mem_eq(evbuffer_pullup(b, -1), "ping", 4);
	evbuffer_free(b);
}
END_TEST

/* Reads take what is there up to the bound, not 4 KiB at a time. */
START_TEST(large_reads)
{
	unsigned char *src = pattern_new(TRANSPORT_BUF, 5);

	pair_unix();
	ck_assert_uint_eq(peer_write(src, TRANSPORT_BUF), TRANSPORT_BUF);
	ck_assert(until(input_full, 5000));
	ck_assert_int_le(r.reads, 6); /* 4 KiB, doubling; libevent: 16 or more */
	ck_assert_mem_eq(evbuffer_pullup(transport_input(r.t), -1), src, TRANSPORT_BUF);
	free(src);
}
END_TEST

static bool output_drained(void)
{
	return out_len() == 0;
}

static void peer_readable(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	peer_read(arg);
}

START_TEST(partial_writes_and_eagain)
{
	size_t n = 2 * MB;
	unsigned char *src = pattern_new(n, 2);
	int small = 16384;
	struct event *reader;

	pair_unix();
	setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	evbuffer_add(transport_output(r.t), src, n);
	for (int i = 0; i < 20; i++)
		one_pass();
	/* the socket took a part; the rest waits, and no on_drain above the mark */
	ck_assert_uint_gt(out_len(), 0);
	ck_assert_uint_lt(out_len(), n);
	ck_assert_int_eq(r.drains, 0);
	/* the peer reads: everything arrives intact, on_drain at or below the mark */
	reader = event_new(m.base, peer, EV_READ | EV_PERSIST, peer_readable, r.got);
	event_add(reader, NULL);
	ck_assert(until(output_drained, 10000));
	for (int i = 0; i < 5; i++)
		one_pass();
	event_free(reader);
	peer_read(r.got);
	ck_assert_uint_eq(evbuffer_get_length(r.got), n);
	ck_assert_mem_eq(evbuffer_pullup(r.got, -1), src, n);
	ck_assert_int_gt(r.drains, 0);
	ck_assert_uint_le(r.out_at_drain, TRANSPORT_BUF / 2);
	free(src);
}
END_TEST

static bool peer_saw_eof(void)
{
	long got = peer_read(r.got);
	return got < 0;
}

START_TEST(shutdown_after_drain)
{
	size_t n = MB;
	unsigned char *src = pattern_new(n, 3);

	pair_unix();
	evbuffer_add(transport_output(r.t), src, n);
	r.t->ops->shutdown(r.t); /* output pending: the half-close waits for it */
	ck_assert(until(peer_saw_eof, 10000));
	ck_assert_uint_eq(evbuffer_get_length(r.got), n);
	ck_assert_mem_eq(evbuffer_pullup(r.got, -1), src, n);
	/* on_drain only once output was empty (the mark is 0 after shutdown) */
	ck_assert_int_ge(r.drains, 1);
	ck_assert_uint_eq(r.out_at_drain, 0);
	/* the read side still works after our half-close */
	r.take = true;
	evbuffer_drain(r.got, n);
	peer_write((const unsigned char *)"tail", 4);
	ck_assert(until(got_one_read, 5000));
	ck_assert_uint_eq(evbuffer_get_length(r.got), 4);
	free(src);
}
END_TEST

/* ---- EOF and errors ---- */

static bool saw_eof(void)
{
	return r.eofs > 0;
}

START_TEST(eof_with_data_pending)
{
	pair_unix();
	peer_write((const unsigned char *)"last words", 10);
	shutdown(peer, SHUT_WR);
	ck_assert(until(saw_eof, 5000));
	ck_assert_int_eq(r.eofs, 1);
	ck_assert_int_eq(r.errors, 0);
	ck_assert_uint_eq(r.in_at_eof, 10); /* the bytes stay for the user */
	ck_assert(!r.t->ops->is_alive(r.t));
	/* half-close: writing still works */
	evbuffer_add(transport_output(r.t), "reply", 5);
	ck_assert(until(output_drained, 5000));
	ck_assert_int_eq(peer_read(r.got), 5);
	for (int i = 0; i < 10; i++)
		one_pass();
	ck_assert_int_eq(r.eofs, 1); /* once */
}
END_TEST

static bool eof_or_full(void)
{
	return r.eofs > 0 || input_full();
}

START_TEST(eof_behind_a_full_input)
{
	size_t n = 3 * TRANSPORT_BUF + 100;
	unsigned char *src = pattern_new(n, 4);
	size_t sent;

	pair_unix();
	sent = peer_write(src, n);
	ck_assert_uint_eq(sent, n);
	close(peer);
	peer = -1;
	ck_assert(until(input_full, 5000));
	ck_assert_int_eq(r.eofs, 0); /* not read yet: the bound stopped reading */
	while (r.eofs == 0) {
		evbuffer_add_buffer(r.got, transport_input(r.t));
		ck_assert(until(eof_or_full, 5000));
	}
	evbuffer_add_buffer(r.got, transport_input(r.t));
	ck_assert_uint_eq(evbuffer_get_length(r.got), n);
	ck_assert_mem_eq(evbuffer_pullup(r.got, -1), src, n);
	free(src);
}
END_TEST

static bool saw_error(void)
{
	return r.errors > 0;
}

START_TEST(peer_reset_reported_once)
{
	struct linger lg = {1, 0};

	pair_tcp();
	setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(peer); /* RST */
	peer = -1;
	/* with output queued too: read and write both fail, one report */
	evbuffer_add(transport_output(r.t), "x", 1);
	ck_assert(until(saw_error, 5000));
	for (int i = 0; i < 20; i++)
		one_pass();
	evbuffer_add(transport_output(r.t), "y", 1); /* after the error: nothing happens */
	for (int i = 0; i < 5; i++)
		one_pass();
	ck_assert_int_eq(r.errors, 1);
	ck_assert_int_eq(r.eofs, 0);
	ck_assert_int_eq(r.err, ERR_CLOSED);
	ck_assert_str_eq(r.reason, strerror(ECONNRESET));
	ck_assert(!r.t->ops->is_alive(r.t));
}
END_TEST

START_TEST(write_to_a_closed_peer)
{
	pair_unix();
	r.t->ops->set_reading(r.t, false); /* only the write can notice */
	close(peer);
	peer = -1;
	evbuffer_add(transport_output(r.t), "hello", 5);
	ck_assert(until(saw_error, 5000));
	ck_assert_int_eq(r.errors, 1);
	ck_assert_str_eq(r.reason, strerror(EPIPE));
}
END_TEST

/* ---- close from inside the callbacks (ASan: no use after free) ---- */

static bool closed(void)
{
	return r.t == NULL;
}

START_TEST(close_inside_on_read)
{
	pair_unix();
	r.close_on_read = true;
	peer_write((const unsigned char *)"abc", 3);
	ck_assert(until(closed, 5000));
	for (int i = 0; i < 5; i++)
		one_pass();
	ck_assert_int_eq(r.reads, 1);
}
END_TEST

START_TEST(close_inside_on_read_with_a_flush_queued)
{
	struct evbuffer *b = evbuffer_new();

	pair_unix();
	r.write_then_close = true;
	peer_write((const unsigned char *)"abc", 3);
	ck_assert(until(closed, 5000));
	for (int i = 0; i < 5; i++)
		one_pass();                 /* the queued flush died with the layer */
	ck_assert_int_eq(peer_read(b), -1); /* closed, the unsent bytes dropped */
	evbuffer_free(b);
}
END_TEST

START_TEST(close_inside_on_drain)
{
	pair_unix();
	r.close_on_drain = true;
	evbuffer_add(transport_output(r.t), "abc", 3);
	ck_assert(until(closed, 5000));
	for (int i = 0; i < 5; i++)
		one_pass();
	ck_assert_int_eq(r.drains, 1);
	ck_assert_int_eq(peer_read(r.got), 3);
}
END_TEST

START_TEST(close_inside_on_eof)
{
	pair_unix();
	r.close_on_eof = true;
	peer_write((const unsigned char *)"abc", 3);
	shutdown(peer, SHUT_WR);
	ck_assert(until(closed, 5000));
	for (int i = 0; i < 5; i++)
		one_pass();
	ck_assert_int_eq(r.eofs, 1);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("tcp");
	TCase *tc = tcase_create("io");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, read_bound_and_backpressure);
	tcase_add_test(tc, stop_reading_inside_on_read);
	tcase_add_test(tc, writes_wait_for_the_loop_then_go_at_once);
	tcase_add_test(tc, reply_written_in_the_pass_that_read);
	tcase_add_test(tc, appends_of_a_pass_schedule_one_flush);
	tcase_add_test(tc, large_reads);
	tcase_add_test(tc, partial_writes_and_eagain);
	tcase_add_test(tc, shutdown_after_drain);
	tcase_add_test(tc, eof_with_data_pending);
	tcase_add_test(tc, eof_behind_a_full_input);
	tcase_add_test(tc, peer_reset_reported_once);
	tcase_add_test(tc, write_to_a_closed_peer);
	tcase_add_test(tc, close_inside_on_read);
	tcase_add_test(tc, close_inside_on_read_with_a_flush_queued);
	tcase_add_test(tc, close_inside_on_drain);
	tcase_add_test(tc, close_inside_on_eof);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return run_suite(suite()) == 0 ? 0 : 1;
}
