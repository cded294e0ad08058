/* Unit tests for src/altsvc.c: Alt-Svc parsing, the cache, persistence. */
#include "altsvc.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define T0 ((time_t)1700000000)

static struct altsvc_parsed ps;

static bool parse(const char *s)
{
	return altsvc_parse(s, strlen(s), &ps);
}

#define ASSERT_ALT(i, alpn_, host_, port_, ma_, persist_)                                          \
	do {                                                                                       \
		ck_assert_str_eq(ps.alts[i].alpn, alpn_);                                          \
		ck_assert_str_eq(ps.alts[i].host, host_);                                          \
		ck_assert_uint_eq(ps.alts[i].port, port_);                                         \
		ck_assert_uint_eq(ps.alts[i].max_age, ma_);                                        \
		ck_assert_int_eq(ps.alts[i].persist, persist_);                                    \
	} while (0)

/* ---- parser ---- */

START_TEST(parse_rfc_examples)
{
	/* RFC 7838 section 3 and 3.1 */
	ck_assert(parse("h2=\":8000\""));
	ck_assert(!ps.clear);
	ck_assert_uint_eq(ps.n, 1);
	ASSERT_ALT(0, "h2", "", 8000, 86400, false);

	ck_assert(parse("h2=\"new.example.org:80\""));
	ck_assert_uint_eq(ps.n, 1);
	ASSERT_ALT(0, "h2", "new.example.org", 80, 86400, false);

	ck_assert(parse("h2=\":443\"; ma=3600"));
	ASSERT_ALT(0, "h2", "", 443, 3600, false);

	ck_assert(parse("h2=\":443\"; ma=2592000; persist=1"));
	ASSERT_ALT(0, "h2", "", 443, 2592000, true);

	ck_assert(parse("h2=\"alt.example.com:8000\", h2=\":443\""));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(0, "h2", "alt.example.com", 8000, 86400, false);
	ASSERT_ALT(1, "h2", "", 443, 86400, false);

	ck_assert(parse("w%3Dx%3Ay=\":443\""));
	ASSERT_ALT(0, "w=x:y", "", 443, 86400, false);
}
END_TEST

START_TEST(parse_h3_forms)
{
	ck_assert(parse("h3=\":443\"; ma=86400, h3-29=\":443\"; ma=86400"));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ASSERT_ALT(1, "h3-29", "", 443, 86400, false);

	ck_assert(parse("h3=\"alt.example.com:8443\""));
	ASSERT_ALT(0, "h3", "alt.example.com", 8443, 86400, false);

	ck_assert(parse("h3=\"[2001:db8::1]:443\""));
	ASSERT_ALT(0, "h3", "2001:db8::1", 443, 86400, false);

	ck_assert(parse("h3=\"ALT.Example.COM:1\""));
	ASSERT_ALT(0, "h3", "alt.example.com", 1, 86400, false);

	ck_assert(parse("h3=\"192.0.2.1:65535\""));
	ASSERT_ALT(0, "h3", "192.0.2.1", 65535, 86400, false);

	/* quoted-pair inside the alt-authority */
	ck_assert(parse("h3=\"\\:443\""));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);

	/* a comma inside a quoted parameter value does not split the list */
	ck_assert(parse("h3=\":443\"; x=\"a,b\", h2=\":444\""));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(1, "h2", "", 444, 86400, false);
}
END_TEST

START_TEST(parse_ma)
{
	ck_assert(parse("h3=\":443\"; ma=\"120\""));
	ASSERT_ALT(0, "h3", "", 443, 120, false);
	ck_assert(parse("h3=\":443\"; ma=0"));
	ASSERT_ALT(0, "h3", "", 443, 0, false);
	ck_assert(parse("h3=\":443\"; MA=60"));
	ASSERT_ALT(0, "h3", "", 443, 60, false);
	/* a huge value saturates at 2^31 */
	ck_assert(parse("h3=\":443\"; ma=99999999999999999999999999"));
	ASSERT_ALT(0, "h3", "", 443, 2147483648ULL, false);
	/* a bad ma is ignored, the alternative kept with the default */
	ck_assert(parse("h3=\":443\"; ma=-5"));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(parse("h3=\":443\"; ma=\"\""));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(parse("h3=\":443\"; ma=1h"));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
}
END_TEST

