/*
 * altsvc — HTTP Alternative Services (RFC 7838) for HTTP/3.
 *
 * altsvc_parse() reads one Alt-Svc field value. Each list element is parsed
 * on its own (elements are split at commas outside quoted strings), so a
 * malformed alternative is skipped without losing the others. Bad whitespace
 * around "=" is tolerated; everything else follows the ABNF of section 3.
 *
 * The cache maps an origin "scheme://host:port" (host lowercased, IPv6 in
 * brackets) to the h3 alternatives its last Alt-Svc field named, each with
 * its own expiry, plus the origin's broken state (consecutive QUIC failures
 * and the time until which its alternatives are not used). It is a chained
 * hash table of at most ALTSVC_MAX_ORIGINS origins; when full, the origin
 * whose alternatives expire soonest is evicted.
 *
 * File format (ASCII text, one record per line, each ending in "\n"):
 *
 *	muxd-altsvc 1
 *	SCHEME HOST PORT ALPN ALTHOST ALTPORT EXPIRES PERSIST
 *
 * fields separated by one space: HOST without brackets; ALPN is always "h3";
 * ALTHOST is "-" for "same host as the origin"; EXPIRES is a Unix time;
 * PERSIST is 0 or 1. Lines of one origin are in header order. Broken state
 * is not stored. A file with a wrong header, a malformed or unterminated
 * line, or too many lines is ignored as a whole. The file is replaced
 * atomically (PATH.tmp, rename; fsync only for the durable save at shutdown:
 * a cache torn by a power loss is ignored as a whole at the next load).
 */
#include "altsvc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_ORIGINS 4096
#define NBUCKETS 1024
#define MAX_LINES (MAX_ORIGINS * ALTSVC_MAX_ALTS)
#define LINE_MAX_LEN 640
#define FILE_HEADER "muxd-altsvc 1"
#define DEFAULT_MA 86400
#define MA_CAP 2147483648ULL /* delta-seconds saturate here (RFC 9111 1.2.2) */
#define BROKEN_FIRST 300
#define BROKEN_CAP (48 * 3600)
/* A refreshed expiry marks the cache dirty only when it moved this much
 * since it last did (so a file's expiries lag by less than this). */
#define REFRESH_SLACK 600

struct entry {
	struct entry *next;
	char key[300]; /* scheme://host:port */
	char scheme[16];
	char host[256]; /* without brackets */
	uint16_t port;
	size_t n;
	struct altsvc_alt alts[ALTSVC_MAX_ALTS];
	time_t expires[ALTSVC_MAX_ALTS];
	time_t noted[ALTSVC_MAX_ALTS]; /* expiries when last marked dirty */
	unsigned failures;
	time_t broken_until;
};

struct altsvc_cache {
	char *path;
	struct entry *buckets[NBUCKETS];
	size_t norigins;
	bool dirty;
};

/* ---- parsing ---- */

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* A cursor over one list element [p, end). */
struct cur {
	const char *p, *end;
};

static void skip_ows(struct cur *c)
{
	while (c->p < c->end && is_ows(*c->p))
		c->p++;
}

/* A token; returns its length (0 when there is none). */
static size_t token(struct cur *c, const char **start)
{
	*start = c->p;
	while (c->p < c->end && is_tchar((unsigned char)*c->p))
		c->p++;
	return (size_t)(c->p - *start);
}

/* A quoted-string, unescaped into buf (NUL-terminated); *fits is false when
 * it was longer than the buffer. False when it is malformed. */
static bool quoted(struct cur *c, char *buf, size_t size, bool *fits)
{
	size_t n = 0;

	*fits = true;
	if (c->p >= c->end || *c->p != '"')
		return false;
	for (c->p++; c->p < c->end; c->p++) {
		unsigned char ch = (unsigned char)*c->p;

		if (ch == '"') {
			c->p++;
			buf[n] = '\0';
			return true;
		}
		if (ch == '\\') {
			if (++c->p >= c->end)
				return false;
			ch = (unsigned char)*c->p;
			if (ch != '\t' && (ch < 0x20 || ch == 0x7f)) /* quoted-pair */
				return false;
		} else if (ch != '\t' && (ch < 0x20 || ch == 0x7f)) { /* qdtext */
			return false;
		}
		if (n + 1 < size)
			buf[n++] = (char)ch;
		else
			*fits = false;
	}
	return false; /* unterminated */
}

