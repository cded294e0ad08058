/*
 * h3origin — a scriptable HTTP/3 origin for muxd's integration tests only
 * (ngtcp2 + ngtcp2_crypto_gnutls + nghttp3 + GnuTLS + libevent, the
 * libraries muxd uses). Not part of muxd.
 *
 *   h3origin CERT KEY [PORT [DIR]]   (PORT 0 or absent: an ephemeral one)
 *
 * Listens on UDP 127.0.0.1, ALPN h3, prints "port N" on stdout once ready.
 * Logs "conn N" for every new QUIC connection and "request N METHOD PATH"
 * for every request (N: the connection's number) on stderr, so a test can
 * tell whether two requests shared a connection.  The behaviour is chosen
 * by the request's :path:
 *
 *   /sse?first=W     200 text/event-stream: "data: W\n\n" (W: 1 by default)
 *                    at once, then one event per line read on stdin
 *                    ("data: LINE\n\n"); the line "end" ends the stream
 *                    ("release" is no event: see /held).
 *                    No timing needed.
 *   /status/N        an empty response with status N (204, 304, ...)
 *   /echo            the request body back, after the whole body; with
 *                    Expect: 100-continue a 100 head first
 *   /interim?n=N&kib=K  N 103 heads (a link field of K KiB each), then
 *                    200 "ok"
 *   /bigheader?kib=K 200 "ok" with an x-big header of K KiB
 *   /reset           the stream is reset (H3_INTERNAL_ERROR), no response
 *   /noread          no answer, and the request body is never consumed:
 *                    the stream's flow-control window stays closed
 *   /held            no answer until the line "release" on stdin, then
 *                    200 "ok" (a request the origin has not processed yet)
 *   /stop            STOP_SENDING (H3_NO_ERROR) on the request stream at
 *                    once, then 200 "ok": the upload is refused, the
 *                    response is complete (RFC 9114 4.1)
 *
 * Floods (issue 16), written raw with ngtcp2 where nghttp3 cannot make
 * them; each logs "flood N KIND done" on stderr once all of it was handed
 * to ngtcp2 (N: the connection):
 *   /ctrlflood?n=N   N reserved frames (type 0x21, empty) on the server's
 *                    control stream, after nghttp3's SETTINGS there (nghttp3
 *                    writes there again only for a GOAWAY, never sent
 *                    here); then 200 "ok" on the request stream
 *   /goawayflood?n=N&id=I  N GOAWAY frames, all with stream id I (default
 *                    4000: not increasing, valid), on the control stream
 *   /greasestream?mib=M  a unidirectional stream of reserved type 0x21 with
 *                    M MiB (default 32) of bytes after its type, then 200
 *                    "ok" on the request stream
 *   /unistreams?n=N  N unidirectional streams of reserved type 0x21, each
 *                    of 16 bytes and FIN, opened as fast as the client's
 *                    MAX_STREAMS allows ("unistreams N K" on stderr: K open
 *                    so far, each time the limit stops it); 200 "blocked K"
 *                    the first time the limit stops it, else "opened N"
 *   /emptydata?n=N   a raw response: HEADERS (:status 200), N empty DATA
 *                    frames (default 100000), DATA "ok", FIN
 *   /NAME            with a DIR argument, when DIR/NAME or DIR/NAME.head
 *                    exists: answered after the whole request body (with
 *                    Expect: 100-continue a 100 first), body DIR/NAME,
 *                    head DIR/NAME.head: the status on its first line, then
 *                    "name: value" lines (default 200, content-length)
 *   anything else    200 "ok" (HEAD: no body)
 *
 * One connection per client address; everything is in memory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE"
#define STREAM_WINDOW (256 * 1024)
#define CONN_WINDOW (4 * 1024 * 1024)
#define ECHO_MAX (16 * 1024 * 1024)
#define SSE_MAX (64 * 1024)

enum mode {
	M_OK,
	M_SSE,
	M_STATUS,
	M_ECHO,
	M_INTERIM,
	M_BIGHEADER,
	M_RESET,
	M_NOREAD,
	M_FILE,
	M_RAW,
	M_HELD
};

struct conn;

/* One request stream.  Body bytes handed to nghttp3 stay put until the
 * stream closes (nghttp3 does not copy them): buf never moves once a
 * response using it has been submitted (echo: complete first; sse: fixed
 * size). */
struct stream {
	struct stream *next;
	struct conn *c;
	int64_t id;
	char method[16], path[512];
	bool expect100, eof;
	enum mode mode;
	uint8_t *buf;
	size_t len, cap, sent;
};

/* A stream written raw with ngtcp2, nghttp3 unaware: head, then units
 * copies of a unit, then tail, then FIN (fin).  Bytes below base (the
 * control stream: nghttp3's own) are nghttp3's.  rep holds the unit
 * repeated, so that one write takes many; every buffer stays until the
 * connection is freed (ngtcp2 keeps pointers until acknowledged). */
struct raw {
	struct raw *next;
	int64_t id;
	uint64_t base, off, total; /* off: bytes written of head+units+tail */
	uint8_t *head, *rep, *tail;
	size_t headlen, unitlen, replen, taillen;
	uint64_t units;
	bool fin, blocked, done;
	const char *kind; /* logged when done, or NULL */
};

struct conn {
	struct conn *next;
	unsigned num;
	struct sockaddr_storage peer;
	socklen_t peerlen;
	ngtcp2_conn *q;
	nghttp3_conn *h3;
	gnutls_session_t tls;
	ngtcp2_crypto_conn_ref ref;
	struct event *timer;
	struct stream *streams;
	bool dead;
	int64_t ctrl;          /* nghttp3's control stream */
	uint64_t ctrl_written; /* ... bytes nghttp3 wrote there */
	struct raw *raws;
	long uni_want, uni_opened; /* /unistreams */
	struct stream *uni_req;    /* answered when all are opened */
};

