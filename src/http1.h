/*
 * http1 — strict HTTP/1.1 message parsing and serialising (RFC 9110, 9112).
 *
 * Pure code: no I/O, no allocation except the copy of a message head that a
 * parsed message owns. This is a security boundary: anything ambiguous is
 * rejected (request smuggling vectors, obs-fold, bare CR, control bytes).
 * Owns: struct http1_msg (a parsed head), struct http1_chunked (an incremental
 * chunked-body decoder), URI/authority parsing helpers.
 */
#ifndef MUXD_HTTP1_H
#define MUXD_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP1_MAX_HEAD (64 * 1024)   /* larger heads get 431 */
#define HTTP1_MAX_FIELDS 128         /* more fields: 431 */
#define HTTP1_MAX_TARGET (16 * 1024) /* longer request targets get 414 */

enum http1_result {
	HTTP1_OK = 0,     /* a complete head was parsed */
	HTTP1_INCOMPLETE, /* need more bytes */
	HTTP1_BAD,        /* malformed or ambiguous: 400 (or 502 for a response) */
	HTTP1_TOO_LARGE,  /* head over HTTP1_MAX_HEAD or too many fields: 431 */
};

enum http1_body {
	HTTP1_BODY_NONE,    /* no body (or Content-Length: 0) */
	HTTP1_BODY_LENGTH,  /* exactly content_length bytes */
	HTTP1_BODY_CHUNKED, /* final transfer coding is chunked */
	HTTP1_BODY_CLOSE,   /* response only: body ends when the connection closes */
	/* Response only, never from an HTTP/1.x wire: a protocol that frames
	 * its own messages (HTTP/2, HTTP/3) announced no length; the body ends
	 * with the stream. The client side frames it for its own wire. */
	HTTP1_BODY_UNKNOWN,
};

struct http1_field {
	const char *name; /* NUL-terminated, points into msg->head */
	size_t name_len;
	const char *value; /* NUL-terminated, leading/trailing OWS stripped */
	size_t value_len;
};

struct http1_msg {
	char *head; /* owned copy of the head bytes (modified in place: NULs) */
	size_t head_len;

	/* request line */
	const char *method; /* NUL-terminated */
	const char *target; /* NUL-terminated request-target */
	/* status line */
	int status;
	const char *reason; /* NUL-terminated, may be empty */

	int version_minor; /* HTTP/1.<minor>: 0 or 1 */

	struct http1_field fields[HTTP1_MAX_FIELDS]; /* [0, nfields) set, the rest undefined */
	size_t nfields;

	/* derived framing */
	enum http1_body body;
	uint64_t content_length; /* valid when body == HTTP1_BODY_LENGTH */
	bool keep_alive;         /* persistent after this message (version + Connection) */
	bool expect_continue;    /* request: "Expect: 100-continue" */
	/* The Connection tokens, HTTP1_CONN_* bits: set by the parser (and by
	 * http1_msg_index_connection); 0 = not indexed, the fields are looked
	 * at instead. Wrong once fields are changed: index again. */
	unsigned conn;
};

enum {
	HTTP1_CONN_INDEXED = 1, /* the bits below are known */
	HTTP1_CONN_CLOSE = 2,
	HTTP1_CONN_KEEP_ALIVE = 4,
	HTTP1_CONN_UPGRADE = 8,
	HTTP1_CONN_TE = 16,
	HTTP1_CONN_OTHER = 32, /* any other token (a field name): see the fields */
};

/* Set m->conn from m's Connection fields, for a message built by hand (the
 * parser does this itself), so that http1_is_hop_by_hop need not look at
 * every field for each name it is asked about. */
void http1_msg_index_connection(struct http1_msg *m);

/*
 * Parse a request head from data[0..len). On HTTP1_OK, *consumed is the head
 * length (including the final CRLF CRLF) and *msg is filled (free with
 * http1_msg_free). Lines must end in CRLF: a bare LF is rejected like a bare
 * CR (HTTP1_BAD, which muxd answers with 400 at once, never waiting for a
 * CRLF CRLF that will not come). RFC 9112 2.2 lets a recipient accept a bare
 * LF; muxd does not, so that it and the servers behind it can never disagree
 * about where a line ends (chunk lines and response heads are held to CRLF
 * too). Rejected (HTTP1_BAD): both
 * Content-Length and Transfer-Encoding; differing duplicate Content-Length;
 * a transfer coding other than a single final "chunked"; Transfer-Encoding
 * in HTTP/1.0; obs-fold; bare CR; NUL or other CTLs in fields; whitespace
 * between field name and colon; invalid tokens; versions other than 1.0/1.1;
 * HTTP/1.1 without Host. HTTP1_TOO_LARGE when no complete head fits in
 * HTTP1_MAX_HEAD bytes or there are more than HTTP1_MAX_FIELDS fields.
 * On any result but HTTP1_OK, *msg is empty (no fields) and owns nothing.
 */