/* Percent-decode a protocol-id token into out (size 32). */
static bool decode_protocol(const char *s, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= len)
				return false;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			c = hi * 16 + lo;
			i += 2;
		}
		if (c == 0 || n + 1 >= size)
			return false;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return n > 0;
}

/* reg-name restricted to what DNS names and IPv4 addresses use. */
static bool reg_name_ok(const char *h)
{
	if (h[0] == '-' || h[0] == '.')
		return false;
	for (; *h; h++)
		if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') ||
		      (*h >= '0' && *h <= '9') || *h == '-' || *h == '.' || *h == '_'))
			return false;
	return true;
}

/* An alternative's host: empty, an IPv6 address or a reg-name as above. */
static bool alt_host_ok(const char *h)
{
	struct in6_addr a;

	if (!*h)
		return true;
	return strchr(h, ':') ? inet_pton(AF_INET6, h, &a) == 1 : reg_name_ok(h);
}

/* Decimal port 1..65535 in s[0..len). */
static bool parse_port(const char *s, size_t len, uint16_t *port)
{
	unsigned long v = 0;

	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return false;
	*port = (uint16_t)v;
	return true;
}

/* alt-authority = [ uri-host ] ":" port, already unquoted. */
static bool parse_authority(const char *s, struct altsvc_alt *alt)
{
	const char *colon = strrchr(s, ':');
	size_t hl;

	if (!colon || !parse_port(colon + 1, strlen(colon + 1), &alt->port))
		return false;
	hl = (size_t)(colon - s);
	if (hl > 0 && s[0] == '[') {
		if (hl < 3 || s[hl - 1] != ']' || hl - 2 >= sizeof(alt->host))
			return false;
		memcpy(alt->host, s + 1, hl - 2);
		alt->host[hl - 2] = '\0';
		if (!strchr(alt->host, ':') || !alt_host_ok(alt->host))
			return false;
	} else {
		if (hl >= sizeof(alt->host))
			return false;
		memcpy(alt->host, s, hl);
		alt->host[hl] = '\0';
		if (!reg_name_ok(alt->host))
			return false;
	}
	for (char *h = alt->host; *h; h++)
		*h = lower(*h);
	return true;
}

/* delta-seconds, saturating at MA_CAP. */
static bool parse_delta(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > MA_CAP)
			v = MA_CAP;
	}
	*out = v;
	return true;
}

/* One parameter; unknown ones and bad values of known ones are ignored. */
static bool parse_param(struct cur *c, struct altsvc_alt *alt)
{
	const char *name;
	size_t nl = token(c, &name), vl;
	char val[64];
	bool fits = true;

	if (nl == 0)
		return false;
	skip_ows(c);
	if (c->p >= c->end || *c->p != '=')
		return false;
	c->p++;
	skip_ows(c);
	if (c->p < c->end && *c->p == '"') {
		if (!quoted(c, val, sizeof(val), &fits))
			return false;
	} else {
		const char *v;

		vl = token(c, &v);
		if (vl == 0)
			return false;
		fits = vl < sizeof(val);
		if (fits) {
			memcpy(val, v, vl);
			val[vl] = '\0';
		}
	}
	if (nl == 2 && strncasecmp(name, "ma", 2) == 0) {
		uint64_t ma;

		if (fits && parse_delta(val, &ma))
			alt->max_age = ma;
	} else if (nl == 7 && strncasecmp(name, "persist", 7) == 0) {
		if (fits && strcmp(val, "1") == 0)
			alt->persist = true;
	}
	return true;
}

/* alt-value = alternative *( OWS ";" OWS parameter ) */
static bool parse_alternative(struct cur *c, struct altsvc_alt *alt)
{
	const char *id;
	size_t idl = token(c, &id);
	char auth[300];
	bool fits;

	memset(alt, 0, sizeof(*alt));
	alt->max_age = DEFAULT_MA;
	if (idl == 0 || !decode_protocol(id, idl, alt->alpn, sizeof(alt->alpn)))
		return false;
	skip_ows(c);
	if (c->p >= c->end || *c->p != '=')
		return false;
	c->p++;
	skip_ows(c);
	if (!quoted(c, auth, sizeof(auth), &fits) || !fits || !parse_authority(auth, alt))
		return false;
	for (;;) {
		skip_ows(c);
		if (c->p >= c->end)
			return true;
		if (*c->p != ';')
			return false;
		c->p++;
		skip_ows(c);
		if (!parse_param(c, alt))
			return false;
	}
}

