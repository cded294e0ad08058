/*
 * proxy_answer — private to transport/ (and its tests): the parsers of what a
 * parent proxy answers during a handshake, as pure functions over bytes, so
 * that they can be fuzzed and tested without connections. socks5.c owns the
 * SOCKS5 answers (method selection, RFC 1929 status, CONNECT reply),
 * connect.c the HTTP/1.1 answer heads to CONNECT. Neither keeps state: the
 * layers call them on what their input holds so far.
 */
#ifndef MUXD_TRANSPORT_PROXY_ANSWER_H
#define MUXD_TRANSPORT_PROXY_ANSWER_H

#include <stdbool.h>
#include <stddef.h>

enum proxy_answer {
	PROXY_ANSWER_MORE,   /* incomplete: wait for more bytes (nothing consumed) */
	PROXY_ANSWER_NEXT,   /* an answer of .used bytes; the handshake goes on */
	PROXY_ANSWER_OPEN,   /* the final answer, .used bytes: the tunnel is open */
	PROXY_ANSWER_FAILED, /* the handshake failed: .reason says why */
};

struct proxy_answer_result {
	size_t used;      /* NEXT, OPEN: the answer's length */
	unsigned code;    /* SOCKS5 method phase: the selected method; CONNECT: the status */
	char reason[600]; /* FAILED: why; CONNECT OPEN: "STATUS REASON-PHRASE" (for logs) */
};

/* What the SOCKS5 layer waits for. */
enum socks5_phase {
	SOCKS5_PHASE_METHOD, /* the method selection (2 bytes) */
	SOCKS5_PHASE_AUTH,   /* the RFC 1929 status (2 bytes) */
	SOCKS5_PHASE_REPLY,  /* the reply to CONNECT, with its bound address */
};

/*
 * Parses the start of b[0..len) as the SOCKS5 answer of phase. offered_auth:
 * the greeting offered username/password. METHOD is NEXT with .code the
 * method to go on with (0: none, 2: username/password); AUTH is NEXT; REPLY
 * is OPEN. A reply code other than success fails as soon as it is seen.
 * FAILED's reason is what went wrong ("authentication failed"), without the
 * proxy's name.
 */
enum proxy_answer socks5_parse_answer(enum socks5_phase phase, bool offered_auth,
                                      const unsigned char *b, size_t len,
                                      struct proxy_answer_result *out);

/*
 * Parses the start of p[0..len) (at most HTTP1_MAX_HEAD bytes are looked at)
 * as a head answering CONNECT from the proxy proxy_name: an interim 1xx
 * (but 101) is NEXT, a 2xx is OPEN, anything else FAILED with a reason
 * naming the proxy and, when there was a head, its status line ("proxy P:
 * proxy authentication required (407 ...)", "proxy P answered 403").
 */
enum proxy_answer connect_parse_answer(const char *proxy_name, const char *p, size_t len,
                                       struct proxy_answer_result *out);

#endif