enum http1_result http1_parse_request(const char *data, size_t len, struct http1_msg *msg,
                                      size_t *consumed);

/*
 * Incremental watch over the bytes of a head as they arrive, so that the
 * parser runs only when it has something to decide and a head dribbled in
 * byte by byte costs linear time. Zero-initialise; feed every byte once, in
 * order. http1_head_scan feeds data[0..len) and returns true as soon as a
 * byte completes an empty line (the end of a head, or an ignored empty line
 * before a request line) or is one the parser rejects (NUL, bare LF, CR not
 * followed by LF); then sc->seen counts the bytes fed so far, and the rest of
 * data is not fed yet. Returns false when every byte was fed.
 */
struct http1_head_scan {
	size_t seen;           /* bytes fed */
	unsigned char last[3]; /* the last three of them, last[2] the newest */
};
bool http1_head_scan(struct http1_head_scan *sc, const char *data, size_t len);

/*
 * Parse a response head. request_method decides framing (HEAD, and 2xx to
 * CONNECT, have no body); 1xx, 204 and 304 have no body. Without
 * Content-Length or chunked, the body is HTTP1_BODY_CLOSE.
 */
enum http1_result http1_parse_response(const char *data, size_t len, const char *request_method,
                                       struct http1_msg *msg, size_t *consumed);

void http1_msg_free(struct http1_msg *msg);
/* Make *msg empty (no fields, owning nothing; what it owned is not freed)
 * without zeroing its 4 KiB field array: only fields[0..nfields) are ever
 * read, and clearing the whole struct was a large part of a request's cost
 * (parse and free do this too). */
void http1_msg_init(struct http1_msg *msg);

/* First field with this name (case-insensitive), or NULL. */
const struct http1_field *http1_find(const struct http1_msg *msg, const char *name);

/* Case-insensitive search for token in a comma-separated list value;
 * parameters after an element's token (";q=1") are ignored. */
bool http1_list_has(const char *value, size_t value_len, const char *token);

/*
 * True when a field must not be forwarded by a proxy (RFC 9110 7.6.1):
 * Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade,
 * Proxy-Authorization, Proxy-Authenticate (Trailer is NOT hop-by-hop), and any
 * field named in the message's Connection header(s) except Content-Length:
 * framing is never dropped by Connection processing (callers re-frame bodies
 * themselves).
 */
bool http1_is_hop_by_hop(const struct http1_msg *msg, const char *name);

/*
 * HTTP/1.1 Upgrade (RFC 9110 7.8). allowed: protocol names, lower-case,
 * comma-separated ("websocket"; "" allows none). http1_upgrade_listed: an
 * Upgrade value names at least one protocol and only allowed ones (each
 * "name" or "name/version", the name compared case-insensitively).
 * http1_upgrade_requested: req asks to switch to such protocols: HTTP/1.1
 * (an HTTP/1.0 Upgrade is ignored), not CONNECT, "upgrade" in Connection
 * and exactly one Upgrade field, listed.
 */
bool http1_upgrade_listed(const char *value, size_t value_len, const char *allowed);
bool http1_upgrade_requested(const struct http1_msg *req, const char *allowed);

/* Base64 (RFC 4648, with padding) of src[0..n) into dst, which holds
 * 4 * ((n + 2) / 3) + 1 bytes. */
void http1_base64(const unsigned char *src, size_t n, char *dst);

/*
 * True when a trailer field may be relayed (RFC 9110 6.5.1): not a field
 * that must not be in trailers (framing: Content-Length, Transfer-Encoding,
 * Trailer; routing: Host; request modifiers: Cache-Control, Expect,
 * Max-Forwards, Pragma, Range, TE; authentication: Authorization,
 * Proxy-Authorization, WWW-/Proxy-Authenticate, Cookie, Set-Cookie;
 * response controls: Age, Date, Expires, Location, Retry-After, Vary,
 * Warning; payload processing: Content-Type, Content-Encoding,
 * Content-Range), not a connection-specific field (Connection, Keep-Alive,
 * Proxy-Connection, Upgrade) and not a pseudo-header (":name").
 */
