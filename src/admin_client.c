/*
 * admin_client — a blocking GET to a running muxd's admin pages: connect
 * within CONNECT_TIMEOUT_MS, the whole exchange within EXCHANGE_TIMEOUT_MS,
 * the response head parsed by http1, its body framed by Content-Length,
 * chunked coding or the end of the connection.
 */
#include "admin_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "http1.h"

#define CONNECT_TIMEOUT_MS 1000
#define EXCHANGE_TIMEOUT_MS 5000
#define MAX_REPLY (1u << 20)

static void set_err(char *err, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, size, fmt, ap);
	va_end(ap);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for events on fd until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd pfd = {fd, events, 0};
		int64_t left = deadline - now_ms();
		int n;
		if (left <= 0)
			return 0;
		n = poll(&pfd, 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? -1 : n;
	}
}

/* Loopback in place of an unspecified listen address. */
static void target_addr(const struct config_listen *l, struct sockaddr_storage *ss, socklen_t *len)
{
	memcpy(ss, &l->addr, sizeof(*ss));
	*len = l->addr_len;
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
			sin6->sin6_addr = in6addr_loopback;
	}
}

/* A connected non-blocking socket, or -1 with *no_daemon telling whether
 * nothing listens (refused, unreachable, no answer in time). */
static int connect_to(const struct config_listen *l, bool *no_daemon, char *err, size_t errsize)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, soerr = 0, n;
	socklen_t sl = sizeof(soerr);

	*no_daemon = false;
	target_addr(l, &ss, &len);
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		set_err(err, errsize, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)&ss, len) == 0)
		return fd;
	if (errno != EINPROGRESS) {
		soerr = errno;
		goto fail;
	}
	n = wait_fd(fd, POLLOUT, now_ms() + CONNECT_TIMEOUT_MS);
	if (n == 0)
		soerr = ETIMEDOUT;
	else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
		soerr = errno;
	if (!soerr)
		return fd;
fail:
	*no_daemon = soerr == ECONNREFUSED || soerr == ETIMEDOUT || soerr == ENETUNREACH ||
	             soerr == EHOSTUNREACH || soerr == EADDRNOTAVAIL || soerr == EAFNOSUPPORT;
	set_err(err, errsize, "%s", strerror(soerr));
	close(fd);
	return -1;
}

static bool send_all(int fd, const char *p, size_t n, int64_t deadline)
{
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			int w = wait_fd(fd, POLLOUT, deadline);
			if (w == 0)
				errno = ETIMEDOUT;
			if (w <= 0)
				return false;
			continue;
		}
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

/* Read until the peer closes (the request said Connection: close). */
static char *recv_all(int fd, size_t *len, int64_t deadline, char *err, size_t errsize)
{
	char *buf = NULL;
	size_t cap = 0;

	*len = 0;
	for (;;) {
		ssize_t k;
		if (cap - *len < 4096) {
			char *nb;
			if (cap >= MAX_REPLY) {
				set_err(err, errsize, "response larger than %u bytes", MAX_REPLY);
				goto fail;
			}
			nb = realloc(buf, cap ? cap * 2 : 16384);
			if (!nb) {
				set_err(err, errsize, "out of memory");
				goto fail;
			}
			buf = nb;
			cap = cap ? cap * 2 : 16384;
		}
		k = recv(fd, buf + *len, cap - *len - 1, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			int n = wait_fd(fd, POLLIN, deadline);
			if (n <= 0) {
				set_err(err, errsize, "reading the response: %s",
				        n == 0 ? "timed out" : strerror(errno));
				goto fail;
			}
			continue;
		}
		if (k < 0) {
			set_err(err, errsize, "reading the response: %s", strerror(errno));
			goto fail;
		}
		if (k == 0)
			break;
		*len += (size_t)k;
	}
	if (!buf || *len == 0) {
		set_err(err, errsize, "connection closed without a response");
		goto fail;
	}
	buf[*len] = '\0';
	return buf;
fail:
	free(buf);
	return NULL;
}

/* The body of the response in buf (head of head_len bytes), framed as the
 * head says; copied into reply. */
