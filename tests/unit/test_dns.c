/* Unit tests: /etc/hosts parsing (dns_hosts_parse); queries still
 * undelivered when the resolver is freed (at exit). */
#include <arpa/inet.h>
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns.h"

static char got[4096]; /* "name=addr " for every pair */

static void collect(void *ctx, const char *name, int family, const void *addr)
{
	char a[INET6_ADDRSTRLEN];

	(void)ctx;
	ck_assert_ptr_nonnull(inet_ntop(family, addr, a, sizeof(a)));
	snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s=%s ", name, a);
}

static const char *parse(const char *text, size_t len)
{
	got[0] = '\0';
	dns_hosts_parse(text, len, collect, NULL);
	return got;
}

START_TEST(hosts_lines)
{
	static const char text[] = "127.0.0.1\tlocalhost\n"
	                           "::1 localhost ip6-localhost # the loopback\r\n"
	                           "# 10.0.0.1 commented.out\n"
	                           "\n"
	                           "   10.0.0.5   db.internal\tdb\r\n"
	                           "not-an-ip name.example\n"
	                           "1.2.3.4\n"
	                           "fe80::1%eth0 zoned.example\n"
	                           "5.6.7.8 last.example";

	ck_assert_str_eq(parse(text, strlen(text)),
	                 "localhost=127.0.0.1 localhost=::1 ip6-localhost=::1 db.internal=10.0.0.5 "
	                 "db=10.0.0.5 last.example=5.6.7.8 ");
	/* the length given, not a NUL, ends the text */
	ck_assert_str_eq(parse("9.9.9.9 a.example b.example", 17), "a.example=9.9.9.9 ");
}
END_TEST

/* A line too long to keep is dropped whole: none of it is taken for a line
 * of its own, and names too long for DNS are skipped. */
START_TEST(hosts_limits)
{
	size_t n = DNS_HOSTS_LINE_MAX + 100;
	char *text = malloc(n + 64), *p = text;

	ck_assert_ptr_nonnull(text);
	p += sprintf(p, "1.2.3.4 ");
	memset(p, 'a', DNS_HOSTS_LINE_MAX - 20);
	p += DNS_HOSTS_LINE_MAX - 20;
	p += sprintf(p, " 5.6.7.8 spilled.example\n9.9.9.9 after.example\n");
	ck_assert_str_eq(parse(text, strlen(text)), "after.example=9.9.9.9 ");
	p = text;
	p += sprintf(p, "1.2.3.4 ");
	memset(p, 'b', DNS_HOSTS_NAME_MAX + 1);
	p += DNS_HOSTS_NAME_MAX + 1;
	sprintf(p, " ok.example\n");
	ck_assert_str_eq(parse(text, strlen(text)), "ok.example=1.2.3.4 ");
	free(text);
}
END_TEST

static void never(void *ctx, int err, const char *reason, const struct dns_addrs *addrs)
{
	(void)err;
	(void)reason;
	(void)addrs;
	*(int *)ctx += 1;
}

/* muxd exits with connections being set up: their queries, answered or
 * cancelled but not delivered (the loop no longer runs), go with the
 * resolver (the sanitizer build finds a leak otherwise). */
START_TEST(undelivered_queries_freed)
{
	struct event_base *base = event_base_new();
	struct dns *dns;
	int calls = 0;

	ck_assert_ptr_nonnull(base);
	dns = dns_new(base);
	ck_assert_ptr_nonnull(dns);
	ck_assert_ptr_nonnull(dns_resolve(dns, "127.0.0.1", 80, never, &calls));
	dns_cancel(dns_resolve(dns, "a.localhost", 443, never, &calls));
	ck_assert_ptr_nonnull(dns_resolve(dns, "name.invalid", 443, never, &calls));
	dns_free(dns);
	event_base_free(base);
	ck_assert_int_eq(calls, 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("dns");
	TCase *tc = tcase_create("dns");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, hosts_lines);
	tcase_add_test(tc, hosts_limits);
	tcase_add_test(tc, undelivered_queries_freed);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
