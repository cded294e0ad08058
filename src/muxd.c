/* muxd — names and mappings shared by every module. */
#include "muxd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "heap.h"
#include "log.h"
#include "timeutil.h"

const char *proto_name(enum proto p)
{
	static const char *const names[] = {"h1", "h2", "h3", "tunnel"};
	return p < PROTO_COUNT ? names[p] : "?";
}

const char *evict_reason_name(enum evict_reason r)
{
	static const char *const names[] = {"idle_timeout", "limit", "dead", "goaway", "age"};
	return r < EVICT_COUNT ? names[r] : "?";
}

const char *client_h2_flood_name(enum client_h2_flood k)
{
	static const char *const names[] = {"ping",          "settings",   "rst_stream",
	                                    "window_update", "empty_data", "other",
	                                    "continuation",  "ack"};
	return k < CH2_FLOOD_COUNT ? names[k] : "?";
}

const char *bypass_reason_name(enum bypass_reason r)
{
	static const char *const names[] = {"host", "not_tls", "silent", "sni", "alpn", "no_sni"};
	return r < BYPASS_COUNT ? names[r] : "?";
}

const char *upstream_flood_proto(enum upstream_flood k)
{
	return k >= UPSTREAM_FLOOD_COUNT ? "?" : k >= UPSTREAM_FLOOD_H2_PING ? "h2" : "h3";
}

const char *upstream_flood_kind(enum upstream_flood k)
{
	static const char *const names[] = {"frames",     "control",       "ping",       "settings",
	                                    "rst_stream", "window_update", "empty_data", "other"};
	return k < UPSTREAM_FLOOD_COUNT ? names[k] : "?";
}

#define IDLE_TRIM_MS 1000 /* no client for this long: trim the heap */

static void on_idle_trim(evutil_socket_t fd, short what, void *arg)
{
	struct muxd *m = arg;

	(void)fd;
	(void)what;
	if (m->nclients == 0) {
		heap_trim();
		log_debug("heap trimmed: no client for %d ms", IDLE_TRIM_MS);
	}
}

void muxd_client_closed(struct muxd *m)
{
	if (m->draining && m->nclients == 0) {
		event_base_loopbreak(m->base);
		return;
	}
	if (m->nclients < m->cfg->max_clients && m->resume_accepting)
		m->resume_accepting(m);
	muxd_upstream_closed(m);
}

void muxd_upstream_closed(struct muxd *m)
{
	if (m->nclients == 0 && !m->draining) {
		struct timeval tv = ms_to_timeval(IDLE_TRIM_MS);
		if (!m->trim_timer)
			m->trim_timer = evtimer_new(m->base, on_idle_trim, m);
		if (m->trim_timer)
			evtimer_add(m->trim_timer, &tv);
	}
}

void muxd_idle_trim_free(struct muxd *m)
{
	if (m->trim_timer)
		event_free(m->trim_timer);
	m->trim_timer = NULL;
}

#define INSTANCE_FILE "instance-id"
#define INSTANCE_BYTES 16

static bool is_hex_id(const char *s, size_t n)
{
	if (n != 2 * INSTANCE_BYTES)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/* The id in path, when the file holds one. */
static bool read_id(const char *path, char *id)
{
	char buf[2 * INSTANCE_BYTES + 2];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	if (n < 0 || !is_hex_id(buf, (size_t)n))
		return false;
	memcpy(id, buf, (size_t)n);
	id[n] = '\0';
	return true;
}

/* Publish id as path unless another process did first: a temporary file
 * linked into place (link fails when the name exists), so the file is never
 * seen half-written and two first starts agree on one id. */
static bool write_id(const char *dir, const char *path, const char *id, char *err, size_t err_size)
{
	char tmp[4200], line[2 * INSTANCE_BYTES + 1];
	int fd;
	bool ok;

	snprintf(tmp, sizeof(tmp), "%s/.%s.%ld", dir, INSTANCE_FILE, (long)getpid());
	snprintf(line, sizeof(line), "%s", id);
	line[2 * INSTANCE_BYTES] = '\n';
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		snprintf(err, err_size, "cannot write %s: %s", tmp, strerror(errno));
		return false;
	}
	ok = write(fd, line, sizeof(line)) == (ssize_t)sizeof(line) && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	if (ok && link(tmp, path) != 0 && errno != EEXIST) {
		snprintf(err, err_size, "cannot create %s: %s", path, strerror(errno));
		ok = false;
	} else if (!ok) {
		snprintf(err, err_size, "cannot write %s: %s", tmp, strerror(errno));
	}
	unlink(tmp);
	return ok;
}

/* mkdir -p with mode 0700 (failures show when the file is written). */
static void make_dirs(const char *dir)
{
	char p[4096];

	snprintf(p, sizeof(p), "%s", dir);
	for (char *c = p + 1;; c++) {
		if (*c != '/' && *c != '\0')
			continue;
		char was = *c;
		*c = '\0';
		mkdir(p, 0700);
		if (!(*c = was))
			break;
	}
}

