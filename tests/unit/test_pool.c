/*
 * Unit tests for src/pool.c (and the set-up deadline of src/transport/chain.c
 * that the pool relies on): key equality, matchmaking (an idle HTTP/1.1
 * connection is reused, a fresh-only waiter is not given it), the
 * connect_timeout deadline over the whole set-up chain (504 naming the step,
 * the slot freed), the wait for capacity under max_h1_per_origin (503
 * after connect_timeout, or the connection once it frees up), and client
 * tunnels (pool_open_tunnel): the deadline through a mute parent of each
 * kind, the counters, and max_connections (wait, 503, eviction of an idle
 * connection).
 *
 * The peers are fakes that run in the test's own event loop, so the test
 * decides exactly when they accept, answer or stay mute: a listener whose
 * connections either answer every request head with a small 200, hold their
 * answer until told, or never say anything.
 */
#include <arpa/inet.h>
#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"
#include "muxd.h"
#include "pool.h"
#include "pool_internal.h"
#include "route.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

/* ---- a fake peer in the test's loop ---- */

enum peer_mode {
	PEER_ANSWER, /* a 200 with "ok" for every request head */
	PEER_HOLD,   /* heads are counted; answers go out on peer_answer() */
	PEER_MUTE,   /* reads and discards, says nothing (no TLS, no answer) */
};

#define PEER_MAX_CONNS 16

struct peer {
	enum peer_mode mode;
	int fd;
	uint16_t port;
	struct event *accept_ev;
	struct bufferevent *conns[PEER_MAX_CONNS];
	unsigned nconns;
	unsigned heads; /* request heads seen */
};

static struct peer peer;

static void peer_respond(struct bufferevent *bev)
{
	static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
	bufferevent_write(bev, ok, sizeof(ok) - 1);
}

static void peer_read(struct bufferevent *bev, void *arg)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_ptr end;

	(void)arg;
	if (peer.mode == PEER_MUTE) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	while ((end = evbuffer_search(in, "\r\n\r\n", 4, NULL)).pos >= 0) {
		evbuffer_drain(in, (size_t)end.pos + 4);
		peer.heads++;
		if (peer.mode == PEER_ANSWER)
			peer_respond(bev);
	}
}

static void peer_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	(void)arg;
}

static void peer_accept(evutil_socket_t fd, short what, void *arg)
{
	int c = accept(fd, NULL, NULL);
	struct bufferevent *bev;

	(void)what;
	(void)arg;
	if (c < 0)
		return;
	ck_assert_uint_lt(peer.nconns, PEER_MAX_CONNS);
	evutil_make_socket_nonblocking(c);
	bev = bufferevent_socket_new(m.base, c, BEV_OPT_CLOSE_ON_FREE);
	ck_assert_ptr_nonnull(bev);
	bufferevent_setcb(bev, peer_read, NULL, peer_event, NULL);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	peer.conns[peer.nconns++] = bev;
}

static void peer_start(enum peer_mode mode)
{
	peer.mode = mode;
	peer.fd = listen_on("127.0.0.1", 0, &peer.port);
	ck_assert_int_ge(peer.fd, 0);
	evutil_make_socket_nonblocking(peer.fd);
	peer.accept_ev = event_new(m.base, peer.fd, EV_READ | EV_PERSIST, peer_accept, NULL);
	event_add(peer.accept_ev, NULL);
}

/* Answers the held request on connection i. */
static void peer_answer(unsigned i)
{
	ck_assert_uint_lt(i, peer.nconns);
	peer_respond(peer.conns[i]);
}

static void peer_stop(void)
{
	for (unsigned i = 0; i < peer.nconns; i++)
		if (peer.conns[i])
			bufferevent_free(peer.conns[i]);
	if (peer.accept_ev)
		event_free(peer.accept_ev);
	if (peer.fd > 0)
		close(peer.fd);
	memset(&peer, 0, sizeof(peer));
}

/* ---- a request through the pool ---- */

struct req {
	struct pool_wait *wait;
	struct upstream_stream *s;
	bool got_stream, reused, failed, done;
	enum muxd_err err;
	char reason[700];
	int status;
	char body[64];
	size_t body_len;
};

static void r_head(void *ctx, const struct http1_msg *h)
{
	struct req *r = ctx;
	if (h->status >= 200)
		r->status = h->status;
}

static void r_body(void *ctx)
{
	struct req *r = ctx;
	struct evbuffer *b = r->s->ops->body(r->s);
	size_t n = evbuffer_get_length(b);

	if (n > sizeof(r->body) - r->body_len)
		n = sizeof(r->body) - r->body_len;
	evbuffer_remove(b, r->body + r->body_len, n);
	r->body_len += n;
	r->s->ops->consumed(r->s);
}

static void r_end(void *ctx, const char *trailers)
{
	struct req *r = ctx;
	(void)trailers;
	r->s = NULL;
	r->done = true;
	event_base_loopbreak(m.base);
}

static void r_error(void *ctx, enum muxd_err err, const char *reason, bool nothing)
{
	struct req *r = ctx;
	(void)nothing;
	r->s = NULL;
	r->failed = true;
	r->err = err;
	snprintf(r->reason, sizeof(r->reason), "%s", reason);
	event_base_loopbreak(m.base);
}

static void r_send_ready(void *ctx)
{
	(void)ctx;
}

static const struct upstream_stream_cbs r_stream_cbs = {r_head, r_body, r_end, r_error,
                                                        r_send_ready};

static void w_stream(void *ctx, struct upstream_stream *s, bool reused)
{
	struct req *r = ctx;
	struct upstream_request q = {.method = "GET",
	                             .scheme = "http",
	                             .authority = "127.0.0.1",
	                             .path = "/",
	                             .content_length = -1};
	r->wait = NULL;
	r->s = s;
	r->got_stream = true;
	r->reused = reused;
	upstream_stream_send_head(s, &q);
	s->ops->send_end(s, "");
}

static void w_error(void *ctx, enum muxd_err err, const char *reason)
{
	struct req *r = ctx;
	r->wait = NULL;
	r->failed = true;
	r->err = err;
	snprintf(r->reason, sizeof(r->reason), "%s", reason);
	event_base_loopbreak(m.base);
}

static const struct pool_wait_cbs r_wait_cbs = {w_stream, w_error};

static void key_for(struct pool_key *k, const char *scheme, uint16_t port)
{
	struct route r;
	route_for(m.cfg, "127.0.0.1", port, &r);
	ck_assert(pool_key_init(k, &m, scheme, "127.0.0.1", port, &r));
}

