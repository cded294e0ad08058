/*
 * Fuzz target for src/altsvc.c: the Alt-Svc parser (with its invariants),
 * the cache fed with what was parsed, and the file format: arbitrary bytes
 * as a cache file, and save/load round trips. Any broken invariant aborts.
 */
#include "altsvc.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOW ((time_t)1700000000)

static const char *const hosts[] = {"example.com", "[2001:db8::1]", "a.example", "b.example"};

static char dir[64], path[128];

static const char *file_path(void)
{
	if (!path[0]) {
		snprintf(dir, sizeof(dir), "/tmp/fuzz_altsvc.XXXXXX");
		CHECK(mkdtemp(dir));
		snprintf(path, sizeof(path), "%s/altsvc", dir);
	}
	return path;
}

static void cleanup(void)
{
	char tmp[160];

	if (!path[0])
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(path);
	unlink(tmp);
	rmdir(dir);
}

static bool terminated(const char *s, size_t size)
{
	return memchr(s, '\0', size) != NULL;
}

static void check_parsed(const struct altsvc_parsed *p, bool ok)
{
	CHECK(p->n <= ALTSVC_MAX_ALTS);
	CHECK(ok == (p->clear || p->n > 0));
	if (p->clear)
		CHECK(p->n == 0);
	for (size_t i = 0; i < ALTSVC_MAX_ALTS; i++) {
		const struct altsvc_alt *a = &p->alts[i];

		CHECK(terminated(a->alpn, sizeof(a->alpn)) && terminated(a->host, sizeof(a->host)));
		if (i >= p->n) {
			CHECK(a->alpn[0] == '\0' && a->port == 0);
			continue;
		}
		CHECK(a->alpn[0] && a->port > 0 && a->max_age <= 2147483648ULL);
		for (const char *h = a->host; *h; h++)
			CHECK(*h > ' ' && *h < 0x7f && *h != '[' && *h != ']' &&
			      !(*h >= 'A' && *h <= 'Z'));
	}
}

static struct altsvc_alt first_h3(const struct altsvc_parsed *p)
{
	struct altsvc_alt none = {0};

	for (size_t i = 0; i < p->n; i++)
		if (strcmp(p->alts[i].alpn, "h3") == 0 && p->alts[i].max_age > 0)
			return p->alts[i];
	return none;
}

static void on_entry(void *arg, const char *origin, const struct altsvc_alt *alt, time_t expires,
                     time_t broken_until)
{
	size_t *n = arg;

	CHECK(strncmp(origin, "https://", 8) == 0 && strcmp(alt->alpn, "h3") == 0);
	CHECK(alt->port > 0 && expires > NOW && (broken_until == 0 || broken_until > NOW));
	(*n)++;
}

/* Save c, load the file into a fresh cache: the same origins answer alike. */
static void round_trip(struct altsvc_cache *c)
{
	struct altsvc_cache *d = altsvc_cache_new(file_path());
	const char *w = "unset";
	struct altsvc_alt a, b;

	CHECK(altsvc_cache_save(c, NOW) && !altsvc_cache_dirty(c));
	altsvc_cache_load(d, NOW, &w);
	CHECK(w == NULL);
	CHECK(altsvc_cache_count(c, NOW) == altsvc_cache_count(d, NOW));
	for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
		bool x = altsvc_cache_lookup(c, "https", hosts[i], 443, NOW, &a);
		bool y = altsvc_cache_lookup(d, "https", hosts[i], 443, NOW, &b);

		CHECK(x == y);
		if (x)
			CHECK(strcmp(a.host, b.host) == 0 && a.port == b.port &&
			      a.persist == b.persist);
	}
	altsvc_cache_free(d);
}

/* The input as a cache file: never crashes; what loads saves and reloads. */
static void load_bytes(const uint8_t *data, size_t size)
{
	struct altsvc_cache *c = altsvc_cache_new(file_path());
	FILE *f = fopen(file_path(), "wb");
	const char *w = "unset";

	CHECK(c && f);
	CHECK(fwrite(data, 1, size, f) == size);
	CHECK(fclose(f) == 0);
	altsvc_cache_load(c, NOW, &w);
	if (w)
		CHECK(altsvc_cache_count(c, 0) == 0);
	else if (altsvc_cache_count(c, NOW) > 0)
		round_trip(c);
	altsvc_cache_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct altsvc_cache *mem;
	static unsigned long runs;
	struct altsvc_parsed p;
	struct altsvc_alt a, want;
	const char *host = hosts[size % 4];
	bool ok;
	size_t n = 0;

	if (!mem) {
		mem = altsvc_cache_new(NULL);
		atexit(cleanup);
	}
	runs++;
	if (size >= 13 && memcmp(data, "muxd-altsvc 1", 13) == 0) {
		load_bytes(data, size);
		return 0;
	}

	ok = altsvc_parse((const char *)data, size, &p);
	check_parsed(&p, ok);
	if (!ok)
		return 0;

	/* the long-lived cache: the origin answers with the first h3 alternative */
	altsvc_cache_update(mem, "https", host, 443, &p, NOW);
	altsvc_cache_mark_ok(mem, "https", host, 443);
	want = first_h3(&p);
	if (altsvc_cache_lookup(mem, "https", host, 443, NOW, &a)) {
		CHECK(want.port && strcmp(a.alpn, "h3") == 0 && a.port == want.port);
		CHECK(strcmp(a.host, want.host) == 0);
		altsvc_cache_mark_broken(mem, "https", host, 443, NOW);
		CHECK(!altsvc_cache_lookup(mem, "https", host, 443, NOW, &a));
		altsvc_cache_mark_ok(mem, "https", host, 443);
		CHECK(altsvc_cache_lookup(mem, "https", host, 443, NOW, &a));
	} else {
		CHECK(want.port == 0);
	}
	CHECK(altsvc_cache_count(mem, NOW) <= sizeof(hosts) / sizeof(hosts[0]));
	altsvc_cache_foreach(mem, NOW, on_entry, &n);
	CHECK(n <= sizeof(hosts) / sizeof(hosts[0]) * ALTSVC_MAX_ALTS);
	if (size % 2)
		altsvc_cache_mark_broken(mem, "https", host, 443, NOW);
	CHECK(!altsvc_cache_lookup(mem, "https", host, 443, NOW + 2147483648LL + 1, &a));

	/* now and then, through the file (fsync is slow) */
	if (runs % 128 == 0) {
		struct altsvc_cache *c = altsvc_cache_new(file_path());

		altsvc_cache_update(c, "https", hosts[0], 443, &p, NOW);
		for (size_t i = 1; i < sizeof(hosts) / sizeof(hosts[0]); i++)
			if (i <= p.n)
				altsvc_cache_update(c, "https", hosts[i], 443, &p, NOW - 1);
		round_trip(c);
		altsvc_cache_free(c);
	}
	return 0;
}
