/*
 * Fuzz target for the answers to CONNECT (src/transport/connect.c,
 * connect_parse_answer): the input is what the parent proxy sends, read head
 * after head as the layer does (interim 1xx heads skipped, a 2xx opens the
 * tunnel, anything else fails, 407 named as such). The verdict must not
 * depend on how much has arrived: incomplete just short of a head, the same
 * on the head alone, a failure on a prefix stays a failure. Any broken
 * invariant aborts.
 */
#include "http1.h"
#include "transport/proxy_answer.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROXY "127.0.0.1:3128"

static bool same(enum proxy_answer a, const struct proxy_answer_result *ra, enum proxy_answer b,
                 const struct proxy_answer_result *rb)
{
	return a == b && ra->used == rb->used && ra->code == rb->code &&
	       strcmp(ra->reason, rb->reason) == 0;
}

static enum proxy_answer one(const char *p, size_t len, struct proxy_answer_result *out)
{
	static struct proxy_answer_result r;
	char want[64];
	enum proxy_answer v = connect_parse_answer(PROXY, p, len, out), w;
	size_t looked = len < HTTP1_MAX_HEAD ? len : HTTP1_MAX_HEAD;

	CHECK(memchr(out->reason, '\0', sizeof(out->reason)));
	/* what lies beyond HTTP1_MAX_HEAD changes nothing */
	if (len > HTTP1_MAX_HEAD) {
		w = connect_parse_answer(PROXY, p, HTTP1_MAX_HEAD, &r);
		CHECK(same(v, out, w, &r));
	}
	switch (v) {
	case PROXY_ANSWER_MORE:
		CHECK(out->used == 0 && len < HTTP1_MAX_HEAD);
		break;
	case PROXY_ANSWER_FAILED:
		CHECK(strncmp(out->reason, "proxy " PROXY, strlen("proxy " PROXY)) == 0);
		if (out->code == 0) {
			CHECK(strcmp(out->reason, "proxy " PROXY " sent a malformed answer") == 0);
		} else {
			CHECK(out->code >= 100 && out->code <= 599);
			CHECK(out->code == 101 || out->code >= 300);
			snprintf(want, sizeof(want),
			         out->code == 407 ? "proxy %s: proxy authentication required (%u"
			                          : "proxy %s answered %u",
			         PROXY, out->code);
			CHECK(strncmp(out->reason, want, strlen(want)) == 0);
		}
		/* a failure seen on a prefix is the same failure */
		for (size_t k = looked / 2; k < looked; k += (looked - k + 1) / 2) {
			w = connect_parse_answer(PROXY, p, k, &r);
			if (w != PROXY_ANSWER_MORE)
				CHECK(same(w, &r, v, out));
		}
		break;
	case PROXY_ANSWER_NEXT:
	case PROXY_ANSWER_OPEN:
		CHECK(out->used > 0 && out->used <= looked);
		CHECK(memcmp(p, "HTTP/1.", 7) == 0);
		if (v == PROXY_ANSWER_NEXT)
			CHECK(out->code >= 100 && out->code <= 199 && out->code != 101);
		else
			CHECK(out->code >= 200 && out->code <= 299 && out->reason[0]);
		/* the head alone: the same; one byte less: incomplete */
		w = connect_parse_answer(PROXY, p, out->used, &r);
		CHECK(same(v, out, w, &r));
		w = connect_parse_answer(PROXY, p, out->used - 1, &r);
		CHECK(w == PROXY_ANSWER_MORE);
		w = connect_parse_answer(PROXY, p, out->used / 2, &r);
		CHECK(w == PROXY_ANSWER_MORE);
		break;
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_answer_result r;
	size_t off = 0;

	while (one((const char *)data + off, size - off, &r) == PROXY_ANSWER_NEXT)
		off += r.used;
	return 0;
}
