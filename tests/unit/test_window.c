/*
 * Unit tests for src/upstream/window.c: the receive-window auto-tuning rule
 * as a pure function of the round trip, the time since the last check, the
 * bytes consumed, the current window, the maximum and the budget left.
 */
#include <check.h>
#include <stdint.h>

#include "upstream/window.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)

static uint64_t next(uint64_t rtt_us, uint64_t elapsed_us, uint64_t consumed, uint64_t window,
                     uint64_t max, uint64_t budget)
{
	struct window_in in = {rtt_us, elapsed_us, consumed, window, max, budget};
	return window_next(&in);
}

START_TEST(doubles_when_the_window_limits)
{
	/* a whole window consumed within one round trip: the origin waited */
	ck_assert_uint_eq(next(20000, 20000, 64 * KIB, 64 * KIB, 16 * MIB, 1024 * MIB), 128 * KIB);
	/* just under two round trips still counts */
	ck_assert_uint_eq(next(20000, 39999, 1 * MIB, 1 * MIB, 16 * MIB, 1024 * MIB), 2 * MIB);
}
END_TEST

START_TEST(slow_client_keeps_the_window)
{
	/* the window took two round trips or more to drain: the client sets the pace */
	ck_assert_uint_eq(next(20000, 40000, 64 * KIB, 64 * KIB, 16 * MIB, 1024 * MIB), 64 * KIB);
	ck_assert_uint_eq(next(20000, 5000000, 4 * MIB, 1 * MIB, 16 * MIB, 1024 * MIB), 1 * MIB);
}
END_TEST

START_TEST(needs_half_a_window_and_an_rtt)
{
	/* less than half a window consumed: no check yet */
	ck_assert_uint_eq(next(20000, 100, 32 * KIB - 1, 64 * KIB, 16 * MIB, 1024 * MIB), 64 * KIB);
	/* half a window within one round trip: the rate of a whole one in two */
	ck_assert_uint_eq(next(20000, 19999, 32 * KIB, 64 * KIB, 16 * MIB, 1024 * MIB), 128 * KIB);
	ck_assert_uint_eq(next(20000, 20000, 32 * KIB, 64 * KIB, 16 * MIB, 1024 * MIB), 64 * KIB);
	/* no round-trip sample yet: no growth */
	ck_assert_uint_eq(next(0, 0, 64 * KIB, 64 * KIB, 16 * MIB, 1024 * MIB), 64 * KIB);
}
END_TEST

START_TEST(capped_by_max_and_budget)
{
	ck_assert_uint_eq(next(20000, 1000, 12 * MIB, 12 * MIB, 16 * MIB, 1024 * MIB), 16 * MIB);
	ck_assert_uint_eq(next(20000, 1000, 16 * MIB, 16 * MIB, 16 * MIB, 1024 * MIB), 16 * MIB);
	/* a window already above a lowered maximum never shrinks */
	ck_assert_uint_eq(next(20000, 1000, 32 * MIB, 32 * MIB, 16 * MIB, 1024 * MIB), 32 * MIB);
	/* the budget grants what it has left, then nothing */
	ck_assert_uint_eq(next(20000, 1000, 1 * MIB, 1 * MIB, 16 * MIB, 300 * KIB),
	                  MIB + 300 * KIB);
	ck_assert_uint_eq(next(20000, 1000, 1 * MIB, 1 * MIB, 16 * MIB, 0), 1 * MIB);
}
END_TEST

START_TEST(growth_converges_to_the_drain_rate)
{
	/* a client draining 25 MB/s behind a 20 ms round trip: the window grows
	 * while one window drains in under two round trips, then stays put */
	uint64_t w = 64 * KIB, rtt = 20000, rate = 25000000;
	for (int i = 0; i < 40; i++) {
		uint64_t elapsed = w / 2 * 1000000 / rate;
		w = next(rtt, elapsed, w / 2, w, 16 * MIB, 1024 * MIB);
	}
	ck_assert_uint_le(w, 2 * 2 * rate * rtt / 1000000);
	ck_assert_uint_ge(w, rate * rtt / 1000000);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("window");
	TCase *tc = tcase_create("window");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, doubles_when_the_window_limits);
	tcase_add_test(tc, slow_client_keeps_the_window);
	tcase_add_test(tc, needs_half_a_window_and_an_rtt);
	tcase_add_test(tc, capped_by_max_and_budget);
	tcase_add_test(tc, growth_converges_to_the_drain_rate);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