static void req_start(struct req *r, const struct pool_key *k, bool fresh_only)
{
	memset(r, 0, sizeof(*r));
	r->wait = pool_start_stream(m.pool, k, fresh_only, &r_stream_cbs, &r_wait_cbs, r);
	ck_assert_ptr_nonnull(r->wait);
}

/* Runs the loop until r has an outcome (or ms pass). */
static void req_run(struct req *r, int ms)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!r->done && !r->failed) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		int spent =
		    (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (spent >= ms)
			break;
		loop_run(ms - spent);
	}
}

static void req_cleanup(struct req *r)
{
	if (r->wait)
		pool_wait_cancel(r->wait);
	if (r->s)
		r->s->ops->cancel(r->s);
	r->wait = NULL;
	r->s = NULL;
}

static void count_conn(void *arg, const struct pool_conn_info *c)
{
	(void)c;
	(*(unsigned *)arg)++;
}

static unsigned pool_conns(void)
{
	unsigned n = 0;
	pool_foreach_conn(m.pool, count_conn, &n);
	return n;
}

/* ---- fixtures ---- */

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN);
	muxd_setup(HM_CFG | HM_DNS | HM_TLS);
	free(m.cfg->altsvc_file); /* no cache file: the pool stays in memory */
	m.cfg->altsvc_file = NULL;
	m.cfg->connect_timeout_ms = 300;
	m.pool = pool_new(&m);
	ck_assert_ptr_nonnull(m.pool);
}

static void teardown(void)
{
	pool_free(m.pool);
	m.pool = NULL;
	peer_stop();
	muxd_teardown();
}

/* ---- keys ---- */

START_TEST(key_equality)
{
	struct config_hop hop = {.kind = HOP_HTTP, .host = "proxy.example", .port = 3128};
	struct config_hop hop2 = hop;
	struct route r = {.verify = true, .h2 = true};
	struct pool_key a, b;

	/* the same destination and route: equal */
	ck_assert(pool_key_init(&a, &m, "https", "example.com", 443, &r));
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 443, &r));
	ck_assert_str_eq(a.id, b.id);
	/* another port, another scheme, verification off, no h2: different */
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 8443, &r));
	ck_assert_str_ne(a.id, b.id);
	ck_assert(pool_key_init(&b, &m, "http", "example.com", 443, &r));
	ck_assert_str_ne(a.id, b.id);
	r.verify = false;
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 443, &r));
	ck_assert_str_ne(a.id, b.id);
	r.verify = true;
	r.h2 = false;
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 443, &r));
	ck_assert_str_ne(a.id, b.id);
	r.h2 = true;
	/* through a parent: another key; other credentials: another key, and the
	 * password never shows in the id */
	r.hops = &hop;
	r.nhops = 1;
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 443, &r));
	ck_assert_str_ne(a.id, b.id);
	hop.user = "alice";
	hop.pass = "s3cret-one";
	ck_assert(pool_key_init(&a, &m, "https", "example.com", 443, &r));
	hop2.user = "alice";
	hop2.pass = "s3cret-two";
	r.hops = &hop2;
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 443, &r));
	ck_assert_str_ne(a.id, b.id);
	ck_assert_ptr_null(strstr(a.id, "s3cret"));
	ck_assert_ptr_null(strstr(b.id, "s3cret"));
	/* plain http:// through an HTTP parent: one key for every origin */
	ck_assert(pool_key_init(&a, &m, "http", "one.example", 80, &r));
	ck_assert(pool_key_init(&b, &m, "http", "two.example", 8080, &r));
	ck_assert(a.forward && b.forward);
	ck_assert_str_eq(a.id, b.id);
}
END_TEST

/* A tunnel's key and its chain: through the route's hops, credentials
 * included, never forwarded, no TLS of muxd's; an https:// request to the
 * same place has another key. */
START_TEST(tunnel_key_chain)
{
	struct config_hop hops[2] = {
	    {.kind = HOP_HTTP, .host = "proxy.example", .port = 3128, .user = "u", .pass = "p"},
	    {.kind = HOP_SOCKS5H, .host = "socks.example", .port = 1080},
	};
	struct route r = {.verify = true, .h2 = true, .hops = hops, .nhops = 1};
	struct pool_key t, h;
	struct chain_hop ch[CONFIG_MAX_HOPS];
	struct chain_spec sp;

	ck_assert(pool_key_init(&t, &m, "tunnel", "origin.example", 8080, &r));
	ck_assert(!t.forward && !t.tls);
	ck_assert(pool_key_init(&h, &m, "http", "origin.example", 8080, &r));
	ck_assert(h.forward);
	ck_assert(!pool_key_equal(&t, &h));
	pool_key_chain(&t, ch, &sp, 1234);
	ck_assert_uint_eq(sp.nhops, 1);
	ck_assert(!sp.forward && !sp.tls);
	ck_assert_str_eq(sp.host, "origin.example");
	ck_assert_uint_eq(sp.port, 8080);
	ck_assert_str_eq(sp.hops[0].host, "proxy.example");
	ck_assert_str_eq(sp.hops[0].user, "u");
	ck_assert_str_eq(sp.hops[0].pass, "p");
	ck_assert_uint_eq(sp.timeout_ms, 1234);
	ck_assert_ptr_null(sp.shared_hop.open);
	r.nhops = 2;
	ck_assert(pool_key_init(&t, &m, "tunnel", "origin.example", 8080, &r));
	pool_key_chain(&t, ch, &sp, 0);
	ck_assert_uint_eq(sp.nhops, 2);
	ck_assert_int_eq(sp.hops[1].kind, HOP_SOCKS5H);
	ck_assert_ptr_null(sp.hops[1].user);
	ck_assert_uint_eq(pool_key_hash(&t), pool_key_hash(&t));
}
END_TEST

/* s filled with n copies of c (and its NUL) */
static void fill(char *s, size_t n, char c)
{
	memset(s, c, n);
	s[n] = '\0';
}

/* a and b hold the same key, field by field (the bytes after a string's
 * end are not part of it: keys are made without zeroing them) */
