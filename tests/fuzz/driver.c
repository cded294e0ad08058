/*
 * A plain fuzz driver for any tests/fuzz/fuzz_*.c target without libFuzzer:
 *
 *	driver N DIR [SEED]
 *
 * runs every file in DIR (when it exists) through LLVMFuzzerTestOneInput,
 * then N inputs made by mutating corpus entries (bit flips, byte changes,
 * insertions, deletions, duplications, splices, truncation) with a fixed
 * pseudo-random seed, so runs are reproducible. Each input is passed in an
 * exactly sized heap buffer so that AddressSanitizer sees overreads. When the
 * target aborts, the input is written to ./crash-driver.bin.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX (96 * 1024)

struct input {
	uint8_t *data;
	size_t len;
};

static struct input *corpus;
static size_t ncorpus;
static const uint8_t *cur_data;
static size_t cur_len;
static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t below(size_t n)
{
	return n ? (size_t)(rng() % n) : 0;
}

static void on_crash(int sig)
{
	int fd = open("crash-driver.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	static const char msg[] = "driver: crashing input written to crash-driver.bin\n";

	if (fd >= 0) {
		if (write(fd, cur_data, cur_len) < 0 || write(2, msg, sizeof(msg) - 1) < 0)
			(void)0;
		close(fd);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void run(const uint8_t *data, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);

	if (!copy)
		abort();
	memcpy(copy, data, len);
	cur_data = copy;
	cur_len = len;
	LLVMFuzzerTestOneInput(copy, len);
	cur_data = NULL;
	cur_len = 0;
	free(copy);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void add_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	struct input in = {malloc(INPUT_MAX), 0};

	if (!f || !in.data) {
		perror(path);
		exit(2);
	}
	in.len = fread(in.data, 1, INPUT_MAX, f);
	fclose(f);
	corpus = realloc(corpus, (ncorpus + 1) * sizeof(*corpus));
	if (!corpus)
		abort();
	corpus[ncorpus++] = in;
}

/* Load DIR's regular files in name order (readdir order is not stable). */
static void load_corpus(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char **names = NULL, path[4096];
	size_t n = 0;
	struct stat st;

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		names = realloc(names, (n + 1) * sizeof(*names));
		if (!names || !(names[n++] = strdup(e->d_name)))
			abort();
	}
	closedir(d);
	qsort(names, n, sizeof(*names), by_name);
	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			add_file(path);
		free(names[i]);
	}
	free(names);
}

/* Apply one random mutation to buf[0..*len) (capacity INPUT_MAX). */
static void mutate_once(uint8_t *buf, size_t *len)
{
	static const uint8_t special[] = {0,   '\r', '\n', ' ',  '\t', ':',  ';', ',', '"',
	                                  '0', '9',  'f',  0x7f, 0x80, 0xff, '/', '[', ']'};
	size_t n = *len, pos = below(n + 1), k;
	const struct input *other = ncorpus ? &corpus[below(ncorpus)] : NULL;

	switch (below(9)) {
	case 0: /* flip a bit */
		if (n)
			buf[below(n)] ^= (uint8_t)(1u << below(8));
		break;
	case 1: /* set a byte to a random or an interesting value */
		if (n)
			buf[below(n)] = below(2) ? (uint8_t)rng() : special[below(sizeof(special))];
		break;
	case 2: /* insert a few bytes */
		k = 1 + below(4);
		if (n + k > INPUT_MAX)
			break;
		memmove(buf + pos + k, buf + pos, n - pos);
		for (size_t i = 0; i < k; i++)
			buf[pos + i] = below(2) ? (uint8_t)rng() : special[below(sizeof(special))];
		*len = n + k;
		break;
	case 3: /* delete a range */
		k = below(n - pos < 16 ? n - pos + 1 : 16);
		memmove(buf + pos, buf + pos + k, n - pos - k);
		*len = n - k;
		break;
	case 4: /* duplicate a range in place */
		k = below(n - pos < 64 ? n - pos + 1 : 64);
		if (n + k > INPUT_MAX)
			break;
		memmove(buf + pos + k, buf + pos, n - pos);
		*len = n + k;
		break;
	case 5: /* insert a slice of another entry */
		if (other && other->len) {
			size_t from = below(other->len);

			k = 1 + below(other->len - from < 32 ? other->len - from : 32);
			if (n + k > INPUT_MAX)
				break;
			memmove(buf + pos + k, buf + pos, n - pos);
			memcpy(buf + pos, other->data + from, k);
			*len = n + k;
		}
		break;
	case 6: /* splice: our prefix, then the suffix of another entry */
		if (other) {
			size_t from = below(other->len + 1);

			k = other->len - from;
			if (pos + k > INPUT_MAX)
				break;
			memcpy(buf + pos, other->data + from, k);
			*len = pos + k;
		}
		break;
	case 7: /* truncate, or rarely repeat a slice many times (grows big inputs) */
		if (below(16)) {
			*len = pos;
			break;
		}
		k = below(n - pos < 64 ? n - pos + 1 : 64);
		for (size_t r = below(2048); k && r > 0 && n + k <= INPUT_MAX; r--) {
			memmove(buf + pos + k, buf + pos, n - pos);
			n += k;
		}
		*len = n;
		break;
	default: /* overwrite a byte with an ASCII digit or hex letter */
		if (n)
			buf[below(n)] = (uint8_t) "0123456789abcdefABCDEF"[below(22)];
		break;
	}
}

int main(int argc, char **argv)
{
	unsigned long iterations;
	size_t len = 0;
	uint8_t *buf = malloc(INPUT_MAX);
	struct timespec t0, t1;
	const char *dir;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s ITERATIONS CORPUS_DIR [SEED]\n", argv[0]);
		return 2;
	}
	if (!buf)
		return 1;
	iterations = strtoul(argv[1], NULL, 10);
	dir = argv[2];
	rng_state = argc == 4 ? strtoull(argv[3], NULL, 0) : 0x6d7578642d66757aULL;
	if (!rng_state)
		rng_state = 1;
	signal(SIGABRT, on_crash);
	signal(SIGSEGV, on_crash);
	clock_gettime(CLOCK_MONOTONIC, &t0);

	load_corpus(dir);
	for (size_t i = 0; i < ncorpus; i++)
		run(corpus[i].data, corpus[i].len);
	for (unsigned long it = 0; it < iterations; it++) {
		size_t rounds = 1 + below(4);

		/* mostly start afresh from a corpus entry; sometimes keep walking */
		if (ncorpus && (it % 8 == 0 || below(2))) {
			const struct input *base = &corpus[below(ncorpus)];

			memcpy(buf, base->data, base->len);
			len = base->len;
		}
		for (size_t r = 0; r < rounds; r++)
			mutate_once(buf, &len);
		run(buf, len);
	}

	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%s: %zu corpus inputs, %lu mutated inputs, %.2f s, no failures\n", argv[0], ncorpus,
	       iterations, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	for (size_t i = 0; i < ncorpus; i++)
		free(corpus[i].data);
	free(corpus);
	free(buf);
	return 0;
}