START_TEST(parse_persist_and_unknown_params)
{
	ck_assert(parse("h3=\":443\"; persist=1"));
	ASSERT_ALT(0, "h3", "", 443, 86400, true);
	ck_assert(parse("h3=\":443\"; persist=\"1\""));
	ASSERT_ALT(0, "h3", "", 443, 86400, true);
	/* values other than 1 are ignored (RFC 7838 3.1) */
	ck_assert(parse("h3=\":443\"; persist=0"));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(parse("h3=\":443\"; persist=yes"));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(parse("h3=\":443\"; foo=bar; ma=10; v=\"quoted; value\"; x=1"));
	ASSERT_ALT(0, "h3", "", 443, 10, false);
	ck_assert(parse("h3=\":443\"; quic=\"1,2\"; ma=5"));
	ck_assert_uint_eq(ps.n, 1);
	ASSERT_ALT(0, "h3", "", 443, 5, false);
}
END_TEST

START_TEST(parse_whitespace)
{
	ck_assert(parse("  h3=\":443\"  "));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(parse("h3=\":443\";ma=7,h2=\":444\""));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(0, "h3", "", 443, 7, false);
	ck_assert(parse("h3=\":443\"\t ;\t ma=7 \t,\t h2=\":444\" \t; persist=1"));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(0, "h3", "", 443, 7, false);
	ASSERT_ALT(1, "h2", "", 444, 86400, true);
	/* bad whitespace around "=" is tolerated */
	ck_assert(parse("h3 = \":443\"; ma = 9"));
	ASSERT_ALT(0, "h3", "", 443, 9, false);
	/* empty list elements are allowed */
	ck_assert(parse(", ,h3=\":443\",, ,"));
	ck_assert_uint_eq(ps.n, 1);
}
END_TEST

START_TEST(parse_clear)
{
	ck_assert(parse("clear"));
	ck_assert(ps.clear);
	ck_assert_uint_eq(ps.n, 0);
	ck_assert(parse(" clear\t"));
	ck_assert(ps.clear);
	/* case-sensitive, and not an element of a list */
	ck_assert(!parse("CLEAR"));
	ck_assert(!ps.clear);
	ck_assert(parse("clear, h3=\":443\""));
	ck_assert(!ps.clear);
	ck_assert_uint_eq(ps.n, 1);
	ck_assert(!parse("clear; ma=1"));
}
END_TEST

START_TEST(parse_skip_bad_alternatives)
{
	/* missing quotes */
	ck_assert(!parse("h3=:443"));
	ck_assert(parse("h3=:443, h3=\":8443\""));
	ck_assert_uint_eq(ps.n, 1);
	ASSERT_ALT(0, "h3", "", 8443, 86400, false);
	/* bad ports skip only that alternative */
	ck_assert(parse("h3=\":0\", h3=\":65536\", h3=\":444\", h3=\":\", h3=\":44x\", h3=\":1\""));
	ck_assert_uint_eq(ps.n, 2);
	ASSERT_ALT(0, "h3", "", 444, 86400, false);
	ASSERT_ALT(1, "h3", "", 1, 86400, false);
	ck_assert(!parse("h3=\"example.com\""));
	ck_assert(!parse("h3=\"example.com:99999\""));
	/* bad hosts */
	ck_assert(!parse("h3=\"2001:db8::1:443\""));
	ck_assert(!parse("h3=\"[2001:db8::1:443\""));
	ck_assert(!parse("h3=\"[not-v6]:443\""));
	ck_assert(!parse("h3=\"[192.0.2.1]:443\""));
	ck_assert(!parse("h3=\"a b:443\""));
	ck_assert(!parse("h3=\"-x:443\""));
	/* bad protocol ids */
	ck_assert(!parse("=\":443\""));
	ck_assert(!parse("h%3=\":443\""));
	ck_assert(!parse("h%zz=\":443\""));
	ck_assert(!parse("h%00=\":443\""));
	ck_assert(!parse("abcdefghijklmnopqrstuvwxyz0123456789=\":443\""));
	/* bad parameters make the alternative malformed */
	ck_assert(!parse("h3=\":443\"; ma, h3=\":444\"; =5, h3=\":445\";, h3=\":446\" ma=1, "
	                 "h3=\":447\"; ma=\"5, h2=\":448\""));
	ck_assert_uint_eq(ps.n, 0);
	ck_assert(parse("h3=\":443\" junk, h2=\":448\""));
	ck_assert_uint_eq(ps.n, 1);
	ASSERT_ALT(0, "h2", "", 448, 86400, false);
	/* unused slots stay zeroed */
	ck_assert_str_eq(ps.alts[1].alpn, "");
}
END_TEST

