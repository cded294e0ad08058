/*
 * Fuzz target for tls_client_hello_sni (src/transport/tls_server.c), which
 * reads the server name from the first bytes a client sends after an
 * interceptable CONNECT. Checks: a name found is NUL-terminated, non-empty,
 * has no NUL inside and fits; the answer for every prefix of the input is
 * INCOMPLETE or the answer for the whole (more bytes never turn a complete
 * answer into another one); the input cut in two TLS records at any point
 * of its first record gives the same answer when it was complete.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "transport/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char name[256], again[256];
	enum tls_hello r = tls_client_hello_sni(data, size, name, sizeof(name));

	CHECK(r == TLS_HELLO_INCOMPLETE || r == TLS_HELLO_INVALID || r == TLS_HELLO_NO_SNI ||
	      r == TLS_HELLO_SNI);
	if (r == TLS_HELLO_SNI) {
		size_t n = strlen(name);
		CHECK(n > 0 && n < sizeof(name));
		tls_server_name_acceptable(name);
	}
	/* prefixes: still incomplete, or already the final answer */
	for (size_t k = 0; k < size; k += 1 + k / 8) {
		enum tls_hello p = tls_client_hello_sni(data, k, again, sizeof(again));
		if (r != TLS_HELLO_INCOMPLETE)
			CHECK(p == TLS_HELLO_INCOMPLETE || p == r);
		if (p == TLS_HELLO_SNI && r == TLS_HELLO_SNI)
			CHECK(strcmp(again, name) == 0);
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
			free(b);
		}
	}
	return 0;
}
