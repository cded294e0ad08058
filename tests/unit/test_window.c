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

START_TEST(reaches_the_bdp_in_one_check)
{
	/* the first half window arrives in one burst at the path's rate: the
	 * first check opens the window to two round trips of that rate at once
	 * (doubling from 64 KiB would take 9 checks to reach 32 MiB) */
	uint64_t rtt = 100000, rate = 300000000; /* 100 ms, 300 MB/s */
	uint64_t burst = 32 * KIB * 1000000 / rate;
	ck_assert_uint_eq(next(rtt, burst, 32 * KIB, 64 * KIB, 32 * MIB, 1024 * MIB), 32 * MIB);
	/* 100 MB/s behind 20 ms: 2 MB in flight, the window goes to twice that */
	rtt = 20000, rate = 100000000;
	burst = 32 * KIB * 1000000 / rate;
	uint64_t w = next(rtt, burst, 32 * KIB, 64 * KIB, 32 * MIB, 1024 * MIB);
	ck_assert_uint_ge(w, 2 * rate * rtt / 1000000 * 95 / 100);
	ck_assert_uint_le(w, 2 * rate * rtt / 1000000 * 105 / 100);
	/* an immeasurably fast drain (0 us) counts as 1 us, not as no growth */
	ck_assert_uint_eq(next(rtt, 0, 32 * KIB, 64 * KIB, 32 * MIB, 1024 * MIB), 32 * MIB);
}
END_TEST

START_TEST(reaches_the_bdp_of_a_window_limited_path)
{
	/* simulated: origin 150 MB/s behind 100 ms (15 MB in flight); per round
	 * trip the origin sends one window as a burst at its rate; the client
	 * drains at once. Within two round trips the window covers the path. */
	uint64_t rtt = 100000, rate = 150000000, w = 64 * KIB, checks = 0;
	for (int trip = 0; trip < 2; trip++) {
		uint64_t left = w, consumed = 0, elapsed = 0;
		while (left > 0) {
			uint64_t piece = left < 16 * KIB ? left : 16 * KIB;
			left -= piece;
			consumed += piece;
			elapsed += piece * 1000000 / rate;
			if (consumed >= w / 2) {
				w = next(rtt, elapsed, consumed, w, 32 * MIB, 1024 * MIB);
				consumed = elapsed = 0;
				checks++;
			}
		}
	}
	ck_assert_uint_ge(w, rate * rtt / 1000000);
	ck_assert_uint_le(w, 32 * MIB);
	ck_assert_uint_le(checks, 4);
}
END_TEST

START_TEST(slow_drain_never_grows)
{
	/* 25 MB/s behind 100 ms: once the window holds two round trips of that
	 * rate (5 MB), no check grows it, however often */
	uint64_t rtt = 100000, rate = 25000000;
	for (uint64_t w = 5 * 1000 * 1000; w <= 32 * MIB; w *= 2) {
		uint64_t elapsed = w / 2 * 1000000 / rate;
		ck_assert_uint_eq(next(rtt, elapsed, w / 2, w, 32 * MIB, 1024 * MIB), w);
		ck_assert_uint_eq(next(rtt, elapsed * 4, w * 2, w, 32 * MIB, 1024 * MIB), w);
	}
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
	tcase_add_test(tc, reaches_the_bdp_in_one_check);
	tcase_add_test(tc, reaches_the_bdp_of_a_window_limited_path);
	tcase_add_test(tc, slow_drain_never_grows);
	tcase_add_test(tc, growth_converges_to_the_drain_rate);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