START_TEST(parse_garbage)
{
	ck_assert(!parse(""));
	ck_assert(!parse("   "));
	ck_assert(!parse(",,,"));
	ck_assert(!parse("garbage"));
	ck_assert(!parse("\"h3\"=\":443\""));
	ck_assert(!parse("h3=\":443"));
	ck_assert(!altsvc_parse("h3=\":443\"\0", 10, &ps));
	ck_assert(!altsvc_parse(NULL, 0, &ps));
	/* the length bounds the input */
	ck_assert(altsvc_parse("h3=\":443\"XYZ", 9, &ps));
	ASSERT_ALT(0, "h3", "", 443, 86400, false);
	ck_assert(!altsvc_parse("h3=\":443\"", 8, &ps));
}
END_TEST

START_TEST(parse_many)
{
	char buf[1024] = "";

	for (int i = 1; i <= 12; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%sh3=\":%d\"",
		         i > 1 ? ", " : "", i);
	ck_assert(parse(buf));
	ck_assert_uint_eq(ps.n, ALTSVC_MAX_ALTS);
	ck_assert_uint_eq(ps.alts[ALTSVC_MAX_ALTS - 1].port, ALTSVC_MAX_ALTS);
}
END_TEST

/* ---- cache ---- */

static struct altsvc_cache *cache;

static void cache_setup(void)
{
	cache = altsvc_cache_new(NULL);
	ck_assert_ptr_nonnull(cache);
}

static void cache_teardown(void)
{
	altsvc_cache_free(cache);
	cache = NULL;
}

static void update(struct altsvc_cache *c, const char *host, const char *value, time_t now)
{
	ck_assert(parse(value));
	altsvc_cache_update(c, "https", host, 443, &ps, now);
}

static bool lookup(struct altsvc_cache *c, const char *host, time_t now, struct altsvc_alt *out)
{
	return altsvc_cache_lookup(c, "https", host, 443, now, out);
}

START_TEST(cache_update_lookup)
{
	struct altsvc_alt a;

	ck_assert(!lookup(cache, "example.com", T0, &a));
	update(cache, "example.com",
	       "h2=\":443\", h3-29=\":443\", h3=\"alt.example.net:8443\"; ma=60", T0);
	ck_assert(lookup(cache, "example.com", T0, &a));
	ck_assert_str_eq(a.alpn, "h3");
	ck_assert_str_eq(a.host, "alt.example.net");
	ck_assert_uint_eq(a.port, 8443);
	ck_assert_uint_eq(altsvc_cache_count(cache, T0), 1);
	/* the origin is scheme, host and port; hosts are case-insensitive */
	ck_assert(lookup(cache, "EXAMPLE.com", T0, NULL));
	ck_assert(!altsvc_cache_lookup(cache, "http", "example.com", 443, T0, &a));
	ck_assert(!altsvc_cache_lookup(cache, "https", "example.com", 8443, T0, &a));
	ck_assert(!lookup(cache, "other.com", T0, &a));
	/* a header without h3 does not create an entry */
	update(cache, "other.com", "h2=\":443\"", T0);
	ck_assert(!lookup(cache, "other.com", T0, &a));
	ck_assert_uint_eq(altsvc_cache_count(cache, T0), 1);
	/* IPv6 origins, with or without brackets */
	update(cache, "[2001:db8::2]", "h3=\"[2001:db8::1]:443\"", T0);
	ck_assert(lookup(cache, "2001:db8::2", T0, &a));
	ck_assert_str_eq(a.host, "2001:db8::1");
	ck_assert_uint_eq(altsvc_cache_count(cache, T0), 2);
}
END_TEST