/* The program's state (a test tool: one instance per process). */
static struct {
	struct event_base *base;
	int fd;
	struct sockaddr_in local;
	gnutls_certificate_credentials_t cred;
	struct conn *conns;
	unsigned nconns;
	const char *dir; /* response files (see the top), or NULL */
} S;

static ngtcp2_tstamp now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NGTCP2_SECONDS + (uint64_t)ts.tv_nsec;
}

static long qint(const char *path, const char *key, long def)
{
	const char *p = strstr(path, key);
	return p ? strtol(p + strlen(key), NULL, 10) : def;
}

/* --- connections: freeing, writing, timers --- */

static void conn_free(struct conn *c)
{
	struct conn **pp;

	for (pp = &S.conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	while (c->streams) {
		struct stream *s = c->streams;
		c->streams = s->next;
		free(s->buf);
		free(s);
	}
	while (c->raws) {
		struct raw *r = c->raws;
		c->raws = r->next;
		free(r->head);
		free(r->rep);
		free(r->tail);
		free(r);
	}
	if (c->h3)
		nghttp3_conn_del(c->h3);
	if (c->q)
		ngtcp2_conn_del(c->q);
	if (c->tls)
		gnutls_deinit(c->tls);
	if (c->timer)
		event_free(c->timer);
	free(c);
}

static void send_pkt(struct conn *c, const uint8_t *p, size_t n)
{
	while (sendto(S.fd, p, n, 0, (struct sockaddr *)&c->peer, c->peerlen) < 0 && errno == EINTR)
		;
}

/* Send CONNECTION_CLOSE (when possible) and drop the connection. */
static void conn_close(struct conn *c, int liberr)
{
	uint8_t buf[1500];
	ngtcp2_connection_close_error ce;
	ngtcp2_ssize n;

	if (liberr != NGTCP2_ERR_DRAINING && liberr != NGTCP2_ERR_IDLE_CLOSE &&
	    !ngtcp2_conn_is_in_closing_period(c->q) && !ngtcp2_conn_is_in_draining_period(c->q)) {
		ngtcp2_connection_close_error_set_transport_error_liberr(&ce, liberr, NULL, 0);
		n = ngtcp2_conn_write_connection_close(c->q, NULL, NULL, buf, sizeof(buf), &ce,
		                                       now());
		if (n > 0)
			send_pkt(c, buf, (size_t)n);
	}
	conn_free(c);
}

static void arm_timer(struct conn *c)
{
	ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(c->q), t = now();
	uint64_t ns = exp > t ? exp - t : 0;
	struct timeval tv = {(time_t)(ns / NGTCP2_SECONDS),
	                     (suseconds_t)((ns % NGTCP2_SECONDS) / 1000)};

	if (exp == UINT64_MAX)
		evtimer_del(c->timer);
	else
		evtimer_add(c->timer, &tv);
}

static uint8_t *memdup(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	if (n)
		memcpy(d, p, n);
	return d;
}

/* A raw stream on id from stream offset base (see struct raw). */
static struct raw *raw_new(struct conn *c, int64_t id, uint64_t base, const void *head,
                           size_t headlen, const void *unit, size_t unitlen, uint64_t units,
                           const void *tail, size_t taillen, bool fin, const char *kind)
{
	struct raw *r = calloc(1, sizeof(*r));

	r->id = id;
	r->base = base;
	r->head = memdup(head, headlen);
	r->headlen = headlen;
	r->unitlen = unitlen;
	r->units = unitlen ? units : 0;
	r->replen = unitlen ? (16384 / unitlen + 1) * unitlen : 0;
	r->rep = malloc(r->replen ? r->replen : 1);
	for (size_t i = 0; i < r->replen; i += unitlen)
		memcpy(r->rep + i, unit, unitlen);
	r->tail = memdup(tail, taillen);
	r->taillen = taillen;
	r->total = headlen + r->units * unitlen + taillen;
	r->fin = fin;
	r->kind = kind;
	r->next = c->raws;
	c->raws = r;
	return r;
}

static struct raw *raw_find(struct conn *c, int64_t id)
{
	for (struct raw *r = c->raws; r; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

/* The next piece of a raw stream with something to write, or NULL. */
static struct raw *raw_next(struct conn *c, ngtcp2_vec *v, int *fin)
{
	for (struct raw *r = c->raws; r; r = r->next) {
		uint64_t p = r->off, units = r->units * r->unitlen;
		if (r->done || r->blocked)
			continue;
		*fin = 0;
		if (p < r->headlen) {
			v->base = r->head + p;
			v->len = r->headlen - p;
		} else if (p < r->headlen + units) {
			uint64_t q = p - r->headlen;
			size_t at = (size_t)(q % r->unitlen), n = r->replen - at;
			v->base = r->rep + at;
			v->len = units - q < n ? (size_t)(units - q) : n;
		} else {
			v->base = r->tail + (p - r->headlen - units);
			v->len = (size_t)(r->total - p);
			*fin = r->fin;
		}
		return r;
	}
	return NULL;
}

static void raw_wrote(struct conn *c, struct raw *r, size_t n)
{
	r->off += n;
	if (r->off >= r->total && !r->done) {
		r->done = true;
		if (r->kind)
			fprintf(stderr, "flood %u %s done\n", c->num, r->kind);
	}
}

/* Write everything ngtcp2 and nghttp3 have; false when c was dropped. */
static bool conn_write(struct conn *c)
{
	uint8_t buf[1500];
	ngtcp2_tstamp ts = now();

	for (;;) {
		int64_t sid = -1;
		int fin = 0;
		nghttp3_vec v[16];
		nghttp3_ssize nv = 0;
		ngtcp2_ssize n, ndatalen = -1;
		ngtcp2_pkt_info pi;
		uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;

		struct raw *r = NULL;

		if (c->h3) {
			nv = nghttp3_conn_writev_stream(c->h3, &sid, &fin, v, 16);
			if (nv < 0) {
				conn_close(c, NGTCP2_ERR_INTERNAL);
				return false;
			}
		}
		if (sid < 0 && (r = raw_next(c, (ngtcp2_vec *)v, &fin))) {
			sid = r->id;
			nv = 1;
		}
		if (fin)
			flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
		n = ngtcp2_conn_writev_stream(c->q, NULL, &pi, buf, sizeof(buf), &ndatalen, flags,
		                              sid, (const ngtcp2_vec *)v, (size_t)nv, ts);
		if (n < 0) {
			if (r && (n == NGTCP2_ERR_STREAM_DATA_BLOCKED ||
			          n == NGTCP2_ERR_STREAM_SHUT_WR)) {
				r->blocked = n == NGTCP2_ERR_STREAM_DATA_BLOCKED;
				r->done |= n == NGTCP2_ERR_STREAM_SHUT_WR;
				continue;
			}
			if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
				nghttp3_conn_block_stream(c->h3, sid);
				continue;
			}
			if (n == NGTCP2_ERR_STREAM_SHUT_WR) {
				nghttp3_conn_shutdown_stream_write(c->h3, sid);
				continue;
			}
			if (n == NGTCP2_ERR_WRITE_MORE) {
				if (r)
					raw_wrote(c, r, (size_t)ndatalen);
				else
					nghttp3_conn_add_write_offset(c->h3, sid, (size_t)ndatalen);
				if (!r && sid == c->ctrl)
					c->ctrl_written += (size_t)ndatalen;
				continue;
			}
			conn_close(c, (int)n);
			return false;
		}
		if (ndatalen >= 0 && sid >= 0 && r)
			raw_wrote(c, r, (size_t)ndatalen);
		else if (ndatalen >= 0 && sid >= 0) {
			nghttp3_conn_add_write_offset(c->h3, sid, (size_t)ndatalen);
			if (sid == c->ctrl)
				c->ctrl_written += (size_t)ndatalen;
		}
		if (n == 0)
			break;
		send_pkt(c, buf, (size_t)n);
	}
	ngtcp2_conn_update_pkt_tx_time(c->q, ts);
	arm_timer(c);
	return true;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	int rv;

	(void)fd;
	(void)what;
	rv = ngtcp2_conn_handle_expiry(c->q, now());
	if (rv != 0) {
		conn_close(c, rv);
		return;
	}
	conn_write(c);
}

/* --- HTTP/3: responses --- */

static nghttp3_ssize read_body(nghttp3_conn *h3, int64_t id, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *cud, void *sud)
{
	struct stream *s = sud;

	(void)h3;
	(void)id;
	(void)veccnt;
	(void)cud;
	if (s->sent < s->len) {
		vec[0].base = s->buf + s->sent;
		vec[0].len = s->len - s->sent;
		s->sent = s->len;
		if (s->eof)
			*pflags |= NGHTTP3_DATA_FLAG_EOF;
		return 1;
	}
	if (s->eof) {
		*pflags |= NGHTTP3_DATA_FLAG_EOF;
		return 0;
	}
	return NGHTTP3_ERR_WOULDBLOCK;
}

#define NV(n, v)                                                                                   \
	{                                                                                          \
		(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP3_NV_FLAG_NONE     \
	}

/* Submit a final response: status, extra header (may be NULL), the body
 * in s->buf (body false: none, e.g. 204/304/HEAD). */
static int respond(struct stream *s, const char *status, const char *xname, const char *xval,
                   bool body)
{
	nghttp3_data_reader dr = {read_body};
	char clen[32];
	nghttp3_nv nva[4] = {NV(":status", status)};
	size_t n = 1;

	snprintf(clen, sizeof(clen), "%zu", s->len);
	if (s->mode == M_SSE) {
		nva[n++] = (nghttp3_nv)NV("content-type", "text/event-stream");
	} else if (atoi(status) != 204 && atoi(status) != 304) {
		nva[n++] = (nghttp3_nv)NV("content-length", clen);
	}
	if (xname) {
		nva[n] = (nghttp3_nv)NV("x", xval);
		nva[n].name = (uint8_t *)xname;
		nva[n++].namelen = strlen(xname);
	}
	return nghttp3_conn_submit_response(s->c->h3, s->id, nva, n, body ? &dr : NULL);
}

static void set_body(struct stream *s, const char *text)
{
	size_t n = strlen(text);

	if (s->cap - s->len < n) {
		/* only before a response is submitted, or within SSE_MAX */
		size_t cap = s->len + n > SSE_MAX ? s->len + n : SSE_MAX;
		s->buf = realloc(s->buf, cap);
		s->cap = cap;
	}
	memcpy(s->buf + s->len, text, n);
	s->len += n;
}

/* DIR/NAME for a request path /NAME (no query, no sub-directories). */
static bool file_path(const char *path, const char *suffix, char *out, size_t len)
{
	size_t n = strcspn(path + 1, "?");

	if (!S.dir || path[0] != '/' || n == 0 || memchr(path + 1, '/', n) || path[1] == '.')
		return false;
	snprintf(out, len, "%s/%.*s%s", S.dir, (int)n, path + 1, suffix);
	return access(out, R_OK) == 0;
}

/* Answer from DIR/NAME and DIR/NAME.head (see the top). */
static int respond_file(struct stream *s)
{
	char fn[1024], head[4096] = "200\n", *save = NULL, *status, *l;
	char clen[32];
	nghttp3_nv nva[16];
	size_t n = 1, got;
	bool has_len = false, no_body;
	FILE *f;

	s->len = s->sent = 0;
	if (file_path(s->path, "", fn, sizeof(fn)) && (f = fopen(fn, "rb"))) {
		fseek(f, 0, SEEK_END);
		s->cap = (size_t)ftell(f) + 1;
		rewind(f);
		free(s->buf);
		s->buf = malloc(s->cap);
		s->len = fread(s->buf, 1, s->cap, f);
		fclose(f);
	}
	if (file_path(s->path, ".head", fn, sizeof(fn)) && (f = fopen(fn, "rb"))) {
		got = fread(head, 1, sizeof(head) - 1, f);
		head[got] = '\0';
		fclose(f);
	}
	status = strtok_r(head, "\r\n", &save);
	nva[0] = (nghttp3_nv)NV(":status", status);
	while ((l = strtok_r(NULL, "\r\n", &save)) && n < 15) {
		char *colon = strchr(l, ':'), *v;
		if (!colon)
			continue;
		*colon = '\0';
		for (v = colon + 1; *v == ' '; v++)
			;
		nva[n] = (nghttp3_nv)NV("x", v);
		nva[n].name = (uint8_t *)l;
		nva[n++].namelen = strlen(l);
		has_len |= strcasecmp(l, "content-length") == 0;
	}
	no_body = strcmp(s->method, "HEAD") == 0 || atoi(status) == 204 || atoi(status) == 304;
	if (!has_len && atoi(status) != 204 && atoi(status) != 304) {
		snprintf(clen, sizeof(clen), "%zu", s->len);
		nva[n++] = (nghttp3_nv)NV("content-length", clen);
	}
	s->eof = true;
	return nghttp3_conn_submit_response(s->c->h3, s->id, nva, n,
	                                    no_body ? NULL : &(nghttp3_data_reader){read_body});
}

/* /unistreams: open what the client's limit allows, and more whenever it
 * grows; the request is answered the first time the limit stops it
 * ("blocked K") or once all are open ("opened K"). */
static void open_unis(struct conn *c)
{
	static const uint8_t type[] = {0x21}, bytes[15] = "0123456789abcde";
	int64_t id;
	bool blocked = false;
	char text[64];

	while (c->uni_opened < c->uni_want && !blocked) {
		if (ngtcp2_conn_open_uni_stream(c->q, &id, NULL) != 0) {
			fprintf(stderr, "unistreams %u %ld\n", c->num, c->uni_opened);
			blocked = true;
			break;
		}
		raw_new(c, id, 0, type, 1, NULL, 0, 0, bytes, sizeof(bytes), true, NULL);
		c->uni_opened++;
	}
	if (!blocked)
		fprintf(stderr, "flood %u unistreams done\n", c->num);
	if (c->uni_req) {
		struct stream *s = c->uni_req;
		c->uni_req = NULL;
		s->mode = M_OK;
		snprintf(text, sizeof(text), "%s %ld", blocked ? "blocked" : "opened",
		         c->uni_opened);
		set_body(s, text);
		s->eof = true;
		respond(s, "200", NULL, NULL, true);
	}
}

/* The headers are in: answer what can be answered now. */
static int on_request(struct stream *s)
{
	struct conn *c = s->c;
	const char *p = s->path;
	bool head = strcmp(s->method, "HEAD") == 0;
	char fn[1024];

	fprintf(stderr, "request %u %s %s\n", c->num, s->method, p);
	if (file_path(p, "", fn, sizeof(fn)) || file_path(p, ".head", fn, sizeof(fn))) {
		static const nghttp3_nv cont[] = {NV(":status", "100")};
		s->mode = M_FILE; /* answered at the end of the request */
		return s->expect100 ? nghttp3_conn_submit_info(c->h3, s->id, cont, 1) : 0;
	}
	if (strncmp(p, "/sse", 4) == 0) {
		s->mode = M_SSE;
		s->buf = malloc(SSE_MAX);
		s->cap = SSE_MAX;
		const char *f = strstr(p, "first=");
		char ev[128];
		/* first=WORD: the first event's data (default 1) */
		snprintf(ev, sizeof(ev), "data: %.*s\n\n", f ? (int)strcspn(f + 6, "&") : 1,
		         f ? f + 6 : "1");
		set_body(s, ev);
		return respond(s, "200", "cache-control", "no-cache", true);
	}
	if (strncmp(p, "/status/", 8) == 0) {
		s->mode = M_STATUS;
		return respond(s, p + 8, NULL, NULL, false);
	}
	if (strncmp(p, "/echo", 5) == 0) {
		static const nghttp3_nv cont[] = {NV(":status", "100")};
		s->mode = M_ECHO;
		return s->expect100 ? nghttp3_conn_submit_info(c->h3, s->id, cont, 1) : 0;
	}
	if (strncmp(p, "/reset", 6) == 0) {
		s->mode = M_RESET;
		nghttp3_conn_shutdown_stream_read(c->h3, s->id);
		ngtcp2_conn_shutdown_stream(c->q, s->id, NGHTTP3_H3_INTERNAL_ERROR);
		return 0;
	}
	if (strncmp(p, "/noread", 7) == 0) {
		s->mode = M_NOREAD;
		return 0;
	}
	if (strncmp(p, "/held", 5) == 0) {
		s->mode = M_HELD;
		return 0;
	}
	if (strncmp(p, "/stop", 5) == 0) {
		nghttp3_conn_shutdown_stream_read(c->h3, s->id);
		ngtcp2_conn_shutdown_stream_read(c->q, s->id, NGHTTP3_H3_NO_ERROR);
	}
	if (strncmp(p, "/emptydata", 10) == 0) {
		/* HEADERS: QPACK prefix 0 0, static index 25 (:status 200) */
		static const uint8_t hd[] = {0x01, 0x03, 0x00, 0x00, 0xc0 | 25},
		                     empty[] = {0x00, 0x00}, ok[] = {0x00, 0x02, 'o', 'k'};
		s->mode = M_RAW;
		raw_new(c, s->id, 0, hd, sizeof(hd), empty, sizeof(empty),
		        (uint64_t)qint(p, "n=", 100000), ok, sizeof(ok), true, "emptydata");
		return 0;
	}
	if (strncmp(p, "/ctrlflood", 10) == 0 || strncmp(p, "/goawayflood", 12) == 0) {
		static const uint8_t reserved[] = {0x21, 0x00};
		uint8_t goaway[] = {0x07, 0x02, 0x40, 0x00};
		bool ga = p[1] == 'g';
		long id = qint(p, "id=", 4000) & 0x3ffc;
		goaway[2] = (uint8_t)(0x40 | (id >> 8));
		goaway[3] = (uint8_t)(id & 0xff);
		if (raw_find(c, c->ctrl) || c->ctrl_written == 0)
			return -1; /* one flood per connection, after SETTINGS */
		raw_new(c, c->ctrl, c->ctrl_written, NULL, 0, ga ? goaway : reserved, 2u + 2 * ga,
		        (uint64_t)qint(p, "n=", 100000), NULL, 0, false, ga ? "goaway" : "ctrl");
	}
	if (strncmp(p, "/greasestream", 13) == 0) {
		static const uint8_t type[] = {0x21}, junk[] = {'g', 'r', 'e', 'a', 's', 'e', '\n'};
		int64_t id;
		uint64_t n = (uint64_t)qint(p, "mib=", 32) * 1024 * 1024 / sizeof(junk);
		if (ngtcp2_conn_open_uni_stream(c->q, &id, NULL) != 0)
			return -1;
		raw_new(c, id, 0, type, 1, junk, sizeof(junk), n, NULL, 0, false, "grease");
	}
	if (strncmp(p, "/unistreams", 11) == 0) {
		c->uni_want = qint(p, "n=", 1000);
		c->uni_req = s;
		s->mode = M_RAW;
		open_unis(c);
		return 0;
	}
	if (!head)
		set_body(s, "ok");
	else
		s->len = 2; /* content-length of the GET, no body */
	s->eof = true;
	if (strncmp(p, "/interim", 8) == 0) {
		/* kib=K: each head carries a link field of K KiB */
		size_t k = (size_t)qint(p, "kib=", 0) * 1024;
		char *link = malloc(k + 32);
		nghttp3_nv early[] = {NV(":status", "103"),
		                      NV("link", "</style.css>; rel=preload")};
		long n = qint(p, "n=", 1);
		int r = 0;
		if (k) {
			snprintf(link, k + 32, "</%0*d>", (int)k, 0);
			early[1].value = (uint8_t *)link;
			early[1].valuelen = strlen(link);
		}
		s->mode = M_INTERIM;
		for (long i = 0; i < n && r == 0; i++)
			r = nghttp3_conn_submit_info(c->h3, s->id, early, 2);
		free(link);
		if (r != 0)
			return -1;
	} else if (strncmp(p, "/bigheader", 10) == 0) {
		size_t k = (size_t)qint(p, "kib=", 100) * 1024;
		char *big = malloc(k + 1);
		int r;
		memset(big, 'a', k);
		big[k] = '\0';
		s->mode = M_BIGHEADER;
		r = respond(s, "200", "x-big", big, !head);
		free(big); /* nghttp3 copied it */
		return r;
	}
	return respond(s, "200", NULL, NULL, !head);
}

/* --- HTTP/3: callbacks --- */

static int h3_begin_headers(nghttp3_conn *h3, int64_t id, void *cud, void *sud)
{
	struct conn *c = cud;
	struct stream *s = calloc(1, sizeof(*s));

	(void)sud;
	if (!s)
		return NGHTTP3_ERR_CALLBACK_FAILURE;
	s->c = c;
	s->id = id;
	s->next = c->streams;
	c->streams = s;
	nghttp3_conn_set_stream_user_data(h3, id, s);
	return 0;
}

static int h3_recv_header(nghttp3_conn *h3, int64_t id, int32_t token, nghttp3_rcbuf *name,
                          nghttp3_rcbuf *value, uint8_t flags, void *cud, void *sud)
{
	struct stream *s = sud;
	nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);

	(void)h3;
	(void)id;
	(void)flags;
	(void)cud;
	if (token == NGHTTP3_QPACK_TOKEN__PATH)
		snprintf(s->path, sizeof(s->path), "%.*s", (int)v.len, v.base);
	else if (token == NGHTTP3_QPACK_TOKEN__METHOD)
		snprintf(s->method, sizeof(s->method), "%.*s", (int)v.len, v.base);
	else if (n.len == 6 && memcmp(n.base, "expect", 6) == 0)
		s->expect100 = v.len == 12 && strncasecmp((char *)v.base, "100-continue", 12) == 0;
	return 0;
}

static int h3_end_headers(nghttp3_conn *h3, int64_t id, int fin, void *cud, void *sud)
{
	(void)h3;
	(void)id;
	(void)fin;
	(void)cud;
	return on_request(sud) == 0 ? 0 : NGHTTP3_ERR_CALLBACK_FAILURE;
}

static void consume(struct conn *c, int64_t id, size_t n)
{
	ngtcp2_conn_extend_max_stream_offset(c->q, id, n);
	ngtcp2_conn_extend_max_offset(c->q, n);
}

static int h3_recv_data(nghttp3_conn *h3, int64_t id, const uint8_t *data, size_t len, void *cud,
                        void *sud)
{
	struct stream *s = sud;

	(void)h3;
	if (s->mode == M_NOREAD) { /* the connection window moves, the stream's does not */
		ngtcp2_conn_extend_max_offset(((struct conn *)cud)->q, len);
		return 0;
	}
	if (s->mode == M_ECHO) {
		if (s->len + len > ECHO_MAX)
			return NGHTTP3_ERR_CALLBACK_FAILURE;
		if (s->cap - s->len < len) {
			size_t cap = s->cap ? s->cap * 2 : 65536;
			while (cap - s->len < len)
				cap *= 2;
			s->buf = realloc(s->buf, cap);
			s->cap = cap;
		}
		memcpy(s->buf + s->len, data, len);
		s->len += len;
	}
	consume(cud, id, len);
	return 0;
}

static int h3_deferred_consume(nghttp3_conn *h3, int64_t id, size_t n, void *cud, void *sud)
{
	(void)h3;
	(void)sud;
	consume(cud, id, n);
	return 0;
}

static int h3_end_stream(nghttp3_conn *h3, int64_t id, void *cud, void *sud)
{
	struct stream *s = sud;

	(void)h3;
	(void)id;
	(void)cud;
	if (s->mode == M_FILE)
		return respond_file(s) == 0 ? 0 : NGHTTP3_ERR_CALLBACK_FAILURE;
	if (s->mode != M_ECHO)
		return 0;
	s->eof = true;
	return respond(s, "200", NULL, NULL, true) == 0 ? 0 : NGHTTP3_ERR_CALLBACK_FAILURE;
}

static int h3_stream_close(nghttp3_conn *h3, int64_t id, uint64_t code, void *cud, void *sud)
{
	struct conn *c = cud;
	struct stream **pp;

	(void)h3;
	(void)id;
	(void)code;
	for (pp = &c->streams; *pp; pp = &(*pp)->next)
		if (*pp == sud) {
			struct stream *s = *pp;
			*pp = s->next;
			free(s->buf);
			free(s);
			break;
		}
	if (ngtcp2_is_bidi_stream(id))
		ngtcp2_conn_extend_max_streams_bidi(c->q, 1);
	return 0;
}

static int h3_stop_sending(nghttp3_conn *h3, int64_t id, uint64_t code, void *cud, void *sud)
{
	(void)h3;
	(void)sud;
	ngtcp2_conn_shutdown_stream_read(((struct conn *)cud)->q, id, code);
	return 0;
}

static int h3_reset_stream(nghttp3_conn *h3, int64_t id, uint64_t code, void *cud, void *sud)
{
	(void)h3;
	(void)sud;
	ngtcp2_conn_shutdown_stream_write(((struct conn *)cud)->q, id, code);
	return 0;
}

/* Set up HTTP/3 once the handshake is done: its three unidirectional
 * streams. */
static int h3_setup(struct conn *c)
{
	nghttp3_callbacks cb = {
	    .stream_close = h3_stream_close,
	    .recv_data = h3_recv_data,
	    .deferred_consume = h3_deferred_consume,
	    .begin_headers = h3_begin_headers,
	    .recv_header = h3_recv_header,
	    .end_headers = h3_end_headers,
	    .stop_sending = h3_stop_sending,
	    .end_stream = h3_end_stream,
	    .reset_stream = h3_reset_stream,
	};
	nghttp3_settings st;
	int64_t ctrl, enc, dec;

	nghttp3_settings_default(&st);
	if (nghttp3_conn_server_new(&c->h3, &cb, &st, NULL, c) != 0)
		return -1;
	nghttp3_conn_set_max_client_streams_bidi(c->h3, 100);
	if (ngtcp2_conn_open_uni_stream(c->q, &ctrl, NULL) != 0 ||
	    ngtcp2_conn_open_uni_stream(c->q, &enc, NULL) != 0 ||
	    ngtcp2_conn_open_uni_stream(c->q, &dec, NULL) != 0 ||
	    nghttp3_conn_bind_control_stream(c->h3, ctrl) != 0 ||
	    nghttp3_conn_bind_qpack_streams(c->h3, enc, dec) != 0)
		return -1;
	c->ctrl = ctrl;
	return 0;
}

/* --- QUIC callbacks --- */

static void rand_cb(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx)
{
	(void)ctx;
	gnutls_rnd(GNUTLS_RND_RANDOM, dest, len);
}

static int new_cid_cb(ngtcp2_conn *q, ngtcp2_cid *cid, uint8_t *token, size_t cidlen, void *ud)
{
	(void)q;
	(void)ud;
	gnutls_rnd(GNUTLS_RND_RANDOM, cid->data, cidlen);
	cid->datalen = cidlen;
	gnutls_rnd(GNUTLS_RND_RANDOM, token, NGTCP2_STATELESS_RESET_TOKENLEN);
	return 0;
}

static int handshake_completed_cb(ngtcp2_conn *q, void *ud)
{
	(void)q;
	return h3_setup(ud) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int recv_stream_data_cb(ngtcp2_conn *q, uint32_t flags, int64_t id, uint64_t offset,
                               const uint8_t *data, size_t len, void *ud, void *sud)
{
	struct conn *c = ud;
	nghttp3_ssize n;

	(void)q;
	(void)offset;
	(void)sud;
	if (!c->h3)
		return NGTCP2_ERR_CALLBACK_FAILURE;
	n = nghttp3_conn_read_stream(c->h3, id, data, len, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
	if (n < 0) {
		fprintf(stderr, "nghttp3_conn_read_stream: %s\n", nghttp3_strerror((int)n));
		return NGTCP2_ERR_CALLBACK_FAILURE;
	}
	consume(c, id, (size_t)n);
	return 0;
}

static int acked_cb(ngtcp2_conn *q, int64_t id, uint64_t offset, uint64_t len, void *ud, void *sud)
{
	struct conn *c = ud;
	struct raw *r = raw_find(c, id);

	(void)q;
	(void)sud;
	if (r) /* only the bytes below base are nghttp3's */
		len = offset >= r->base ? 0 : offset + len > r->base ? r->base - offset : len;
	if (len == 0)
		return 0;
	return c->h3 && nghttp3_conn_add_ack_offset(c->h3, id, len) != 0
	           ? NGTCP2_ERR_CALLBACK_FAILURE
	           : 0;
}

static int stream_close_cb(ngtcp2_conn *q, uint32_t flags, int64_t id, uint64_t code, void *ud,
                           void *sud)
{
	struct conn *c = ud;
	int r;

	(void)q;
	(void)sud;
	if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET))
		code = NGHTTP3_H3_NO_ERROR;
	for (struct raw **pp = &c->raws; *pp; pp = &(*pp)->next)
		if ((*pp)->id == id) {
			struct raw *r = *pp;
			*pp = r->next;
			free(r->head);
			free(r->rep);
			free(r->tail);
			free(r);
			break;
		}
	if (!c->h3)
		return 0;
	r = nghttp3_conn_close_stream(c->h3, id, code);
	return r == 0 || r == NGHTTP3_ERR_STREAM_NOT_FOUND ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int stream_reset_cb(ngtcp2_conn *q, int64_t id, uint64_t final, uint64_t code, void *ud,
                           void *sud)
{
	struct conn *c = ud;

	(void)q;
	(void) final;
	(void)code;
	(void)sud;
	return c->h3 && nghttp3_conn_shutdown_stream_read(c->h3, id) != 0
	           ? NGTCP2_ERR_CALLBACK_FAILURE
	           : 0;
}

static int stop_sending_cb(ngtcp2_conn *q, int64_t id, uint64_t code, void *ud, void *sud)
{
	return stream_reset_cb(q, id, 0, code, ud, sud);
}

static int extend_stream_data_cb(ngtcp2_conn *q, int64_t id, uint64_t max, void *ud, void *sud)
{
	struct conn *c = ud;

	struct raw *r = raw_find(c, id);

	(void)q;
	(void)max;
	(void)sud;
	if (r)
		r->blocked = false;
	if (r && r->base == 0)
		return 0;
	return c->h3 && nghttp3_conn_unblock_stream(c->h3, id) != 0 ? NGTCP2_ERR_CALLBACK_FAILURE
	                                                            : 0;
}

static int extend_remote_bidi_cb(ngtcp2_conn *q, uint64_t max, void *ud)
{
	struct conn *c = ud;

	(void)q;
	if (c->h3)
		nghttp3_conn_set_max_client_streams_bidi(c->h3, max);
	return 0;
}

static int extend_local_uni_cb(ngtcp2_conn *q, uint64_t max, void *ud)
{
	struct conn *c = ud;

	(void)q;
	(void)max;
	if (c->uni_want > c->uni_opened)
		open_unis(c);
	return 0;
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref)
{
	return ((struct conn *)ref->user_data)->q;
}

/* --- accepting --- */

static struct conn *conn_new(const struct sockaddr_storage *peer, socklen_t peerlen,
                             const uint8_t *pkt, size_t len)
{
	static const ngtcp2_callbacks cb = {
	    .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
	    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
	    .handshake_completed = handshake_completed_cb,
	    .encrypt = ngtcp2_crypto_encrypt_cb,
	    .decrypt = ngtcp2_crypto_decrypt_cb,
	    .hp_mask = ngtcp2_crypto_hp_mask_cb,
	    .recv_stream_data = recv_stream_data_cb,
	    .acked_stream_data_offset = acked_cb,
	    .stream_close = stream_close_cb,
	    .rand = rand_cb,
	    .get_new_connection_id = new_cid_cb,
	    .update_key = ngtcp2_crypto_update_key_cb,
	    .stream_reset = stream_reset_cb,
	    .extend_max_remote_streams_bidi = extend_remote_bidi_cb,
	    .extend_max_local_streams_uni = extend_local_uni_cb,
	    .extend_max_stream_data = extend_stream_data_cb,
	    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
	    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
	    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
	    .stream_stop_sending = stop_sending_cb,
	    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
	};
	gnutls_datum_t alpn = {(unsigned char *)"h3", 2};
	ngtcp2_pkt_hd hd;
	ngtcp2_path path = {{(ngtcp2_sockaddr *)&S.local, sizeof(S.local)},
	                    {(ngtcp2_sockaddr *)peer, peerlen},
	                    NULL};
	ngtcp2_settings st;
	ngtcp2_transport_params tp;
	ngtcp2_cid scid;
	struct conn *c;

	if (ngtcp2_accept(&hd, pkt, len) != 0)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->num = ++S.nconns;
	memcpy(&c->peer, peer, peerlen);
	c->peerlen = peerlen;
	c->timer = evtimer_new(S.base, on_timer, c);
	c->next = S.conns;
	S.conns = c;

	ngtcp2_settings_default(&st);
	st.initial_ts = now();
	ngtcp2_transport_params_default(&tp);
	tp.initial_max_stream_data_bidi_local = STREAM_WINDOW;
	tp.initial_max_stream_data_bidi_remote = STREAM_WINDOW;
	tp.initial_max_stream_data_uni = STREAM_WINDOW;
	tp.initial_max_data = CONN_WINDOW;
	tp.initial_max_streams_bidi = 100;
	tp.initial_max_streams_uni = 3;
	tp.max_idle_timeout = 30 * NGTCP2_SECONDS;
	tp.original_dcid = hd.dcid;
	tp.stateless_reset_token_present = 1;
	gnutls_rnd(GNUTLS_RND_RANDOM, tp.stateless_reset_token, sizeof(tp.stateless_reset_token));
	scid.datalen = 18;
	gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, scid.datalen);

	if (gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NO_END_OF_EARLY_DATA) < 0) {
		c->tls = NULL;
		goto fail;
	}
	if (gnutls_priority_set_direct(c->tls, PRIORITY, NULL) < 0 ||
	    gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, S.cred) < 0 ||
	    ngtcp2_crypto_gnutls_configure_server_session(c->tls) != 0 ||
	    gnutls_alpn_set_protocols(c->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY) < 0)
		goto fail;
	c->ref.get_conn = get_conn;
	c->ref.user_data = c;
	gnutls_session_set_ptr(c->tls, &c->ref);
	if (ngtcp2_conn_server_new(&c->q, &hd.scid, &scid, &path, hd.version, &cb, &st, &tp, NULL,
	                           c) != 0) {
		c->q = NULL;
		goto fail;
	}
	ngtcp2_conn_set_tls_native_handle(c->q, c->tls);
	fprintf(stderr, "conn %u\n", c->num);
	return c;
fail:
	conn_free(c);
	return NULL;
}