static bool take_body(const struct http1_msg *msg, const char *buf, size_t len, size_t head_len,
                      struct admin_reply *reply, char *err, size_t errsize)
{
	const char *in = buf + head_len;
	size_t in_len = len - head_len, out = 0;

	reply->body = malloc(in_len + 1);
	if (!reply->body) {
		set_err(err, errsize, "out of memory");
		return false;
	}
	switch (msg->body) {
	case HTTP1_BODY_NONE:
		break;
	case HTTP1_BODY_LENGTH:
		if (msg->content_length > in_len) {
			set_err(err, errsize, "response body cut short");
			return false;
		}
		out = (size_t)msg->content_length;
		memcpy(reply->body, in, out);
		break;
	case HTTP1_BODY_CLOSE:
	case HTTP1_BODY_UNKNOWN: /* never from an HTTP/1.x parser; as CLOSE */
		out = in_len;
		memcpy(reply->body, in, out);
		break;
	case HTTP1_BODY_CHUNKED: {
		struct http1_chunked *c = calloc(1, sizeof(*c));
		bool done = false;
		if (!c) {
			set_err(err, errsize, "out of memory");
			return false;
		}
		while (!done) {
			size_t used;
			const char *data;
			size_t dlen;
			switch (http1_chunked_next(c, in, in_len, &used, &data, &dlen)) {
			case HTTP1_CHUNK_DATA:
				memcpy(reply->body + out, data, dlen);
				out += dlen;
				break;
			case HTTP1_CHUNK_DONE:
				done = true;
				break;
			case HTTP1_CHUNK_NEED_MORE:
			case HTTP1_CHUNK_ERROR:
				free(c);
				set_err(err, errsize, "bad or truncated chunked body");
				return false;
			}
			in += used;
			in_len -= used;
		}
		free(c);
		break;
	}
	}
	reply->body[out] = '\0';
	reply->body_len = out;
	return true;
}

enum admin_fetch admin_get(const struct config_listen *l, const char *path,
                           struct admin_reply *reply, char *err, size_t errsize)
{
	int64_t deadline = now_ms() + EXCHANGE_TIMEOUT_MS;
	struct http1_msg msg;
	char req[512], *buf;
	size_t len, head_len;
	bool no_daemon;
	int fd;

	memset(reply, 0, sizeof(*reply));
	fd = connect_to(l, &no_daemon, err, errsize);
	if (fd < 0)
		return no_daemon ? ADMIN_FETCH_NO_DAEMON : ADMIN_FETCH_ERROR;
	snprintf(req, sizeof(req),
	         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: muxd-cli\r\nConnection: close\r\n\r\n",
	         path, l->text);
	if (!send_all(fd, req, strlen(req), deadline)) {
		set_err(err, errsize, "sending the request: %s", strerror(errno));
		close(fd);
		return ADMIN_FETCH_ERROR;
	}
	buf = recv_all(fd, &len, deadline, err, errsize);
	close(fd);
	if (!buf)
		return ADMIN_FETCH_ERROR;
	if (http1_parse_response(buf, len, "GET", &msg, &head_len) != HTTP1_OK) {
		set_err(err, errsize, "not an HTTP response (is this muxd?)");
		free(buf);
		return ADMIN_FETCH_ERROR;
	}
	reply->status = msg.status;
	if (!take_body(&msg, buf, len, head_len, reply, err, errsize)) {
		http1_msg_free(&msg);
		free(buf);
		admin_reply_free(reply);
		return ADMIN_FETCH_ERROR;
	}
	http1_msg_free(&msg);
	free(buf);
	return ADMIN_FETCH_OK;
}

void admin_reply_free(struct admin_reply *reply)
{
	free(reply->body);
	reply->body = NULL;
	reply->body_len = 0;
}

/* True when pem is exactly one PEM X.509 certificate. */
static bool one_certificate(const char *pem, size_t len)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d = {(unsigned char *)(uintptr_t)pem, (unsigned)len};
	const char *begin = "-----BEGIN CERTIFICATE-----";
	const char *first = strstr(pem, begin);
	bool ok;

	if (!first || strstr(first + 1, begin) || gnutls_x509_crt_init(&crt) < 0)
		return false;
	ok = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM) >= 0;
	gnutls_x509_crt_deinit(crt);
	return ok;
}