START_TEST(cache_replace_and_clear)
{
	struct altsvc_alt a;

	update(cache, "example.com", "h3=\":443\"", T0);
	update(cache, "example.com", "h3=\":8443\", h3=\":9443\"", T0 + 10);
	ck_assert(lookup(cache, "example.com", T0 + 10, &a));
	ck_assert_uint_eq(a.port, 8443);
	/* a header with no h3 alternative removes the entry */
	update(cache, "example.com", "h2=\":443\"", T0 + 20);
	ck_assert(!lookup(cache, "example.com", T0 + 20, &a));
	ck_assert_uint_eq(altsvc_cache_count(cache, T0 + 20), 0);
	update(cache, "example.com", "h3=\":443\"", T0 + 30);
	ck_assert(lookup(cache, "example.com", T0 + 30, &a));
	update(cache, "example.com", "clear", T0 + 40);
	ck_assert(!lookup(cache, "example.com", T0 + 40, &a));
	ck_assert_uint_eq(altsvc_cache_count(cache, T0 + 40), 0);
	/* clearing an unknown origin is harmless */
	update(cache, "unknown.example", "clear", T0 + 40);
	/* ma=0 alone means nothing usable */
	update(cache, "example.com", "h3=\":443\"; ma=0", T0 + 50);
	ck_assert(!lookup(cache, "example.com", T0 + 50, &a));
}
END_TEST

START_TEST(cache_expiry)
{
	struct altsvc_alt a;

	update(cache, "example.com", "h3=\":1111\"; ma=60, h3=\":2222\"; ma=600, h3=\":3333\"", T0);
	ck_assert(lookup(cache, "example.com", T0 + 59, &a));
	ck_assert_uint_eq(a.port, 1111);
	ck_assert(lookup(cache, "example.com", T0 + 60, &a));
	ck_assert_uint_eq(a.port, 2222);
	ck_assert(lookup(cache, "example.com", T0 + 600, &a));
	ck_assert_uint_eq(a.port, 3333);
	ck_assert_uint_eq(altsvc_cache_count(cache, T0 + 86399), 1);
	ck_assert(!lookup(cache, "example.com", T0 + 86400, &a));
	ck_assert_uint_eq(altsvc_cache_count(cache, T0 + 86400), 0);
}
END_TEST

START_TEST(cache_broken_backoff)
{
	static const time_t want[] = {300,   600,   1200,   2400,   4800,   9600,  19200,
	                              38400, 76800, 153600, 172800, 172800, 172800};
	time_t now = T0;

	update(cache, "example.com", "h3=\":443\"; ma=2147483648", now);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		altsvc_cache_mark_broken(cache, "https", "example.com", 443, now);
		ck_assert(!lookup(cache, "example.com", now, NULL));
		ck_assert(!lookup(cache, "example.com", now + want[i] - 1, NULL));
		ck_assert(lookup(cache, "example.com", now + want[i], NULL));
		/* the next failure happens once the backoff ran out */
		now += want[i];
	}
	for (int i = 0; i < 100; i++)
		altsvc_cache_mark_broken(cache, "https", "example.com", 443, now);
	ck_assert(!lookup(cache, "example.com", now + 172799, NULL));
	ck_assert(lookup(cache, "example.com", now + 172800, NULL));
	/* count still counts a broken origin; a new header keeps the backoff */
	ck_assert_uint_eq(altsvc_cache_count(cache, now), 1);
	update(cache, "example.com", "h3=\":443\"", now + 1);
	ck_assert(!lookup(cache, "example.com", now + 1, NULL));
	/* marking an unknown origin is harmless */
	altsvc_cache_mark_broken(cache, "https", "nowhere.example", 443, now);
	altsvc_cache_mark_ok(cache, "https", "nowhere.example", 443);
}
END_TEST

