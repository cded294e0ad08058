/*
 * tls_sessions — the session resumption store and its file (see
 * tls_sessions.h). Entries sit in a list, most recently stored first; the
 * bounds drop from the tail.
 *
 * The file: a header line, then one line per entry,
 *   <expires> <max_early> <alpn or -> <key in hex> <data in hex> <tp in hex or ->
 * (expires: seconds since the epoch; tp: QUIC transport parameters). Any
 * line that does not parse, a truncated last line or too many entries make
 * the whole file ignored; so does a file of another format version (the
 * first, without tp: its QUIC entries could not do 0-RTT).
 */
#include "transport/tls_sessions.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_HEADER "muxd-tls-sessions 2"
#define FILE_HEADER_V1 "muxd-tls-sessions 1\n"
#define FILE_MAX (2 * (size_t)TLS_SESSIONS_MAX_BYTES + 256 * (size_t)TLS_SESSIONS_MAX)

struct node {
	struct node *prev, *next;
	struct tls_session_entry e; /* key and data owned */
};

struct tls_sessions {
	struct node *newest, *oldest;
	size_t n, bytes;
	bool dirty;
};

struct tls_sessions *tls_sessions_new(void)
{
	return calloc(1, sizeof(struct tls_sessions));
}

static size_t node_bytes(const struct node *nd)
{
	return strlen(nd->e.key) + nd->e.len + nd->e.tp_len;
}

static void unlink_node(struct tls_sessions *s, struct node *nd)
{
	if (nd->prev)
		nd->prev->next = nd->next;
	else
		s->newest = nd->next;
	if (nd->next)
		nd->next->prev = nd->prev;
	else
		s->oldest = nd->prev;
	nd->prev = nd->next = NULL;
	s->n--;
	s->bytes -= node_bytes(nd);
}

static void push_node(struct tls_sessions *s, struct node *nd)
{
	nd->prev = NULL;
	nd->next = s->newest;
	if (s->newest)
		s->newest->prev = nd;
	else
		s->oldest = nd;
	s->newest = nd;
	s->n++;
	s->bytes += node_bytes(nd);
}

static void append_node(struct tls_sessions *s, struct node *nd)
{
	nd->next = NULL;
	nd->prev = s->oldest;
	if (s->oldest)
		s->oldest->next = nd;
	else
		s->newest = nd;
	s->oldest = nd;
	s->n++;
	s->bytes += node_bytes(nd);
}

static void free_node(struct node *nd)
{
	if (nd->e.data) /* resumption secrets: not left in freed memory */
		explicit_bzero((void *)nd->e.data, nd->e.len);
	free((void *)nd->e.data);
	free((void *)nd->e.tp);
	free((void *)nd->e.key);
	free(nd);
}

void tls_sessions_free(struct tls_sessions *s)
{
	if (!s)
		return;
	while (s->newest) {
		struct node *nd = s->newest;
		unlink_node(s, nd);
		free_node(nd);
	}
	free(s);
}

static struct node *find(const struct tls_sessions *s, const char *key)
{
	for (struct node *nd = s->newest; nd; nd = nd->next)
		if (strcmp(nd->e.key, key) == 0)
			return nd;
	return NULL;
}

static bool alpn_ok(const char *a)
{
	size_t n = strlen(a);

	if (n >= sizeof(((struct tls_session_entry *)0)->alpn) || (n == 1 && a[0] == '-'))
		return false;
	for (size_t i = 0; i < n; i++)
		if (a[i] <= ' ' || a[i] > '~')
			return false;
	return true;
}

bool tls_sessions_put(struct tls_sessions *s, const struct tls_session_entry *e, time_t now)
{
	size_t klen = e->key ? strlen(e->key) : 0;
	struct node *nd, *old;

	if (!s || klen == 0 || klen > TLS_SESSION_MAX_KEY || e->len == 0 ||
	    e->len > TLS_SESSION_MAX_DATA || e->expires <= now || e->tp_len > TLS_SESSION_MAX_TP ||
	    (e->tp_len > 0 && !e->tp))
		return false;
	nd = calloc(1, sizeof(*nd));
	if (!nd)
		return false;
	nd->e = *e;
	nd->e.key = strdup(e->key);
	nd->e.data = malloc(e->len);
	nd->e.tp = e->tp_len > 0 ? malloc(e->tp_len) : NULL;
	if (!nd->e.key || !nd->e.data || (e->tp_len > 0 && !nd->e.tp)) {
		free((void *)nd->e.key);
		free((void *)nd->e.data);
		free((void *)nd->e.tp);
		free(nd);
		return false;
	}
	memcpy((void *)nd->e.data, e->data, e->len);
	if (e->tp_len > 0)
		memcpy((void *)nd->e.tp, e->tp, e->tp_len);
	else
		nd->e.tp = NULL;
	if (!alpn_ok(e->alpn))
		nd->e.alpn[0] = '\0';
	if ((old = find(s, e->key)) != NULL) {
		unlink_node(s, old);
		free_node(old);
	}
	push_node(s, nd);
	while (s->n > TLS_SESSIONS_MAX || s->bytes > TLS_SESSIONS_MAX_BYTES) {
		old = s->oldest;
		unlink_node(s, old);
		free_node(old);
	}
	s->dirty = true;
	return true;
}

