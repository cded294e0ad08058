/* bench/delay_relay: a relay adding a fixed one-way delay, to fake a distant
 * origin for the benchmarks (the C counterpart of bench/delay_relay.py, with
 * the same command line; netem is not available everywhere).
 *
 * TCP: each connection accepted on BIND:PORT is relayed to HOST:PORT; every
 * chunk read (and the EOF) is written to the other side DELAY ms after it
 * was read, in order. Each direction is a FIFO of buffers stamped with their
 * due time and one timer for its head (the delay is constant, so the head
 * is always the earliest). A direction stops reading while more than
 * --max-queue-mb (64) MiB wait in it: that is the pipe's capacity. As in the
 * Python relay, a new connection starts forwarding only 2 * DELAY after it
 * was accepted (the kernel completed the client's handshake at once).
 *
 * UDP (--udp, on the same port number): each datagram is sent on DELAY ms
 * after it arrived; one upstream socket per client address (QUIC needs a
 * stable 4-tuple), closed after 60 s without traffic. Datagrams beyond
 * --max-queue-mb per direction are dropped, like a router's full queue, and
 * counted (printed on exit and on SIGUSR1). Where the kernel has UDP GRO, a GSO sender's
 * burst (QUIC servers send up to 64 datagrams per call) is received as one
 * buffer and sent on as the same datagrams with UDP_SEGMENT (--no-gro: one
 * datagram at a time).
 *
 *   delay_relay --listen PORT --target HOST:PORT --delay-ms 20 [--udp]
 *       [--bind 127.0.0.1] [--max-queue-mb 64] [--no-gro]
 *
 * Prints "relay listening on BIND:PORT" once ready; runs until SIGTERM or
 * SIGINT. Not part of muxd: it links libevent only. */

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define TCP_CHUNK (256 * 1024) /* one read */
#define UDP_MAX 65536          /* one datagram */
#define UDP_BATCH 64           /* datagrams per recvmmsg / sendmmsg */
#define UDP_READ_MAX (1 << 20) /* bytes read per wake-up */
#define UDP_SOCKBUF (8 << 20)  /* socket buffers of the UDP relay */
#define UDP_IDLE_NS (60LL * 1000000000LL)
#define IOV_BATCH 64
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h: send one buffer as datagrams of this size (GSO) */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h: receive a GSO sender's datagrams as one buffer */
#endif

/* ---------------------------------------------------------------------- */
/* time */

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct timeval tv_from_ns(int64_t ns)
{
	if (ns < 0)
		ns = 0;
	ns += 999; /* round up to the microsecond: never fire early */
	struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000LL),
	                     .tv_usec = (suseconds_t)((ns % 1000000000LL) / 1000)};
	return tv;
}

/* ---------------------------------------------------------------------- */
/* the relay's root state */

struct relay {
	struct event_base *base;
	struct sockaddr_storage target;
	socklen_t target_len;
	int64_t delay_ns;
	size_t max_queue; /* bytes per direction */
	int tcp_fd, udp_fd;
	struct event *accept_ev, *udp_ev, *reap_ev;
	struct event *sig_term, *sig_int, *sig_usr1;
	struct udp_queue *up_q, *down_q; /* UDP: toward the target, toward the clients */
	struct udp_peer *peers;          /* UDP: one upstream socket per client */
	unsigned long long udp_drops, udp_send_errors, udp_bufs, udp_bytes;
	unsigned long long udp_kernel_drops_closed; /* SO_RXQ_OVFL of the closed peer sockets */
	uint32_t udp_kernel_drops;                  /* ... of the listen socket */
	int gro; /* 1: UDP sockets receive coalesced (UDP_GRO) and send them on with UDP_SEGMENT */
	struct conn *conns; /* TCP: the open connections */
};

/* ---------------------------------------------------------------------- */
/* TCP */

struct chunk {
	struct chunk *next;
	int64_t due;
	size_t len, off; /* len 0: the EOF */
	unsigned char data[];
};

struct conn;

/* One direction: read from `from`, queue, write to `to` when due. */
struct pipe_dir {
	struct conn *c;
	int from, to;
	struct event *rd, *wr, *timer;
	struct chunk *head, *tail;
	size_t queued;
	bool reading, eof_read, eof_sent;
};

