/*
 * Unit tests for src/transport/eyeballs.c: the happy-eyeballs race driven
 * with fake attempts. Each address of the list has a scripted answer to
 * start() (runs, fails at once, stops the race, or fails from inside
 * start); the test then ends running attempts by hand and checks which
 * attempts started, in which order, which were cancelled, and when the
 * race failed.
 */
#include <check.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "harness.h"
#include "transport/eyeballs.h"

#define LONG_MS 60000 /* a stagger the test never waits for */
#define SHORT_MS 20

enum script { RUN, SKIP, STOP, FAIL_INSIDE };

static struct eyeballs *race;
static enum script script[DNS_MAX_ADDRS];
static size_t started[DNS_MAX_ADDRS], nstarted;
static uint16_t started_port[DNS_MAX_ADDRS];
static bool cancelled[DNS_MAX_ADDRS];
static int nfailed, depth, max_depth, nenter, nleave;
static bool free_on_fail, free_on_leave;

static enum eyeballs_start fake_start(void *ctx, size_t i, const struct sockaddr *addr,
                                      socklen_t len)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;

	ck_assert_ptr_eq(ctx, &race);
	ck_assert_uint_eq(len, sizeof(struct sockaddr_in));
	depth++;
	if (depth > max_depth)
		max_depth = depth;
	started[nstarted] = i;
	started_port[nstarted++] = ntohs(sin->sin_port);
	if (script[i] == FAIL_INSIDE)
		eyeballs_failed(race, i);
	depth--;
	switch (script[i]) {
	case SKIP:
		return EYEBALLS_SKIP;
	case STOP:
		return EYEBALLS_STOP;
	default:
		return EYEBALLS_RUNNING;
	}
}

static void fake_cancel(void *ctx, size_t i)
{
	(void)ctx;
	ck_assert(!cancelled[i]);
	cancelled[i] = true;
}

static void fake_failed(void *ctx)
{
	(void)ctx;
	nfailed++;
	if (free_on_fail) {
		eyeballs_free(race);
		race = NULL;
	}
}

static void fake_enter(void *ctx)
{
	(void)ctx;
	nenter++;
}

static void fake_leave(void *ctx)
{
	(void)ctx;
	nleave++;
	ck_assert_int_eq(nenter, nleave);
	if (free_on_leave) {
		eyeballs_free(race);
		race = NULL;
	}
}

static const struct eyeballs_cbs cbs = {fake_start, fake_cancel, fake_failed, NULL, NULL};
static const struct eyeballs_cbs cbs_hooks = {fake_start, fake_cancel, fake_failed, fake_enter,
                                              fake_leave};

/* n IPv4 addresses, ports 1001, 1002, ... */
static struct dns_addrs addrs(size_t n)
{
	struct dns_addrs a;

	memset(&a, 0, sizeof(a));
	a.n = n;
	for (size_t i = 0; i < n; i++) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a.addr[i];
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)(1001 + i));
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
	return a;
}

static void new_race(uint64_t delay_ms, const struct eyeballs_cbs *c)
{
	race = eyeballs_new(m.base, delay_ms, c, &race);
	ck_assert_ptr_nonnull(race);
}

/* Runs the loop until n attempts started, for at most ms. */
static bool wait_started(size_t n, int ms)
{
	for (int waited = 0; nstarted < n && waited < ms; waited += 5)
		loop_run(5);
	return nstarted >= n;
}

static void setup(void)
{
	muxd_setup(0);
	race = NULL;
	memset(script, 0, sizeof(script));
	memset(cancelled, 0, sizeof(cancelled));
	nstarted = 0;
	nfailed = depth = max_depth = nenter = nleave = 0;
	free_on_fail = free_on_leave = false;
}

static void teardown(void)
{
	eyeballs_free(race);
	race = NULL;
	muxd_teardown();
}

START_TEST(first_starts_alone)
{
	struct dns_addrs a = addrs(3);

	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 1);
	ck_assert_uint_eq(started[0], 0);
	ck_assert_uint_eq(started_port[0], 1001);
	eyeballs_won(race, 0);
	loop_run(50);
	ck_assert_uint_eq(nstarted, 1);
	ck_assert_int_eq(nfailed, 0);
	ck_assert(!cancelled[0]);
}
END_TEST

START_TEST(stagger_then_winner_cancels_others)
{
	struct dns_addrs a = addrs(3);

	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 1); /* the second waits for the stagger */
	ck_assert(wait_started(2, 5000));
	ck_assert_uint_eq(started[1], 1);
	ck_assert_uint_eq(started_port[1], 1002);
	eyeballs_won(race, 1);
	ck_assert(cancelled[0]);
	ck_assert(!cancelled[1] && !cancelled[2]);
	loop_run(5 * SHORT_MS);
	ck_assert_uint_eq(nstarted, 2); /* nothing starts after the winner */
	ck_assert_int_eq(nfailed, 0);
}
END_TEST

START_TEST(stagger_runs_through_the_list)
{
	struct dns_addrs a = addrs(3);

	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert(wait_started(3, 5000));
	for (size_t i = 0; i < 3; i++)
		ck_assert_uint_eq(started[i], i);
	loop_run(5 * SHORT_MS);
	ck_assert_uint_eq(nstarted, 3);
	ck_assert_int_eq(nfailed, 0); /* all still running */
	eyeballs_won(race, 2);
	ck_assert(cancelled[0] && cancelled[1] && !cancelled[2]);
}
END_TEST

