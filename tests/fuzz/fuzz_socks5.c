/*
 * Fuzz target for the SOCKS5 answers (src/transport/socks5.c,
 * socks5_parse_answer): the first byte chooses whether the greeting offered
 * username/password; the rest is what the proxy sends, run through the
 * layer's phases (method selection, RFC 1929 status, CONNECT reply) as the
 * layer does. At every step the verdict must not depend on how much of the
 * input has arrived: incomplete on every prefix shorter than the answer,
 * then one verdict whatever follows. Any broken invariant aborts.
 */
#include "transport/proxy_answer.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ANSWER_MAX (4 + 1 + 255 + 2) /* the longest answer: a reply with a domain */

static bool same(enum proxy_answer a, const struct proxy_answer_result *ra, enum proxy_answer b,
                 const struct proxy_answer_result *rb)
{
	return a == b && ra->used == rb->used && ra->code == rb->code &&
	       strcmp(ra->reason, rb->reason) == 0;
}

static bool known_reason(const char *r)
{
	static const char *const reasons[] = {
	    "malformed reply (not a SOCKS5 server?)",
	    "no acceptable authentication method",
	    "authentication required",
	    "selected an authentication method that was not offered",
	    "malformed authentication reply",
	    "authentication failed",
	    "malformed reply",
	    "general SOCKS server failure",
	    "connection not allowed by ruleset",
	    "network unreachable",
	    "host unreachable",
	    "connection refused by destination host",
	    "TTL expired",
	    "command not supported",
	    "address type not supported",
	};
	unsigned code;
	char tail;

	for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
		if (strcmp(r, reasons[i]) == 0)
			return true;
	return sscanf(r, "unknown reply code %u%c", &code, &tail) == 1 && code >= 9 && code <= 255;
}

/* One answer at b[0..len): checks it and returns its verdict in *out. */
static enum proxy_answer one(enum socks5_phase phase, bool auth, const unsigned char *b, size_t len,
                             struct proxy_answer_result *out)
{
	static struct proxy_answer_result r, first;
	enum proxy_answer v = socks5_parse_answer(phase, auth, b, len, out), fv = PROXY_ANSWER_MORE;
	size_t upto = len < ANSWER_MAX ? len : ANSWER_MAX;

	/* with a whole answer's worth of bytes, never incomplete */
	if (len >= ANSWER_MAX)
		CHECK(v != PROXY_ANSWER_MORE);
	/* incomplete on short prefixes, then one verdict */
	for (size_t k = 0; k <= upto; k++) {
		enum proxy_answer w = socks5_parse_answer(phase, auth, b, k, &r);

		if (fv == PROXY_ANSWER_MORE) {
			fv = w;
			first = r;
		} else {
			CHECK(same(w, &r, fv, &first));
		}
	}
	CHECK(same(v, out, fv, &first));
	switch (v) {
	case PROXY_ANSWER_MORE:
		CHECK(out->used == 0 && len < ANSWER_MAX);
		break;
	case PROXY_ANSWER_FAILED:
		CHECK(out->reason[0] && memchr(out->reason, '\0', sizeof(out->reason)));
		CHECK(known_reason(out->reason));
		break;
	case PROXY_ANSWER_NEXT:
		CHECK(phase != SOCKS5_PHASE_REPLY && out->used == 2 && b[0] == (phase ? 1 : 5));
		if (phase == SOCKS5_PHASE_METHOD)
			CHECK(out->code == 0 || (out->code == 2 && auth));
		else
			CHECK(b[1] == 0);
		break;
	case PROXY_ANSWER_OPEN:
		CHECK(phase == SOCKS5_PHASE_REPLY && out->used <= len);
		CHECK(b[0] == 5 && b[1] == 0 && b[2] == 0);
		CHECK((b[3] == 1 && out->used == 10) || (b[3] == 4 && out->used == 22) ||
		      (b[3] == 3 && b[4] > 0 && out->used == 7u + b[4]));
		break;
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_answer_result r;
	enum socks5_phase phase = SOCKS5_PHASE_METHOD;
	bool auth;
	size_t off = 1;

	if (size < 1)
		return 0;
	auth = data[0] & 1;
	for (;;) {
		enum proxy_answer v = one(phase, auth, data + off, size - off, &r);

		if (v != PROXY_ANSWER_NEXT)
			break;
		off += r.used;
		phase = phase == SOCKS5_PHASE_METHOD && r.code == 2 ? SOCKS5_PHASE_AUTH
		                                                    : SOCKS5_PHASE_REPLY;
	}
	return 0;
}
