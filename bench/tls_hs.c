/*
 * bench/tls_hs — a TLS client over GnuTLS that times N handshakes against
 * one server, for bench/tls: either straight to a TLS server, or through an
 * HTTP proxy's CONNECT (muxd intercepting it). Fresh mode: every handshake a
 * new session (a full handshake, the server sends its certificate); resume
 * mode: one full handshake and one HTTP request to get a ticket, then N
 * handshakes offering it (each keeps the newest ticket it received). Prints
 * one line per mode: "<label> <mode> n=N resumed=R median_us=... p90_us=...
 * [tls_median_us=... tls_p90_us=...]" — the first pair from the TCP connect
 * until the client's handshake is done (CONNECT and its 200 included), the
 * second (proxied only) the TLS handshake alone. A measurement, not a test.
 *
 *     tls_hs -h HOST -p PORT -a CAFILE [-x PROXYPORT] [-n N] [-P PRIORITY]
 *            [-m fresh|resume|both] [-l LABEL]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct opts {
	const char *host, *ca, *priority, *mode, *label;
	int port, proxy_port, n;
};

static gnutls_certificate_credentials_t creds;

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int tcp_connect(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	struct timeval tv = {.tv_sec = 10};
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* CONNECT host:port through the proxy; reads the answer head byte by byte
 * so that nothing after it is consumed. */
static int proxy_connect(const struct opts *o, int fd)
{
	char req[512], head[2048];
	size_t n = 0;
	int len = snprintf(req, sizeof(req), "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
	                   o->host, o->port, o->host, o->port);

	if (write(fd, req, (size_t)len) != len)
		return -1;
	while (n + 1 < sizeof(head)) {
		ssize_t r = read(fd, head + n, 1);
		if (r <= 0)
			return -1;
		n++;
		if (n >= 4 && memcmp(head + n - 4, "\r\n\r\n", 4) == 0)
			break;
	}
	head[n] = '\0';
	return strncmp(head, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
}

/* One handshake; *total_us from before the TCP connect, *tls_us from the
 * first ClientHello byte. Returns the session (the caller deinits it and
 * closes *fd) or NULL. */
static gnutls_session_t handshake(const struct opts *o, const gnutls_datum_t *resume, int *fd,
                                  double *total_us, double *tls_us)
{
	gnutls_session_t s = NULL;
	double t0 = now_us(), t1;
	int r;

	*fd = tcp_connect(o->proxy_port ? o->proxy_port : o->port);
	if (*fd < 0) {
		fprintf(stderr, "tls_hs: connect: %s\n", strerror(errno));
		return NULL;
	}
	if (o->proxy_port && proxy_connect(o, *fd) < 0) {
		fprintf(stderr, "tls_hs: CONNECT refused\n");
		goto fail;
	}
	t1 = now_us();
	if (gnutls_init(&s, GNUTLS_CLIENT) < 0 ||
	    gnutls_priority_set_direct(s, o->priority, NULL) < 0 ||
	    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, creds) < 0 ||
	    gnutls_server_name_set(s, GNUTLS_NAME_DNS, o->host, strlen(o->host)) < 0)
		goto fail;
	gnutls_session_set_verify_cert(s, o->host, 0);
	if (resume && gnutls_session_set_data(s, resume->data, resume->size) < 0)
		goto fail;
	gnutls_transport_set_int(s, *fd);
	do
		r = gnutls_handshake(s);
	while (r < 0 && !gnutls_error_is_fatal(r));
	if (r < 0) {
		fprintf(stderr, "tls_hs: handshake: %s\n", gnutls_strerror(r));
		goto fail;
	}
	*total_us = now_us() - t0;
	*tls_us = now_us() - t1;
	return s;
fail:
	if (s)
		gnutls_deinit(s);
	close(*fd);
	*fd = -1;
	return NULL;
}

/* One request on s (its response brings the TLS 1.3 tickets along), then the
 * session data to resume with. */