static void same_key(const struct pool_key *a, const struct pool_key *b)
{
	ck_assert_str_eq(a->scheme, b->scheme);
	ck_assert_str_eq(a->host, b->host);
	ck_assert_str_eq(a->sni, b->sni);
	ck_assert_uint_eq(a->port, b->port);
	ck_assert(a->tls == b->tls && a->verify == b->verify && a->h3 == b->h3 &&
	          a->early_data == b->early_data);
	ck_assert_str_eq(a->ca_file, b->ca_file);
	ck_assert_str_eq(a->client_cert, b->client_cert);
	ck_assert_str_eq(a->client_key, b->client_key);
	ck_assert_uint_eq(a->nhops, b->nhops);
	for (size_t i = 0; i < a->nhops; i++) {
		ck_assert_int_eq(a->hops[i].kind, b->hops[i].kind);
		ck_assert_str_eq(a->hops[i].host, b->hops[i].host);
		ck_assert_uint_eq(a->hops[i].port, b->hops[i].port);
		ck_assert_str_eq(a->hops[i].user, b->hops[i].user);
		ck_assert_str_eq(a->hops[i].pass, b->hops[i].pass);
		ck_assert(a->hops[i].auth == b->hops[i].auth);
	}
	ck_assert_str_eq(a->proxy_ca_file, b->proxy_ca_file);
	ck_assert_str_eq(a->proxy_ca_file_id, b->proxy_ca_file_id);
	ck_assert(a->deny_loopback == b->deny_loopback && a->forward == b->forward &&
	          a->warm_ok == b->warm_ok);
	ck_assert_str_eq(a->alpn, b->alpn);
	ck_assert_str_eq(a->id, b->id);
}

/* pk unpacks to exactly key, is equal to it, hashes like it, is not equal
 * to other. */
static void check_packed(const struct pool_key *key, const struct pool_key *other)
{
	struct pool_key_packed *pk = pool_key_pack(key);
	static struct pool_key back; /* 8 KiB: not on Check's stack */

	ck_assert_ptr_nonnull(pk);
	memset(&back, 0x5a, sizeof(back));
	pool_key_unpack(pk, &back);
	ck_assert_str_eq(back.id, key->id);
	same_key(&back, key);
	ck_assert_str_eq(pk->id, key->id);
	ck_assert_str_eq(pk->host, key->host);
	ck_assert_uint_eq(pk->nhops, key->nhops);
	for (size_t i = 0; i < key->nhops; i++) {
		ck_assert_str_eq(pk->hops[i].host, key->hops[i].host);
		ck_assert_str_eq(pk->hops[i].pass, key->hops[i].pass);
	}
	ck_assert(pool_key_packed_equal(pk, key));
	ck_assert(!pool_key_packed_equal(pk, other));
	ck_assert_uint_eq(pool_key_packed_hash(pk), pool_key_hash(key));
	free(pk);
}

/* The pool's packed keys (one per origin, exact-length strings): the same
 * key after a round trip, equal and hashed by id; with every string at its
 * longest, and with hops that carry credentials. */
START_TEST(key_packed_round_trip)
{
	struct config_hop hops[2] = {
	    {.kind = HOP_HTTPS, .host = "proxy.example", .port = 3128, .user = "u", .pass = "p"},
	    {.kind = HOP_SOCKS5H, .host = "socks.example", .port = 1080},
	};
	struct route r = {.verify = true, .h2 = true, .h3 = true};
	static struct pool_key a, b, big;

	ck_assert(pool_key_init(&a, &m, "https", "example.com", 443, &r));
	ck_assert(pool_key_init(&b, &m, "https", "example.com", 8443, &r));
	check_packed(&a, &b);
	ck_assert(pool_key_init(&a, &m, "http", "127.0.0.1", 80, &r));
	check_packed(&a, &b);
	r.hops = hops;
	r.nhops = 2;
	r.proxy_ca_file = "/etc/proxy-ca.pem";
	r.proxy_ca_file_id = "proxy-ca-id";
	ck_assert(pool_key_init_sni(&a, &m, "https", "2001:db8::1", 443, "v6.example", &r));
	check_packed(&a, &b);
	ck_assert(pool_key_init(&a, &m, "tunnel", "origin.example", 8080, &r));
	check_packed(&a, &b);

	/* every string one short of its buffer, four hops with credentials */
	memset(&big, 0, sizeof(big));
	fill(big.scheme, sizeof(big.scheme) - 1, 's');
	fill(big.host, sizeof(big.host) - 1, 'h');
	fill(big.sni, sizeof(big.sni) - 1, 'n');
	fill(big.ca_file, sizeof(big.ca_file) - 1, 'c');
	fill(big.client_cert, sizeof(big.client_cert) - 1, 'e');
	fill(big.client_key, sizeof(big.client_key) - 1, 'k');
	fill(big.proxy_ca_file, sizeof(big.proxy_ca_file) - 1, 'p');
	fill(big.proxy_ca_file_id, sizeof(big.proxy_ca_file_id) - 1, 'q');
	fill(big.alpn, sizeof(big.alpn) - 1, 'a');
	fill(big.id, sizeof(big.id) - 1, 'i');
	big.nhops = sizeof(big.hops) / sizeof(big.hops[0]);
	for (size_t i = 0; i < big.nhops; i++) {
		big.hops[i].kind = (int)(i % 4);
		fill(big.hops[i].host, sizeof(big.hops[i].host) - 1, (char)('0' + i));
		big.hops[i].port = (uint16_t)(65535 - i);
		fill(big.hops[i].user, sizeof(big.hops[i].user) - 1, 'u');
		fill(big.hops[i].pass, sizeof(big.hops[i].pass) - 1, 'w');
		big.hops[i].auth = true;
	}
	big.port = 65535;
	big.tls = big.verify = big.h3 = big.early_data = true;
	big.deny_loopback = big.forward = big.warm_ok = true;
	check_packed(&big, &b);
	/* ids that differ only in their last byte */
	b = big;
	b.id[sizeof(b.id) - 2] = 'j';
	check_packed(&big, &b);
}
END_TEST

/* ---- matchmaking ---- */

START_TEST(idle_h1_reused)
{
	struct pool_key k;
	struct req r;

	peer_start(PEER_ANSWER);
	key_for(&k, "http", peer.port);
	req_start(&r, &k, false);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "first request: %s", r.reason);
	ck_assert(!r.reused);
	ck_assert_int_eq(r.status, 200);
	ck_assert_mem_eq(r.body, "ok", 2);
	/* the connection is idle now: the next request gets it */
	req_start(&r, &k, false);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "second request: %s", r.reason);
	ck_assert(r.reused);
	ck_assert_uint_eq(peer.nconns, 1);
	ck_assert_uint_eq(peer.heads, 2);
	/* a fresh-only waiter (a retry) is never given a used connection */
	req_start(&r, &k, true);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "fresh-only request: %s", r.reason);
	ck_assert(!r.reused);
	ck_assert_uint_eq(peer.nconns, 2);
}
END_TEST

/* idle_timeout counts from the last use (the idle timer is not re-armed
 * per request): a connection is not closed by the timer of an earlier idle
 * spell, neither while a request runs on it nor when it has been idle for
 * less than idle_timeout since; it is once idle_timeout passed idle. */