START_TEST(cache_mark_ok_resets)
{
	update(cache, "example.com", "h3=\":443\"", T0);
	altsvc_cache_mark_broken(cache, "https", "example.com", 443, T0);
	altsvc_cache_mark_broken(cache, "https", "example.com", 443, T0);
	altsvc_cache_mark_broken(cache, "https", "example.com", 443, T0);
	ck_assert(!lookup(cache, "example.com", T0 + 1199, NULL));
	altsvc_cache_mark_ok(cache, "https", "example.com", 443);
	ck_assert(lookup(cache, "example.com", T0, NULL));
	/* the failure count starts over */
	altsvc_cache_mark_broken(cache, "https", "example.com", 443, T0);
	ck_assert(!lookup(cache, "example.com", T0 + 299, NULL));
	ck_assert(lookup(cache, "example.com", T0 + 300, NULL));
}
END_TEST

struct seen {
	int n;
	char origin[300];
	struct altsvc_alt alt;
	time_t expires, broken_until;
};

static void on_entry(void *arg, const char *origin, const struct altsvc_alt *alt, time_t expires,
                     time_t broken_until)
{
	struct seen *s = arg;

	s->n++;
	snprintf(s->origin, sizeof(s->origin), "%s", origin);
	s->alt = *alt;
	s->expires = expires;
	s->broken_until = broken_until;
}

START_TEST(cache_foreach)
{
	struct seen s = {0};

	update(cache, "Example.COM", "h3=\":443\"; ma=100, h3=\":444\"; ma=10", T0);
	altsvc_cache_mark_broken(cache, "https", "example.com", 443, T0);
	altsvc_cache_foreach(cache, T0 + 50, on_entry, &s);
	ck_assert_int_eq(s.n, 1);
	ck_assert_str_eq(s.origin, "https://example.com:443");
	ck_assert_uint_eq(s.alt.port, 443);
	ck_assert_int_eq(s.expires, T0 + 100);
	ck_assert_int_eq(s.broken_until, T0 + 300);
	memset(&s, 0, sizeof(s));
	altsvc_cache_foreach(cache, T0, on_entry, &s);
	ck_assert_int_eq(s.n, 2);
	memset(&s, 0, sizeof(s));
	update(cache, "::1", "h3=\":443\"", T0);
	altsvc_cache_foreach(cache, T0 + 400, on_entry, &s);
	ck_assert_int_eq(s.n, 1);
	ck_assert_str_eq(s.origin, "https://[::1]:443");
	ck_assert_int_eq(s.broken_until, 0);
}
END_TEST

START_TEST(cache_bad_origins_ignored)
{
	update(cache, "", "h3=\":443\"", T0);
	update(cache, "a b", "h3=\":443\"", T0);
	update(cache, "a/b", "h3=\":443\"", T0);
	ck_assert(parse("h3=\":443\""));
	altsvc_cache_update(cache, "https", "example.com", 0, &ps, T0);
	altsvc_cache_update(cache, "", "example.com", 443, &ps, T0);
	altsvc_cache_update(cache, "ht tps", "example.com", 443, &ps, T0);
	altsvc_cache_update(cache, "https", "example.com", 443, NULL, T0);
	ck_assert_uint_eq(altsvc_cache_count(cache, T0), 0);
	/* a hand-made alternative with a host that could not be stored */
	snprintf(ps.alts[0].host, sizeof(ps.alts[0].host), "bad host");
	altsvc_cache_update(cache, "https", "example.com", 443, &ps, T0);
	ck_assert_uint_eq(altsvc_cache_count(cache, T0), 0);
}
END_TEST

START_TEST(cache_bounded)
{
	char host[64];

	for (int i = 0; i < 5000; i++) {
		snprintf(host, sizeof(host), "h%d.example", i);
		update(cache, host, i == 0 ? "h3=\":443\"; ma=1" : "h3=\":443\"", T0);
	}
	ck_assert_uint_le(altsvc_cache_count(cache, T0), 4096);
	ck_assert_uint_ge(altsvc_cache_count(cache, T0), 4000);
	/* the soonest-expiring origin went first; the newest is there */
	ck_assert(!lookup(cache, "h0.example", T0, NULL));
	ck_assert(lookup(cache, "h4999.example", T0, NULL));
}
END_TEST

