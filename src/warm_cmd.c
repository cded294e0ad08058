/*
 * warm_cmd — `muxd warm URL...`. The URLs are checked here first (a usage
 * error needs no daemon), percent-encoded into the query of one POST /warm,
 * and the daemon's answer (admin_warm.c: "connected URL", "already-warm
 * URL", "failed URL REASON", one line each) is printed as "URL: connected",
 * "URL: already warm" or "URL: failed: REASON".
 */
#include "warm_cmd.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_client.h"
#include "config.h"
#include "http1.h"

#define ANSWER_GRACE_MS 5000 /* past connect_timeout, for the daemon's answer */

/* Append s percent-encoded (all but unreserved characters and ':' '/'). */
static void encode(FILE *f, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    strchr("-._~:/", c))
			fputc(c, f);
		else
			fprintf(f, "%%%02X", c);
	}
}

/* Print the daemon's lines; false when one says failed (or makes no sense). */
static bool print_answer(char *body)
{
	bool ok = true;

	for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
		char *url = strchr(line, ' '), *why = NULL;
		if (!url) {
			fprintf(stderr, "muxd warm: unexpected answer line '%s'\n", line);
			ok = false;
			continue;
		}
		*url++ = '\0';
		if (strcmp(line, "failed") == 0 && (why = strchr(url, ' ')) != NULL)
			*why++ = '\0';
		if (strcmp(line, "connected") == 0) {
			printf("%s: connected\n", url);
		} else if (strcmp(line, "already-warm") == 0) {
			printf("%s: already warm\n", url);
		} else {
			printf("%s: failed: %s\n", url, why ? why : line);
			ok = false;
		}
	}
	return ok;
}

int warm_cmd(const struct config *cfg, char *const urls[], size_t n)
{
	struct admin_get_opts opts = {
	    .connect_ms = 1000,
	    .max = 1u << 20,
	    .user_agent = "muxd-warm",
	};
	struct admin_reply reply;
	enum admin_fetch got;
	char *path = NULL, err[512];
	size_t path_len = 0;
	FILE *f;
	int rc;

	if (n == 0) {
		fprintf(stderr, "usage: muxd warm [-c FILE] [-l ADDR:PORT] URL...  (http:// or "
		                "https:// URLs)\n");
		return 2;
	}
	if (n > ADMIN_WARM_MAX) {
		fprintf(stderr, "muxd warm: at most %d URLs at once\n", ADMIN_WARM_MAX);
		return 2;
	}
	for (size_t i = 0; i < n; i++) {
		struct http1_uri *uri = malloc(sizeof(*uri));
		bool ok = uri && http1_parse_absolute_uri(urls[i], uri);
		free(uri);
		if (!ok) {
			fprintf(stderr, "muxd warm: '%s' is not an http:// or https:// URL\n",
			        urls[i]);
			return 2;
		}
	}
	if (cfg->nlisten == 0) {
		fprintf(stderr, "muxd warm: the configuration has no listen address\n");
		return 1;
	}
	if (!(f = open_memstream(&path, &path_len)))
		return 1;
	fputs("/warm?", f);
	for (size_t i = 0; i < n; i++) {
		fputs(i ? "&url=" : "url=", f);
		encode(f, urls[i]);
	}
	if (fclose(f) != 0 || !path) {
		free(path);
		fprintf(stderr, "muxd warm: out of memory\n");
		return 1;
	}
	opts.exchange_ms = (int)(cfg->connect_timeout_ms + ANSWER_GRACE_MS);
	got = admin_post(&cfg->listen[0], path, &opts, &reply, err, sizeof(err));
	free(path);
	if (got != ADMIN_FETCH_OK) {
		fprintf(stderr, "muxd warm: %s at %s: %s\n",
		        got == ADMIN_FETCH_NO_DAEMON ? "no muxd answers" : "cannot ask muxd",
		        cfg->listen[0].text, err);
		return 1;
	}
	if (reply.status == 200 || reply.status == 502) {
		rc = print_answer(reply.body) && reply.status == 200 ? 0 : 1;
	} else {
		fprintf(stderr, "muxd warm: muxd at %s answered %d: %s", cfg->listen[0].text,
		        reply.status, reply.body_len ? reply.body : "\n");
		rc = 1;
	}
	admin_reply_free(&reply);
	return rc;
}
