/* Unit tests for src/admin_client.c: the CLI's GET of a running muxd's admin
 * pages (framing by length, chunks or close; refusals told apart from broken
 * answers), /ca.pem checked to be one certificate, and the write-if-changed
 * file helper. Servers are forked children scripted per test. */
#include "admin_client.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"

/* Reads the request head, answers arg verbatim, closes. */
static void serve_canned(int fd, const void *arg)
{
	char buf[4096];
	size_t n = 0;

	while (n < sizeof(buf) - 1) {
		ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (k <= 0)
			break;
		n += (size_t)k;
		buf[n] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			break;
	}
	write_all(fd, arg, strlen(arg));
	serve_end(fd, AFTER_CLOSE, 0);
}

static struct config *cfg_for(uint16_t port)
{
	struct config *cfg = config_defaults();
	char addr[32], err[256];
	const char *addrs[] = {addr};

	ck_assert_ptr_nonnull(cfg);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	ck_assert_msg(config_set_listen(cfg, addrs, 1, err, sizeof(err)), "%s", err);
	return cfg;
}

/* GET / from a server answering canned; returns the outcome, fills r. */
static enum admin_fetch get_canned(const char *canned, struct admin_reply *r, char *err,
                                   size_t errsize)
{
	pid_t pid;
	uint16_t port = fork_server(serve_canned, canned, &pid);
	struct config *cfg = cfg_for(port);
	enum admin_fetch f = admin_get(&cfg->listen[0], "/", NULL, r, err, errsize);

	reap_child(&pid);
	config_unref(cfg);
	return f;
}

static void expect_body(const char *canned, int status, const char *body)
{
	struct admin_reply r;
	char err[256] = "";

	ck_assert_int_eq(get_canned(canned, &r, err, sizeof(err)), ADMIN_FETCH_OK);
	ck_assert_int_eq(r.status, status);
	ck_assert_uint_eq(r.body_len, strlen(body));
	ck_assert_str_eq(r.body, body);
	admin_reply_free(&r);
}

static void expect_error(const char *canned, const char *why)
{
	struct admin_reply r;
	char err[256] = "";

	ck_assert_int_eq(get_canned(canned, &r, err, sizeof(err)), ADMIN_FETCH_ERROR);
	ck_assert_msg(strstr(err, why), "error '%s' lacks '%s'", err, why);
	ck_assert_ptr_null(r.body);
}

START_TEST(test_body_by_length_chunks_and_close)
{
	expect_body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello");
	expect_body("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	            "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
	            200, "hello");
	expect_body("HTTP/1.0 200 OK\r\n\r\nhello", 200, "hello");
	expect_body("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", 404, "nope");
}
END_TEST

START_TEST(test_broken_answers_are_errors)
{
	expect_error("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "truncated response");
	expect_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "chunked");
	expect_error("SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP response");
	expect_error("", "closed without a response");
}
END_TEST

START_TEST(test_nothing_listening_is_no_daemon)
{
	struct config *cfg = cfg_for(free_port());
	struct admin_reply r;
	const struct config_listen *which = NULL;
	char err[256] = "", *pem;
	size_t len;

	ck_assert_int_eq(admin_get(&cfg->listen[0], "/", NULL, &r, err, sizeof(err)),
	                 ADMIN_FETCH_NO_DAEMON);
	ck_assert_ptr_nonnull(strstr(err, "refused"));
	ck_assert_int_eq(admin_get_ca(cfg, &which, &pem, &len, err, sizeof(err)),
	                 ADMIN_CA_NO_DAEMON);
	ck_assert_ptr_null(pem);
	config_unref(cfg);
}
END_TEST

static enum admin_ca ca_canned(const char *canned, char **pem, char *err, size_t errsize)
{
	pid_t pid;
	uint16_t port = fork_server(serve_canned, canned, &pid);
	struct config *cfg = cfg_for(port);
	const struct config_listen *which = NULL;
	size_t len;
	enum admin_ca c = admin_get_ca(cfg, &which, pem, &len, err, errsize);

	reap_child(&pid);
	if (c == ADMIN_CA_OK || c == ADMIN_CA_NONE)
		ck_assert_ptr_eq(which, &cfg->listen[0]);
	config_unref(cfg);
	return c;
}

START_TEST(test_ca_must_be_one_certificate)
{
	char err[256] = "", *pem;

	ck_assert_int_eq(ca_canned("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", &pem, err,
	                           sizeof(err)),
	                 ADMIN_CA_NONE);
	ck_assert_int_eq(
	    ca_canned("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", &pem, err, sizeof(err)),
	    ADMIN_CA_ERROR);
	ck_assert_ptr_nonnull(strstr(err, "not a certificate"));
	ck_assert_int_eq(ca_canned("HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno way\n",
	                           &pem, err, sizeof(err)),
	                 ADMIN_CA_ERROR);
	ck_assert_ptr_nonnull(strstr(err, "403: no way"));
}
END_TEST

START_TEST(test_write_file_only_when_changed)
{
	char dir[128], path[400], sub[200];
	bool changed;
	char err[256];
	struct stat st;
	size_t len;
	char *got;

	ck_assert(tmpdir_new(dir, sizeof(dir), "admin-client"));
	snprintf(sub, sizeof(sub), "%s/a/b", dir);
	ck_assert(admin_make_dirs(sub, 0700));
	ck_assert_int_eq(stat(sub, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/f", sub);
	ck_assert(admin_write_file(path, "ab", 2, "cd", 2, &changed, err, sizeof(err)));
	ck_assert(changed);
	ck_assert(admin_write_file(path, "abc", 3, "d", 1, &changed, err, sizeof(err)));
	ck_assert(!changed);
	ck_assert(admin_write_file(path, "abc", 3, "", 0, &changed, err, sizeof(err)));
	ck_assert(changed);
	got = admin_read_file(path, &len);
	ck_assert_ptr_nonnull(got);
	ck_assert_str_eq(got, "abc");
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0644);
	free(got);
	snprintf(path, sizeof(path), "%s/none/f", dir);
	ck_assert(!admin_write_file(path, "x", 1, "", 0, &changed, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "cannot write"));
	tmpdir_remove(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("admin_client");
	TCase *tc = tcase_create("admin_client");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_body_by_length_chunks_and_close);
	tcase_add_test(tc, test_broken_answers_are_errors);
	tcase_add_test(tc, test_nothing_listening_is_no_daemon);
	tcase_add_test(tc, test_ca_must_be_one_certificate);
	tcase_add_test(tc, test_write_file_only_when_changed);
	suite_add_tcase(s, tc);
	return run_suite(s) ? 1 : 0;
}