bool altsvc_parse(const char *value, size_t len, struct altsvc_parsed *out)
{
	const char *p = value, *end;

	memset(out, 0, sizeof(*out));
	if (!value)
		return false;
	end = value + len;
	while (p < end && is_ows(*p))
		p++;
	while (end > p && is_ows(end[-1]))
		end--;
	if (end - p == 5 && memcmp(p, "clear", 5) == 0) {
		out->clear = true;
		return true;
	}
	while (p < end && out->n < ALTSVC_MAX_ALTS) {
		/* the element runs to the next comma outside a quoted string */
		const char *e = p;
		bool inq = false;
		struct cur c;

		for (; e < end && (inq || *e != ','); e++) {
			if (inq && *e == '\\' && e + 1 < end)
				e++;
			else if (*e == '"')
				inq = !inq;
		}
		c.p = p;
		c.end = e;
		skip_ows(&c);
		while (c.end > c.p && is_ows(c.end[-1]))
			c.end--;
		if (c.p < c.end && parse_alternative(&c, &out->alts[out->n]))
			out->n++;
		else
			memset(&out->alts[out->n], 0, sizeof(out->alts[0]));
		p = e < end ? e + 1 : e;
	}
	return out->n > 0;
}

/* ---- the cache ---- */

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* Normalise an origin into e->scheme, e->host, e->port and e->key. */
static bool make_origin(struct entry *e, const char *scheme, const char *host, uint16_t port)
{
	size_t sl, hl;

	memset(e, 0, sizeof(*e));
	if (!scheme || !host || port == 0)
		return false;
	sl = strlen(scheme);
	hl = strlen(host);
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		host++;
		hl -= 2;
	}
	if (sl == 0 || sl >= sizeof(e->scheme) || hl == 0 || hl >= sizeof(e->host))
		return false;
	for (size_t i = 0; i < sl; i++) {
		char ch = lower(scheme[i]);

		if (!((ch >= 'a' && ch <= 'z') ||
		      (i > 0 && ((ch >= '0' && ch <= '9') || ch == '+' || ch == '-' || ch == '.'))))
			return false;
		e->scheme[i] = ch;
	}
	e->scheme[sl] = '\0';
	for (size_t i = 0; i < hl; i++) {
		unsigned char ch = (unsigned char)host[i];

		/* no space, controls, brackets or slashes: it must survive the file */
		if (ch <= 0x20 || ch >= 0x7f || ch == '[' || ch == ']' || ch == '/')
			return false;
		e->host[i] = lower((char)ch);
	}
	e->host[hl] = '\0';
	e->port = port;
	snprintf(e->key, sizeof(e->key), strchr(e->host, ':') ? "%s://[%s]:%u" : "%s://%s:%u",
	         e->scheme, e->host, (unsigned)port);
	return true;
}

static struct entry **slot(struct altsvc_cache *c, const char *key)
{
	struct entry **pp = &c->buckets[hash(key) % NBUCKETS];

	while (*pp && strcmp((*pp)->key, key) != 0)
		pp = &(*pp)->next;
	return pp;
}

static struct entry *find(struct altsvc_cache *c, const char *scheme, const char *host,
                          uint16_t port)
{
	struct entry o;

	if (!make_origin(&o, scheme, host, port))
		return NULL;
	return *slot(c, o.key);
}

static time_t latest_expiry(const struct entry *e)
{
	time_t t = 0;

	for (size_t i = 0; i < e->n; i++)
		if (e->expires[i] > t)
			t = e->expires[i];
	return t;
}

static void unlink_entry(struct altsvc_cache *c, struct entry *e)
{
	struct entry **pp = slot(c, e->key);

	if (*pp == e) {
		*pp = e->next;
		free(e);
		c->norigins--;
	}
}

