/* Unit tests for src/upstream/h2_mem.c: nghttp2's allocator, its mapped
 * blocks, and giving their pages back while idle (the blocks still usable). */
#include "upstream/h2_mem.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t pg(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

/* Resident pages of [p, p + len). */
static size_t resident(const void *p, size_t len)
{
	size_t n = (len + pg() - 1) / pg(), count = 0;
	unsigned char *vec = calloc(n, 1);

	ck_assert_ptr_nonnull(vec);
	ck_assert_int_eq(mincore((void *)p, len, vec), 0);
	for (size_t i = 0; i < n; i++)
		count += vec[i] & 1;
	free(vec);
	return count;
}

static bool all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

START_TEST(blocks_small_and_mapped)
{
	struct h2_mem m;
	nghttp2_mem *a;
	unsigned char *small, *big, *zeroed, *grown;

	h2_mem_init(&m);
	a = h2_mem_nghttp2(&m);
	ck_assert_ptr_eq(a->mem_user_data, &m);
	small = a->malloc(100, a->mem_user_data);
	big = a->malloc(3 * 4096 + 10, a->mem_user_data);
	zeroed = a->calloc(256, 16, a->mem_user_data);
	ck_assert_ptr_nonnull(small);
	ck_assert_ptr_nonnull(big);
	ck_assert_ptr_nonnull(zeroed);
	ck_assert_uint_eq((uintptr_t)big % pg(), 0);
	ck_assert_uint_eq((uintptr_t)zeroed % pg(), 0);
	ck_assert(all_zero(zeroed, 4096));
	memset(small, 'a', 100);
	memset(big, 'b', 3 * 4096 + 10);
	/* a mapped block moves, its content with it */
	grown = a->realloc(big, 5 * 4096, a->mem_user_data);
	ck_assert_ptr_nonnull(grown);
	for (size_t i = 0; i < 3 * 4096 + 10; i++)
		ck_assert_int_eq(grown[i], 'b');
	memset(grown, 'c', 5 * 4096);
	/* one from malloc stays there */
	small = a->realloc(small, 200, a->mem_user_data);
	ck_assert_ptr_nonnull(small);
	ck_assert_int_eq(small[99], 'a');
	a->free(small, a->mem_user_data);
	a->free(grown, a->mem_user_data);
	a->free(zeroed, a->mem_user_data);
	a->free(NULL, a->mem_user_data);
	for (size_t i = 0; i < H2_MEM_MAPS; i++)
		ck_assert_ptr_null(m.maps[i].p);
}
END_TEST

/* More large blocks than slots: the rest come from malloc, all usable. */
START_TEST(slots_full_falls_back_to_malloc)
{
	struct h2_mem m;
	nghttp2_mem *a;
	unsigned char *p[H2_MEM_MAPS + 3];

	h2_mem_init(&m);
	a = h2_mem_nghttp2(&m);
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		p[i] = a->calloc(1, 8192, a->mem_user_data);
		ck_assert_ptr_nonnull(p[i]);
		ck_assert(all_zero(p[i], 8192));
		memset(p[i], (int)i + 1, 8192);
	}
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		p[i] = a->realloc(p[i], 12000, a->mem_user_data);
		ck_assert_ptr_nonnull(p[i]);
		ck_assert_int_eq(p[i][8191], (int)i + 1);
	}
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
		a->free(p[i], a->mem_user_data);
	for (size_t i = 0; i < H2_MEM_MAPS; i++)
		ck_assert_ptr_null(m.maps[i].p);
}
END_TEST

/* Pages all zero go back, content unchanged; others stay; the block is
 * still usable. */
START_TEST(release_zero_pages)
{
	struct h2_mem m;
	nghttp2_mem *a;
	unsigned char *b;

	h2_mem_init(&m);
	a = h2_mem_nghttp2(&m);
	b = a->calloc(4, 4096, a->mem_user_data);
	ck_assert_ptr_nonnull(b);
	memset(b, 0, 4 * 4096); /* every page written: resident */
	b[4096 + 17] = 0x5a;    /* page 1 holds something */
	b[2 * 4096 + 5] = 1;    /* page 2 written, then zero again */
	b[2 * 4096 + 5] = 0;
	ck_assert_uint_eq(resident(b, 4 * 4096), 4);
	ck_assert_uint_eq(h2_mem_release(&m, true), 3 * 4096); /* not the frame buffer */
	ck_assert_uint_eq(resident(b, 4 * 4096), 1);
	ck_assert_int_eq(b[4096 + 17], 0x5a);
	ck_assert(all_zero(b, 4096));
	b[5] = 7; /* usable again */
	ck_assert_int_eq(b[5], 7);
	a->free(b, a->mem_user_data);
}
END_TEST