struct conn {
	struct conn *prev, *next; /* the relay's open connections */
	struct relay *r;
	int cfd, ufd;
	struct event *connect_ev, *start_timer;
	bool connected, started;
	struct pipe_dir up, down; /* client -> target, target -> client */
};

static void conn_free(struct conn *c)
{
	struct pipe_dir *dirs[2] = {&c->up, &c->down};
	for (int i = 0; i < 2; i++) {
		struct pipe_dir *d = dirs[i];
		if (d->rd)
			event_free(d->rd);
		if (d->wr)
			event_free(d->wr);
		if (d->timer)
			event_free(d->timer);
		while (d->head) {
			struct chunk *n = d->head->next;
			free(d->head);
			d->head = n;
		}
	}
	if (c->connect_ev)
		event_free(c->connect_ev);
	if (c->start_timer)
		event_free(c->start_timer);
	if (c->cfd >= 0)
		close(c->cfd);
	if (c->ufd >= 0)
		close(c->ufd);
	if (c->prev)
		c->prev->next = c->next;
	else
		c->r->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static void pipe_update_read(struct pipe_dir *d)
{
	bool want = d->c->started && !d->eof_read && d->queued <= d->c->r->max_queue;
	if (want && !d->reading)
		event_add(d->rd, NULL);
	else if (!want && d->reading)
		event_del(d->rd);
	d->reading = want;
}

/* Writes every due chunk; arms the timer for the next or waits for the
 * socket. Returns false when the connection was freed. */
static bool pipe_flush(struct pipe_dir *d)
{
	struct conn *c = d->c;
	int64_t now = now_ns();
	while (d->head && d->head->due <= now) {
		if (d->head->len == 0) { /* the EOF */
			struct chunk *e = d->head;
			d->head = e->next;
			if (!d->head)
				d->tail = NULL;
			free(e);
			shutdown(d->to, SHUT_WR);
			d->eof_sent = true;
			if (c->up.eof_sent && c->down.eof_sent) {
				conn_free(c);
				return false;
			}
			continue;
		}
		struct iovec iov[IOV_BATCH];
		int n = 0;
		for (struct chunk *k = d->head; k && k->len && k->due <= now && n < IOV_BATCH;
		     k = k->next) {
			iov[n].iov_base = k->data + k->off;
			iov[n].iov_len = k->len - k->off;
			n++;
		}
		ssize_t w = writev(d->to, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				event_add(d->wr, NULL);
				return true;
			}
			conn_free(c); /* the peer is gone: so is the connection */
			return false;
		}
		size_t left = (size_t)w;
		d->queued -= left;
		while (left) {
			struct chunk *k = d->head;
			size_t rest = k->len - k->off;
			if (left < rest) {
				k->off += left;
				break;
			}
			left -= rest;
			d->head = k->next;
			if (!d->head)
				d->tail = NULL;
			free(k);
		}
		if (d->head && d->head->len && d->head->off) { /* short write: the socket is full */
			event_add(d->wr, NULL);
			pipe_update_read(d);
			return true;
		}
	}
	pipe_update_read(d);
	if (d->head) {
		struct timeval tv = tv_from_ns(d->head->due - now);
		evtimer_add(d->timer, &tv);
	}
	return true;
}

static void pipe_on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pipe_flush(arg);
}

static void pipe_on_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pipe_flush(arg);
}

static void pipe_push(struct pipe_dir *d, struct chunk *k)
{
	k->next = NULL;
	if (d->tail)
		d->tail->next = k;
	else
		d->head = k;
	d->tail = k;
	d->queued += k->len;
}

static void pipe_on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct pipe_dir *d = arg;
	static unsigned char buf[TCP_CHUNK];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	int64_t due = now_ns() + d->c->r->delay_ns;
	size_t off = 0;
	if (n > 0 && d->c->r->delay_ns == 0 &&
	    !d->head) { /* no delay, nothing waiting: write at once */
		ssize_t w = write(d->to, buf, (size_t)n);
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			conn_free(d->c);
			return;
		}
		if (w == n)
			return;
		off = w > 0 ? (size_t)w : 0;
	}
	size_t len = n > 0 ? (size_t)(n - (ssize_t)off) : 0; /* an error reads as the EOF */
	struct chunk *k = malloc(sizeof *k + len);
	if (!k) {
		conn_free(d->c);
		return;
	}
	k->due = due;
	k->len = len;
	k->off = 0;
	memcpy(k->data, buf + off, len);
	bool was_empty = !d->head;
	pipe_push(d, k);
	if (len == 0) {
		d->eof_read = true;
		pipe_update_read(d);
	} else if (d->queued > d->c->r->max_queue)
		pipe_update_read(d);
	if (was_empty)
		pipe_flush(d); /* arms the timer, or writes now with no delay */
}

