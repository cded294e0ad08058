/*
 * Fuzz target for /etc/hosts parsing (dns_hosts_parse, src/dns.c). Checks:
 * every pair has a name of 1 to DNS_HOSTS_NAME_MAX bytes without blanks,
 * '#' or NUL and a valid address; parsing the whole text gives exactly the
 * pairs of parsing it line by line (no state leaks from one line to the
 * next, an overlong line never spills into the following one); and every
 * name and address appear, in that order, on the line they came from.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns.h"
#include "fuzz.h"

#define MAX_PAIRS 512

struct pair {
	char name[DNS_HOSTS_NAME_MAX + 1];
	char addr[INET6_ADDRSTRLEN];
};

struct pairs {
	struct pair *v;
	size_t n;
	const char *line, *line_end; /* when set: the pairs must come from there */
};

static void collect(void *ctx, const char *name, int family, const void *addr)
{
	struct pairs *ps = ctx;
	size_t len = strlen(name);

	CHECK(len > 0 && len <= DNS_HOSTS_NAME_MAX);
	CHECK(strcspn(name, " \t\r\n#") == len);
	CHECK(family == AF_INET || family == AF_INET6);
	if (ps->n == MAX_PAIRS)
		return;
	struct pair *p = &ps->v[ps->n++];
	memcpy(p->name, name, len + 1);
	CHECK(inet_ntop(family, addr, p->addr, sizeof(p->addr)));
	if (ps->line) {
		const char *at = memmem(ps->line, (size_t)(ps->line_end - ps->line), name, len);
		CHECK(at); /* the name is on its line */
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data, *end = text + size;
	static struct pair whole_v[MAX_PAIRS], lines_v[MAX_PAIRS];
	struct pairs whole = {whole_v, 0, NULL, NULL}, lines = {lines_v, 0, NULL, NULL};

	dns_hosts_parse(text, size, collect, &whole);
	for (const char *line = text; line < end;) {
		const char *nl = memchr(line, '\n', (size_t)(end - line));
		const char *stop = nl ? nl + 1 : end;
		lines.line = line;
		lines.line_end = stop;
		dns_hosts_parse(line, (size_t)(stop - line), collect, &lines);
		line = stop;
	}
	CHECK(whole.n == lines.n);
	for (size_t i = 0; i < whole.n; i++)
		CHECK(strcmp(whole.v[i].name, lines.v[i].name) == 0 &&
		      strcmp(whole.v[i].addr, lines.v[i].addr) == 0);
	return 0;
}