bool muxd_load_instance(struct muxd *m, const char *state_dir, char *err, size_t err_size)
{
	char path[4200], id[2 * INSTANCE_BYTES + 1];
	unsigned char raw[INSTANCE_BYTES];

	err[0] = '\0';
	snprintf(path, sizeof(path), "%s/%s", state_dir, INSTANCE_FILE);
	if (!read_id(path, id)) {
		if (gnutls_rnd(GNUTLS_RND_NONCE, raw, sizeof(raw)) < 0) {
			snprintf(err, err_size, "no random bytes for the instance id");
			return false;
		}
		for (size_t i = 0; i < sizeof(raw); i++)
			snprintf(id + 2 * i, 3, "%02x", raw[i]);
		make_dirs(state_dir);
		if (write_id(state_dir, path, id, err, err_size))
			read_id(path, id); /* another first start may have won */
	}
	snprintf(m->via_token, sizeof(m->via_token), "1.1 muxd-%.8s", id);
	return true;
}

bool muxd_via_is_self(const struct muxd *m, const char *name, size_t len)
{
	const char *self = m->via_token[0] ? m->via_token + 4 : "muxd";

	return len == strlen(self) && strncasecmp(name, self, len) == 0;
}

/* An IPv4 address inside a v4-mapped IPv6 one becomes plain IPv4. */
static void unmap(const struct sockaddr *sa, struct sockaddr_storage *out)
{
	memset(out, 0, sizeof(*out));
	if (sa->sa_family == AF_INET6 &&
	    IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)sa)->sin6_addr)) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		struct sockaddr_in *s4 = (struct sockaddr_in *)out;
		s4->sin_family = AF_INET;
		s4->sin_port = s6->sin6_port;
		memcpy(&s4->sin_addr, s6->sin6_addr.s6_addr + 12, 4);
	} else if (sa->sa_family == AF_INET) {
		memcpy(out, sa, sizeof(struct sockaddr_in));
	} else if (sa->sa_family == AF_INET6) {
		memcpy(out, sa, sizeof(struct sockaddr_in6));
	}
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET    ? ntohs(((const struct sockaddr_in *)ss)->sin_port)
	       : ss->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
	                                   : 0;
}

/* The address bytes (4 or 16) of ss, and their length. */
static const void *addr_of(const struct sockaddr_storage *ss, size_t *len)
{
	if (ss->ss_family == AF_INET) {
		*len = 4;
		return &((const struct sockaddr_in *)ss)->sin_addr;
	}
	*len = 16;
	return &((const struct sockaddr_in6 *)ss)->sin6_addr;
}

static bool is_unspecified(const struct sockaddr_storage *ss)
{
	static const unsigned char zero[16];
	size_t len;
	const void *a = addr_of(ss, &len);

	return memcmp(a, zero, len) == 0;
}

bool muxd_is_loopback(const struct sockaddr *sa)
{
	struct sockaddr_storage ss;

	unmap(sa, &ss);
	if (ss.ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
	if (ss.ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&ss)->sin6_addr);
	return false;
}

/* Whether ss is an address of this host (loopback, or on an interface). */
static bool is_local(const struct sockaddr_storage *ss)
{
	struct ifaddrs *ifs, *i;
	bool found = false;
	size_t len, ilen;
	const void *a = addr_of(ss, &len);

	if (muxd_is_loopback((const struct sockaddr *)ss) || is_unspecified(ss))
		return true;
	if (getifaddrs(&ifs) != 0)
		return false;
	for (i = ifs; i && !found; i = i->ifa_next) {
		struct sockaddr_storage is;
		const void *ia;
		if (!i->ifa_addr || i->ifa_addr->sa_family != ss->ss_family)
			continue;
		unmap(i->ifa_addr, &is);
		ia = addr_of(&is, &ilen);
		found = memcmp(ia, a, len) == 0;
	}
	freeifaddrs(ifs);
	return found;
}

bool muxd_is_self(const struct muxd *m, const struct sockaddr *sa)
{
	struct sockaddr_storage t;
	int local = -1; /* not looked up yet */

	unmap(sa, &t);
	if (t.ss_family != AF_INET && t.ss_family != AF_INET6)
		return false;
	for (size_t i = 0; i < m->nself; i++) {
		struct sockaddr_storage l;
		size_t len, tlen;
		unmap((const struct sockaddr *)&m->self[i], &l);
		if (port_of(&l) != port_of(&t) || port_of(&t) == 0)
			continue;
		if (is_unspecified(&l) || is_unspecified(&t)) {
			/* a wildcard listener (an IPv6 one may take IPv4 too) */
			if (l.ss_family != t.ss_family && l.ss_family == AF_INET)
				continue;
			if (local < 0)
				local = is_local(&t);
			if (local)
				return true;
			continue;
		}
		const void *la = addr_of(&l, &len), *ta = addr_of(&t, &tlen);
		if (l.ss_family == t.ss_family && memcmp(la, ta, len) == 0)
			return true;
	}
	return false;
}

bool muxd_is_self_arg(const void *m, const struct sockaddr *sa)
{
	return muxd_is_self(m, sa);
}