bool http1_trailer_allowed(const char *name, size_t name_len);

/*
 * Filters trailers ("name: value\r\n" lines, NUL-terminated) in place:
 * drops the fields http1_trailer_allowed() refuses and lines that are not
 * fields. Returns the new length. One filter for every direction and codec.
 */
size_t http1_filter_trailers(char *trailers);

/* Incremental chunked-body decoder. Zero-initialise before first use. */
struct http1_chunked {
	int state;
	uint64_t remaining;  /* bytes left in the current chunk */
	size_t line_len;     /* bytes of the current size/trailer line seen */
	size_t trailer_len;  /* bytes stored in trailers so far */
	char trailers[8192]; /* validated trailer fields, each "name: value\r\n" */
};

enum http1_chunk_event {
	HTTP1_CHUNK_DATA,      /* *data, *data_len: body data inside the input */
	HTTP1_CHUNK_NEED_MORE, /* all input consumed; call again with more */
	HTTP1_CHUNK_DONE,      /* last chunk and trailers read; c->trailers holds them */
	HTTP1_CHUNK_ERROR,     /* bad chunk size (non-hex, overflow), missing CRLF,
	                          bad trailer field, trailers over sizeof(trailers) */
};

/*
 * Feed in[0..len). *consumed tells how many input bytes were used; on DATA,
 * the data span lies inside the consumed input. Chunk extensions are
 * validated and dropped.
 */
enum http1_chunk_event http1_chunked_next(struct http1_chunked *c, const char *in, size_t len,
                                          size_t *consumed, const char **data, size_t *data_len);

/* A parsed http:// or https:// absolute URI (RFC 9112 3.2.2). */
struct http1_uri {
	char scheme[8];                  /* "http" or "https", lower-cased */
	char host[256];                  /* lower-cased; IPv6 literal without brackets */
	uint16_t port;                   /* explicit or scheme default */
	char path[HTTP1_MAX_TARGET + 1]; /* path + query, "/" when empty; never the fragment */
	bool ipv6;                       /* host is an IPv6 literal */
};

/*
 * Parse an absolute-form request target. Returns false on anything other
 * than http/https, userinfo, empty host, bad port, bad characters, or a path
 * longer than the buffer.
 */
bool http1_parse_absolute_uri(const char *target, struct http1_uri *uri);

/* Parse CONNECT's authority-form "host:port" ("[v6]:port"); port required. */
bool http1_parse_authority(const char *target, char *host, size_t host_size, uint16_t *port,
                           bool *ipv6);

/* "Basic " + base64(user_pass) for Authorization / Proxy-Authorization
 * (RFC 7617); false when it does not fit. HTTP1_BASIC_MAX fits any
 * "user:password" of up to 511 bytes. */
#define HTTP1_BASIC_MAX 700
bool http1_basic_credentials(const char *user_pass, char *out, size_t size);

/* Standard reason phrase for a status code ("Unknown" when none). */
const char *http1_reason(int status);

/* How a relayed response is delimited to an HTTP/1.x client. */
enum http1_framing {
	HTTP1_FRAME_NONE,    /* no body: 1xx, 204, 304, HEAD, 2xx to CONNECT */
	HTTP1_FRAME_EMPTY,   /* an empty body: Content-Length: 0 */
	HTTP1_FRAME_LENGTH,  /* Content-Length: N */
	HTTP1_FRAME_CHUNKED, /* Transfer-Encoding: chunked (HTTP/1.1 clients) */
	HTTP1_FRAME_CLOSE,   /* ends with the connection (HTTP/1.0 clients) */
};

/*
 * The framing of a response to relay: status and body as received (body:
 * the framing the upstream codec derived), method of the request, the
 * client's HTTP/1.<client_minor>. want_trailers: trailers may follow a body
 * of known length and the client asked for them (TE: trailers); an HTTP/1.1
 * client then gets the body chunked so that they can go along.
 */
enum http1_framing http1_relay_framing(int status, const char *method, enum http1_body body,
                                       int client_minor, bool want_trailers);

#endif