START_TEST(idle_timeout_from_last_use)
{
	struct pool_key k;
	struct req r;

	m.cfg->idle_timeout_ms = 1000;
	m.cfg->keep_warm = false;
	peer_start(PEER_ANSWER);
	key_for(&k, "http", peer.port);
	req_start(&r, &k, false);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "first request: %s", r.reason);
	loop_run(600);
	/* used again, and held past the first idle spell's deadline */
	peer.mode = PEER_HOLD;
	req_start(&r, &k, false);
	loop_run(600);
	ck_assert(!r.done && !r.failed);
	ck_assert_uint_eq(m.metrics.evictions[EVICT_IDLE_TIMEOUT], 0);
	peer_answer(0);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "second request: %s", r.reason);
	ck_assert(r.reused);
	loop_run(600); /* idle for less than idle_timeout */
	ck_assert_uint_eq(m.metrics.evictions[EVICT_IDLE_TIMEOUT], 0);
	ck_assert_uint_eq(m.pool->nidle, 1);
	loop_run(900); /* and now for more */
	ck_assert_uint_eq(m.metrics.evictions[EVICT_IDLE_TIMEOUT], 1);
	ck_assert_uint_eq(m.pool->nidle, 0);
	ck_assert_uint_eq(peer.nconns, 1);
}
END_TEST

/* Waiters are reused (no calloc and free per request), and the pool keeps
 * at most POOL_SPARE_WAITERS of them however many went before. */
START_TEST(spare_waiters_bounded)
{
	static struct req r[3 * POOL_SPARE_WAITERS + 3];
	size_t n = sizeof(r) / sizeof(r[0]);
	struct pool_key k;

	key_for(&k, "http", free_port());
	for (size_t i = 0; i < n; i++)
		req_start(&r[i], &k, false);
	ck_assert_uint_eq(m.pool->nspare_waiters, 0);
	for (size_t i = 0; i < n; i++)
		pool_wait_cancel(r[i].wait);
	ck_assert_uint_eq(m.pool->nspare_waiters, POOL_SPARE_WAITERS);
	req_start(&r[0], &k, false);
	ck_assert_uint_eq(m.pool->nspare_waiters, POOL_SPARE_WAITERS ? POOL_SPARE_WAITERS - 1 : 0);
	pool_wait_cancel(r[0].wait);
	ck_assert_uint_eq(m.pool->nspare_waiters, POOL_SPARE_WAITERS);
}
END_TEST

/* ---- set-up deadlines ---- */

START_TEST(tls_handshake_deadline)
{
	struct pool_key k;
	struct req r[2];
	char want[200];

	peer_start(PEER_MUTE); /* accepts TCP, never speaks TLS */
	key_for(&k, "https", peer.port);
	req_start(&r[0], &k, false);
	req_start(&r[1], &k, false); /* waits for the same connection */
	req_run(&r[0], 5000);
	req_run(&r[1], 2000);
	snprintf(want, sizeof(want), "TLS handshake with 127.0.0.1:%u timed out after 300 ms",
	         peer.port);
	for (int i = 0; i < 2; i++) {
		ck_assert_msg(r[i].failed, "waiter %d has no answer", i);
		ck_assert_int_eq(r[i].err, ERR_CONNECT_TIMEOUT);
		ck_assert_msg(strstr(r[i].reason, want), "reason: %s", r[i].reason);
	}
	ck_assert_int_eq(muxd_err_status(r[0].err), 504);
	/* the attempt's slot is free: nothing left in the pool, and the next
	 * request makes a new attempt (which times out the same way) */
	ck_assert_uint_eq(pool_conns(), 0);
	req_start(&r[0], &k, false);
	req_run(&r[0], 5000);
	ck_assert(r[0].failed && r[0].err == ERR_CONNECT_TIMEOUT);
	ck_assert_uint_eq(peer.nconns, 2);
}
END_TEST

/* A parent that never answers: the chain names the hop and the step. */
static void mute_parent(int kind, const char *step)
{
	struct config_hop hop = {.kind = kind, .host = "127.0.0.1"};
	struct route r = {.verify = true, .hops = &hop, .nhops = 1};
	struct pool_key k;
	struct req q;
	char want[200];

	peer_start(PEER_MUTE);
	hop.port = peer.port;
	ck_assert(pool_key_init(&k, &m, "https", "origin.example", 443, &r));
	req_start(&q, &k, false);
	req_run(&q, 5000);
	snprintf(want, sizeof(want), "%s via proxy 127.0.0.1:%u timed out after 300 ms", step,
	         peer.port);
	ck_assert_msg(q.failed, "no answer");
	ck_assert_int_eq(q.err, ERR_CONNECT_TIMEOUT);
	ck_assert_msg(strstr(q.reason, want), "reason: %s", q.reason);
	ck_assert_uint_eq(pool_conns(), 0);
}

START_TEST(connect_via_parent_deadline)
{
	mute_parent(HOP_HTTP, "CONNECT");
}
END_TEST

START_TEST(socks5_deadline)
{
	mute_parent(HOP_SOCKS5H, "SOCKS5");
}
END_TEST

/* A deadline that passed while the set-up is done does not fire later:
 * an answering origin, then longer than connect_timeout on the connection. */
START_TEST(no_deadline_once_up)
{
	struct pool_key k;
	struct req r;

	peer_start(PEER_HOLD);
	key_for(&k, "http", peer.port);
	req_start(&r, &k, false);
	ck_assert(loop_run(600)); /* twice connect_timeout, the head unanswered */
	ck_assert(r.got_stream && !r.failed);
	peer_answer(0);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "%s", r.reason);
	ck_assert_int_eq(r.status, 200);
}
END_TEST

/* ---- waiting for capacity ---- */

START_TEST(cap_waiter_gets_503)
{
	struct pool_key k;
	struct req a, b;

	m.cfg->max_h1_per_origin = 1;
	peer_start(PEER_HOLD);
	key_for(&k, "http", peer.port);
	req_start(&a, &k, false);
	for (int i = 0; i < 100 && peer.heads == 0; i++)
		loop_run(50);
	ck_assert(a.got_stream && peer.heads == 1);
	req_start(&b, &k, false); /* the one connection is busy */
	req_run(&b, 5000);
	ck_assert_msg(b.failed, "the waiter got no answer");
	ck_assert_int_eq(b.err, ERR_BUDGET);
	ck_assert_int_eq(muxd_err_status(b.err), 503);
	ck_assert_msg(strstr(b.reason, "max_h1_per_origin"), "reason: %s", b.reason);
	ck_assert_msg(strstr(b.reason, "300 ms"), "reason: %s", b.reason);
	ck_assert_uint_eq(peer.nconns, 1);
	ck_assert(!a.failed);
	req_cleanup(&a);
}
END_TEST

