/*
 * altsvc — HTTP Alternative Services (RFC 7838) for HTTP/3: parsing the
 * Alt-Svc field, a cache of h3 alternatives per origin with expiry and
 * broken-marking (exponential backoff), and its persistence in a file
 * (loaded at start, written atomically soon after a change and at shutdown).
 * Owns: the cache entries.
 */
#ifndef MUXD_ALTSVC_H
#define MUXD_ALTSVC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ALTSVC_MAX_ALTS 8

/* One alternative from a parsed header. */
struct altsvc_alt {
	char alpn[32];  /* protocol id, percent-decoded ("h3") */
	char host[256]; /* alt-authority host; "" = same host as the origin */
	uint16_t port;
	uint64_t max_age; /* seconds; default 86400 */
	bool persist;
};

struct altsvc_parsed {
	bool clear; /* the value was "clear" */
	size_t n;
	struct altsvc_alt alts[ALTSVC_MAX_ALTS]; /* in header order */
};

/*
 * Parse an Alt-Svc field value (RFC 7838 section 3): a comma-separated list
 * of alternatives `protocol-id="[host]:port"` with parameters (ma, persist;
 * unknown parameters ignored), or "clear". Elements that do not parse are
 * skipped without dropping the others. Returns false only when nothing at
 * all could be understood.
 */
bool altsvc_parse(const char *value, size_t len, struct altsvc_parsed *out);

struct altsvc_cache;

/* path: the persistence file, or NULL for memory only. */
struct altsvc_cache *altsvc_cache_new(const char *path);
void altsvc_cache_free(struct altsvc_cache *c);

/* Load path; a corrupted or unreadable file is ignored and *warning says
 * why (a static string, or NULL when all was fine). Expired entries are
 * dropped. */
void altsvc_cache_load(struct altsvc_cache *c, time_t now, const char **warning);
/* Write the file atomically (temp + fsync + rename); false on failure. */
bool altsvc_cache_save(struct altsvc_cache *c, time_t now);
/* The same; durable false skips the fsyncs (the rename stays atomic, so a
 * reader sees the old or the new file): for the periodic saves made from the
 * event loop, where an fsync would stall every connection. */
bool altsvc_cache_write(struct altsvc_cache *c, time_t now, bool durable);
/* True when there are changes not yet saved. */
bool altsvc_cache_dirty(const struct altsvc_cache *c);

/*
 * What an origin's response said. A header with "clear" empties the
 * origin's entry; otherwise its h3 alternatives replace the entry (other
 * protocols are ignored; no h3 alternative at all also empties it).
 */
void altsvc_cache_update(struct altsvc_cache *c, const char *scheme, const char *host,
                         uint16_t port, const struct altsvc_parsed *p, time_t now);

/* The live, not-broken h3 alternative for an origin, or false. */
bool altsvc_cache_lookup(struct altsvc_cache *c, const char *scheme, const char *host,
                         uint16_t port, time_t now, struct altsvc_alt *out);

/* A QUIC attempt to the origin's h3 alternative failed: broken for 5 min,
 * doubling on each consecutive failure, at most 48 h. A success resets it. */
void altsvc_cache_mark_broken(struct altsvc_cache *c, const char *scheme, const char *host,
                              uint16_t port, time_t now);
void altsvc_cache_mark_ok(struct altsvc_cache *c, const char *scheme, const char *host,
                          uint16_t port);

size_t altsvc_cache_count(const struct altsvc_cache *c, time_t now);

/* Call fn for each live entry (status page). */
void altsvc_cache_foreach(const struct altsvc_cache *c, time_t now,
                          void (*fn)(void *arg, const char *origin, const struct altsvc_alt *alt,
                                     time_t expires, time_t broken_until),
                          void *arg);

#endif
