/* Unit tests for src/log.c's rate limit (log_limit_pass): a burst per slot
 * per second, the lines over it counted and named once the second is over,
 * slots independent of each other. */
#include "log.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(burst_then_suppressed)
{
	struct log_limit ll;
	unsigned sup, passed = 0;

	memset(&ll, 0, sizeof(ll));
	for (unsigned i = 0; i < 200; i++) {
		passed += log_limit_pass(&ll, 0, 5000 + i, &sup);
		ck_assert_uint_eq(sup, 0);
	}
	ck_assert_uint_eq(passed, LOG_LIMIT_BURST);
	/* another slot is not held back by the flood */
	ck_assert(log_limit_pass(&ll, 3, 5100, &sup));
	ck_assert_uint_eq(sup, 0);
	/* the next second: the count of the held-back lines, once */
	ck_assert(log_limit_pass(&ll, 0, 6000, &sup));
	ck_assert_uint_eq(sup, 200 - LOG_LIMIT_BURST);
	ck_assert(log_limit_pass(&ll, 0, 6001, &sup));
	ck_assert_uint_eq(sup, 0);
	/* a slot out of range shares the last one */
	ck_assert(log_limit_pass(&ll, 99, 6001, &sup));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("limit");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, burst_then_suppressed);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