START_TEST(cap_waiter_served_when_freed)
{
	struct pool_key k;
	struct req a, b;

	m.cfg->max_h1_per_origin = 1;
	peer_start(PEER_HOLD);
	key_for(&k, "http", peer.port);
	req_start(&a, &k, false);
	req_start(&b, &k, false);
	for (int i = 0; i < 100 && peer.heads == 0; i++)
		loop_run(50);
	ck_assert(a.got_stream && !b.got_stream);
	peer_answer(0); /* well within connect_timeout */
	req_run(&a, 5000);
	ck_assert(a.done);
	for (int i = 0; i < 100 && peer.heads < 2 && !b.failed; i++)
		loop_run(50);
	ck_assert_msg(!b.failed, "%s", b.reason);
	ck_assert(b.got_stream && b.reused);
	peer_answer(0);
	req_run(&b, 5000);
	ck_assert(b.done);
	ck_assert_uint_eq(peer.nconns, 1);
}
END_TEST

/* ---- client tunnels (pool_open_tunnel) ---- */

struct tun {
	struct transport *t;
	bool connected, failed, eof;
	enum muxd_err err;
	char reason[700];
	char got[64];
	size_t got_len;
};

static void tun_read(void *ctx)
{
	struct tun *u = ctx;
	struct evbuffer *in = transport_input(u->t);
	size_t n = evbuffer_get_length(in);

	if (n > sizeof(u->got) - u->got_len)
		n = sizeof(u->got) - u->got_len;
	evbuffer_remove(in, u->got + u->got_len, n);
	u->got_len += n;
	event_base_loopbreak(m.base);
}

static void tun_drain(void *ctx)
{
	(void)ctx;
}

static void tun_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct tun *u = ctx;

	if (ev == TRANSPORT_CONNECTED) {
		u->connected = true;
	} else if (ev == TRANSPORT_EOF) {
		u->eof = true;
	} else {
		u->failed = true;
		u->err = err;
		snprintf(u->reason, sizeof(u->reason), "%s", reason ? reason : "");
	}
	event_base_loopbreak(m.base);
}

static const struct transport_cbs tun_cbs = {tun_read, tun_drain, tun_event};

/* A tunnel to host:port along r (default: the configured route). */
static void tun_open(struct tun *u, const char *host, uint16_t port, const struct route *r)
{
	struct route def;

	memset(u, 0, sizeof(*u));
	if (!r) {
		route_for(m.cfg, host, port, &def);
		r = &def;
	}
	u->t = pool_open_tunnel(m.pool, r, host, port, &tun_cbs, u);
	ck_assert_ptr_nonnull(u->t);
	ck_assert(!u->connected && !u->failed); /* never from inside the call */
}

static void tun_run(struct tun *u, int ms)
{
	for (int spent = 0; !u->connected && !u->failed && spent < ms; spent += 50)
		loop_run(50);
}

static void tun_close(struct tun *u)
{
	if (u->t)
		transport_close(u->t);
	u->t = NULL;
}

static unsigned active_tunnels(void)
{
	struct pool_counts c;
	pool_count(m.pool, &c);
	return c.active[PROTO_TUNNEL];
}

/* A parent that never answers a client tunnel: connect_timeout bounds it,
 * naming the step (via an https:// parent: the shared connection's TLS
 * handshake or the CONNECT stream, whichever deadline passes first). */
static void mute_parent_tunnel(int kind, const char *step)
{
	struct config_hop hop = {.kind = kind, .host = "127.0.0.1"};
	struct route r = {.verify = true, .hops = &hop, .nhops = 1};
	struct tun u;
	char want[200];

	peer_start(PEER_MUTE);
	hop.port = peer.port;
	tun_open(&u, "origin.example", 443, &r);
	tun_run(&u, 5000);
	ck_assert_msg(u.failed, "no answer");
	ck_assert_int_eq(u.err, ERR_CONNECT_TIMEOUT);
	ck_assert_int_eq(muxd_err_status(u.err), 504);
	if (step) {
		snprintf(want, sizeof(want), "%s via proxy 127.0.0.1:%u timed out after 300 ms",
		         step, peer.port);
		ck_assert_msg(strstr(u.reason, want), "reason: %s", u.reason);
	} else {
		snprintf(want, sizeof(want), "127.0.0.1:%u", peer.port);
		ck_assert_msg(strstr(u.reason, want), "reason: %s", u.reason);
		ck_assert_msg(strstr(u.reason, "timed out after 300 ms"), "reason: %s", u.reason);
	}
	ck_assert_uint_eq(peer.nconns, 1);
	ck_assert_uint_eq(m.metrics.upstream_opened[PROTO_TUNNEL], 0);
	tun_close(&u);
	ck_assert_uint_eq(pool_conns(), 0);
	ck_assert_uint_eq(active_tunnels(), 0);
}

START_TEST(tunnel_mute_http_parent_deadline)
{
	mute_parent_tunnel(HOP_HTTP, "CONNECT");
}
END_TEST

START_TEST(tunnel_mute_socks5_parent_deadline)
{
	mute_parent_tunnel(HOP_SOCKS5H, "SOCKS5");
}
END_TEST

START_TEST(tunnel_mute_https_parent_deadline)
{
	mute_parent_tunnel(HOP_HTTPS, NULL);
}
END_TEST

/* A direct tunnel carries bytes both ways and counts as an upstream
 * connection: opened once, active while open. */
