/*
 * Unit tests for src/upstream/flood.c: the per-connection, per-second
 * meter of input that does no work (the HTTP/3 codec's flood limits).
 */
#include <check.h>
#include <stdint.h>

#include "upstream/flood.h"

START_TEST(limit_is_per_second_and_per_kind)
{
	struct flood_meter fm = {0};

	ck_assert(!flood_add(&fm, 5000, 0, 1000, 1000)); /* up to the limit: fine */
	ck_assert(flood_add(&fm, 5999, 0, 1, 1000));     /* one more within the second */
	ck_assert(!flood_add(&fm, 5999, 1, 1000, 1000)); /* another kind counts apart */
	ck_assert(!flood_add(&fm, 6000, 0, 1000, 1000)); /* a new second: counts from 0 */
	ck_assert(!flood_add(&fm, 6000, 1, 1000, 1000)); /* ... every kind */
}
END_TEST

START_TEST(steady_rate_under_the_limit_never_trips)
{
	struct flood_meter fm = {0};

	/* 999 a second for a minute, in steps of 10 ms */
	for (uint64_t t = 0; t < 60000; t += 10)
		ck_assert(!flood_add(&fm, t, 2, (t % 1000) < 990 ? 10 : 9, 999));
}
END_TEST

START_TEST(a_burst_trips_whatever_the_clock_starts_at)
{
	struct flood_meter fm = {0};
	unsigned tripped = 0;

	for (int i = 0; i < 100000; i++)
		tripped += flood_add(&fm, 0, 3, 2, 65536);
	ck_assert_uint_eq(tripped, 100000 - 32768);
	ck_assert(!flood_add(&fm, 0, FLOOD_KINDS, UINT64_MAX, 0)); /* no such kind */
	ck_assert(flood_add(&fm, 0, 3, UINT64_MAX, 65536));        /* saturates, no wrap */
	ck_assert(flood_add(&fm, 1, 3, 1, 65536));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("flood");
	TCase *tc = tcase_create("flood");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, limit_is_per_second_and_per_kind);
	tcase_add_test(tc, steady_rate_under_the_limit_never_trips);
	tcase_add_test(tc, a_burst_trips_whatever_the_clock_starts_at);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