/* Drop the origin whose alternatives expire soonest. */
static void evict_one(struct altsvc_cache *c)
{
	struct entry *victim = NULL;

	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct entry *e = c->buckets[b]; e; e = e->next)
			if (!victim || latest_expiry(e) < latest_expiry(victim))
				victim = e;
	if (victim)
		unlink_entry(c, victim);
}

/* Insert a copy of o (key set, no alternatives yet); NULL on no memory. */
static struct entry *insert(struct altsvc_cache *c, const struct entry *o)
{
	struct entry *e = malloc(sizeof(*e)), **pp;

	if (!e)
		return NULL;
	if (c->norigins >= MAX_ORIGINS)
		evict_one(c);
	*e = *o;
	e->n = 0;
	e->failures = 0;
	e->broken_until = 0;
	pp = slot(c, e->key);
	e->next = *pp;
	*pp = e;
	c->norigins++;
	return e;
}

static void clear_all(struct altsvc_cache *c)
{
	for (size_t b = 0; b < NBUCKETS; b++) {
		while (c->buckets[b]) {
			struct entry *e = c->buckets[b];

			c->buckets[b] = e->next;
			free(e);
		}
	}
	c->norigins = 0;
}

struct altsvc_cache *altsvc_cache_new(const char *path)
{
	struct altsvc_cache *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (path && !(c->path = strdup(path))) {
		free(c);
		return NULL;
	}
	return c;
}

void altsvc_cache_free(struct altsvc_cache *c)
{
	if (!c)
		return;
	clear_all(c);
	free(c->path);
	free(c);
}

bool altsvc_cache_dirty(const struct altsvc_cache *c)
{
	return c && c->path && c->dirty;
}

static bool same_alt(const struct altsvc_alt *a, const struct altsvc_alt *b)
{
	return a->port == b->port && a->persist == b->persist && strcmp(a->alpn, b->alpn) == 0 &&
	       strcmp(a->host, b->host) == 0;
}

void altsvc_cache_update(struct altsvc_cache *c, const char *scheme, const char *host,
                         uint16_t port, const struct altsvc_parsed *p, time_t now)
{
	struct entry o, *e;
	struct altsvc_alt alts[ALTSVC_MAX_ALTS];
	time_t expires[ALTSVC_MAX_ALTS];
	size_t n = 0;
	bool changed;

	if (!c || !p || !make_origin(&o, scheme, host, port))
		return;
	for (size_t i = 0; !p->clear && i < p->n && i < ALTSVC_MAX_ALTS; i++) {
		const struct altsvc_alt *a = &p->alts[i];
		uint64_t ma = a->max_age < MA_CAP ? a->max_age : MA_CAP;

		if (strcmp(a->alpn, "h3") != 0 || a->port == 0 || ma == 0 ||
		    memchr(a->host, '\0', sizeof(a->host)) == NULL || !alt_host_ok(a->host))
			continue;
		alts[n] = *a;
		alts[n].max_age = ma;
		for (char *h = alts[n].host; *h; h++)
			*h = lower(*h);
		expires[n] = now + (time_t)ma;
		n++;
	}
	e = *slot(c, o.key);
	if (n == 0) {
		if (e) {
			unlink_entry(c, e);
			c->dirty = true;
		}
		return;
	}
	changed = !e || e->n != n;
	if (!e && !(e = insert(c, &o)))
		return;
	for (size_t i = 0; !changed && i < n; i++)
		changed = !same_alt(&e->alts[i], &alts[i]) ||
		          llabs((long long)(e->noted[i] - expires[i])) >= REFRESH_SLACK;
	memcpy(e->alts, alts, n * sizeof(alts[0]));
	memcpy(e->expires, expires, n * sizeof(expires[0]));
	e->n = n;
	if (changed) {
		memcpy(e->noted, expires, n * sizeof(expires[0]));
		c->dirty = true;
	}
}

bool altsvc_cache_lookup(struct altsvc_cache *c, const char *scheme, const char *host,
                         uint16_t port, time_t now, struct altsvc_alt *out)
{
	struct entry *e = c ? find(c, scheme, host, port) : NULL;

	if (!e || now < e->broken_until)
		return false;
	for (size_t i = 0; i < e->n; i++) {
		if (e->expires[i] > now) {
			if (out)
				*out = e->alts[i];
			return true;
		}
	}
	return false;
}

