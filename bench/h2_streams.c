/*
 * bench/h2_streams — one HTTP/2 client connection with many concurrent
 * streams, for bench/h2: keeps STREAMS GETs of PATH in flight on one TLS
 * connection (ALPN h2, verified against CAFILE) until REQUESTS answers came
 * back, and prints one line of JSON (requests, errors, seconds, rate). With
 * PROXY_PORT it first sends CONNECT AUTHORITY to 127.0.0.1:PROXY_PORT (muxd
 * intercepts the TLS inside); without, it connects to AUTHORITY itself. A
 * measurement, not a test: python-h2 would be the bottleneck, this is not.
 * Built by `make build/bench/h2_streams` (bench/h2 does it).
 *
 *     h2_streams AUTHORITY PATH CAFILE STREAMS REQUESTS [PROXY_PORT]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct bench {
	nghttp2_session *ng;
	gnutls_session_t tls;
	const char *authority, *path;
	long target, submitted, done, errors, in_flight, streams;
	int status_ok;
};

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int tcp_connect(const char *host, const char *port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
	int fd, one = 1;

	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -1;
	fd = socket(res->ai_family, SOCK_STREAM, 0);
	if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* CONNECT authority through the proxy; the 200's head is read byte by byte
 * so that nothing of the TLS that follows is swallowed. */
