/*
 * admin_client — a blocking GET to a running muxd's admin pages: connect
 * within a deadline (CONNECT_TIMEOUT_MS unless the caller says), the whole
 * exchange within another (EXCHANGE_TIMEOUT_MS), the response parsed as it
 * arrives: heads by http1 (interim ones skipped), the body framed by
 * Content-Length, chunked coding or the end of the connection.
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
static int connect_to(const struct config_listen *l, int timeout_ms, bool *no_daemon, char *err,
                      size_t errsize)
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
	n = wait_fd(fd, POLLOUT, now_ms() + timeout_ms);
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

/* ------------------------------------------------------- response parsing */

static size_t response_max(const struct admin_resp *r)
{
	return r->max ? r->max : ADMIN_MAX_RESPONSE;
}

/* Room for n more body bytes (and the NUL) in r->body. */
static bool body_reserve(struct admin_resp *r, size_t n)
{
	size_t cap = r->body_cap ? r->body_cap : 256;
	char *nb;

	if (r->body && r->body_len + n < r->body_cap)
		return true;
	while (cap <= r->body_len + n)
		cap *= 2;
	nb = realloc(r->body, cap);
	if (!nb)
		return false;
	r->body = nb;
	r->body_cap = cap;
	return true;
}

static bool body_append(struct admin_resp *r, const char *p, size_t n)
{
	if (!body_reserve(r, n))
		return false;
	memcpy(r->body + r->body_len, p, n);
	r->body_len += n;
	r->body[r->body_len] = '\0';
	return true;
}

