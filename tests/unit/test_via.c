/* Unit tests for src/via.c: the received-by names of Via field values. */
#include "via.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SELF "muxd-abcd1234"

/* The received-by names of a value, joined by '|'. */
struct names {
	char buf[512];
	size_t calls;
	size_t stop_at; /* 1-based call that returns true; 0: never */
};

static bool collect(void *arg, const char *name, size_t len)
{
	struct names *n = arg;
	size_t used = strlen(n->buf);

	ck_assert_uint_gt(len, 0);
	snprintf(n->buf + used, sizeof(n->buf) - used, "%s%.*s", used ? "|" : "", (int)len, name);
	return ++n->calls == n->stop_at;
}

static const char *names_of(const char *value)
{
	static struct names n;

	memset(&n, 0, sizeof(n));
	ck_assert(!via_names(value, strlen(value), collect, &n));
	return n.buf;
}

static bool is_self(void *arg, const char *name, size_t len)
{
	(void)arg;
	return len == strlen(SELF) && strncasecmp(name, SELF, len) == 0;
}

static bool loops(const char *value)
{
	return via_names(value, strlen(value), is_self, NULL);
}

START_TEST(plain_entries)
{
	ck_assert_str_eq(names_of("1.1 a"), "a");
	ck_assert_str_eq(names_of("1.0 fred, 1.1 p.example.net"), "fred|p.example.net");
	ck_assert_str_eq(names_of("HTTP/1.1 GWA"), "GWA");
	ck_assert(loops("1.1 " SELF));
	ck_assert(loops("1.1 a, 1.1 " SELF));
	ck_assert(loops("1.1 MUXD-ABCD1234"));
	ck_assert(!loops("1.1 a, 1.1 b"));
}
END_TEST

START_TEST(comments_with_commas)
{
	/* RFC 9110 §7.6.3: a comment may hold commas; they split nothing */
	ck_assert_str_eq(names_of("1.1 a (x, y), 1.1 " SELF), "a|" SELF);
	ck_assert(loops("1.1 a (x, y), 1.1 " SELF));
	ck_assert_str_eq(names_of("1.0 fred, 1.1 p.example.net (Apache/1.1)"),
	                 "fred|p.example.net");
	/* a name inside a comment is no entry */
	ck_assert(!loops("1.1 a (x, 1.1 " SELF " y)"));
	ck_assert_str_eq(names_of("1.1 a (x, 1.1 " SELF " y), 1.1 b"), "a|b");
	/* nested comments and quoted pairs */
	ck_assert_str_eq(names_of("1.1 a (x (y, 1.1 z) w, 1.1 v), 1.1 b"), "a|b");
	ck_assert_str_eq(names_of("1.1 a (x \\) , 1.1 z), 1.1 b"), "a|b");
	ck_assert_str_eq(names_of("1.1 a (x \\( , 1.1 z), 1.1 b"), "a|b");
	/* an unclosed comment runs to the end of the value */
	ck_assert_str_eq(names_of("1.1 a (x, 1.1 " SELF), "a");
	/* a comment straight after the name */
	ck_assert_str_eq(names_of("1.1 a(x, 1.1 z), 1.1 b"), "a|b");
}
END_TEST

START_TEST(whitespace)
{
	ck_assert(loops("1.1\t" SELF));
	ck_assert(loops("1.1  \t " SELF "  "));
	ck_assert(loops("\t1.1 a,\t1.1\t" SELF "\t(c)"));
	ck_assert_str_eq(names_of(" 1.1   a   (c)  ,  1.1\tb\t"), "a|b");
}
END_TEST

START_TEST(empty_and_partial_entries)
{
	ck_assert_str_eq(names_of(""), "");
	ck_assert_str_eq(names_of(",,, ,\t,"), "");
	ck_assert_str_eq(names_of(", , 1.1 a,, ,1.1 b,"), "a|b");
	ck_assert_str_eq(names_of("1.1"), "");
	ck_assert_str_eq(names_of("1.1 , 1.1 a"), "a");
	ck_assert_str_eq(names_of(SELF ", 1.1 a"), "a"); /* a protocol, not a name */
	ck_assert(!loops(SELF));
	ck_assert_str_eq(names_of("(c) 1.1 z, 1.1 a"), "a");
}
END_TEST

START_TEST(received_by_with_port)
{
	/* host[:port] is reported whole; a pseudonym never has a port */
	ck_assert_str_eq(names_of("1.1 proxy.example:3128, 1.1 [::1]:8080"),
	                 "proxy.example:3128|[::1]:8080");
	ck_assert(!loops("1.1 " SELF ":3128"));
}
END_TEST

START_TEST(prefixes_do_not_match)
{
	ck_assert(!loops("1.1 muxd-abcd123"));
	ck_assert(!loops("1.1 muxd-abcd12345"));
	ck_assert(!loops("1.1 muxd"));
	ck_assert(!loops("1.1 muxd-abcd1234x, 1.1 xmuxd-abcd1234"));
}
END_TEST

START_TEST(stops_at_first_true)
{
	struct names n = {.stop_at = 2};
	const char *v = "1.1 a, 1.1 b, 1.1 c";

	ck_assert(via_names(v, strlen(v), collect, &n));
	ck_assert_uint_eq(n.calls, 2);
	ck_assert_str_eq(n.buf, "a|b");
}
END_TEST

START_TEST(length_bounds_the_value)
{
	const char v[] = "1.1 a, 1.1 " SELF;
	char *heap = malloc(sizeof(v) - 1);

	memcpy(heap, v, sizeof(v) - 1); /* no terminator: ASan sees overreads */
	ck_assert(via_names(heap, sizeof(v) - 1, is_self, NULL));
	ck_assert(!via_names(heap, sizeof(v) - 2, is_self, NULL));
	free(heap);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("via");
	TCase *tc = tcase_create("names");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, plain_entries);
	tcase_add_test(tc, comments_with_commas);
	tcase_add_test(tc, whitespace);
	tcase_add_test(tc, empty_and_partial_entries);
	tcase_add_test(tc, received_by_with_port);
	tcase_add_test(tc, prefixes_do_not_match);
	tcase_add_test(tc, stops_at_first_true);
	tcase_add_test(tc, length_bounds_the_value);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