START_TEST(cache_dirty)
{
	struct altsvc_cache *c = altsvc_cache_new("/nonexistent-dir/x");

	ck_assert(!altsvc_cache_dirty(cache)); /* memory only: never dirty */
	update(cache, "example.com", "h3=\":443\"", T0);
	ck_assert(!altsvc_cache_dirty(cache));
	ck_assert(altsvc_cache_save(cache, T0));

	ck_assert(!altsvc_cache_dirty(c));
	update(c, "example.com", "h3=\":443\"", T0);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(!altsvc_cache_save(c, T0)); /* cannot write there */
	ck_assert(altsvc_cache_dirty(c));
	altsvc_cache_free(c);
}
END_TEST

/* ---- persistence ---- */

static char dir[64], path[128], tmppath[160];

static void file_setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/test_altsvc.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/altsvc", dir);
	snprintf(tmppath, sizeof(tmppath), "%s.tmp", path);
}

static void file_teardown(void)
{
	unlink(path);
	unlink(tmppath);
	rmdir(dir);
}

static void write_file(const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

static void fill(struct altsvc_cache *c)
{
	update(c, "example.com", "h2=\":443\", h3=\":443\"; ma=3600; persist=1, h3=\":8443\"", T0);
	update(c, "v6.example", "h3=\"[2001:db8::1]:4433\"; ma=100", T0);
	update(c, "alt.example", "h3=\"other.example.net:443\"; ma=50", T0);
	ck_assert(parse("h3=\":443\""));
	altsvc_cache_update(c, "http", "[::1]", 8080, &ps, T0);
}

static void check_filled(struct altsvc_cache *c, time_t now)
{
	struct altsvc_alt a;

	ck_assert(lookup(c, "example.com", now, &a));
	ck_assert_str_eq(a.alpn, "h3");
	ck_assert_str_eq(a.host, "");
	ck_assert_uint_eq(a.port, 443);
	ck_assert(a.persist);
	ck_assert(lookup(c, "example.com", T0 + 3600, &a));
	ck_assert_uint_eq(a.port, 8443);
	ck_assert(!a.persist);
	ck_assert(lookup(c, "v6.example", now, &a));
	ck_assert_str_eq(a.host, "2001:db8::1");
	ck_assert_uint_eq(a.port, 4433);
	ck_assert(lookup(c, "alt.example", now, &a));
	ck_assert_str_eq(a.host, "other.example.net");
	ck_assert(altsvc_cache_lookup(c, "http", "::1", 8080, now, &a));
	ck_assert_uint_eq(a.port, 443);
	ck_assert(!lookup(c, "alt.example", T0 + 50, &a));
	ck_assert_uint_eq(altsvc_cache_count(c, now), 4);
}

START_TEST(persist_round_trip)
{
	struct altsvc_cache *c = altsvc_cache_new(path), *d;
	const char *w = "unset";
	struct stat st;

	altsvc_cache_load(c, T0, &w); /* no file yet: fine */
	ck_assert_ptr_null(w);
	fill(c);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0));
	ck_assert(!altsvc_cache_dirty(c));
	ck_assert_int_eq(stat(tmppath, &st), -1);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);

	d = altsvc_cache_new(path);
	w = "unset";
	altsvc_cache_load(d, T0 + 1, &w);
	ck_assert_ptr_null(w);
	ck_assert(!altsvc_cache_dirty(d));
	check_filled(d, T0 + 1);

	/* a second save/load cycle of what was loaded gives the same */
	ck_assert(altsvc_cache_save(d, T0 + 2));
	ck_assert_int_eq(stat(tmppath, &st), -1);
	altsvc_cache_free(d);
	d = altsvc_cache_new(path);
	altsvc_cache_load(d, T0 + 3, &w);
	ck_assert_ptr_null(w);
	check_filled(d, T0 + 3);
	altsvc_cache_free(d);
	altsvc_cache_free(c);
}
END_TEST

