/*
 * fuzz — what every fuzz target shares: CHECK (an invariant that must hold;
 * a failure aborts, which both libFuzzer and the plain replay driver report
 * as a crash) and next_line (cut an input into lines).
 */
#ifndef MUXD_FUZZ_H
#define MUXD_FUZZ_H

#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			abort();                                                                   \
	} while (0)

/* The next line of [*p, end) as a fresh string (NULL when none is left). */
static inline char *next_line(const char **p, const char *end)
{
	const char *nl;
	char *s;

	if (*p > end)
		return NULL;
	nl = memchr(*p, '\n', (size_t)(end - *p));
	if (!nl)
		nl = end;
	s = malloc((size_t)(nl - *p) + 1);
	if (!s)
		abort();
	memcpy(s, *p, (size_t)(nl - *p));
	s[nl - *p] = '\0';
	*p = nl + 1;
	return s;
}

#endif
