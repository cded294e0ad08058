/*
 * tls_sessions — the store of TLS session resumption data behind the TLS
 * client layer and QUIC: per key (the pool key id; QUIC's under "h3|" and
 * the id) the session data GnuTLS packed, when it expires (the ticket's
 * lifetime), how much early data (0-RTT) the ticket allows, the ALPN
 * protocol the session had and, for QUIC, the server's transport parameters
 * (opaque bytes encoded by transport/quic: 0-RTT needs them). Bounded in entries and bytes (least
 * recently stored out first), expired entries dropped; and its persistence: the session file's
 * format (written and parsed here, pure code, fuzzed) and writing it atomically (temporary file,
 * rename), mode 0600 — it holds resumption secrets. Owns: the entries and their bytes.
 */
#ifndef MUXD_TLS_SESSIONS_H
#define MUXD_TLS_SESSIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define TLS_SESSIONS_MAX 1024                /* entries */
#define TLS_SESSIONS_MAX_BYTES (8u << 20)    /* keys and data together */
#define TLS_SESSION_MAX_DATA (32u << 10)     /* one entry's session data */
#define TLS_SESSION_MAX_KEY 4096             /* one entry's key */
#define TLS_SESSION_MAX_TP 1024              /* one entry's QUIC transport parameters */
#define TLS_SESSION_MAX_LIFETIME (7 * 86400) /* RFC 8446 4.6.1: at most 7 days */

struct tls_sessions;

struct tls_session_entry {
	const char *key;
	const unsigned char *data;
	size_t len;
	time_t expires;     /* wall clock */
	uint32_t max_early; /* early data the ticket allows, bytes; 0: none */
	char alpn[32];      /* the session's ALPN protocol; "" when none */
	/* QUIC: the server's transport parameters as the QUIC layer encoded
	 * them (NULL, 0: none) */
	const unsigned char *tp;
	size_t tp_len;
};

struct tls_sessions *tls_sessions_new(void);
void tls_sessions_free(struct tls_sessions *s);

/* Store (a copy of) e under e->key, replacing an older entry; entries
 * beyond the bounds go, oldest first. false when it does not fit the bounds
 * (nothing stored) or memory runs out. */
bool tls_sessions_put(struct tls_sessions *s, const struct tls_session_entry *e, time_t now);
/* The live entry under key (borrowed: valid until the next put, remove or
 * load), or NULL; an expired one is dropped. */
const struct tls_session_entry *tls_sessions_get(struct tls_sessions *s, const char *key,
                                                 time_t now);
void tls_sessions_remove(struct tls_sessions *s, const char *key);
size_t tls_sessions_count(const struct tls_sessions *s);
/* Changes not yet written. */
bool tls_sessions_dirty(const struct tls_sessions *s);

/*
 * The file's contents: parse buf (all or nothing) and add its live entries
 * to those not already known (the ones in memory are newer). NULL when the
 * contents were fine, else why they were ignored (a static string).
 */
const char *tls_sessions_parse(struct tls_sessions *s, const char *buf, size_t len, time_t now);
/* The live entries in the file's format (malloc'd, *len bytes); NULL when
 * out of memory. */
char *tls_sessions_format(const struct tls_sessions *s, time_t now, size_t *len);

/* Read path (a missing file is no error); NULL or why it was ignored. */
const char *tls_sessions_load(struct tls_sessions *s, const char *path, time_t now);
/* Write path atomically, mode 0600; durable: fsync the file and its
 * directory too (at shutdown; never from the event loop's hot path).
 * Clears dirty on success. */
bool tls_sessions_save(struct tls_sessions *s, const char *path, time_t now, bool durable);

#endif