START_TEST(failure_starts_next_at_once)
{
	struct dns_addrs a = addrs(3);

	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 1);
	eyeballs_failed(race, 0);
	ck_assert_uint_eq(nstarted, 2);
	ck_assert_uint_eq(started[1], 1);
	eyeballs_failed(race, 0); /* not running any more: ignored */
	ck_assert_uint_eq(nstarted, 2);
	ck_assert_int_eq(nfailed, 0);
}
END_TEST

START_TEST(all_fail_reports_once_after_the_last)
{
	struct dns_addrs a = addrs(3);

	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert(wait_started(3, 5000));
	eyeballs_failed(race, 2);
	eyeballs_failed(race, 0);
	ck_assert_int_eq(nfailed, 0); /* 1 still runs */
	eyeballs_failed(race, 1);
	ck_assert_int_eq(nfailed, 1);
	eyeballs_failed(race, 1);
	loop_run(5 * SHORT_MS);
	ck_assert_int_eq(nfailed, 1);
	ck_assert_uint_eq(nstarted, 3);
}
END_TEST

START_TEST(skip_moves_on_without_waiting)
{
	struct dns_addrs a = addrs(3);

	script[0] = script[1] = SKIP;
	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 3);
	ck_assert_int_eq(nfailed, 0);
	eyeballs_failed(race, 0); /* failed at once: not running */
	ck_assert_int_eq(nfailed, 0);
	eyeballs_failed(race, 2);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(every_start_skips)
{
	struct dns_addrs a = addrs(2);

	script[0] = script[1] = SKIP;
	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 2);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(stop_starts_no_more)
{
	struct dns_addrs a = addrs(3);

	script[1] = STOP;
	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert(wait_started(2, 5000));
	ck_assert_int_eq(nfailed, 0); /* 0 still runs */
	loop_run(5 * SHORT_MS);
	ck_assert_uint_eq(nstarted, 2);
	eyeballs_failed(race, 0);
	ck_assert_int_eq(nfailed, 1);
	ck_assert_uint_eq(nstarted, 2);
}
END_TEST

START_TEST(empty_list_fails_at_once)
{
	struct dns_addrs a = addrs(0);

	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 0);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(failure_inside_start_does_not_recurse)
{
	struct dns_addrs a = addrs(3);

	script[0] = script[1] = FAIL_INSIDE;
	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_uint_eq(nstarted, 3);
	ck_assert_int_eq(max_depth, 1);
	ck_assert_int_eq(nfailed, 0);
	eyeballs_failed(race, 2);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(last_failing_inside_start_fails_the_race)
{
	struct dns_addrs a = addrs(1);

	script[0] = FAIL_INSIDE;
	new_race(LONG_MS, &cbs);
	eyeballs_run(race, &a);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(failed_may_free_the_race)
{
	struct dns_addrs a = addrs(2);

	free_on_fail = true;
	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	eyeballs_failed(race, 0);
	ck_assert_uint_eq(nstarted, 2);
	eyeballs_failed(race, 1); /* frees it */
	ck_assert_ptr_null(race);
	ck_assert_int_eq(nfailed, 1);
}
END_TEST

START_TEST(stopped_race_is_silent)
{
	struct dns_addrs a = addrs(3);

	new_race(SHORT_MS, &cbs);
	eyeballs_run(race, &a);
	eyeballs_stop(race);
	loop_run(5 * SHORT_MS);
	ck_assert_uint_eq(nstarted, 1);
	eyeballs_failed(race, 0);
	ck_assert_uint_eq(nstarted, 1);
	ck_assert_int_eq(nfailed, 0);
}
END_TEST

START_TEST(timer_runs_between_enter_and_leave)
{
	struct dns_addrs a = addrs(2);

	new_race(SHORT_MS, &cbs_hooks);
	eyeballs_run(race, &a);
	ck_assert_int_eq(nenter, 0); /* not for the caller's own calls */
	ck_assert(wait_started(2, 5000));
	ck_assert_int_eq(nenter, 1);
	ck_assert_int_eq(nleave, 1);
}
END_TEST

START_TEST(leave_may_free_the_race)
{
	struct dns_addrs a = addrs(2);

	free_on_leave = true;
	new_race(SHORT_MS, &cbs_hooks);
	eyeballs_run(race, &a);
	ck_assert(wait_started(2, 5000));
	ck_assert_ptr_null(race);
	ck_assert_int_eq(nleave, 1);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("eyeballs");
	TCase *t = tcase_create("eyeballs");

	tcase_add_checked_fixture(t, setup, teardown);
	tcase_add_test(t, first_starts_alone);
	tcase_add_test(t, stagger_then_winner_cancels_others);
	tcase_add_test(t, stagger_runs_through_the_list);
	tcase_add_test(t, failure_starts_next_at_once);
	tcase_add_test(t, all_fail_reports_once_after_the_last);
	tcase_add_test(t, skip_moves_on_without_waiting);
	tcase_add_test(t, every_start_skips);
	tcase_add_test(t, stop_starts_no_more);
	tcase_add_test(t, empty_list_fails_at_once);
	tcase_add_test(t, failure_inside_start_does_not_recurse);
	tcase_add_test(t, last_failing_inside_start_fails_the_race);
	tcase_add_test(t, failed_may_free_the_race);
	tcase_add_test(t, stopped_race_is_silent);
	tcase_add_test(t, timer_runs_between_enter_and_leave);
	tcase_add_test(t, leave_may_free_the_race);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	return run_suite(suite()) == 0 ? 0 : 1;
}