static void conn_start(struct conn *c)
{
	c->started = true;
	pipe_update_read(&c->up);
	pipe_update_read(&c->down);
}

static void conn_on_start_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	if (c->connected)
		conn_start(c); /* else conn_on_connect starts it */
	event_free(c->start_timer);
	c->start_timer = NULL;
}

static void conn_on_connect(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct conn *c = arg;
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
		conn_free(c);
		return;
	}
	c->connected = true;
	event_free(c->connect_ev);
	c->connect_ev = NULL;
	if (!c->start_timer)
		conn_start(c);
}

static void pipe_init(struct conn *c, struct pipe_dir *d, int from, int to)
{
	struct event_base *b = c->r->base;
	d->c = c;
	d->from = from;
	d->to = to;
	d->rd = event_new(b, from, EV_READ | EV_PERSIST, pipe_on_read, d);
	d->wr = event_new(b, to, EV_WRITE, pipe_on_write, d);
	d->timer = evtimer_new(b, pipe_on_timer, d);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
	(void)what;
	struct relay *r = arg;
	for (int i = 0; i < 64; i++) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0)
			return;
		int ufd =
		    socket(r->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (ufd < 0) {
			close(cfd);
			continue;
		}
		int one = 1;
		setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct conn *c = calloc(1, sizeof *c);
		if (!c) {
			close(cfd);
			close(ufd);
			continue;
		}
		c->r = r;
		c->cfd = cfd;
		c->ufd = ufd;
		pipe_init(c, &c->up, cfd, ufd);
		pipe_init(c, &c->down, ufd, cfd);
		c->next = r->conns;
		if (r->conns)
			r->conns->prev = c;
		r->conns = c;
		if (connect(ufd, (struct sockaddr *)&r->target, r->target_len) < 0 &&
		    errno != EINPROGRESS) {
			conn_free(c);
			continue;
		}
		c->connect_ev = event_new(r->base, ufd, EV_WRITE, conn_on_connect, c);
		event_add(c->connect_ev, NULL);
		if (r->delay_ns >
		    0) { /* SYN, SYN-ACK: one round trip before the first byte moves */
			c->start_timer = evtimer_new(r->base, conn_on_start_timer, c);
			struct timeval tv = tv_from_ns(2 * r->delay_ns);
			evtimer_add(c->start_timer, &tv);
		}
	}
}

/* ---------------------------------------------------------------------- */
/* UDP */

struct dgram {
	struct dgram *next;
	int64_t due;
	struct sockaddr_storage client; /* whose datagram (toward the target) or for whom */
	socklen_t client_len;
	size_t len;
	uint16_t seg; /* received coalesced (GRO): datagrams of seg bytes; else 0 */
	unsigned char data[];
};

struct udp_queue {
	struct dgram *head, *tail;
	size_t queued;
	struct event *timer, *wr; /* the head is due; its socket can take it */
};

struct udp_peer {
	struct udp_peer *next;
	struct relay *r;
	struct sockaddr_storage client;
	socklen_t client_len;
	int fd;
	struct event *rd;
	int64_t last;
	uint32_t
	    kernel_drops; /* SO_RXQ_OVFL: datagrams the kernel dropped on fd (its buffer full) */
};

static bool same_addr(const struct sockaddr_storage *a, socklen_t alen,
                      const struct sockaddr_storage *b, socklen_t blen)
{
	return alen == blen && memcmp(a, b, alen) == 0;
}

