/*
 * Fuzz target for the pure parts of `muxd status` (src/admin_client.c's
 * response parser, src/status_cmd.c's renderer): the input as the
 * response to its GET (whole, and fed in pieces at split points
 * taken from the input, with a limit that is sometimes smaller than the
 * input: both must agree), and as a /status.json document (the input itself
 * and the body the parser decoded) through the JSON parser and the renderer.
 * Any broken invariant aborts.
 */
#include "admin_client.h"
#include "status_cmd.h"

#include "fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Renders doc[0..len) (an exactly sized copy); the output never carries
 * control bytes but newlines, and nothing is printed on failure. */
static void check_render(const char *doc, size_t len)
{
	char *copy = malloc(len ? len : 1), *out = NULL, err[512] = "";
	size_t out_len = 0;
	FILE *f = open_memstream(&out, &out_len);
	bool ok;

	CHECK(copy && f);
	memcpy(copy, doc, len);
	ok = status_render(copy, len, "127.0.0.1:3128", f, err, sizeof(err));
	CHECK(fclose(f) == 0);
	if (ok) {
		CHECK(strncmp(out, "muxd at 127.0.0.1:3128: up ", 27) == 0);
		for (size_t i = 0; i < out_len; i++)
			CHECK((unsigned char)out[i] >= 0x20 ? out[i] != 0x7f : out[i] == '\n');
	} else {
		CHECK(out_len == 0 && err[0]);
	}
	free(out);
	free(copy);
}

struct outcome {
	enum admin_parse res;
	int status;
	char *body;
	size_t body_len;
	char err[512];
};

/* The response fed in pieces: the prefixes end at cuts[0..ncuts) (growing),
 * then the whole input with eof. */
static void feed(const char *in, size_t len, size_t max, const size_t *cuts, size_t ncuts,
                 struct outcome *o)
{
	struct admin_resp r;

	memset(&r, 0, sizeof(r));
	r.max = max;
	o->err[0] = '\0';
	o->res = ADMIN_PARSE_MORE;
	for (size_t i = 0; i < ncuts && o->res == ADMIN_PARSE_MORE; i++)
		o->res = admin_resp_feed(&r, in, cuts[i], false, o->err, sizeof(o->err));
	if (o->res == ADMIN_PARSE_MORE)
		o->res = admin_resp_feed(&r, in, len, true, o->err, sizeof(o->err));
	CHECK(o->res != ADMIN_PARSE_MORE);
	o->status = r.status;
	o->body = r.body;
	o->body_len = r.body_len;
	r.body = NULL;
	if (o->res == ADMIN_PARSE_DONE) {
		CHECK(o->body && o->body[o->body_len] == '\0' && o->status == 200);
		CHECK(o->body_len <= len && o->body_len <= (max ? max : ADMIN_MAX_RESPONSE));
	} else {
		CHECK(o->err[0]);
		CHECK((o->status != 0 && o->status != 200) ==
		      (strncmp(o->err, "answered", 8) == 0));
	}
	admin_resp_free(&r);
}

static void check_response(const char *in, size_t len)
{
	static struct outcome whole, pieces;
	size_t cuts[64], ncuts = 0, max = 0, step;
	uint32_t h = 2166136261u;
	int status;
	size_t blen = 0;
	char err[512];
	char *body;

	/* a limit below the input now and then, and split points from a hash */
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)in[i]) * 16777619u;
	if (h % 4 == 0)
		max = 1 + h / 4 % (len + 8);
	step = 1 + h / 64 % 13;
	for (size_t c = h % 7; c < len && ncuts < sizeof(cuts) / sizeof(cuts[0]); c += step)
		cuts[ncuts++] = c;
	if (ncuts < sizeof(cuts) / sizeof(cuts[0]) && len)
		cuts[ncuts++] = len; /* the whole input before the close */

	feed(in, len, max, NULL, 0, &whole);
	feed(in, len, max, cuts, ncuts, &pieces);
	CHECK(whole.res == pieces.res && whole.status == pieces.status);
	if (whole.res == ADMIN_PARSE_DONE)
		CHECK(whole.body_len == pieces.body_len &&
		      memcmp(whole.body, pieces.body, whole.body_len) == 0);

	/* the one-shot API is the whole input with the default limit */
	body = admin_parse_response(in, len, &status, &blen, err, sizeof(err));
	if (max == 0) {
		CHECK(!body == (whole.res != ADMIN_PARSE_DONE) && status == whole.status);
		if (body)
			CHECK(blen == whole.body_len && memcmp(body, whole.body, blen) == 0);
		else
			CHECK(strcmp(err, whole.err) == 0);
	}
	if (body)
		check_render(body, blen);
	free(body);
	free(whole.body);
	free(pieces.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;

	check_response(in, size);
	check_render(in, size);
	return 0;
}