START_TEST(tunnel_direct_counts)
{
	static const char head[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	struct tun u;

	peer_start(PEER_ANSWER);
	tun_open(&u, "127.0.0.1", peer.port, NULL);
	tun_run(&u, 5000);
	ck_assert_msg(u.connected, "%s", u.reason);
	ck_assert_uint_eq(m.metrics.upstream_opened[PROTO_TUNNEL], 1);
	ck_assert_uint_eq(active_tunnels(), 1);
	evbuffer_add(transport_output(u.t), head, sizeof(head) - 1);
	for (int i = 0; i < 100 && !memmem(u.got, u.got_len, "ok", 2); i++)
		loop_run(50);
	ck_assert_msg(memmem(u.got, u.got_len, "\r\n\r\nok", 6), "got %zu bytes", u.got_len);
	tun_close(&u);
	ck_assert_uint_eq(active_tunnels(), 0);
	ck_assert_uint_eq(pool_conns(), 0); /* a tunnel is not a pooled connection */
}
END_TEST

/* max_connections = 1 held by a tunnel: the next tunnel waits
 * connect_timeout, then gets 503; a pooled request does too; once the
 * first tunnel is closed the slot is free again. */
START_TEST(tunnel_budget_503)
{
	struct tun a, b;
	struct pool_key k;
	struct req r;

	m.cfg->max_connections = 1;
	peer_start(PEER_ANSWER);
	tun_open(&a, "127.0.0.1", peer.port, NULL);
	tun_run(&a, 5000);
	ck_assert_msg(a.connected, "%s", a.reason);
	tun_open(&b, "127.0.0.1", peer.port, NULL);
	tun_run(&b, 5000);
	ck_assert_msg(b.failed, "the waiting tunnel got no answer");
	ck_assert_int_eq(b.err, ERR_BUDGET);
	ck_assert_int_eq(muxd_err_status(b.err), 503);
	ck_assert_msg(strstr(b.reason, "upstream connection limit reached; waited 300 ms"),
	              "reason: %s", b.reason);
	tun_close(&b);
	key_for(&k, "http", peer.port);
	req_start(&r, &k, false);
	req_run(&r, 5000);
	ck_assert(r.failed && r.err == ERR_BUDGET);
	ck_assert_uint_eq(peer.nconns, 1);
	tun_close(&a);
	ck_assert_uint_eq(active_tunnels(), 0);
	tun_open(&b, "127.0.0.1", peer.port, NULL);
	tun_run(&b, 5000);
	ck_assert_msg(b.connected, "%s", b.reason);
	tun_close(&b);
}
END_TEST

/* A tunnel waiting for the budget gets the slot once it is freed; one
 * closed while it waits is simply gone. */
START_TEST(tunnel_budget_freed)
{
	struct tun a, b, c;

	m.cfg->max_connections = 1;
	m.cfg->connect_timeout_ms = 5000;
	peer_start(PEER_ANSWER);
	tun_open(&a, "127.0.0.1", peer.port, NULL);
	tun_run(&a, 5000);
	ck_assert_msg(a.connected, "%s", a.reason);
	tun_open(&c, "127.0.0.1", peer.port, NULL);
	tun_open(&b, "127.0.0.1", peer.port, NULL);
	loop_run(100);
	ck_assert(!b.connected && !b.failed && !c.connected && !c.failed);
	tun_close(&c); /* leaves the queue */
	tun_close(&a);
	tun_run(&b, 2000);
	ck_assert_msg(b.connected, "%s", b.failed ? b.reason : "still waiting");
	ck_assert_uint_eq(peer.nconns, 2);
	ck_assert_uint_eq(m.metrics.upstream_opened[PROTO_TUNNEL], 2);
	tun_close(&b);
}
END_TEST

/* An idle pooled connection is evicted to make room for a tunnel. */
START_TEST(tunnel_evicts_idle)
{
	struct pool_key k;
	struct req r;
	struct tun u;

	m.cfg->max_connections = 1;
	peer_start(PEER_ANSWER);
	key_for(&k, "http", peer.port);
	req_start(&r, &k, false);
	req_run(&r, 5000);
	ck_assert_msg(r.done, "%s", r.reason);
	loop_run(50); /* the connection goes idle */
	ck_assert_uint_eq(pool_conns(), 1);
	tun_open(&u, "127.0.0.1", peer.port, NULL);
	tun_run(&u, 5000);
	ck_assert_msg(u.connected, "%s", u.reason);
	ck_assert_uint_eq(pool_conns(), 0);
	ck_assert_uint_eq(m.metrics.evictions[EVICT_LIMIT], 1);
	tun_close(&u);
}
END_TEST

/* ---- keep-warm ---- */

START_TEST(warm_rate_decay)
{
	double r = 0;

	/* one request adds 0.2 a minute (60 s over a 5 min time constant) */
	ck_assert_double_eq_tol(pool_rate_hit(0, 0), 0.2, 1e-9);
	/* a time constant later, e^-1 of it is left; after an hour, nothing */
	ck_assert_double_eq_tol(pool_rate_decay(1.0, 300), 0.367879, 0.002);
	ck_assert_double_eq_tol(pool_rate_decay(1.0, 30), 0.904837, 0.002);
	ck_assert_double_lt(pool_rate_decay(1.0, 3600), 1e-5);
	ck_assert_double_eq(pool_rate_decay(1.0, 0), 1.0);
	/* eight at once read 1.6 */
	for (int i = 0; i < 8; i++)
		r = pool_rate_hit(r, 0);
	ck_assert_double_eq_tol(r, 1.6, 1e-9);
	/* a steady rate reads itself: one request a minute for an hour */
	r = 0;
	for (int i = 0; i < 60; i++)
		r = pool_rate_hit(r, 60);
	ck_assert_double_eq_tol(r, 1.1, 0.1);
	/* and four a minute */
	r = 0;
	for (int i = 0; i < 240; i++)
		r = pool_rate_hit(r, 15);
	ck_assert_double_eq_tol(r, 4.1, 0.15);
}
END_TEST

/* The pool keeps its keys packed (pool_key_pack): the checks below on full keys. */
static bool warm_eligible(const struct pool_key *key, double rate, unsigned nwarm)
{
	struct pool_key_packed *pk = pool_key_pack(key);
	bool yes;

	ck_assert_ptr_nonnull(pk);
	yes = pool_warm_eligible(m.cfg, pk, rate, nwarm);
	free(pk);
	return yes;
}

static bool coalescable(const struct pool_key *conn, const struct pool_key *req)
{
	struct pool_key_packed *a = pool_key_pack(conn), *b = pool_key_pack(req);
	bool yes;

	ck_assert(a && b);
	yes = pool_key_coalescable(a, b);
	free(a);
	free(b);
	return yes;
}

START_TEST(warm_selection)
{
	struct route r = {.verify = true, .h2 = true};
	struct pool_key k, off, tunnel;

	ck_assert(pool_key_init(&k, &m, "https", "example.com", 443, &r));
	ck_assert(pool_key_init(&tunnel, &m, "tunnel", "example.com", 443, &r));
	r.verify = false;
	ck_assert(pool_key_init(&off, &m, "https", "example.com", 443, &r));
	m.cfg->keep_warm = true;
	m.cfg->keep_warm_min_rate = 2;
	m.cfg->keep_warm_max = 3;
	/* hot enough, room left */
	ck_assert(warm_eligible(&k, 2.0, 0));
	ck_assert(warm_eligible(&k, 5.0, 2));
	/* too cold; keep_warm_max reached */
	ck_assert(!warm_eligible(&k, 1.99, 0));
	ck_assert(!warm_eligible(&k, 5.0, 3));
	/* never with verify = off, never for tunnels */
	ck_assert(!warm_eligible(&off, 100, 0));
	ck_assert(!warm_eligible(&tunnel, 100, 0));
	/* keep_warm = off; keep_warm_max = 0 */
	m.cfg->keep_warm = false;
	ck_assert(!warm_eligible(&k, 100, 0));
	m.cfg->keep_warm = true;
	m.cfg->keep_warm_max = 0;
	ck_assert(!warm_eligible(&k, 100, 0));
	/* the liveness interval: idle_timeout / 2, 30 s at most */
	m.cfg->idle_timeout_ms = 90000;
	ck_assert_uint_eq(pool_warm_interval(m.cfg), 30000);
	m.cfg->idle_timeout_ms = 1000;
	ck_assert_uint_eq(pool_warm_interval(m.cfg), 500);
}
END_TEST

struct warm_seen {
	const char *host;
	unsigned n, warm;
};

static void see_conn(void *arg, const struct pool_conn_info *c)
{
	struct warm_seen *w = arg;
	if (strcmp(c->host, w->host) == 0) {
		w->n++;
		w->warm += c->warm;
	}
}

static struct warm_seen seen(const char *host)
{
	struct warm_seen w = {host, 0, 0};
	pool_foreach_conn(m.pool, see_conn, &w);
	return w;
}

static void requests(const char *host, uint16_t port, unsigned n)
{
	struct route rt;
	struct pool_key k;
	struct req r;

	route_for(m.cfg, host, port, &rt);
	ck_assert(pool_key_init(&k, &m, "http", host, port, &rt));
	for (unsigned i = 0; i < n; i++) {
		req_start(&r, &k, false);
		req_run(&r, 5000);
		ck_assert_msg(r.done, "request %u to %s: %s", i, host, r.reason);
	}
}

/* A hot key keeps its idle connection past idle_timeout, a cold one does
 * not; when the origin closes the warm connection, a new one is opened in
 * the background; a key whose keep-warm went off loses it at the next
 * idle expiry. */
START_TEST(warm_keeps_hot_key)
{
	struct warm_seen w;

	m.cfg->idle_timeout_ms = 150;
	m.cfg->keep_warm_min_rate = 1;
	peer_start(PEER_ANSWER);
	requests("127.0.0.1", peer.port, 8); /* 1.6 a minute: hot */
	requests("localhost", peer.port, 1); /* 0.2: cold */
	ck_assert_uint_eq(peer.nconns, 2);
	loop_run(700); /* several idle timeouts */
	w = seen("localhost");
	ck_assert_uint_eq(w.n, 0);
	w = seen("127.0.0.1");
	ck_assert_uint_eq(w.n, 1);
	ck_assert_uint_eq(w.warm, 1);
	ck_assert_uint_eq(pool_keep_warm_count(m.pool), 1);
	ck_assert_uint_eq(m.metrics.evictions[EVICT_IDLE_TIMEOUT], 1);

	/* the origin closes it: another one, in the background */
	bufferevent_free(peer.conns[0]);
	peer.conns[0] = NULL;
	for (int i = 0; i < 20 && m.metrics.keep_warm_reconnects == 0; i++)
		loop_run(50);
	ck_assert_uint_eq(m.metrics.keep_warm_reconnects, 1);
	ck_assert_uint_eq(peer.nconns, 3);
	w = seen("127.0.0.1");
	ck_assert_uint_eq(w.n, 1);
	ck_assert_uint_eq(w.warm, 1);
	/* and a request uses it */
	requests("127.0.0.1", peer.port, 1);
	ck_assert_uint_eq(peer.nconns, 3);

	/* keep-warm goes off: the next idle expiry closes it */
	m.cfg->keep_warm = false;
	loop_run(400);
	ck_assert_uint_eq(seen("127.0.0.1").n, 0);
	ck_assert_uint_eq(pool_keep_warm_count(m.pool), 0);
}
END_TEST

/* ---- coalescing ---- */

START_TEST(coalesce_keys)
{
	struct config_hop hop = {.kind = HOP_HTTP, .host = "proxy.example", .port = 3128};
	struct route r = {.verify = true, .h2 = true, .h3 = true};
	struct pool_key a, b, x;

	ck_assert(pool_key_init(&a, &m, "https", "a.example", 443, &r));
	ck_assert(pool_key_init(&b, &m, "https", "b.example", 443, &r));
	/* the same but for the host: yes, both ways; not a key with itself */
	ck_assert(coalescable(&a, &b));
	ck_assert(coalescable(&b, &a));
	ck_assert(!coalescable(&a, &a));
	/* another port, plain http, verification off, no h2, other trust
	 * anchors, through a parent: no */
	ck_assert(pool_key_init(&x, &m, "https", "b.example", 8443, &r));
	ck_assert(!coalescable(&a, &x));
	ck_assert(pool_key_init(&x, &m, "http", "b.example", 443, &r));
	ck_assert(!coalescable(&a, &x));
	r.verify = false;
	ck_assert(pool_key_init(&x, &m, "https", "b.example", 443, &r));
	ck_assert(!coalescable(&a, &x));
	r.verify = true;
	r.h2 = false;
	ck_assert(pool_key_init(&x, &m, "https", "b.example", 443, &r));
	ck_assert(!coalescable(&a, &x));
	r.h2 = true;
	r.ca_file = "/nonexistent/ca.pem";
	r.ca_file_id = "ca-id-1";
	ck_assert(pool_key_init(&x, &m, "https", "b.example", 443, &r));
	ck_assert(!coalescable(&a, &x));
	r.ca_file = NULL;
	r.ca_file_id = NULL;
	r.hops = &hop;
	r.nhops = 1;
	ck_assert(pool_key_init(&x, &m, "https", "b.example", 443, &r));
	ck_assert(pool_key_init(&a, &m, "https", "a.example", 443, &r));
	ck_assert(!coalescable(&a, &x)); /* equal chains, but not direct */
	/* a key named by another SNI than its host (an address) does not share */
	r.hops = NULL;
	r.nhops = 0;
	ck_assert(pool_key_init(&a, &m, "https", "a.example", 443, &r));
	ck_assert(pool_key_init_sni(&x, &m, "https", "192.0.2.1", 443, "b.example", &r));
	ck_assert(!coalescable(&a, &x));
}
END_TEST

/* A self-signed certificate for names, as DER (gnutls_free it). */
static gnutls_datum_t make_cert(const char *const *names, size_t n)
{
	gnutls_x509_privkey_t key;
	gnutls_x509_crt_t crt;
	gnutls_datum_t der = {NULL, 0};
	time_t now = time(NULL);

	ck_assert_int_ge(gnutls_x509_privkey_init(&key), 0);
	ck_assert_int_ge(
	    gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
	                                 GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
	    0);
	ck_assert_int_ge(gnutls_x509_crt_init(&crt), 0);
	ck_assert_int_ge(gnutls_x509_crt_set_version(crt, 3), 0);
	ck_assert_int_ge(gnutls_x509_crt_set_serial(crt, "\x01", 1), 0);
	ck_assert_int_ge(gnutls_x509_crt_set_activation_time(crt, now - 60), 0);
	ck_assert_int_ge(gnutls_x509_crt_set_expiration_time(crt, now + 3600), 0);
	ck_assert_int_ge(gnutls_x509_crt_set_key(crt, key), 0);
	for (size_t i = 0; i < n; i++) {
		unsigned char ip[16];
		if (strncmp(names[i], "ip:", 3) == 0) { /* an IPv4 address SAN */
			ck_assert_int_eq(inet_pton(AF_INET, names[i] + 3, ip), 1);
			ck_assert_int_ge(gnutls_x509_crt_set_subject_alt_name(
			                     crt, GNUTLS_SAN_IPADDRESS, ip, 4, GNUTLS_FSAN_APPEND),
			                 0);
			continue;
		}
		ck_assert_int_ge(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME,
		                                                      names[i], strlen(names[i]),
		                                                      GNUTLS_FSAN_APPEND),
		                 0);
	}
	ck_assert_int_ge(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), 0);
	ck_assert_int_ge(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), 0);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
	return der;
}