static void udp_push(struct relay *r, struct udp_queue *q, const void *data, size_t len,
                     uint16_t seg, const struct sockaddr_storage *client, socklen_t client_len,
                     int64_t now)
{
	struct dgram *g = NULL;
	if (q->queued + len > r->max_queue || !(g = malloc(sizeof *g + len))) {
		r->udp_drops += seg && seg < len ? (len + seg - 1) / seg : 1;
		return;
	}
	g->next = NULL;
	g->due = now + r->delay_ns;
	memcpy(&g->client, client, client_len);
	g->client_len = client_len;
	g->len = len;
	g->seg = seg && seg < len ? seg : 0;
	memcpy(g->data, data, len);
	if (q->tail)
		q->tail->next = g;
	else {
		q->head = g;
		struct timeval tv = tv_from_ns(r->delay_ns);
		evtimer_add(q->timer, &tv);
	}
	q->tail = g;
	q->queued += len;
}

static struct dgram *udp_pop(struct udp_queue *q)
{
	struct dgram *g = q->head;
	q->head = g->next;
	if (!q->head)
		q->tail = NULL;
	q->queued -= g->len;
	return g;
}

static void udp_peer_on_read(evutil_socket_t fd, short what, void *arg);

/* UDP socket buffers: a fast QUIC sender's burst is not dropped here (beyond
 * net.core.rmem_max where the relay may: it runs as root in the benchmarks). */
static void big_buffers(int fd)
{
	int sz = UDP_SOCKBUF;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
}

static struct udp_peer *udp_peer_get(struct relay *r, const struct sockaddr_storage *client,
                                     socklen_t len)
{
	for (struct udp_peer **pp = &r->peers; *pp; pp = &(*pp)->next) {
		struct udp_peer *p = *pp;
		if (same_addr(&p->client, p->client_len, client, len)) {
			if (pp !=
			    &r->peers) { /* to the front: the next lookup is likely the same */
				*pp = p->next;
				p->next = r->peers;
				r->peers = p;
			}
			return p;
		}
	}
	int fd = socket(r->target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	big_buffers(fd);
	if (r->gro)
		setsockopt(fd, SOL_UDP, UDP_GRO, &r->gro, sizeof r->gro);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&r->target, r->target_len) < 0) {
		close(fd);
		return NULL;
	}
	struct udp_peer *p = calloc(1, sizeof *p);
	if (!p) {
		close(fd);
		return NULL;
	}
	p->r = r;
	memcpy(&p->client, client, len);
	p->client_len = len;
	p->fd = fd;
	p->rd = event_new(r->base, fd, EV_READ | EV_PERSIST, udp_peer_on_read, p);
	event_add(p->rd, NULL);
	p->next = r->peers;
	r->peers = p;
	return p;
}

static void udp_peer_free(struct udp_peer *p)
{
	p->r->udp_kernel_drops_closed += p->kernel_drops;
	event_free(p->rd);
	close(p->fd);
	free(p);
}

/* Reads a batch of datagrams from fd into q; from_listen: fd is the listen
 * socket and the sender is the client, else the peer's client. */
static void udp_read_batch(struct relay *r, int fd, struct udp_queue *q, struct udp_peer *peer)
{
	static unsigned char bufs[UDP_BATCH][UDP_MAX];
	struct mmsghdr msgs[UDP_BATCH];
	struct iovec iov[UDP_BATCH];
	struct sockaddr_storage from[UDP_BATCH];
	union {
		char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t))];
		struct cmsghdr align;
	} ctrl[UDP_BATCH];
	/* a bounded batch per wake-up, so that sending keeps pace with reading */
	size_t got = 0;
	for (int round = 0; round < 16 && got < UDP_READ_MAX; round++) {
		for (int i = 0; i < UDP_BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = UDP_MAX;
			memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof from[i];
			msgs[i].msg_hdr.msg_control = ctrl[i].buf;
			msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i].buf;
		}
		int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		int64_t now = now_ns();
		r->udp_bufs += (unsigned)n;
		for (int i = 0; i < n; i++) {
			got += msgs[i].msg_len;
			r->udp_bytes += msgs[i].msg_len;
			int seg = 0;
			for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
			     cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm))
				if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO)
					memcpy(&seg, CMSG_DATA(cm), sizeof seg);
				else if (cm->cmsg_level == SOL_SOCKET &&
				         cm->cmsg_type == SO_RXQ_OVFL)
					memcpy(peer ? &peer->kernel_drops : &r->udp_kernel_drops,
					       CMSG_DATA(cm), sizeof(uint32_t));
			uint16_t s16 = seg > 0 && seg <= UINT16_MAX ? (uint16_t)seg : 0;
			if (peer)
				udp_push(r, q, bufs[i], msgs[i].msg_len, s16, &peer->client,
				         peer->client_len, now);
			else
				udp_push(r, q, bufs[i], msgs[i].msg_len, s16, &from[i],
				         msgs[i].msg_hdr.msg_namelen, now);
		}
		if (peer)
			peer->last = now;
		if (n < UDP_BATCH)
			return;
	}
}