enum admin_ca admin_get_ca(const struct config *cfg, const struct config_listen **which, char **pem,
                           size_t *pem_len, char *err, size_t errsize)
{
	char last[256] = "";

	*pem = NULL;
	*pem_len = 0;
	for (size_t i = 0; i < cfg->nlisten; i++) {
		const struct config_listen *l = &cfg->listen[i];
		struct admin_reply r;
		char why[256];

		switch (admin_get(l, "/ca.pem", &r, why, sizeof(why))) {
		case ADMIN_FETCH_NO_DAEMON:
			snprintf(last, sizeof(last), "%s", why);
			continue;
		case ADMIN_FETCH_ERROR:
			set_err(err, errsize, "muxd at %s: %s", l->text, why);
			return ADMIN_CA_ERROR;
		case ADMIN_FETCH_OK:
			break;
		}
		*which = l;
		if (r.status == 404) {
			admin_reply_free(&r);
			return ADMIN_CA_NONE;
		}
		if (r.status != 200) {
			char *nl = strchr(r.body, '\n');
			if (nl)
				*nl = '\0';
			set_err(err, errsize, "muxd at %s answered /ca.pem with %d%s%s", l->text,
			        r.status, r.body[0] ? ": " : "", r.body);
			admin_reply_free(&r);
			return ADMIN_CA_ERROR;
		}
		if (!one_certificate(r.body, r.body_len)) {
			set_err(err, errsize,
			        "%s answered /ca.pem with something that is not a certificate",
			        l->text);
			admin_reply_free(&r);
			return ADMIN_CA_ERROR;
		}
		*pem = r.body;
		*pem_len = r.body_len;
		return ADMIN_CA_OK;
	}
	set_err(err, errsize, "%s", last[0] ? last : "no listen address");
	return ADMIN_CA_NO_DAEMON;
}

char *admin_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0;
	int saved;

	*len = 0;
	if (!f)
		return NULL;
	for (;;) {
		size_t k;
		if (cap - *len < 4096) {
			char *nb = cap >= (64u << 20) ? NULL : realloc(buf, cap ? cap * 2 : 65536);
			if (!nb) {
				errno = cap >= (64u << 20) ? EFBIG : ENOMEM;
				goto fail;
			}
			buf = nb;
			cap = cap ? cap * 2 : 65536;
		}
		k = fread(buf + *len, 1, cap - *len - 1, f);
		*len += k;
		if (k == 0) {
			if (ferror(f))
				goto fail;
			break;
		}
	}
	fclose(f);
	buf[*len] = '\0';
	return buf;
fail:
	saved = errno;
	fclose(f);
	free(buf);
	errno = saved;
	return NULL;
}

bool admin_write_file(const char *path, const char *a, size_t alen, const char *b, size_t blen,
                      bool *changed, char *err, size_t errsize)
{
	size_t have_len;
	char *have = admin_read_file(path, &have_len);
	char *tmp = NULL;
	FILE *f;
	int saved;

	*changed = false;
	if (have && have_len == alen + blen && memcmp(have, a, alen) == 0 &&
	    memcmp(have + alen, b, blen) == 0) {
		free(have);
		return true;
	}
	free(have);
	if (asprintf(&tmp, "%s.tmp%ld", path, (long)getpid()) < 0) {
		set_err(err, errsize, "out of memory");
		return false;
	}
	f = fopen(tmp, "wbx");
	if (!f)
		goto fail;
	if (fchmod(fileno(f), 0644) != 0 || fwrite(a, 1, alen, f) != alen ||
	    fwrite(b, 1, blen, f) != blen || fflush(f) != 0 || fsync(fileno(f)) != 0) {
		saved = errno;
		fclose(f);
		unlink(tmp);
		errno = saved;
		goto fail;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		saved = errno;
		unlink(tmp);
		errno = saved;
		goto fail;
	}
	free(tmp);
	*changed = true;
	return true;
fail:
	saved = errno;
	set_err(err, errsize, "cannot write %s: %s", path, strerror(errno));
	free(tmp);
	errno = saved;
	return false;
}

bool admin_make_dirs(const char *path, unsigned mode)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return false;
	}
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
				return false;
			*p = c;
			if (!c)
				return true;
		}
	}
}