static ssize_t no_send(nghttp2_session *s, const uint8_t *d, size_t n, int f, void *u)
{
	(void)s, (void)d, (void)f, (void)u;
	return (ssize_t)n;
}

/* Drains what the session wants to send; the last frame's bytes in *last. */
static size_t drain(nghttp2_session *s, uint8_t *last, size_t cap)
{
	const uint8_t *data;
	ssize_t n;
	size_t total = 0;

	while ((n = nghttp2_session_mem_send(s, &data)) > 0) {
		memcpy(last, data, (size_t)n < cap ? (size_t)n : cap);
		total += (size_t)n;
	}
	ck_assert_int_eq(n, 0);
	return total;
}

/* A real nghttp2 client session: the frame buffer is found; idle, its pages
 * and the empty stream map's go back; frames are written correctly again
 * afterwards, and a map holding a stream keeps it. */
START_TEST(release_with_nghttp2_session)
{
	struct h2_mem m;
	nghttp2_session_callbacks *cb;
	nghttp2_session *s;
	struct h2_mem_map *frames = NULL, *table = NULL;
	uint8_t last[64];
	uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
	const nghttp2_nv nv[] = {
	    {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0},
	    {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
	    {(uint8_t *)":authority", (uint8_t *)"a.test", 10, 6, 0},
	    {(uint8_t *)":path", (uint8_t *)"/", 5, 1, 0},
	};
	int32_t id;
	int token;

	h2_mem_init(&m);
	ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
	nghttp2_session_callbacks_set_send_callback(cb, no_send);
	ck_assert_int_eq(nghttp2_session_client_new3(&s, cb, NULL, NULL, h2_mem_nghttp2(&m)), 0);
	nghttp2_session_callbacks_del(cb);
	h2_mem_mark_frames(&m);
	for (size_t i = 0; i < H2_MEM_MAPS; i++) {
		if (!m.maps[i].p)
			continue;
		if (m.maps[i].frames) {
			ck_assert_ptr_null(frames);
			frames = &m.maps[i];
		} else {
			table = &m.maps[i];
		}
	}
	ck_assert_ptr_nonnull(frames);
	ck_assert_ptr_nonnull(table); /* the stream map, 4 KiB */
	ck_assert_uint_eq(table->size, 4096);

	ck_assert_int_eq(nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0), 0);
	ck_assert_uint_gt(drain(s, last, sizeof(last)), 0);
	ck_assert_int_eq(nghttp2_session_want_write(s), 0);
	ck_assert_uint_ge(resident(frames->p, frames->size), 1);
	ck_assert_uint_ge(h2_mem_release(&m, true), frames->size + 4096);
	ck_assert_uint_eq(resident(frames->p, frames->size), 0);
	ck_assert_uint_eq(resident(table->p, table->size), 0);

	/* the next frame is serialised from the start of the released buffer */
	ck_assert_int_eq(nghttp2_submit_ping(s, NGHTTP2_FLAG_NONE, opaque), 0);
	ck_assert_uint_eq(drain(s, last, sizeof(last)), 17);
	ck_assert_int_eq(last[2], 8); /* length */
	ck_assert_int_eq(last[3], NGHTTP2_PING);
	ck_assert_mem_eq(last + 9, opaque, 8);
	ck_assert_uint_ge(resident(frames->p, frames->size), 1);

	/* a stream in the map: its page is not zero and stays */
	id = nghttp2_submit_request(s, NULL, nv, sizeof(nv) / sizeof(nv[0]), NULL, &token);
	ck_assert_int_gt(id, 0);
	ck_assert_uint_gt(drain(s, last, sizeof(last)), 0);
	h2_mem_release(&m, true);
	ck_assert_ptr_eq(nghttp2_session_get_stream_user_data(s, id), &token);
	ck_assert_uint_ge(resident(table->p, table->size), 1);
	nghttp2_session_del(s);
	for (size_t i = 0; i < H2_MEM_MAPS; i++)
		ck_assert_ptr_null(m.maps[i].p);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("h2_mem");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, blocks_small_and_mapped);
	tcase_add_test(tc, slots_full_falls_back_to_malloc);
	tcase_add_test(tc, release_zero_pages);
	tcase_add_test(tc, release_with_nghttp2_session);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