static int get_ticket(const struct opts *o, gnutls_session_t s, gnutls_datum_t *data)
{
	char req[512], buf[16384];
	int len =
	    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
	             o->host, o->port);
	ssize_t r;

	if (gnutls_record_send(s, req, (size_t)len) != len)
		return -1;
	do
		r = gnutls_record_recv(s, buf, sizeof(buf));
	while (r > 0 || r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
	return gnutls_session_get_data2(s, data) < 0 ? -1 : 0;
}

static void report(const struct opts *o, const char *mode, double *total, double *tls, int n,
                   int resumed)
{
	qsort(total, (size_t)n, sizeof(*total), cmp_double);
	qsort(tls, (size_t)n, sizeof(*tls), cmp_double);
	printf("%s %s n=%d resumed=%d median_us=%.0f p90_us=%.0f", o->label, mode, n, resumed,
	       total[n / 2], total[n * 9 / 10]);
	if (o->proxy_port)
		printf(" tls_median_us=%.0f tls_p90_us=%.0f", tls[n / 2], tls[n * 9 / 10]);
	printf("\n");
	fflush(stdout);
}

static int run(const struct opts *o, bool resume, double *total, double *tls)
{
	gnutls_datum_t data = {NULL, 0};
	int fd, resumed = 0;

	if (resume) {
		double a, b;
		gnutls_session_t s = handshake(o, NULL, &fd, &a, &b);
		if (!s)
			return -1;
		int r = get_ticket(o, s, &data);
		gnutls_deinit(s);
		close(fd);
		if (r < 0) {
			fprintf(stderr, "tls_hs: no session data\n");
			return -1;
		}
	}
	for (int i = 0; i < o->n; i++) {
		gnutls_session_t s = handshake(o, resume ? &data : NULL, &fd, &total[i], &tls[i]);
		if (!s) {
			gnutls_free(data.data);
			return -1;
		}
		if (gnutls_session_is_resumed(s))
			resumed++;
		gnutls_deinit(s);
		close(fd);
	}
	gnutls_free(data.data);
	report(o, resume ? "resume" : "fresh", total, tls, o->n, resumed);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {.host = "localhost",
	                 .priority = "NORMAL:-VERS-ALL:+VERS-TLS1.3",
	                 .mode = "both",
	                 .label = "server",
	                 .n = 200};
	double *total, *tls;
	int c, rc = 0;

	while ((c = getopt(argc, argv, "h:p:a:x:n:P:m:l:")) != -1) {
		switch (c) {
		case 'h':
			o.host = optarg;
			break;
		case 'p':
			o.port = atoi(optarg);
			break;
		case 'a':
			o.ca = optarg;
			break;
		case 'x':
			o.proxy_port = atoi(optarg);
			break;
		case 'n':
			o.n = atoi(optarg);
			break;
		case 'P':
			o.priority = optarg;
			break;
		case 'm':
			o.mode = optarg;
			break;
		case 'l':
			o.label = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!o.port || !o.ca || o.n < 1) {
		fprintf(stderr, "usage: tls_hs -h HOST -p PORT -a CAFILE [-x PROXYPORT] [-n N] "
		                "[-P PRIORITY] [-m fresh|resume|both] [-l LABEL]\n");
		return 2;
	}
	if (gnutls_certificate_allocate_credentials(&creds) < 0 ||
	    gnutls_certificate_set_x509_trust_file(creds, o.ca, GNUTLS_X509_FMT_PEM) <= 0) {
		fprintf(stderr, "tls_hs: cannot load %s\n", o.ca);
		return 1;
	}
	total = calloc((size_t)o.n, sizeof(*total));
	tls = calloc((size_t)o.n, sizeof(*tls));
	if (!total || !tls)
		return 1;
	if (strcmp(o.mode, "resume") != 0 && run(&o, false, total, tls) < 0)
		rc = 1;
	if (!rc && strcmp(o.mode, "fresh") != 0 && run(&o, true, total, tls) < 0)
		rc = 1;
	free(total);
	free(tls);
	gnutls_certificate_free_credentials(creds);
	return rc;
}