static void udp_peer_on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct udp_peer *p = arg;
	udp_read_batch(p->r, fd, p->r->down_q, p);
}

static void udp_on_read(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct relay *r = arg;
	udp_read_batch(r, fd, r->up_q, NULL);
}

static void udp_on_timer_up(evutil_socket_t fd, short what, void *arg);
static void udp_on_timer_down(evutil_socket_t fd, short what, void *arg);

/* Sends the due datagrams of q: toward the target on each client's peer
 * socket (up) or to the clients on the listen socket. */
static void udp_flush(struct relay *r, struct udp_queue *q, bool up)
{
	int64_t now = now_ns();
	while (q->head && q->head->due <= now) {
		struct mmsghdr msgs[UDP_BATCH];
		struct iovec iov[UDP_BATCH];
		union {
			char buf[CMSG_SPACE(sizeof(uint16_t))];
			struct cmsghdr align;
		} ctrl[UDP_BATCH];
		struct udp_peer *peer = NULL;
		int n = 0;
		for (struct dgram *g = q->head; g && g->due <= now && n < UDP_BATCH; g = g->next) {
			if (up) {
				struct udp_peer *p = udp_peer_get(r, &g->client, g->client_len);
				if (n > 0 && p != peer)
					break; /* one socket per sendmmsg */
				peer = p;
				if (!p) {
					free(udp_pop(q));
					r->udp_send_errors++;
					goto again;
				}
				p->last = now;
			}
			iov[n].iov_base = g->data;
			iov[n].iov_len = g->len;
			memset(&msgs[n].msg_hdr, 0, sizeof msgs[n].msg_hdr);
			msgs[n].msg_hdr.msg_iov = &iov[n];
			msgs[n].msg_hdr.msg_iovlen = 1;
			if (!up) {
				msgs[n].msg_hdr.msg_name = &g->client;
				msgs[n].msg_hdr.msg_namelen = g->client_len;
			}
			if (g->seg) { /* sent on as the datagrams it was received as */
				memset(&ctrl[n], 0, sizeof ctrl[n]);
				msgs[n].msg_hdr.msg_control = ctrl[n].buf;
				msgs[n].msg_hdr.msg_controllen = sizeof ctrl[n].buf;
				struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[n].msg_hdr);
				cm->cmsg_level = SOL_UDP;
				cm->cmsg_type = UDP_SEGMENT;
				cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
				memcpy(CMSG_DATA(cm), &g->seg, sizeof g->seg);
			}
			n++;
		}
		int fd = up ? peer->fd : r->udp_fd;
		int sent = sendmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
				/* the socket buffer is full: wait until it drains */
				if (!event_pending(q->wr, EV_WRITE, NULL)) {
					event_assign(q->wr, r->base, fd, EV_WRITE,
					             up ? udp_on_timer_up : udp_on_timer_down, r);
					event_add(q->wr, NULL);
				}
				return;
			}
			if (errno == EINTR)
				continue;
			sent = 1; /* e.g. ECONNREFUSED from an earlier datagram: this one is lost */
			r->udp_send_errors++;
		}
		for (int i = 0; i < sent; i++)
			free(udp_pop(q));
	again:;
	}
	if (q->head) {
		struct timeval tv = tv_from_ns(q->head->due - now);
		evtimer_add(q->timer, &tv);
	}
}

static void udp_on_timer_up(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct relay *r = arg;
	udp_flush(r, r->up_q, true);
}

static void udp_on_timer_down(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct relay *r = arg;
	udp_flush(r, r->down_q, false);
}