const struct tls_session_entry *tls_sessions_get(struct tls_sessions *s, const char *key,
                                                 time_t now)
{
	struct node *nd = s && key ? find(s, key) : NULL;

	if (!nd)
		return NULL;
	if (nd->e.expires <= now) {
		unlink_node(s, nd);
		free_node(nd);
		s->dirty = true;
		return NULL;
	}
	return &nd->e;
}

void tls_sessions_remove(struct tls_sessions *s, const char *key)
{
	struct node *nd = s && key ? find(s, key) : NULL;

	if (nd) {
		unlink_node(s, nd);
		free_node(nd);
		s->dirty = true;
	}
}

size_t tls_sessions_count(const struct tls_sessions *s)
{
	return s ? s->n : 0;
}

bool tls_sessions_dirty(const struct tls_sessions *s)
{
	return s && s->dirty;
}

/* ---- the file's format ---- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode n hex digits (n even) into out (n / 2 bytes). */
static bool unhex(const char *p, size_t n, unsigned char *out)
{
	if (n == 0 || n % 2)
		return false;
	for (size_t i = 0; i < n; i += 2) {
		int hi = hexval(p[i]), lo = hexval(p[i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i / 2] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

/* A decimal number of at most max, all of [p, p + n). */
static bool parse_num(const char *p, size_t n, unsigned long long max, unsigned long long *out)
{
	unsigned long long v = 0;

	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		if (v > (max - (unsigned long long)(p[i] - '0')) / 10)
			return false;
		v = v * 10 + (unsigned long long)(p[i] - '0');
	}
	*out = v;
	return true;
}

/* One line [p, p + n) (without its newline) into the staging store t. */
static bool parse_line(struct tls_sessions *t, const char *p, size_t n, time_t now)
{
	const char *f[6];
	size_t fl[6], nf = 0, start = 0;
	unsigned long long expires, early;
	struct tls_session_entry e;
	char alpn[sizeof(e.alpn)];
	unsigned char *key, *data, *tp = NULL;
	bool ok, has_tp;

	for (size_t i = 0; i <= n; i++) {
		if (i < n && p[i] != ' ')
			continue;
		if (nf == 6 || i == start)
			return false; /* too many fields, or an empty one */
		f[nf] = p + start;
		fl[nf++] = i - start;
		start = i + 1;
	}
	if (nf != 6 || !parse_num(f[0], fl[0], (unsigned long long)INT64_MAX, &expires) ||
	    !parse_num(f[1], fl[1], UINT32_MAX, &early) || fl[2] >= sizeof(alpn) ||
	    fl[3] / 2 > TLS_SESSION_MAX_KEY || fl[4] / 2 > TLS_SESSION_MAX_DATA ||
	    fl[5] / 2 > TLS_SESSION_MAX_TP)
		return false;
	has_tp = !(fl[5] == 1 && f[5][0] == '-');
	memcpy(alpn, f[2], fl[2]);
	alpn[fl[2]] = '\0';
	if (strcmp(alpn, "-") != 0 && !alpn_ok(alpn))
		return false;
	key = malloc(fl[3] / 2 + 1);
	data = malloc(fl[4] / 2 + 1);
	if (has_tp)
		tp = malloc(fl[5] / 2 + 1);
	ok = key && data && (!has_tp || tp) && unhex(f[3], fl[3], key) &&
	     unhex(f[4], fl[4], data) && (!has_tp || unhex(f[5], fl[5], tp));
	if (ok) {
		key[fl[3] / 2] = '\0';
		ok = strlen((char *)key) == fl[3] / 2; /* no NUL inside a key */
	}
	if (ok && (time_t)expires > now) {
		memset(&e, 0, sizeof(e));
		e.key = (char *)key;
		e.data = data;
		e.len = fl[4] / 2;
		e.expires = (time_t)expires;
		e.max_early = (uint32_t)early;
		e.tp = tp;
		e.tp_len = has_tp ? fl[5] / 2 : 0;
		snprintf(e.alpn, sizeof(e.alpn), "%s", strcmp(alpn, "-") == 0 ? "" : alpn);
		ok = tls_sessions_put(t, &e, now);
	}
	if (data)
		explicit_bzero(data, fl[4] / 2);
	free(key);
	free(data);
	free(tp);
	return ok;
}

const char *tls_sessions_parse(struct tls_sessions *s, const char *buf, size_t len, time_t now)
{
	static const char header[] = FILE_HEADER "\n";
	struct tls_sessions *t;
	const char *p = buf, *end = buf + len, *why = NULL;
	size_t lines = 0;
	bool was_dirty = s->dirty;

	if (len >= sizeof(FILE_HEADER_V1) - 1 &&
	    memcmp(buf, FILE_HEADER_V1, sizeof(FILE_HEADER_V1) - 1) == 0)
		return "an older format (version 1): full handshakes until it is rewritten";
	if (len < sizeof(header) - 1 || memcmp(buf, header, sizeof(header) - 1) != 0)
		return "not a session file (bad header)";
	if (!(t = tls_sessions_new()))
		return "out of memory";
	p += sizeof(header) - 1;
	while (p < end && !why) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			why = "truncated (the last line has no end)";
		else if (++lines > TLS_SESSIONS_MAX)
			why = "too many entries";
		else if (!parse_line(t, p, (size_t)(nl - p), now))
			why = "a malformed line";
		else
			p = nl + 1;
	}
	/* the file's entries go behind those in memory (which are newer), newest
	 * first, while they fit: none in memory is pushed out */
	while (!why && t->newest) {
		struct node *nd = t->newest;
		unlink_node(t, nd);
		if (find(s, nd->e.key) || s->n >= TLS_SESSIONS_MAX ||
		    s->bytes + node_bytes(nd) > TLS_SESSIONS_MAX_BYTES) {
			free_node(nd);
			continue;
		}
		append_node(s, nd);
	}
	tls_sessions_free(t);
	s->dirty = was_dirty; /* what came from the file is in the file */
	return why;
}

static bool grow(char **buf, size_t *cap, size_t need)
{
	char *nb;
	size_t nc = *cap ? *cap : 4096;

	if (need <= *cap)
		return true;
	while (nc < need)
		nc *= 2;
	if (!(nb = realloc(*buf, nc)))
		return false;
	*buf = nb;
	*cap = nc;
	return true;
}

static size_t put_hex(char *out, const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	return 2 * n;
}

char *tls_sessions_format(const struct tls_sessions *s, time_t now, size_t *len)
{
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!grow(&buf, &cap, sizeof(FILE_HEADER) + 1))
		return NULL;
	n = (size_t)sprintf(buf, "%s\n", FILE_HEADER);
	/* oldest first: reading the file back keeps the order */
	for (const struct node *nd = s ? s->oldest : NULL; nd; nd = nd->prev) {
		const struct tls_session_entry *e = &nd->e;
		size_t klen = strlen(e->key);

		if (e->expires <= now)
			continue;
		if (!grow(&buf, &cap, n + 80 + sizeof(e->alpn) + 2 * (klen + e->len + e->tp_len))) {
			explicit_bzero(buf, n);
			free(buf);
			return NULL;
		}
		n += (size_t)sprintf(buf + n, "%lld %u %s ", (long long)e->expires,
		                     (unsigned)e->max_early, e->alpn[0] ? e->alpn : "-");
		n += put_hex(buf + n, (const unsigned char *)e->key, klen);
		buf[n++] = ' ';
		n += put_hex(buf + n, e->data, e->len);
		buf[n++] = ' ';
		if (e->tp_len > 0)
			n += put_hex(buf + n, e->tp, e->tp_len);
		else
			buf[n++] = '-';
		buf[n++] = '\n';
	}
	*len = n;
	return buf;
}