void altsvc_cache_mark_broken(struct altsvc_cache *c, const char *scheme, const char *host,
                              uint16_t port, time_t now)
{
	struct entry *e = c ? find(c, scheme, host, port) : NULL;
	time_t d = BROKEN_FIRST;

	if (!e)
		return;
	if (e->failures < 32)
		e->failures++;
	for (unsigned i = 1; i < e->failures && d < BROKEN_CAP; i++)
		d *= 2;
	e->broken_until = now + (d < BROKEN_CAP ? d : BROKEN_CAP);
}

void altsvc_cache_mark_ok(struct altsvc_cache *c, const char *scheme, const char *host,
                          uint16_t port)
{
	struct entry *e = c ? find(c, scheme, host, port) : NULL;

	if (e) {
		e->failures = 0;
		e->broken_until = 0;
	}
}

static bool entry_live(const struct entry *e, time_t now)
{
	for (size_t i = 0; i < e->n; i++)
		if (e->expires[i] > now)
			return true;
	return false;
}

size_t altsvc_cache_count(const struct altsvc_cache *c, time_t now)
{
	size_t n = 0;

	for (size_t b = 0; c && b < NBUCKETS; b++)
		for (const struct entry *e = c->buckets[b]; e; e = e->next)
			n += entry_live(e, now);
	return n;
}

void altsvc_cache_foreach(const struct altsvc_cache *c, time_t now,
                          void (*fn)(void *arg, const char *origin, const struct altsvc_alt *alt,
                                     time_t expires, time_t broken_until),
                          void *arg)
{
	for (size_t b = 0; c && fn && b < NBUCKETS; b++)
		for (const struct entry *e = c->buckets[b]; e; e = e->next)
			for (size_t i = 0; i < e->n; i++)
				if (e->expires[i] > now)
					fn(arg, e->key, &e->alts[i], e->expires[i],
					   now < e->broken_until ? e->broken_until : 0);
}

/* ---- persistence ---- */

/* Split a line (without "\n") into exactly n fields separated by one space. */
static bool split(char *line, char **f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		f[i] = line;
		line = strchr(line, ' ');
		if (i + 1 < n) {
			if (!line)
				return false;
			*line++ = '\0';
		}
		if (f[i][0] == '\0')
			return false;
	}
	return line == NULL;
}

static bool parse_int64(const char *s, long long *out)
{
	char *end;

	if (!(*s >= '0' && *s <= '9'))
		return false;
	errno = 0;
	*out = strtoll(s, &end, 10);
	return errno == 0 && *end == '\0';
}

/* One record into the staging cache t. */
static bool load_line(struct altsvc_cache *t, char *line, time_t now)
{
	char *f[8], auth[300];
	struct entry o, *e;
	struct altsvc_alt alt;
	uint16_t port;
	long long exp;

	if (!split(line, f, 8) || !parse_port(f[2], strlen(f[2]), &port) ||
	    !make_origin(&o, f[0], f[1], port) || strcmp(o.scheme, f[0]) != 0 ||
	    strcmp(o.host, f[1]) != 0 || strcmp(f[3], "h3") != 0 || !parse_int64(f[6], &exp) ||
	    (strcmp(f[7], "0") != 0 && strcmp(f[7], "1") != 0))
		return false;
	memset(&alt, 0, sizeof(alt));
	snprintf(alt.alpn, sizeof(alt.alpn), "h3");
	if (strcmp(f[4], "-") == 0)
		snprintf(auth, sizeof(auth), ":%s", f[5]);
	else if (strchr(f[4], ':'))
		snprintf(auth, sizeof(auth), "[%s]:%s", f[4], f[5]);
	else
		snprintf(auth, sizeof(auth), "%s:%s", f[4], f[5]);
	if (!parse_authority(auth, &alt) || strchr(f[5], ':'))
		return false;
	if (strcmp(f[4], "-") == 0 ? alt.host[0] != '\0' : strcmp(alt.host, f[4]) != 0)
		return false; /* not in the form save writes */
	alt.persist = f[7][0] == '1';
	if ((time_t)exp <= now)
		return true; /* expired: dropped */
	alt.max_age = (uint64_t)((time_t)exp - now);
	e = *slot(t, o.key);
	if (!e && !(e = insert(t, &o)))
		return false;
	if (e->n >= ALTSVC_MAX_ALTS)
		return false;
	e->alts[e->n] = alt;
	e->noted[e->n] = (time_t)exp;
	e->expires[e->n++] = (time_t)exp;
	return true;
}