static struct conn *find_conn(const struct sockaddr_storage *peer, socklen_t len)
{
	for (struct conn *c = S.conns; c; c = c->next)
		if (c->peerlen == len && memcmp(&c->peer, peer, len) == 0)
			return c;
	return NULL;
}

static void on_udp(evutil_socket_t fd, short what, void *arg)
{
	uint8_t buf[65536];

	(void)what;
	(void)arg;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
		struct conn *c;
		ngtcp2_path path = {{(ngtcp2_sockaddr *)&S.local, sizeof(S.local)},
		                    {(ngtcp2_sockaddr *)&peer, plen},
		                    NULL};
		ngtcp2_pkt_info pi = {0};
		int rv;

		if (n < 0)
			return;
		c = find_conn(&peer, plen);
		if (!c && !(c = conn_new(&peer, plen, buf, (size_t)n)))
			continue;
		rv = ngtcp2_conn_read_pkt(c->q, &path, &pi, buf, (size_t)n, now());
		if (rv != 0) {
			if (rv != NGTCP2_ERR_DRAINING)
				fprintf(stderr, "conn %u: %s\n", c->num, ngtcp2_strerror(rv));
			conn_close(c, rv);
			continue;
		}
		conn_write(c);
	}
}

/* A line on stdin: the next event on every open /sse stream. */
static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
	char line[256], ev[300];
	ssize_t n = read(fd, line, sizeof(line) - 1);
	struct conn *c, *next;

	(void)what;
	if (n <= 0) {
		event_del(arg);
		return;
	}
	line[n] = '\0';
	for (char *l = strtok(line, "\n"); l; l = strtok(NULL, "\n")) {
		for (c = S.conns; c; c = c->next)
			for (struct stream *s = c->streams; s; s = s->next) {
				if (s->mode == M_HELD && strcmp(l, "release") == 0) {
					s->mode = M_OK;
					set_body(s, "ok");
					s->eof = true;
					respond(s, "200", NULL, NULL, true);
					continue;
				}
				if (s->mode != M_SSE || s->eof || strcmp(l, "release") == 0)
					continue;
				if (strcmp(l, "end") == 0) {
					s->eof = true;
				} else {
					snprintf(ev, sizeof(ev), "data: %s\n\n", l);
					if (s->len + strlen(ev) <= s->cap)
						set_body(s, ev);
				}
				nghttp3_conn_resume_stream(c->h3, s->id);
			}
	}
	for (c = S.conns; c; c = next) {
		next = c->next;
		conn_write(c);
	}
}