static bool proxy_connect(int fd, const char *authority)
{
	char req[512], head[4096];
	size_t n = 0;
	int len = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority,
	                   authority);

	if (write(fd, req, (size_t)len) != len)
		return false;
	while (n < sizeof(head) - 1) {
		if (read(fd, head + n, 1) != 1)
			return false;
		n++;
		if (n >= 4 && memcmp(head + n - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	head[n] = '\0';
	return strncmp(head, "HTTP/1.1 200", 12) == 0 || strncmp(head, "HTTP/1.0 200", 12) == 0;
}

static void submit(struct bench *b)
{
	nghttp2_nv nva[] = {
	    {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
	    {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
	    {(uint8_t *)":authority", (uint8_t *)b->authority, 10, strlen(b->authority),
	     NGHTTP2_NV_FLAG_NONE},
	    {(uint8_t *)":path", (uint8_t *)b->path, 5, strlen(b->path), NGHTTP2_NV_FLAG_NONE},
	};

	while (b->in_flight < b->streams && b->submitted < b->target) {
		if (nghttp2_submit_request(b->ng, NULL, nva, 4, NULL, NULL) < 0) {
			b->errors++;
			return;
		}
		b->submitted++;
		b->in_flight++;
	}
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
	(void)flags;
	(void)ud;
	if (f->hd.type == NGHTTP2_HEADERS && nlen == 7 && memcmp(name, ":status", 7) == 0 &&
	    !(vlen == 3 && memcmp(value, "200", 3) == 0))
		nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, (void *)1);
	return 0;
}

static int on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
	struct bench *b = ud;

	if (code != NGHTTP2_NO_ERROR || nghttp2_session_get_stream_user_data(ng, id))
		b->errors++;
	b->done++;
	b->in_flight--;
	return 0;
}

static bool tls_setup(struct bench *b, int fd, const char *cafile)
{
	gnutls_certificate_credentials_t cred;
	gnutls_datum_t alpn = {(unsigned char *)"h2", 2};
	char host[256];
	const char *colon = strrchr(b->authority, ':');
	size_t hl = colon ? (size_t)(colon - b->authority) : strlen(b->authority);
	int rv;

	if (hl >= sizeof(host))
		return false;
	memcpy(host, b->authority, hl);
	host[hl] = '\0';
	if (gnutls_certificate_allocate_credentials(&cred) < 0 ||
	    gnutls_certificate_set_x509_trust_file(cred, cafile, GNUTLS_X509_FMT_PEM) <= 0)
		return false;
	gnutls_init(&b->tls, GNUTLS_CLIENT);
	gnutls_set_default_priority(b->tls);
	gnutls_credentials_set(b->tls, GNUTLS_CRD_CERTIFICATE, cred);
	gnutls_server_name_set(b->tls, GNUTLS_NAME_DNS, host, hl);
	gnutls_session_set_verify_cert(b->tls, host, 0);
	gnutls_alpn_set_protocols(b->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY);
	gnutls_transport_set_int(b->tls, fd);
	do
		rv = gnutls_handshake(b->tls);
	while (rv < 0 && !gnutls_error_is_fatal(rv));
	if (rv < 0) {
		fprintf(stderr, "h2_streams: TLS: %s\n", gnutls_strerror(rv));
		return false;
	}
	if (gnutls_alpn_get_selected_protocol(b->tls, &alpn) < 0 || alpn.size != 2 ||
	    memcmp(alpn.data, "h2", 2) != 0) {
		fprintf(stderr, "h2_streams: the server did not choose h2\n");
		return false;
	}
	return true;
}

static bool session_setup(struct bench *b)
{
	nghttp2_session_callbacks *cb;
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
	};

	nghttp2_session_callbacks_new(&cb);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
	if (nghttp2_session_client_new(&b->ng, cb, b) != 0)
		return false;
	nghttp2_session_callbacks_del(cb);
	nghttp2_submit_settings(b->ng, NGHTTP2_FLAG_NONE, iv, 2);
	nghttp2_session_set_local_window_size(b->ng, NGHTTP2_FLAG_NONE, 0, 1 << 26);
	return true;
}

/* Frames out; false on a write error. */
static bool send_all(struct bench *b)
{
	const uint8_t *data;
	ssize_t n;

	while ((n = nghttp2_session_mem_send(b->ng, &data)) > 0) {
		ssize_t off = 0;
		while (off < n) {
			ssize_t w = gnutls_record_send(b->tls, data + off, (size_t)(n - off));
			if (w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED)
				continue;
			if (w < 0)
				return false;
			off += w;
		}
	}
	return n == 0;
}

int main(int argc, char **argv)
{
	struct bench b = {0};
	char port[8];
	const char *colon;
	uint8_t buf[1 << 16];
	double t0, t1;
	int fd;

	if (argc < 6) {
		fprintf(stderr, "usage: h2_streams AUTHORITY PATH CAFILE STREAMS REQUESTS "
		                "[PROXY_PORT]\n");
		return 2;
	}
	b.authority = argv[1];
	b.path = argv[2];
	b.streams = atol(argv[4]);
	b.target = atol(argv[5]);
	colon = strrchr(b.authority, ':');
	if (!colon || b.streams < 1 || b.target < 1)
		return 2;
	snprintf(port, sizeof(port), "%s", argc > 6 ? argv[6] : colon + 1);
	fd = tcp_connect("127.0.0.1", port);
	if (fd < 0 || (argc > 6 && !proxy_connect(fd, b.authority))) {
		fprintf(stderr, "h2_streams: cannot connect (%s)\n", strerror(errno));
		return 1;
	}
	if (!tls_setup(&b, fd, argv[3]) || !session_setup(&b))
		return 1;
	t0 = now_s();
	submit(&b);
	while (b.done < b.target) {
		ssize_t n;
		if (!send_all(&b))
			break;
		n = gnutls_record_recv(b.tls, buf, sizeof(buf));
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n <= 0) {
			fprintf(stderr, "h2_streams: connection ended (%s)\n",
			        n == 0 ? "EOF" : gnutls_strerror((int)n));
			break;
		}
		if (nghttp2_session_mem_recv(b.ng, buf, (size_t)n) < 0)
			break;
		submit(&b);
	}
	t1 = now_s();
	printf("{\"requests\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rate\": %.1f}\n", b.done,
	       b.errors + (b.target - b.done), t1 - t0, (double)b.done / (t1 - t0));
	nghttp2_session_del(b.ng);
	gnutls_bye(b.tls, GNUTLS_SHUT_WR);
	close(fd);
	return b.done == b.target ? 0 : 1;
}
