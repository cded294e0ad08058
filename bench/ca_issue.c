/*
 * bench/ca_issue — what a leaf certificate from the local CA costs: issues
 * N leaves for distinct host names in a fresh state directory and prints the
 * median, p90 and maximum issue time, then the cost of a cache hit. Built by
 * `make bench` (build/bench/ca_issue) and run by bench/run. A measurement,
 * not a test: it never fails on timing.
 *
 *     build/bench/ca_issue [N]        (default 200)
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tls/ca.h"

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double us_between(const struct timespec *t0, const struct timespec *t1)
{
	return (double)(t1->tv_sec - t0->tv_sec) * 1e6 + (double)(t1->tv_nsec - t0->tv_nsec) / 1e3;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 200;
	char dir[] = "/tmp/muxd-bench-ca.XXXXXX", state[64], err[512] = "", cmd[128];
	struct timespec t0, t1;
	struct local_ca *ca;
	double *us, hit;
	int rc = EXIT_FAILURE;

	if (n < 2 || !(us = calloc((size_t)n, sizeof(*us)))) {
		fprintf(stderr, "usage: ca_issue [N >= 2]\n");
		return EXIT_FAILURE;
	}
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		free(us);
		return EXIT_FAILURE;
	}
	snprintf(state, sizeof(state), "%s/state", dir);
	ca = local_ca_open(state, (unsigned)n, err, sizeof(err));
	if (!ca) {
		fprintf(stderr, "ca_issue: %s\n", err);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		char host[64];
		bool issued = false;
		struct local_ca_leaf *l;
		snprintf(host, sizeof(host), "host%d.speed.example", i);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		l = local_ca_leaf_get(ca, host, &issued, err, sizeof(err));
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (!l || !issued) {
			fprintf(stderr, "ca_issue: %s: %s\n", host, l ? "not issued" : err);
			if (l)
				local_ca_leaf_put(l);
			goto out_ca;
		}
		local_ca_leaf_put(l);
		us[i] = us_between(&t0, &t1);
	}
	qsort(us, (size_t)n, sizeof(*us), cmp_double);
	printf("local CA leaf issue (%d leaves): median %.1f us, p90 %.1f us, max %.1f us\n", n,
	       (us[n / 2 - 1 + n % 2] + us[n / 2]) / 2, us[n * 9 / 10], us[n - 1]);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++) {
		char host[64];
		bool issued = false;
		snprintf(host, sizeof(host), "HOST%d.speed.example", i);
		struct local_ca_leaf *l = local_ca_leaf_get(ca, host, &issued, err, sizeof(err));
		if (l)
			local_ca_leaf_put(l);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	hit = us_between(&t0, &t1) / n;
	printf("local CA leaf cache hit: %.2f us\n", hit);
	rc = EXIT_SUCCESS;
out_ca:
	local_ca_free(ca);
out:
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "ca_issue: cannot remove %s\n", dir);
	free(us);
	return rc;
}
