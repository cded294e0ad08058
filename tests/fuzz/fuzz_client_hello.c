/*
 * Fuzz target for tls_client_hello_parse and tls_client_hello_sni
 * (src/transport/tls_server.c), which read the server name and the offered
 * ALPN protocols from the first bytes a client sends after an interceptable
 * CONNECT. Checks: a name found is NUL-terminated, non-empty, has no NUL
 * inside and fits; both functions agree; the ALPN summary is consistent (h2
 * or http/1.1 only when ALPN was sent, the list printable, within its size);
 * the answer for every prefix of the input is INCOMPLETE or the answer for
 * the whole (more bytes never turn a complete answer into another one); the
 * input cut in two TLS records at any point of its first record gives the
 * same answer, and the same ALPN summary, when it was complete.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "transport/tls.h"

static void check_info(enum tls_hello r, const struct tls_hello_info *info)
{
	size_t n = strnlen(info->alpn_list, sizeof(info->alpn_list));

	CHECK(n < sizeof(info->alpn_list));
	for (size_t i = 0; i < n; i++)
		CHECK(info->alpn_list[i] >= 0x21 && info->alpn_list[i] <= 0x7e);
	CHECK(info->alpn || (!info->alpn_h2 && !info->alpn_http11 && n == 0));
	CHECK(!info->alpn || n > 0);
	CHECK(strnlen(info->sni, sizeof(info->sni)) < sizeof(info->sni));
	CHECK((r == TLS_HELLO_SNI) == (info->sni[0] != '\0'));
}

static bool same_info(const struct tls_hello_info *a, const struct tls_hello_info *b)
{
	return strcmp(a->sni, b->sni) == 0 && a->alpn == b->alpn && a->alpn_h2 == b->alpn_h2 &&
	       a->alpn_http11 == b->alpn_http11 && strcmp(a->alpn_list, b->alpn_list) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char name[256], again[256];
	struct tls_hello_info info, info2;
	enum tls_hello r = tls_client_hello_sni(data, size, name, sizeof(name));
	enum tls_hello rp = tls_client_hello_parse(data, size, &info);

	CHECK(r == TLS_HELLO_INCOMPLETE || r == TLS_HELLO_INVALID || r == TLS_HELLO_NO_SNI ||
	      r == TLS_HELLO_SNI);
	CHECK(rp == r);
	if (r == TLS_HELLO_SNI) {
		size_t n = strlen(name);
		CHECK(n > 0 && n < sizeof(name));
		CHECK(strcmp(name, info.sni) == 0);
		tls_server_name_acceptable(name);
	}
	if (r == TLS_HELLO_SNI || r == TLS_HELLO_NO_SNI)
		check_info(r, &info);
	/* a name that does not fit the caller's buffer is refused, not cut */
	if (r == TLS_HELLO_SNI)
		CHECK(tls_client_hello_sni(data, size, again, strlen(name)) == TLS_HELLO_INVALID);
	/* prefixes: still incomplete, or already the final answer */
	for (size_t k = 0; k < size; k += 1 + k / 8) {
		enum tls_hello p = tls_client_hello_sni(data, k, again, sizeof(again));
		if (r != TLS_HELLO_INCOMPLETE)
			CHECK(p == TLS_HELLO_INCOMPLETE || p == r);
		if (p == TLS_HELLO_SNI && r == TLS_HELLO_SNI)
			CHECK(strcmp(again, name) == 0);
		if (p == TLS_HELLO_SNI || p == TLS_HELLO_NO_SNI) {
			CHECK(tls_client_hello_parse(data, k, &info2) == p);
			CHECK(same_info(&info, &info2));
		}
	}
	/* the first record re-split into two records */
	if (r != TLS_HELLO_INVALID && r != TLS_HELLO_INCOMPLETE && size >= 6) {
		size_t frag = (size_t)data[3] << 8 | data[4], cut = 1 + frag / 2;
		if (frag >= 2 && 5 + frag <= size) {
			uint8_t *b = malloc(size + 5);
			CHECK(b);
			memcpy(b, data, 5 + cut);
			b[3] = (uint8_t)(cut >> 8), b[4] = (uint8_t)cut;
			memcpy(b + 5 + cut, data, 5);
			b[5 + cut + 3] = (uint8_t)((frag - cut) >> 8);
			b[5 + cut + 4] = (uint8_t)(frag - cut);
			memcpy(b + 10 + cut, data + 5 + cut, size - 5 - cut);
			CHECK(tls_client_hello_sni(b, size + 5, again, sizeof(again)) == r);
			if (r == TLS_HELLO_SNI)
				CHECK(strcmp(again, name) == 0);
			CHECK(tls_client_hello_parse(b, size + 5, &info2) == r);
			CHECK(same_info(&info, &info2));
			free(b);
		}
	}
	return 0;
}