static void udp_on_reap(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct relay *r = arg;
	int64_t now = now_ns();
	for (struct udp_peer **pp = &r->peers; *pp;) {
		struct udp_peer *p = *pp;
		if (now - p->last > UDP_IDLE_NS) {
			*pp = p->next;
			udp_peer_free(p);
		} else
			pp = &p->next;
	}
}

/* ---------------------------------------------------------------------- */
/* set-up */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	event_base_loopbreak(arg);
}

/* The UDP counters, on exit and on SIGUSR1 (bench/compare asks after its
 * HTTP/3 rows whether the relay dropped anything). */
static void udp_report(struct relay *r)
{
	unsigned long long kernel = r->udp_kernel_drops_closed + r->udp_kernel_drops;
	for (struct udp_peer *p = r->peers; p; p = p->next)
		kernel += p->kernel_drops;
	fprintf(
	    stderr,
	    "delay_relay: udp: %llu bytes in %llu buffers (GRO %s); dropped: %llu datagrams "
	    "beyond the queue bound, %llu by the kernel (socket buffers full); %llu send errors\n",
	    r->udp_bytes, r->udp_bufs, r->gro ? "on" : "off", r->udp_drops, kernel,
	    r->udp_send_errors);
	fflush(stderr);
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	udp_report(arg);
}

static int parse_target(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
	const char *colon = strrchr(text, ':');
	if (!colon || !colon[1])
		return -1;
	char host[256];
	size_t hl = (size_t)(colon - text);
	if (hl >= sizeof host)
		return -1;
	memcpy(host, text, hl);
	host[hl] = 0;
	char *h = host;
	if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
		h[hl - 1] = 0;
		h++;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	if (getaddrinfo(h, colon + 1, &hints, &ai) != 0 || !ai)
		return -1;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static int listen_socket(const char *bind_addr, int port, int type, struct sockaddr_storage *out,
                         socklen_t *outlen)
{
	struct addrinfo hints = {.ai_socktype = type, .ai_flags = AI_PASSIVE | AI_NUMERICHOST},
	                *ai = NULL;
	char ps[16];
	snprintf(ps, sizeof ps, "%d", port);
	if (getaddrinfo(bind_addr, ps, &hints, &ai) != 0 || !ai)
		return -1;
	int fd = socket(ai->ai_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0 && type == SOCK_STREAM) {
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	}
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 512) < 0)) {
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	*outlen = sizeof *out;
	getsockname(fd, (struct sockaddr *)out, outlen);
	return fd;
}

