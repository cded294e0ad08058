/*
 * Fuzz target for the Via loop check (via_names, src/via.c). The names it
 * reports must be exactly those of a simple reference that first cuts the
 * value into entries at the commas outside comments and then reads each
 * entry's second word; each name must be non-empty, free of SP, HTAB, ','
 * and '(', and lie inside the value; and stopping at the k-th name must make
 * exactly k calls and return true.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "via.h"

#define MAX_NAMES 4096

struct name {
	const char *p;
	size_t n;
};

struct seen {
	const char *value;
	size_t len;
	struct name names[MAX_NAMES];
	size_t count;
	size_t stop_at;
};

static bool record(void *arg, const char *name, size_t n)
{
	struct seen *s = arg;

	CHECK(n > 0 && name >= s->value && name + n <= s->value + s->len);
	for (size_t i = 0; i < n; i++)
		CHECK(!memchr(" \t,(", name[i], 4));
	CHECK(s->count < MAX_NAMES);
	s->names[s->count].p = name;
	s->names[s->count].n = n;
	return ++s->count == s->stop_at;
}

static bool delim(char c)
{
	return c == ' ' || c == '\t' || c == ',' || c == '(';
}

/* The reference: entries are the pieces between commas at comment depth 0;
 * in each, after leading blanks, a first word, at least one blank, and a
 * second word (words end at a blank, ',' or '('), which is the name. */
static size_t reference(const char *v, size_t len, struct name *out)
{
	size_t count = 0, start = 0, depth = 0;

	for (size_t i = 0; i <= len; i++) {
		if (i < len && depth > 0) {
			if (v[i] == '\\' && i + 1 < len)
				i++;
			else if (v[i] == '(')
				depth++;
			else if (v[i] == ')')
				depth--;
			continue;
		}
		if (i < len && v[i] == '(') {
			depth = 1;
			continue;
		}
		if (i < len && v[i] != ',')
			continue;
		/* the entry is v[start, i) */
		size_t j = start, end = i < len ? i : len;
		while (j < end && (v[j] == ' ' || v[j] == '\t'))
			j++;
		size_t w1 = j;
		while (j < end && !delim(v[j]))
			j++;
		if (j > w1 && j < end && (v[j] == ' ' || v[j] == '\t')) {
			while (j < end && (v[j] == ' ' || v[j] == '\t'))
				j++;
			size_t w2 = j;
			while (j < end && !delim(v[j]))
				j++;
			if (j > w2) {
				out[count].p = v + w2;
				out[count].n = j - w2;
				count++;
			}
		}
		start = i + 1;
	}
	return count;
}

static struct seen seen;
static struct name expect[MAX_NAMES];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *v = (const char *)data;

	if (size > 16384)
		return 0;
	memset(&seen, 0, sizeof(seen));
	seen.value = v;
	seen.len = size;
	CHECK(!via_names(v, size, record, &seen));

	size_t n = reference(v, size, expect);
	CHECK(n == seen.count);
	for (size_t i = 0; i < n; i++)
		CHECK(expect[i].p == seen.names[i].p && expect[i].n == seen.names[i].n);

	/* stopping early */
	for (size_t k = 1; k <= n && k <= 3; k++) {
		seen.count = 0;
		seen.stop_at = k;
		CHECK(via_names(v, size, record, &seen));
		CHECK(seen.count == k);
	}
	return 0;
}
