/*
 * h2_mem — nghttp2's allocator: small blocks from malloc, large ones mapped.
 * Every block starts with a header saying its size and where it came from,
 * so that free and realloc need no lookup.
 */
#include "upstream/h2_mem.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct block {
	alignas(max_align_t) size_t size; /* what the caller asked for */
	bool mapped;
};

#define HDR sizeof(struct block)

static void *user(struct block *b)
{
	return (char *)b + HDR;
}

static struct block *block_of(void *p)
{
	return (struct block *)(void *)((char *)p - HDR);
}

static void *mem_alloc(size_t size, bool zero)
{
	struct block *b;

	if (size > SIZE_MAX / 2)
		return NULL;
	if (size >= H2_MEM_MAP_MIN) {
		/* fresh anonymous pages are zero and take memory once written */
		void *p = mmap(NULL, HDR + size, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		b = p;
		b->mapped = true;
	} else {
		if (!(b = zero ? calloc(1, HDR + size) : malloc(HDR + size)))
			return NULL;
		b->mapped = false;
	}
	b->size = size;
	return user(b);
}

static void mem_release(struct block *b)
{
	if (b->mapped)
		munmap(b, HDR + b->size);
	else
		free(b);
}

static void *cb_malloc(size_t size, void *ud)
{
	(void)ud;
	return mem_alloc(size, false);
}

static void *cb_calloc(size_t nmemb, size_t size, void *ud)
{
	(void)ud;
	if (size && nmemb > SIZE_MAX / 2 / size)
		return NULL;
	return mem_alloc(nmemb * size, true);
}

static void cb_free(void *p, void *ud)
{
	(void)ud;
	if (p)
		mem_release(block_of(p));
}

static void *cb_realloc(void *p, size_t size, void *ud)
{
	struct block *b, *nb;
	void *np;

	(void)ud;
	if (!p)
		return mem_alloc(size, false);
	b = block_of(p);
	if (!b->mapped && size < H2_MEM_MAP_MIN) {
		if (!(nb = realloc(b, HDR + size)))
			return NULL;
		nb->size = size;
		return user(nb);
	}
	if (!(np = mem_alloc(size, false)))
		return NULL;
	memcpy(np, p, b->size < size ? b->size : size);
	mem_release(b);
	return np;
}

nghttp2_mem *h2_mem(void)
{
	static nghttp2_mem mem = {NULL, cb_malloc, cb_free, cb_calloc, cb_realloc};
	return &mem;
}