static int port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: delay_relay --listen PORT --target HOST:PORT [--delay-ms MS] [--udp] "
	        "[--bind ADDR] [--max-queue-mb MB] [--no-gro]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *bind_addr = "127.0.0.1", *target = NULL;
	int port = -1;
	double delay_ms = 20.0, max_mb = 64.0;
	bool udp = false, no_gro = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = NULL;
		const char *eq = strchr(a, '=');
		char name[32];
		size_t nl = eq ? (size_t)(eq - a) : strlen(a);
		if (nl >= sizeof name)
			usage();
		memcpy(name, a, nl);
		name[nl] = 0;
		if (!strcmp(name, "--udp")) {
			udp = true;
			continue;
		}
		if (!strcmp(name, "--no-gro")) {
			no_gro = true;
			continue;
		}
		if (!strcmp(name, "-h") || !strcmp(name, "--help"))
			usage();
		v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
		if (!v)
			usage();
		char *end;
		if (!strcmp(name, "--listen")) {
			long p = strtol(v, &end, 10);
			if (*end || p < 0 || p > 65535)
				usage();
			port = (int)p;
		} else if (!strcmp(name, "--target"))
			target = v;
		else if (!strcmp(name, "--bind"))
			bind_addr = v;
		else if (!strcmp(name, "--delay-ms")) {
			delay_ms = strtod(v, &end);
			if (*end || delay_ms < 0)
				usage();
		} else if (!strcmp(name, "--max-queue-mb")) {
			max_mb = strtod(v, &end);
			if (*end || max_mb <= 0)
				usage();
		} else
			usage();
	}
	if (port < 0 || !target)
		usage();

	signal(SIGPIPE, SIG_IGN);
	struct relay r = {.tcp_fd = -1, .udp_fd = -1};
	r.delay_ns = (int64_t)(delay_ms * 1e6);
	r.max_queue = (size_t)(max_mb * (1 << 20));
	if (parse_target(target, &r.target, &r.target_len) < 0) {
		fprintf(stderr, "delay_relay: bad target %s (expected HOST:PORT)\n", target);
		return 2;
	}
	struct event_config *cfg = event_config_new();
	event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	r.base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!r.base)
		return 1;

	struct sockaddr_storage local;
	socklen_t local_len;
	r.tcp_fd = listen_socket(bind_addr, port, SOCK_STREAM, &local, &local_len);
	if (r.tcp_fd < 0) {
		fprintf(stderr, "delay_relay: cannot listen on %s:%d: %s\n", bind_addr, port,
		        strerror(errno));
		return 1;
	}
	int bound = port_of(&local);
	r.accept_ev = event_new(r.base, r.tcp_fd, EV_READ | EV_PERSIST, on_accept, &r);
	event_add(r.accept_ev, NULL);
	struct udp_queue up_q = {0}, down_q = {0};
	if (udp) {
		struct sockaddr_storage ul;
		socklen_t ull;
		r.udp_fd = listen_socket(bind_addr, bound, SOCK_DGRAM, &ul, &ull);
		if (r.udp_fd < 0) {
			fprintf(stderr, "delay_relay: cannot bind UDP %s:%d: %s\n", bind_addr,
			        bound, strerror(errno));
			event_free(r.accept_ev);
			close(r.tcp_fd);
			event_base_free(r.base);
			return 1;
		}
		big_buffers(r.udp_fd);
		/* a GSO sender's burst arrives as one buffer and leaves as one */
		int one = 1;
		setsockopt(r.udp_fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
		if (!no_gro && setsockopt(r.udp_fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0)
			r.gro = 1;
		r.up_q = &up_q;
		r.down_q = &down_q;
		up_q.timer = evtimer_new(r.base, udp_on_timer_up, &r);
		down_q.timer = evtimer_new(r.base, udp_on_timer_down, &r);
		r.udp_ev = event_new(r.base, r.udp_fd, EV_READ | EV_PERSIST, udp_on_read, &r);
		event_add(r.udp_ev, NULL);
		up_q.wr = event_new(r.base, -1, 0, udp_on_timer_up, &r);
		down_q.wr = event_new(r.base, -1, 0, udp_on_timer_down, &r);
		r.reap_ev = event_new(r.base, -1, EV_PERSIST, udp_on_reap, &r);
		struct timeval reap = {.tv_sec = UDP_IDLE_NS / 4000000000LL};
		event_add(r.reap_ev, &reap);
	}
	r.sig_term = evsignal_new(r.base, SIGTERM, on_signal, r.base);
	r.sig_int = evsignal_new(r.base, SIGINT, on_signal, r.base);
	event_add(r.sig_term, NULL);
	event_add(r.sig_int, NULL);
	if (udp) {
		r.sig_usr1 = evsignal_new(r.base, SIGUSR1, on_usr1, &r);
		event_add(r.sig_usr1, NULL);
	}

	printf("relay listening on %s:%d%s\n", bind_addr, bound, udp ? " (tcp+udp)" : "");
	fflush(stdout);
	event_base_dispatch(r.base);

	while (r.conns)
		conn_free(r.conns);
	while (r.peers) {
		struct udp_peer *p = r.peers;
		r.peers = p->next;
		udp_peer_free(p);
	}
	if (udp)
		udp_report(&r);
	struct udp_queue *queues[2] = {r.up_q, r.down_q};
	for (int i = 0; i < 2 && udp; i++) {
		while (queues[i]->head)
			free(udp_pop(queues[i]));
		event_free(queues[i]->timer);
		event_free(queues[i]->wr);
	}
	struct event *evs[] = {r.accept_ev, r.udp_ev, r.reap_ev, r.sig_term, r.sig_int, r.sig_usr1};
	for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
		if (evs[i])
			event_free(evs[i]);
	close(r.tcp_fd);
	if (r.udp_fd >= 0)
		close(r.udp_fd);
	event_base_free(r.base);
	return 0;
}
