/* Unit tests for src/heap.c: libevent's small allocations on pages of their
 * own, and the idle trim. */
#include "heap.h"

#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NFDS 64

static void noop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* libevent's per-descriptor slots come from the region, and go back to it
 * when the base is freed; other allocations do not. */
START_TEST(slots_in_the_region)
{
	struct event_base *base;
	struct event *ev[NFDS];
	struct evbuffer *buf;
	int fds[NFDS / 2][2];
	size_t before, after, touched;

	ck_assert(heap_libevent_init());
	heap_small_usage(&before, &touched);
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	for (int i = 0; i < NFDS / 2; i++)
		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds[i]), 0);
	for (int i = 0; i < NFDS; i++) {
		ev[i] = event_new(base, fds[i / 2][i % 2], EV_READ, noop, NULL);
		ck_assert_ptr_nonnull(ev[i]);
		ck_assert(!heap_is_small(ev[i])); /* an event is larger */
		ck_assert_int_eq(event_add(ev[i], NULL), 0);
	}
	heap_small_usage(&after, &touched);
	ck_assert_uint_ge(after - before, NFDS); /* a slot per descriptor */
	ck_assert_uint_ge(touched, after * HEAP_SMALL_MAX);
	buf = evbuffer_new();
	ck_assert(!heap_is_small(buf));
	ck_assert_int_eq(evbuffer_add(buf, "x", 1), 0);
	evbuffer_free(buf);
	for (int i = 0; i < NFDS; i++)
		event_free(ev[i]);
	event_base_free(base);
	heap_small_usage(&after, &touched);
	ck_assert_uint_eq(after, before);
	for (int i = 0; i < NFDS / 2; i++) {
		close(fds[i][0]);
		close(fds[i][1]);
	}
}
END_TEST

/* Freed cells are reused before the region grows. */
START_TEST(cells_reused)
{
	struct event_base *base;
	size_t in_use, touched, touched2;
	int sv[2];
	struct event *ev;

	ck_assert(heap_libevent_init());
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	for (int round = 0; round < 3; round++) {
		base = event_base_new();
		ev = event_new(base, sv[0], EV_READ, noop, NULL);
		event_add(ev, NULL);
		event_free(ev);
		event_base_free(base);
		heap_small_usage(&in_use, round == 0 ? &touched : &touched2);
		if (round > 0)
			ck_assert_uint_eq(touched2, touched);
	}
	close(sv[0]);
	close(sv[1]);
}
END_TEST

/* The trim swaps glibc's cache for the reserve and back: memory malloc'd
 * before and after it stays usable, and repeated trims are harmless. */
START_TEST(trim_keeps_malloc_working)
{
	enum { N = 2000 };
	char *p[N];

	heap_trim_init();
	for (int i = 0; i < N; i++) {
		p[i] = malloc((size_t)(i % 1100) + 1);
		ck_assert_ptr_nonnull(p[i]);
		memset(p[i], i & 0xff, (size_t)(i % 1100) + 1);
	}
	for (int i = 0; i < N; i += 2)
		free(p[i]);
	heap_trim();
	heap_trim();
	for (int i = 1; i < N; i += 2) {
		ck_assert_int_eq((unsigned char)p[i][0], i & 0xff);
		ck_assert_int_eq((unsigned char)p[i][i % 1100], i & 0xff);
		free(p[i]);
	}
	for (int i = 0; i < N; i++) {
		p[i] = malloc(24 + (size_t)(i % 64) * 16);
		ck_assert_ptr_nonnull(p[i]);
	}
	for (int i = 0; i < N; i++)
		free(p[i]);
	heap_trim();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("heap");
	TCase *tc = tcase_create("heap");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, slots_in_the_region);
	tcase_add_test(tc, cells_reused);
	tcase_add_test(tc, trim_keeps_malloc_working);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