/* The first line of the body, at most 160 bytes, control bytes as '?'. */
static void first_line(const struct admin_resp *r, char *out, size_t size)
{
	size_t o = 0;

	for (size_t i = 0; r->body && i < r->body_len && o + 1 < size && o < 160; i++) {
		unsigned char c = (unsigned char)r->body[i];
		if (c == '\r' || c == '\n')
			break;
		out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	out[o] = '\0';
}

/* A complete message: the body, or (unless any_status) the error that a
 * status other than 200 is. */
static enum admin_parse finish(struct admin_resp *r, char *err, size_t errsize)
{
	char line[161];

	if (!body_reserve(r, 0)) {
		set_err(err, errsize, "out of memory");
		return ADMIN_PARSE_ERROR;
	}
	r->body[r->body_len] = '\0';
	if (r->status == 200 || r->any_status)
		return ADMIN_PARSE_DONE;
	first_line(r, line, sizeof(line));
	set_err(err, errsize, "answered %d %s%s%s", r->status, http1_reason(r->status),
	        *line ? ": " : "", line);
	return ADMIN_PARSE_ERROR;
}

/* An error in the body (or the size) of a response: a final status other
 * than 200 says more than the body does. */
static enum admin_parse body_error(struct admin_resp *r, const char *what, char *err,
                                   size_t errsize)
{
	if (r->status && r->status != 200)
		set_err(err, errsize, "answered %d %s (%s)", r->status, http1_reason(r->status),
		        what);
	else
		set_err(err, errsize, "%s", what);
	return ADMIN_PARSE_ERROR;
}

/* Whether p[0..n) can start an HTTP/1 status line. */
static bool http_prefix(const char *p, size_t n)
{
	return memcmp(p, "HTTP/", n < 5 ? n : 5) == 0;
}

/* Parses heads at r->pos until the final one; MORE when a head is incomplete. */
static enum admin_parse parse_heads(struct admin_resp *r, const char *in, size_t len, char *err,
                                    size_t errsize)
{
	while (r->status == 0) {
		struct http1_msg msg;
		size_t used = 0;
		int status;

		switch (http1_parse_response(in + r->pos, len - r->pos, "GET", &msg, &used)) {
		case HTTP1_OK:
			break;
		case HTTP1_INCOMPLETE:
			if (!http_prefix(in + r->pos, len - r->pos))
				goto not_http;
			return ADMIN_PARSE_MORE;
		case HTTP1_TOO_LARGE:
			set_err(err, errsize,
			        "response head too large (over %d bytes or %d fields)",
			        HTTP1_MAX_HEAD, HTTP1_MAX_FIELDS);
			return ADMIN_PARSE_ERROR;
		case HTTP1_BAD:
		default:
			if (!http_prefix(in + r->pos, len - r->pos))
				goto not_http;
			set_err(err, errsize, "malformed response head");
			return ADMIN_PARSE_ERROR;
		}
		status = msg.status;
		r->framing = msg.body;
		r->content_length = msg.content_length;
		http1_msg_free(&msg);
		r->pos += used;
		if (status >= 200 || status == 101) {
			r->status = status;
			break;
		}
		if (++r->interim > ADMIN_MAX_INTERIM) {
			set_err(err, errsize, "more than %d interim (1xx) responses",
			        ADMIN_MAX_INTERIM);
			return ADMIN_PARSE_ERROR;
		}
	}
	return ADMIN_PARSE_DONE;
not_http:
	set_err(err, errsize, "not an HTTP response (is this muxd?)");
	return ADMIN_PARSE_ERROR;
}

/* Decodes the chunked body from r->pos on. */
static enum admin_parse parse_chunked(struct admin_resp *r, const char *in, size_t len, char *err,
                                      size_t errsize)
{
	while (r->pos < len) {
		const char *data;
		size_t used = 0, n = 0;

		switch (
		    http1_chunked_next(&r->chunked, in + r->pos, len - r->pos, &used, &data, &n)) {
		case HTTP1_CHUNK_DATA:
			r->pos += used;
			if (!body_append(r, data, n)) {
				set_err(err, errsize, "out of memory");
				return ADMIN_PARSE_ERROR;
			}
			continue;
		case HTTP1_CHUNK_NEED_MORE:
			r->pos += used;
			return ADMIN_PARSE_MORE;
		case HTTP1_CHUNK_DONE:
			r->pos += used;
			return finish(r, err, errsize);
		case HTTP1_CHUNK_ERROR:
		default:
			return body_error(r, "malformed chunked body", err, errsize);
		}
	}
	return ADMIN_PARSE_MORE;
}

enum admin_parse admin_resp_feed(struct admin_resp *r, const char *in, size_t len, bool eof,
                                 char *err, size_t errsize)
{
	size_t max = response_max(r), avail = len < max ? len : max;
	enum admin_parse res = parse_heads(r, in, avail, err, errsize);
	char what[160];

	if (res == ADMIN_PARSE_DONE) {
		switch (r->framing) {
		case HTTP1_BODY_NONE:
			return finish(r, err, errsize);
		case HTTP1_BODY_LENGTH:
			if (r->content_length > max - r->pos) {
				snprintf(what, sizeof(what),
				         "response too large: Content-Length %llu, limit %zu bytes",
				         (unsigned long long)r->content_length, max);
				return body_error(r, what, err, errsize);
			}
			if (avail - r->pos < r->content_length) {
				res = ADMIN_PARSE_MORE;
				break;
			}
			if (!body_append(r, in + r->pos, (size_t)r->content_length)) {
				set_err(err, errsize, "out of memory");
				return ADMIN_PARSE_ERROR;
			}
			return finish(r, err, errsize);
		case HTTP1_BODY_CHUNKED:
			res = parse_chunked(r, in, avail, err, errsize);
			break;
		case HTTP1_BODY_CLOSE:
		case HTTP1_BODY_UNKNOWN: /* not from an HTTP/1.x parse; as CLOSE */
			if (!eof || len > max) {
				res = ADMIN_PARSE_MORE;
				break;
			}
			if (!body_append(r, in + r->pos, len - r->pos)) {
				set_err(err, errsize, "out of memory");
				return ADMIN_PARSE_ERROR;
			}
			return finish(r, err, errsize);
		}
	}
	if (res != ADMIN_PARSE_MORE)
		return res;
	if (len > max) {
		snprintf(what, sizeof(what), "response too large (over %zu bytes)", max);
		return body_error(r, what, err, errsize);
	}
	if (!eof)
		return ADMIN_PARSE_MORE;
	if (r->status == 0) {
		set_err(err, errsize,
		        len == 0 ? "connection closed without a response"
		                 : "connection closed in the response head");
		return ADMIN_PARSE_ERROR;
	}
	if (r->framing == HTTP1_BODY_LENGTH)
		snprintf(what, sizeof(what),
		         "truncated response: connection closed after %zu of %llu body bytes",
		         avail - r->pos, (unsigned long long)r->content_length);
	else
		snprintf(what, sizeof(what),
		         "truncated response: connection closed in the chunked body");
	return body_error(r, what, err, errsize);
}

void admin_resp_free(struct admin_resp *r)
{
	free(r->body);
	memset(r, 0, sizeof(*r));
}

char *admin_parse_response(const char *buf, size_t len, int *status, size_t *body_len, char *err,
                           size_t errsize)
{
	struct admin_resp r;
	char *body = NULL;

	memset(&r, 0, sizeof(r));
	if (admin_resp_feed(&r, buf, len, true, err, errsize) == ADMIN_PARSE_DONE) {
		body = r.body;
		*body_len = r.body_len;
		r.body = NULL;
	}
	*status = r.status;
	admin_resp_free(&r);
	return body;
}

/* ------------------------------------------------------------------ GET */

/* Read into r until the response is complete by its framing, within
 * deadline; false with err set. At most max + 1 bytes are held: one more
 * than the limit tells the parser it is over. */
static bool read_response(int fd, struct admin_resp *r, int64_t deadline, int exchange_ms,
                          char *err, size_t errsize)
{
	char *buf = NULL;
	size_t len = 0, cap = 0, max = response_max(r);
	bool ok = false;

	for (;;) {
		enum admin_parse res;
		bool eof = false;
		ssize_t k;

		if (cap - len < 4096 && cap <= max) {
			size_t ncap = cap ? cap * 2 : 65536;
			char *nb;
			if (ncap > max + 1)
				ncap = max + 1;
			nb = realloc(buf, ncap);
			if (!nb) {
				set_err(err, errsize, "out of memory");
				break;
			}
			buf = nb;
			cap = ncap;
		}
		k = recv(fd, buf + len, cap - len, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			int n = wait_fd(fd, POLLIN, deadline);
			if (n == 0)
				set_err(err, errsize, "reading the response: timed out after %d s",
				        (exchange_ms + 999) / 1000);
			else if (n < 0)
				set_err(err, errsize, "reading the response: %s", strerror(errno));
			if (n <= 0)
				break;
			continue;
		}
		if (k < 0) {
			set_err(err, errsize, "reading the response: %s", strerror(errno));
			break;
		}
		if (k == 0)
			eof = true;
		len += (size_t)k;
		res = admin_resp_feed(r, buf, len, eof, err, errsize);
		if (res == ADMIN_PARSE_MORE)
			continue;
		ok = res == ADMIN_PARSE_DONE;
		break;
	}
	free(buf);
	return ok;
}

static enum admin_fetch fetch(const char *method, const struct config_listen *l, const char *path,
                              const struct admin_get_opts *opts, struct admin_reply *reply,
                              char *err, size_t errsize)
{
	static const struct admin_get_opts defaults = {0};
	int connect_ms, exchange_ms;
	int64_t deadline;
	struct admin_resp r;
	char *req = NULL, perr[384];
	bool no_daemon, post = strcmp(method, "POST") == 0;
	int fd;

	if (!opts)
		opts = &defaults;
	connect_ms = opts->connect_ms > 0 ? opts->connect_ms : CONNECT_TIMEOUT_MS;
	exchange_ms = opts->exchange_ms > 0 ? opts->exchange_ms : EXCHANGE_TIMEOUT_MS;
	memset(reply, 0, sizeof(*reply));
	memset(&r, 0, sizeof(r));
	r.max = opts->max ? opts->max : MAX_REPLY;
	r.any_status = !opts->only_200;
	fd = connect_to(l, connect_ms, &no_daemon, err, errsize);
	if (fd < 0)
		return no_daemon ? ADMIN_FETCH_NO_DAEMON : ADMIN_FETCH_ERROR;
	deadline = now_ms() + exchange_ms;
	if (asprintf(&req,
	             "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n%s%s%s%sConnection: "
	             "close\r\n\r\n",
	             method, path, l->text, opts->user_agent ? opts->user_agent : "muxd-cli",
	             opts->accept ? "Accept: " : "", opts->accept ? opts->accept : "",
	             opts->accept ? "\r\n" : "", post ? "Content-Length: 0\r\n" : "") < 0) {
		set_err(err, errsize, "out of memory");
		close(fd);
		return ADMIN_FETCH_ERROR;
	}
	if (!send_all(fd, req, strlen(req), deadline)) {
		set_err(err, errsize, "sending the request: %s", strerror(errno));
		free(req);
		close(fd);
		return ADMIN_FETCH_ERROR;
	}
	free(req);
	if (!read_response(fd, &r, deadline, exchange_ms, perr, sizeof(perr))) {
		if (r.status && r.status != 200)
			set_err(err, errsize, "%s %s", path, perr);
		else
			set_err(err, errsize, "%s", perr);
		close(fd);
		admin_resp_free(&r);
		return ADMIN_FETCH_ERROR;
	}
	close(fd);
	reply->status = r.status;
	reply->body = r.body;
	reply->body_len = r.body_len;
	r.body = NULL;
	admin_resp_free(&r);
	return ADMIN_FETCH_OK;
}

enum admin_fetch admin_get(const struct config_listen *l, const char *path,
                           const struct admin_get_opts *opts, struct admin_reply *reply, char *err,
                           size_t errsize)
{
	return fetch("GET", l, path, opts, reply, err, errsize);
}

enum admin_fetch admin_post(const struct config_listen *l, const char *path,
                            const struct admin_get_opts *opts, struct admin_reply *reply, char *err,
                            size_t errsize)
{
	return fetch("POST", l, path, opts, reply, err, errsize);
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

		switch (admin_get(l, "/ca.pem", NULL, &r, why, sizeof(why))) {
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