int main(int argc, char **argv)
{
	socklen_t len = sizeof(S.local);
	struct event *udp, *in;

	if (argc < 3) {
		fprintf(stderr, "usage: h3origin CERT KEY [PORT [DIR]]\n");
		return 2;
	}
	if (gnutls_certificate_allocate_credentials(&S.cred) < 0 ||
	    gnutls_certificate_set_x509_key_file(S.cred, argv[1], argv[2], GNUTLS_X509_FMT_PEM) <
	        0) {
		fprintf(stderr, "h3origin: cannot load %s / %s\n", argv[1], argv[2]);
		return 1;
	}
	S.fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	S.local.sin_family = AF_INET;
	S.local.sin_port = htons((uint16_t)(argc > 3 ? atoi(argv[3]) : 0));
	S.dir = argc > 4 ? argv[4] : NULL;
	inet_pton(AF_INET, "127.0.0.1", &S.local.sin_addr);
	if (S.fd < 0 || bind(S.fd, (struct sockaddr *)&S.local, sizeof(S.local)) != 0 ||
	    getsockname(S.fd, (struct sockaddr *)&S.local, &len) != 0) {
		perror("h3origin: bind");
		return 1;
	}
	S.base = event_base_new();
	udp = event_new(S.base, S.fd, EV_READ | EV_PERSIST, on_udp, NULL);
	in = event_new(S.base, 0, EV_READ | EV_PERSIST, on_stdin, event_self_cbarg());
	event_add(udp, NULL);
	event_add(in, NULL);
	printf("port %u\n", ntohs(S.local.sin_port));
	fflush(stdout);
	event_base_dispatch(S.base);
	return 0;
}
