/*
 * What one request stream costs to set up: the per-request structures that
 * carry fixed maximum-size buffers are not zeroed whole (docs/performance.md,
 * "One HTTP/2 client, 200 streams"): the intercepted request's http1_uri
 * (a 16 KiB path buffer, filled by downstream_intercepted_uri) and an
 * HTTP/2 or HTTP/3 upstream stream's response head field table (4 KiB,
 * defined only up to nfields, made by mux_stream_new). With malloc's
 * memory poisoned (M_PERTURB) and the structures pre-filled, the fields
 * they do hold are right and the buffer tails are left as they were. And
 * the request line logs name (downstream_req_line, made per request by
 * memcpy) is what "%.23s %.250s%s" made.
 */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/h1_session.h"
#include "http1.h"
#include "upstream/mux.h"

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif

static struct http1_uri uri;

START_TEST(intercepted_uri_path_tail_untouched)
{
	const char *why = NULL;

	memset(&uri, 0xa5, sizeof(uri));
	ck_assert_int_eq(downstream_intercepted_uri("GET", "/a?b", "localhost:8443", "127.0.0.1",
	                                            8443, "localhost", &uri, &why),
	                 0);
	ck_assert_str_eq(uri.scheme, "https");
	ck_assert_str_eq(uri.host, "127.0.0.1");
	ck_assert_uint_eq(uri.port, 8443);
	ck_assert_str_eq(uri.path, "/a?b");
	ck_assert(!uri.ipv6);
	ck_assert_uint_eq((unsigned char)uri.path[sizeof(uri.path) - 1], 0xa5);

	memset(&uri, 0xa5, sizeof(uri));
	ck_assert_int_eq(downstream_intercepted_uri("GET", "https://example.test:443/x",
	                                            "example.test", "::1", 443, "example.test",
	                                            &uri, &why),
	                 0);
	ck_assert_str_eq(uri.scheme, "https");
	ck_assert_str_eq(uri.host, "::1");
	ck_assert_uint_eq(uri.port, 443);
	ck_assert_str_eq(uri.path, "/x");
	ck_assert(uri.ipv6);
	ck_assert_uint_eq((unsigned char)uri.path[sizeof(uri.path) - 1], 0xa5);

	/* refused: nothing stale reads as a value */
	memset(&uri, 0xa5, sizeof(uri));
	ck_assert_int_eq(downstream_intercepted_uri("GET", "/", "other.test", "127.0.0.1", 8443,
	                                            NULL, &uri, &why),
	                 400);
	ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(mux_stream_fields_tail_untouched)
{
	struct event_base *base = event_base_new();
	struct mux_conn mc;
	struct upstream_stream_cbs cbs;
	struct mux_stream *s;
	const unsigned char *last;

	ck_assert_ptr_nonnull(base);
	memset(&mc, 0, sizeof(mc));
	memset(&cbs, 0, sizeof(cbs));
	mc.env.transport.base = base;
	mallopt(M_PERTURB, 0x5a); /* malloc'd bytes read 0xa5 */
	s = mux_stream_new(&mc, sizeof(*s) + 64, &cbs, &mc);
	mallopt(M_PERTURB, 0);
	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_eq(s->mc, &mc);
	ck_assert_ptr_eq(s->base.conn, &mc.base);
	ck_assert_ptr_eq(s->base.ctx, &mc);
	ck_assert_ptr_nonnull(s->body);
	ck_assert_ptr_nonnull(s->timer.ev);
	ck_assert(!deadline_pending(&s->timer));
	/* what comes before and after the field table is zero ... */
	ck_assert_ptr_null(s->msg.head);
	ck_assert_uint_eq(s->msg.nfields, 0);
	ck_assert_uint_eq(s->nhdrs, 0);
	ck_assert(!s->user && !s->open && !s->head_sent && !s->got_final);
	ck_assert_int_eq(s->id, 0);
	ck_assert_uint_eq(s->win, 0);
	for (size_t i = 0; i < 64; i++)
		ck_assert_uint_eq(((unsigned char *)(s + 1))[i], 0); /* the codec's part */
#ifndef ASAN                                                         /* (ASan ignores M_PERTURB) */
	/* ... the table itself is not zeroed */
	last = (const unsigned char *)&s->msg.fields[HTTP1_MAX_FIELDS - 1];
	for (size_t i = 0; i < sizeof(s->msg.fields[0]); i++)
		ck_assert_uint_eq(last[i], 0xa5);
#else
	(void)last;
#endif
	evbuffer_free(s->body);
	deadline_free(&s->timer);
	free(s);
	event_base_free(base);
}
END_TEST

/* method and target cut as "%.23s %.250s%s" cut them, "..." after a long
 * target, whatever the buffer held before */
START_TEST(req_line_as_printf_made_it)
{
	static char target[HTTP1_MAX_TARGET + 2];
	static const size_t mlens[] = {0, 1, 3, 22, 23, 24, 40};
	static const size_t tlens[] = {0, 1, 249, 250, 251, 252, 16384, HTTP1_MAX_TARGET + 1};
	char method[41], line[DOWNSTREAM_REQ_LINE], want[DOWNSTREAM_REQ_LINE];

	for (size_t i = 0; i < sizeof(mlens) / sizeof(mlens[0]); i++)
		for (size_t j = 0; j < sizeof(tlens) / sizeof(tlens[0]); j++) {
			memset(method, 'M', mlens[i]);
			method[mlens[i]] = '\0';
			for (size_t k = 0; k < tlens[j]; k++)
				target[k] = (char)('a' + k % 26);
			target[tlens[j]] = '\0';
			memset(line, 0x5a, sizeof(line));
			snprintf(want, sizeof(want), "%.23s %.250s%s", method, target,
			         strlen(target) > 250 ? "..." : "");
			ck_assert_uint_eq(downstream_req_line(line, method, target), tlens[j]);
			ck_assert_str_eq(line, want);
		}
	ck_assert_uint_eq(downstream_req_line(line, "GET", "http://h.test/x"), 15);
	ck_assert_str_eq(line, "GET http://h.test/x");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("stream_setup");
	TCase *tc = tcase_create("stream_setup");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, intercepted_uri_path_tail_untouched);
	tcase_add_test(tc, mux_stream_fields_tail_untouched);
	tcase_add_test(tc, req_line_as_printf_made_it);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
