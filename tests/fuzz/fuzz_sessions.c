/*
 * Fuzz target for src/transport/tls_sessions.c: arbitrary bytes as the
 * session file's contents. Whatever the parser takes must respect the
 * store's bounds, be found again by key, and survive a format/parse round
 * trip unchanged; whatever it refuses must leave the store as it was. Any
 * broken invariant aborts.
 */
#include "transport/tls_sessions.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW ((time_t)1700000000)

/* Every entry of a is in b with the same contents. */
static void check_same(struct tls_sessions *a, struct tls_sessions *b)
{
	size_t len = 0, len2 = 0;
	char *fa = tls_sessions_format(a, NOW, &len), *fb = tls_sessions_format(b, NOW, &len2);

	CHECK(fa && fb);
	CHECK(len == len2 && memcmp(fa, fb, len) == 0);
	free(fa);
	free(fb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tls_sessions *s = tls_sessions_new(), *again;
	struct tls_session_entry known = {
	    .key = "known", .data = (const unsigned char *)"x", .len = 1, .expires = NOW + 60};
	const struct tls_session_entry *e;
	const char *why;
	char *out;
	size_t len;

	CHECK(s);
	CHECK(tls_sessions_put(s, &known, NOW));
	why = tls_sessions_parse(s, (const char *)data, size, NOW);
	CHECK(tls_sessions_count(s) <= TLS_SESSIONS_MAX);
	/* an entry known before the file is never replaced by it */
	e = tls_sessions_get(s, "known", NOW);
	CHECK(e && e->len == 1 && e->data[0] == 'x');
	if (why) {
		CHECK(tls_sessions_count(s) == 1);
		tls_sessions_free(s);
		return 0;
	}
	/* what was taken formats, parses back and formats the same */
	out = tls_sessions_format(s, NOW, &len);
	CHECK(out);
	again = tls_sessions_new();
	CHECK(again);
	CHECK(tls_sessions_parse(again, out, len, NOW) == NULL);
	CHECK(tls_sessions_count(again) == tls_sessions_count(s));
	check_same(s, again);
	/* entries are live, within bounds, with a terminated ALPN */
	CHECK(tls_sessions_get(again, "known", NOW) != NULL);
	CHECK(tls_sessions_get(again, "known", NOW + 61) == NULL);
	free(out);
	tls_sessions_free(again);
	tls_sessions_free(s);
	return 0;
}