START_TEST(coalesce_cert_and_address)
{
	static const char *const names[] = {"a.example", "b.example", "*.wild.example"};
	gnutls_datum_t der = make_cert(names, 3);
	struct sockaddr_storage peer, addrs[3];
	struct sockaddr_in *p4 = (struct sockaddr_in *)&peer;

	ck_assert(pool_cert_covers(der.data, der.size, "a.example"));
	ck_assert(pool_cert_covers(der.data, der.size, "B.example"));
	ck_assert(pool_cert_covers(der.data, der.size, "x.wild.example"));
	ck_assert(!pool_cert_covers(der.data, der.size, "c.example"));
	ck_assert(!pool_cert_covers(der.data, der.size, "a.b.wild.example"));
	ck_assert(!pool_cert_covers(der.data, 10, "a.example")); /* not a certificate */
	ck_assert(!pool_cert_covers(NULL, 0, "a.example"));
	gnutls_free(der.data);

	memset(&peer, 0, sizeof(peer));
	memset(addrs, 0, sizeof(addrs));
	p4->sin_family = AF_INET;
	p4->sin_port = htons(443);
	inet_pton(AF_INET, "192.0.2.7", &p4->sin_addr);
	((struct sockaddr_in6 *)&addrs[0])->sin6_family = AF_INET6;
	inet_pton(AF_INET6, "2001:db8::7", &((struct sockaddr_in6 *)&addrs[0])->sin6_addr);
	((struct sockaddr_in *)&addrs[1])->sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.8", &((struct sockaddr_in *)&addrs[1])->sin_addr);
	((struct sockaddr_in *)&addrs[2])->sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.7", &((struct sockaddr_in *)&addrs[2])->sin_addr);
	/* the port does not matter (a name resolves to addresses, not ports) */
	ck_assert(pool_addr_listed(&peer, addrs, 3));
	ck_assert(!pool_addr_listed(&peer, addrs, 2));
	ck_assert(!pool_addr_listed(&peer, addrs, 0));
}
END_TEST