/* ---- the file ---- */

const char *tls_sessions_load(struct tls_sessions *s, const char *path, time_t now)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	const char *why;
	char *buf;
	size_t got = 0;

	if (fd < 0)
		return errno == ENOENT ? NULL : "cannot be opened";
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > FILE_MAX) {
		close(fd);
		return "not a regular file, or too large";
	}
	if (!(buf = malloc((size_t)st.st_size + 1))) {
		close(fd);
		return "out of memory";
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	why = got == (size_t)st.st_size ? tls_sessions_parse(s, buf, got, now) : "read error";
	explicit_bzero(buf, got);
	free(buf);
	return why;
}

static void sync_dir(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd;

	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

bool tls_sessions_save(struct tls_sessions *s, const char *path, time_t now, bool durable)
{
	char tmp[4200];
	size_t len = 0, off = 0;
	char *buf;
	int fd;
	bool ok;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return false;
	if (!(buf = tls_sessions_format(s, now, &len)))
		return false;
	unlink(tmp); /* O_EXCL below: never write through a file someone else made */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	ok = fd >= 0;
	while (ok && off < len) {
		ssize_t r = write(fd, buf + off, len - off);
		if (r < 0 && errno == EINTR)
			continue;
		ok = r > 0;
		if (ok)
			off += (size_t)r;
	}
	explicit_bzero(buf, len);
	free(buf);
	ok = ok && (!durable || fsync(fd) == 0);
	if (fd >= 0)
		ok = close(fd) == 0 && ok;
	ok = ok && rename(tmp, path) == 0;
	if (!ok) {
		if (fd >= 0)
			unlink(tmp);
		return false;
	}
	if (durable)
		sync_dir(path);
	s->dirty = false;
	return true;
}