static const char *load_file(struct altsvc_cache *t, FILE *f, time_t now)
{
	char line[LINE_MAX_LEN];
	size_t nlines = 0;

	if (!fgets(line, sizeof(line), f) || strcmp(line, FILE_HEADER "\n") != 0)
		return "altsvc: ignoring the cache file: bad header";
	while (fgets(line, sizeof(line), f)) {
		size_t len = strlen(line);

		if (len == 0 || line[len - 1] != '\n')
			return "altsvc: ignoring the cache file: truncated or overlong line";
		line[len - 1] = '\0';
		if (++nlines > MAX_LINES)
			return "altsvc: ignoring the cache file: too many lines";
		if (!load_line(t, line, now))
			return "altsvc: ignoring the cache file: malformed line";
	}
	if (ferror(f))
		return "altsvc: ignoring the cache file: read error";
	return NULL;
}

void altsvc_cache_load(struct altsvc_cache *c, time_t now, const char **warning)
{
	struct altsvc_cache *t;
	const char *w = NULL;
	FILE *f;

	if (warning)
		*warning = NULL;
	if (!c || !c->path)
		return;
	f = fopen(c->path, "re");
	if (!f) {
		if (errno != ENOENT && warning)
			*warning = "altsvc: cannot open the cache file";
		return;
	}
	t = altsvc_cache_new(NULL);
	if (!t) {
		fclose(f);
		if (warning)
			*warning = "altsvc: out of memory loading the cache file";
		return;
	}
	w = load_file(t, f, now);
	fclose(f);
	/* move the staged entries over; origins already known here are newer */
	for (size_t b = 0; !w && b < NBUCKETS; b++) {
		for (struct entry *e = t->buckets[b]; e; e = e->next) {
			struct entry *d = *slot(c, e->key);

			if (d)
				continue;
			if (!(d = insert(c, e)))
				break;
			d->n = e->n;
		}
	}
	altsvc_cache_free(t);
	if (warning)
		*warning = w;
}

static void sync_dir(const char *path)
{
	char *dir = strdup(path), *slash;
	int fd;

	if (!dir)
		return;
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
	free(dir);
}

bool altsvc_cache_save(struct altsvc_cache *c, time_t now)
{
	return altsvc_cache_write(c, now, true);
}

bool altsvc_cache_write(struct altsvc_cache *c, time_t now, bool durable)
{
	char *tmp;
	int fd;
	FILE *f;
	bool ok;

	if (!c)
		return false;
	if (!c->path)
		return true;
	if (asprintf(&tmp, "%s.tmp", c->path) < 0)
		return false;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		free(tmp);
		return false;
	}
	fprintf(f, FILE_HEADER "\n");
	for (size_t b = 0; b < NBUCKETS; b++) {
		for (const struct entry *e = c->buckets[b]; e; e = e->next) {
			for (size_t i = 0; i < e->n; i++) {
				const struct altsvc_alt *a = &e->alts[i];

				if (e->expires[i] <= now)
					continue;
				fprintf(f, "%s %s %u %s %s %u %lld %d\n", e->scheme, e->host,
				        (unsigned)e->port, a->alpn, a->host[0] ? a->host : "-",
				        (unsigned)a->port, (long long)e->expires[i],
				        a->persist ? 1 : 0);
			}
		}
	}
	ok = fflush(f) == 0 && !ferror(f) && (!durable || fsync(fileno(f)) == 0);
	ok = fclose(f) == 0 && ok;
	ok = ok && rename(tmp, c->path) == 0;
	if (ok) {
		if (durable)
			sync_dir(c->path);
		c->dirty = false;
	} else {
		unlink(tmp);
	}
	free(tmp);
	return ok;
}
