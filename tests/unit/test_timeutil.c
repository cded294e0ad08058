/*
 * Unit tests for struct deadline (src/timeutil.c): a timeout pushed later
 * or cleared without touching libevent's timer heap (event_add is counted by
 * wrapping libevent's), that fires once, never before the time asked, not
 * at all once cleared, and may free itself from its callback.
 */
#include "timeutil.h"

#include <check.h>
#include <dlfcn.h>
#include <event2/event.h>
#include <stdlib.h>
#include <time.h>

/* event_add, counted: this definition wins over libevent's for the calls
 * from timeutil.c (linked into this program) and forwards to it. */
static int n_add;

int event_add(struct event *ev, const struct timeval *tv)
{
	static int (*real)(struct event *, const struct timeval *);

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "event_add");
	n_add++;
	return real(ev, tv);
}

static struct event_base *base;
static int fired;
static uint64_t fired_at;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_fire(void *arg)
{
	(void)arg;
	fired++;
	fired_at = now_ms();
	event_base_loopbreak(base);
}

/* Run the loop until the deadline fires or ms passed. */
static void run(int ms)
{
	struct timeval tv = ms_to_timeval((uint64_t)ms);

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void setup(void)
{
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	fired = 0;
	n_add = 0;
}

static void teardown(void)
{
	event_base_free(base);
}

/* Pushing the deadline later, or clearing it, adds no event; only an
 * earlier deadline than the added event's moves it. */
START_TEST(later_and_clear_add_nothing)
{
	struct deadline d;

	ck_assert(deadline_init(&d, base, on_fire, NULL));
	ck_assert(!deadline_pending(&d));
	deadline_set(&d, 1000);
	ck_assert_int_eq(n_add, 1);
	for (int i = 0; i < 10; i++)
		deadline_set(&d, 2000 + (uint64_t)i);
	deadline_clear(&d);
	ck_assert(!deadline_pending(&d));
	deadline_set(&d, 3000);
	ck_assert(deadline_pending(&d));
	ck_assert_int_eq(n_add, 1);
	deadline_set(&d, 10); /* earlier than the added event */
	ck_assert_int_eq(n_add, 2);
	deadline_free(&d);
}
END_TEST

/* Moved later while its event was added: fires once, at the later time
 * (measured on the precise clock), not at the first. */
static uint64_t moved_at;

static void move_later(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	deadline_set(arg, 80);
	moved_at = now_ms();
}

START_TEST(fires_once_and_not_early)
{
	struct deadline d;
	struct timeval ten = {0, 10000};

	ck_assert(deadline_init(&d, base, on_fire, NULL));
	deadline_set(&d, 30);
	event_base_once(base, -1, EV_TIMEOUT, move_later, &d, &ten);
	run(3000);
	ck_assert_int_eq(fired, 1);
	ck_assert_uint_ge(fired_at, moved_at + 80);
	ck_assert(!deadline_pending(&d));
	deadline_free(&d);
}
END_TEST

/* Cleared: its event still comes, and does nothing. */
START_TEST(cleared_never_fires)
{
	struct deadline d;

	ck_assert(deadline_init(&d, base, on_fire, NULL));
	deadline_set(&d, 20);
	deadline_clear(&d);
	run(200);
	ck_assert_int_eq(fired, 0);
	/* and set again afterwards, it fires */
	deadline_set(&d, 10);
	run(3000);
	ck_assert_int_eq(fired, 1);
	deadline_free(&d);
}
END_TEST

/* The callback frees the deadline (the connection holding it). */
static void free_me(void *arg)
{
	deadline_free(arg);
	free(arg);
	fired++;
	event_base_loopbreak(base);
}

START_TEST(fire_may_free)
{
	struct deadline *d = malloc(sizeof(*d));

	ck_assert_ptr_nonnull(d);
	ck_assert(deadline_init(d, base, free_me, d));
	deadline_set(d, 5);
	run(3000);
	ck_assert_int_eq(fired, 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("timeutil");
	TCase *tc = tcase_create("deadline");
	SRunner *sr;
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, later_and_clear_add_nothing);
	tcase_add_test(tc, fires_once_and_not_early);
	tcase_add_test(tc, cleared_never_fires);
	tcase_add_test(tc, fire_may_free);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