/* The compact certificate the pool keeps per connection (pool_cert_new):
 * covers exactly what the full certificate covers. */
START_TEST(coalesce_cert_compact)
{
	static const char *const names[] = {"a.example", "B.Example", "*.wild.example",
	                                    "ip:192.0.2.7"};
	static const char *const hosts[] = {
	    "a.example", "b.example",       "x.wild.example", "wild.example", "a.b.wild.example",
	    "c.example", "xa.example",      "192.0.2.7",      "192.0.2.8",    "example",
	    "A.EXAMPLE", "x.wild.example.", ".wild.example",  "b.example.com"};
	gnutls_datum_t der = make_cert(names, 4);
	struct pool_cert *c = pool_cert_new(der.data, der.size);

	ck_assert_ptr_nonnull(c);
	for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++)
		ck_assert_msg(pool_cert_serves(c, hosts[i]) ==
		                  pool_cert_covers(der.data, der.size, hosts[i]),
		              "%s", hosts[i]);
	ck_assert(pool_cert_serves(c, "a.example"));
	ck_assert(pool_cert_serves(c, "x.wild.example"));
	ck_assert(pool_cert_serves(c, "192.0.2.7"));
	ck_assert(!pool_cert_serves(c, "c.example"));
	pool_cert_free(c);
	ck_assert_ptr_null(pool_cert_new(der.data, 10)); /* not a certificate */
	ck_assert_ptr_null(pool_cert_new(NULL, 0));
	gnutls_free(der.data);
	c = pool_cert_new(NULL, 0);
	pool_cert_free(c);        /* NULL: nothing */
	der = make_cert(NULL, 0); /* no names at all */
	ck_assert_ptr_nonnull(c = pool_cert_new(der.data, der.size));
	ck_assert(!pool_cert_serves(c, "a.example"));
	pool_cert_free(c);
	gnutls_free(der.data);
}
END_TEST

static Suite *pool_suite(void)
{
	Suite *s = suite_create("pool");
	TCase *t = tcase_create("pool");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_set_timeout(t, 30);
	tcase_add_test(t, key_equality);
	tcase_add_test(t, tunnel_key_chain);
	tcase_add_test(t, key_packed_round_trip);
	tcase_add_test(t, idle_h1_reused);
	tcase_add_test(t, spare_waiters_bounded);
	tcase_add_test(t, idle_timeout_from_last_use);
	tcase_add_test(t, tls_handshake_deadline);
	tcase_add_test(t, connect_via_parent_deadline);
	tcase_add_test(t, socks5_deadline);
	tcase_add_test(t, no_deadline_once_up);
	tcase_add_test(t, cap_waiter_gets_503);
	tcase_add_test(t, cap_waiter_served_when_freed);
	tcase_add_test(t, tunnel_mute_http_parent_deadline);
	tcase_add_test(t, tunnel_mute_socks5_parent_deadline);
	tcase_add_test(t, tunnel_mute_https_parent_deadline);
	tcase_add_test(t, tunnel_direct_counts);
	tcase_add_test(t, tunnel_budget_503);
	tcase_add_test(t, tunnel_budget_freed);
	tcase_add_test(t, tunnel_evicts_idle);
	tcase_add_test(t, warm_rate_decay);
	tcase_add_test(t, warm_selection);
	tcase_add_test(t, warm_keeps_hot_key);
	tcase_add_test(t, coalesce_keys);
	tcase_add_test(t, coalesce_cert_compact);
	tcase_add_test(t, coalesce_cert_and_address);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return run_suite(pool_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
