/*
 * h2_mem — nghttp2's allocator: small blocks straight from malloc, large ones
 * mapped, page-aligned, listed in the struct (so that free knows them without
 * a header in front of every block), and given back page by page while idle.
 */
#include "upstream/h2_mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t page_size(void)
{
	long n = sysconf(_SC_PAGESIZE);
	return n > 0 ? (size_t)n : 4096;
}

static size_t map_len(size_t size)
{
	size_t pg = page_size();
	return (size + pg - 1) / pg * pg;
}

static struct h2_mem_map *find(struct h2_mem *m, const void *p)
{
	if (!p || (uintptr_t)p % page_size() != 0)
		return NULL; /* mapped blocks start a page */
	for (size_t i = 0; i < H2_MEM_MAPS; i++)
		if (m->maps[i].p == p)
			return &m->maps[i];
	return NULL;
}

static void *mem_alloc(struct h2_mem *m, size_t size, bool zero)
{
	struct h2_mem_map *slot = NULL;
	void *p;

	if (size >= H2_MEM_MAP_MIN && size <= SIZE_MAX / 2)
		for (size_t i = 0; i < H2_MEM_MAPS && !slot; i++)
			if (!m->maps[i].p)
				slot = &m->maps[i];
	if (!slot) /* small, or every slot taken: the C library's */
		return zero ? calloc(1, size) : malloc(size);
	/* fresh anonymous pages are zero and take memory once written */
	p = mmap(NULL, map_len(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	slot->p = p;
	slot->size = size;
	slot->frames = false;
	return p;
}

static void mem_release(struct h2_mem *m, void *p)
{
	struct h2_mem_map *slot = find(m, p);

	if (!slot) {
		free(p);
		return;
	}
	munmap(p, map_len(slot->size));
	slot->p = NULL;
}

static void *cb_malloc(size_t size, void *ud)
{
	return mem_alloc(ud, size, false);
}

static void *cb_calloc(size_t nmemb, size_t size, void *ud)
{
	if (size && nmemb > SIZE_MAX / 2 / size)
		return NULL;
	return mem_alloc(ud, nmemb * size, true);
}

static void cb_free(void *p, void *ud)
{
	if (p)
		mem_release(ud, p);
}

/* A block from malloc stays there (its size is malloc's to know); a mapped
 * one moves to a block of the new size. */
static void *cb_realloc(void *p, size_t size, void *ud)
{
	struct h2_mem *m = ud;
	struct h2_mem_map *slot;
	size_t keep;
	bool frames;
	void *np;

	if (!p)
		return mem_alloc(m, size, false);
	if (!(slot = find(m, p)))
		return realloc(p, size);
	keep = slot->size < size ? slot->size : size;
	frames = slot->frames;
	if (!(np = mem_alloc(m, size, false)))
		return NULL;
	memcpy(np, p, keep);
	mem_release(m, p);
	if ((slot = find(m, np)))
		slot->frames = frames;
	return np;
}

void h2_mem_init(struct h2_mem *m)
{
	memset(m, 0, sizeof(*m));
	m->mem.mem_user_data = m;
	m->mem.malloc = cb_malloc;
	m->mem.free = cb_free;
	m->mem.calloc = cb_calloc;
	m->mem.realloc = cb_realloc;
}

void h2_mem_mark_frames(struct h2_mem *m)
{
	for (size_t i = 0; i < H2_MEM_MAPS; i++)
		if (m->maps[i].p && m->maps[i].size >= 16 * 1024)
			m->maps[i].frames = true;
}

static bool page_zero(const unsigned char *p, size_t n)
{
	static const unsigned char zero[256];

	for (size_t off = 0; off < n; off += sizeof(zero))
		if (memcmp(p + off, zero, n - off < sizeof(zero) ? n - off : sizeof(zero)) != 0)
			return false;
	return true;
}

size_t h2_mem_release(struct h2_mem *m, bool frames_dead)
{
	size_t pg = page_size(), given = 0;

	for (size_t i = 0; i < H2_MEM_MAPS; i++) {
		struct h2_mem_map *b = &m->maps[i];
		unsigned char *p = b->p;
		size_t len;

		if (!p)
			continue;
		len = map_len(b->size);
		if (b->frames && frames_dead) {
			if (madvise(p, len, MADV_DONTNEED) == 0)
				given += len;
			continue;
		}
		for (size_t off = 0; off < len; off += pg)
			if (page_zero(p + off, pg) && madvise(p + off, pg, MADV_DONTNEED) == 0)
				given += pg;
	}
	return given;
}