START_TEST(persist_expired_dropped)
{
	struct altsvc_cache *c = altsvc_cache_new(path), *d;
	const char *w;
	struct altsvc_alt a;

	fill(c);
	ck_assert(altsvc_cache_save(c, T0));
	d = altsvc_cache_new(path);
	altsvc_cache_load(d, T0 + 100, &w);
	ck_assert_ptr_null(w);
	ck_assert(!lookup(d, "v6.example", T0 - 1000, &a)); /* dropped, not just expired */
	ck_assert(!lookup(d, "alt.example", T0 - 1000, &a));
	ck_assert(lookup(d, "example.com", T0 + 100, &a));
	ck_assert_uint_eq(altsvc_cache_count(d, T0 + 100), 2);
	altsvc_cache_free(d);
	/* save leaves out what has expired */
	ck_assert(altsvc_cache_save(c, T0 + 100));
	d = altsvc_cache_new(path);
	altsvc_cache_load(d, T0 - 1000, &w);
	ck_assert_ptr_null(w);
	ck_assert_uint_eq(altsvc_cache_count(d, T0 - 1000), 2);
	altsvc_cache_free(d);
	altsvc_cache_free(c);
}
END_TEST

static void expect_ignored(const char *text)
{
	struct altsvc_cache *c = altsvc_cache_new(path);
	const char *w = NULL;

	write_file(text);
	altsvc_cache_load(c, T0, &w);
	ck_assert_msg(w != NULL, "no warning for %s", text);
	ck_assert_uint_eq(altsvc_cache_count(c, T0 - 1000000), 0);
	altsvc_cache_free(c);
}

#define GOOD "https example.com 443 h3 - 443 1800000000 0\n"

START_TEST(persist_corrupted)
{
	struct altsvc_cache *c = altsvc_cache_new(path);
	const char *w = "unset";
	char big[2048];

	/* the good file, for reference */
	write_file("muxd-altsvc 1\n" GOOD);
	altsvc_cache_load(c, T0, &w);
	ck_assert_ptr_null(w);
	ck_assert_uint_eq(altsvc_cache_count(c, T0), 1);
	altsvc_cache_free(c);

	expect_ignored("");
	expect_ignored("garbage\n");
	expect_ignored("\x01\x02\xff\xfe");
	expect_ignored("muxd-altsvc 2\n" GOOD);
	expect_ignored("muxd-altsvc 1"); /* header without newline */
	expect_ignored(GOOD);
	expect_ignored("muxd-altsvc 1\n" GOOD "https example.com 443 h3 - 443 18"); /* truncated */
	expect_ignored("muxd-altsvc 1\n" GOOD "https example.com 443 h3\n");
	expect_ignored("muxd-altsvc 1\n" GOOD "garbage\n");
	expect_ignored("muxd-altsvc 1\n" GOOD "\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 443 1800000000 0 extra\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3  443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 0 h3 - 443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 70000 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h2 - 443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 443 -5 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 443 99999999999999999999 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 443 1800000000 2\n");
	expect_ignored("muxd-altsvc 1\nhttps Example.com 443 h3 - 443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 [::1] 443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 -bad 443 1800000000 0\n");
	expect_ignored("muxd-altsvc 1\nhttps example.com 443 h3 - 443 1800000000 0\r\n");
	for (int i = 0; i < 9; i++) /* more alternatives than an origin may have */
		snprintf(big + i * 44, sizeof(big) - (size_t)i * 44, "%s", GOOD);
	{
		char text[2100];

		snprintf(text, sizeof(text), "muxd-altsvc 1\n%s", big);
		expect_ignored(text);
	}
	/* an overlong line */
	memset(big, 'a', sizeof(big) - 2);
	big[sizeof(big) - 2] = '\n';
	big[sizeof(big) - 1] = '\0';
	{
		char text[2100];

		snprintf(text, sizeof(text), "muxd-altsvc 1\n%s", big);
		expect_ignored(text);
	}
}
END_TEST

START_TEST(persist_unreadable_and_unwritable)
{
	struct altsvc_cache *c;
	const char *w = NULL;

	/* a directory where the file should be */
	ck_assert_int_eq(mkdir(path, 0700), 0);
	c = altsvc_cache_new(path);
	altsvc_cache_load(c, T0, &w);
	ck_assert_ptr_nonnull(w);
	fill(c);
	ck_assert(!altsvc_cache_save(c, T0));
	ck_assert_int_eq(access(tmppath, F_OK), -1);
	ck_assert_int_eq(rmdir(path), 0);
	altsvc_cache_free(c);
}
END_TEST

