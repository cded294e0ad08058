/* heap — libevent's small allocations on pages of their own (see heap.h). */
#include "heap.h"

#include <event2/event.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/*
 * One reserved mapping, handed out in HEAP_SMALL_MAX-byte cells from the
 * bottom up; freed cells go on a list and are reused first. Pages the
 * kernel has not been asked for cost nothing, so the reservation can be
 * generous: 16 MiB is half a million cells, far more descriptors than
 * muxd can have. When it is full, malloc serves the rest. This state and
 * the reserve below are process-wide, like malloc's own: libevent's
 * allocation hooks take no argument to find a struct muxd by.
 */
#define REGION_BYTES ((size_t)16 << 20)

struct cell {
	struct cell *next;
};

static struct {
	char *base, *end, *bump;
	struct cell *free_list;
	size_t in_use;
} small;

bool heap_is_small(const void *p)
{
	return small.base && (const char *)p >= small.base && (const char *)p < small.end;
}

static void *small_alloc(void)
{
	struct cell *c = small.free_list;

	if (c) {
		small.free_list = c->next;
	} else if (small.bump + HEAP_SMALL_MAX <= small.end) {
		c = (struct cell *)small.bump;
		small.bump += HEAP_SMALL_MAX;
	} else {
		return NULL;
	}
	small.in_use++;
	return c;
}

static void *ev_malloc(size_t n)
{
	void *p = n && n <= HEAP_SMALL_MAX ? small_alloc() : NULL;
	return p ? p : malloc(n);
}

static void ev_free(void *p)
{
	struct cell *c = p;

	if (!heap_is_small(p)) {
		free(p);
		return;
	}
	c->next = small.free_list;
	small.free_list = c;
	small.in_use--;
}

static void *ev_realloc(void *p, size_t n)
{
	void *q;

	if (!p)
		return ev_malloc(n);
	if (!heap_is_small(p))
		return realloc(p, n);
	if (n <= HEAP_SMALL_MAX)
		return p;
	if (!(q = malloc(n)))
		return NULL;
	memcpy(q, p, HEAP_SMALL_MAX);
	ev_free(p);
	return q;
}

bool heap_libevent_init(void)
{
	void *base;

	if (small.base)
		return true;
	base = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE,
	            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		return false;
	small.base = small.bump = base;
	small.end = small.base + REGION_BYTES;
	event_set_mem_functions(ev_malloc, ev_realloc, ev_free);
	return true;
}

void heap_small_usage(size_t *cells_in_use, size_t *bytes_touched)
{
	*cells_in_use = small.in_use;
	*bytes_touched = small.base ? (size_t)(small.bump - small.base) : 0;
}

#if defined(__GLIBC__) && SIZE_MAX == UINT64_MAX
/*
 * glibc's tcache (64-bit): 64 bins of chunk sizes 32, 48, ... 1040 bytes
 * (requests of 24 + 16 i bytes), 7 chunks each by default. It is LIFO and
 * malloc takes from it before anything else; free puts a chunk in it while
 * its bin holds fewer than 7.
 */
#define TC_BINS 64
#define TC_COUNT 7

static void *tc_reserve[TC_BINS][TC_COUNT];
static bool tc_reserved;

static size_t tc_request(int bin)
{
	return 24 + 16 * (size_t)bin;
}

void heap_trim_init(void)
{
	if (tc_reserved)
		return;
	for (int b = 0; b < TC_BINS; b++)
		for (int k = 0; k < TC_COUNT; k++)
			tc_reserve[b][k] = malloc(tc_request(b));
	tc_reserved = true;
}

void heap_trim(void)
{
	void *cached[TC_BINS][TC_COUNT];

	if (tc_reserved) {
		/* Merges the fast bins first: a malloc that finds its cache bin
		 * empty moves same-sized free chunks into it, and after the merge
		 * there are few of those. */
		malloc_trim(0);
		for (int b = 0; b < TC_BINS; b++) /* empties the cache */
			for (int k = 0; k < TC_COUNT; k++)
				cached[b][k] = malloc(tc_request(b));
		for (int b = 0; b < TC_BINS; b++) /* fills it with the reserve */
			for (int k = 0; k < TC_COUNT; k++)
				free(tc_reserve[b][k]);
		for (int b = 0; b < TC_BINS; b++) /* the cache is full: to the free lists */
			for (int k = 0; k < TC_COUNT; k++)
				free(cached[b][k]);
		for (int b = 0; b < TC_BINS; b++) /* the reserve back: the cache is empty */
			for (int k = 0; k < TC_COUNT; k++)
				tc_reserve[b][k] = malloc(tc_request(b));
	}
	malloc_trim(0);
}
#else
void heap_trim_init(void)
{
}

void heap_trim(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}
#endif