START_TEST(persist_load_keeps_newer_memory)
{
	struct altsvc_cache *c = altsvc_cache_new(path);
	const char *w;
	struct altsvc_alt a;

	write_file("muxd-altsvc 1\n" GOOD
	           "https other.example 443 h3 alt.example 9443 1800000000 1\n");
	update(c, "example.com", "h3=\":7443\"", T0);
	altsvc_cache_load(c, T0, &w);
	ck_assert_ptr_null(w);
	ck_assert(lookup(c, "example.com", T0, &a));
	ck_assert_uint_eq(a.port, 7443);
	ck_assert(lookup(c, "other.example", T0, &a));
	ck_assert_str_eq(a.host, "alt.example");
	ck_assert_uint_eq(a.port, 9443);
	ck_assert(a.persist);
	altsvc_cache_load(c, T0, NULL); /* a NULL warning pointer is allowed */
	altsvc_cache_free(c);
}
END_TEST

START_TEST(persist_dirty_only_on_change)
{
	struct altsvc_cache *c = altsvc_cache_new(path);

	update(c, "example.com", "h3=\":443\"", T0);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0));
	ck_assert(!altsvc_cache_dirty(c));
	/* the same header a little later: nothing worth writing */
	update(c, "example.com", "h3=\":443\"", T0 + 10);
	ck_assert(!altsvc_cache_dirty(c));
	altsvc_cache_mark_broken(c, "https", "example.com", 443, T0 + 10);
	ck_assert(!altsvc_cache_dirty(c));
	update(c, "example.com", "h3=\":443\"", T0 + 599);
	ck_assert(!altsvc_cache_dirty(c));
	/* an expiry moved by ten minutes or more since it was last noted */
	update(c, "example.com", "h3=\":443\"", T0 + 600);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0 + 600));
	/* another alternative, another parameter, or a removal */
	update(c, "example.com", "h3=\":443\"; persist=1", T0 + 600);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0 + 600));
	update(c, "example.com", "h3=\":443\"; persist=1, h3=\":8443\"", T0 + 600);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0 + 600));
	update(c, "example.com", "clear", T0 + 600);
	ck_assert(altsvc_cache_dirty(c));
	ck_assert(altsvc_cache_save(c, T0 + 600));
	update(c, "example.com", "clear", T0 + 600);
	ck_assert(!altsvc_cache_dirty(c));
	altsvc_cache_free(c);
}
END_TEST

static Suite *altsvc_suite(void)
{
	Suite *s = suite_create("altsvc");
	TCase *t;

#define ADD(tc, fn) tcase_add_test(tc, fn)
	t = tcase_create("parse");
	ADD(t, parse_rfc_examples);
	ADD(t, parse_h3_forms);
	ADD(t, parse_ma);
	ADD(t, parse_persist_and_unknown_params);
	ADD(t, parse_whitespace);
	ADD(t, parse_clear);
	ADD(t, parse_skip_bad_alternatives);
	ADD(t, parse_garbage);
	ADD(t, parse_many);
	suite_add_tcase(s, t);

	t = tcase_create("cache");
	tcase_add_checked_fixture(t, cache_setup, cache_teardown);
	ADD(t, cache_update_lookup);
	ADD(t, cache_replace_and_clear);
	ADD(t, cache_expiry);
	ADD(t, cache_broken_backoff);
	ADD(t, cache_mark_ok_resets);
	ADD(t, cache_foreach);
	ADD(t, cache_bad_origins_ignored);
	ADD(t, cache_bounded);
	ADD(t, cache_dirty);
	suite_add_tcase(s, t);

	t = tcase_create("persist");
	tcase_add_checked_fixture(t, file_setup, file_teardown);
	ADD(t, persist_round_trip);
	ADD(t, persist_expired_dropped);
	ADD(t, persist_corrupted);
	ADD(t, persist_unreadable_and_unwritable);
	ADD(t, persist_load_keeps_newer_memory);
	ADD(t, persist_dirty_only_on_change);
	suite_add_tcase(s, t);
#undef ADD
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(altsvc_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
