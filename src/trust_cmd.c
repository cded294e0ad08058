/*
 * trust_cmd — `muxd trust`. Each store is compared first and written only
 * when it differs, so a re-run changes nothing and needs no privileges; a
 * store that must change but cannot (not root) is refused with the command
 * that would work. The CA comes from the running daemon's /ca.pem, else
 * from state_dir/ca.pem when it is readable; `--remove` needs neither.
 */
#include "trust_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin_client.h"
#include "config.h"

#define STORE_DIR "/usr/local/share/ca-certificates"
#define STORE_NAME "muxd.crt"
#define NSS_NICKNAME "muxd local CA"
#define CMD_TIMEOUT_MS 120000
#define MAX_OUTPUT (1u << 20)

struct store {
	char root[1024]; /* MUXD_TRUST_ROOT or "" */
	char dir[1100];  /* root + STORE_DIR */
	char file[1200]; /* dir + "/" STORE_NAME */
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Run argv (argv[0] searched in PATH), feeding it input and keeping its
 * stdout in *out (when out; else its stdout goes to our stderr), within
 * CMD_TIMEOUT_MS. Returns its exit status, 127 when it cannot be run, -1
 * when killed at the deadline.
 */
static int run(char *const argv[], const char *input, char **out, size_t *out_len)
{
	int in_pipe[2], out_pipe[2] = {-1, -1}, status;
	size_t len = 0, cap = 0;
	char *buf = NULL;
	int64_t deadline = now_ms() + CMD_TIMEOUT_MS;
	pid_t pid;

	if (out)
		*out = NULL;
	if (pipe2(in_pipe, O_CLOEXEC) != 0)
		return 127;
	if (out && pipe2(out_pipe, O_CLOEXEC) != 0) {
		close(in_pipe[0]);
		close(in_pipe[1]);
		return 127;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		dup2(in_pipe[0], 0);
		dup2(out ? out_pipe[1] : 2, 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(in_pipe[0]);
	if (out)
		close(out_pipe[1]);
	if (pid < 0) {
		close(in_pipe[1]);
		if (out)
			close(out_pipe[0]);
		return 127;
	}
	/* a certificate fits in the pipe buffer: no need to interleave */
	if (input) {
		size_t n = strlen(input);
		signal(SIGPIPE, SIG_IGN);
		while (n > 0) {
			ssize_t k = write(in_pipe[1], input, n);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				break;
			input += k;
			n -= (size_t)k;
		}
	}
	close(in_pipe[1]);
	while (out) {
		struct pollfd pfd = {out_pipe[0], POLLIN, 0};
		int64_t left = deadline - now_ms();
		ssize_t k;
		if (left <= 0 || poll(&pfd, 1, (int)left) == 0)
			break;
		if (cap - len < 4096) {
			char *nb = cap >= MAX_OUTPUT ? NULL : realloc(buf, cap ? cap * 2 : 8192);
			if (!nb)
				break;
			buf = nb;
			cap = cap ? cap * 2 : 8192;
		}
		k = read(out_pipe[0], buf + len, cap - len - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	if (out)
		close(out_pipe[0]);
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		if (w < 0 && errno != EINTR) {
			status = -1;
			break;
		}
		if (now_ms() >= deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			free(buf);
			return -1;
		}
		poll(NULL, 0, 20);
	}
	if (out) {
		if (!buf)
			buf = calloc(1, 1);
		else
			buf[len] = '\0';
		*out = buf;
		*out_len = len;
	} else {
		free(buf);
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* True when cmd is an executable file in PATH (or a path to one). */
static bool in_path(const char *cmd)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (strchr(cmd, '/'))
		return access(cmd, X_OK) == 0;
	if (!path)
		path = "/usr/bin:/bin";
	for (const char *p = path; *p;) {
		size_t n = strcspn(p, ":");
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, n ? p : ".", cmd);
		if (access(buf, X_OK) == 0)
			return true;
		p += n;
		if (*p == ':')
			p++;
	}
	return false;
}

/* update-ca-certificates (with --fresh on removal: drops the dead links). */
static bool update_store(const struct store *s, bool fresh)
{
	const char *custom = getenv("MUXD_UPDATE_CA_CERTIFICATES");
	char local[1200], etc[1200], hooks[1200];
	int rc;

	if (custom && *custom) {
		char script[4200];
		snprintf(script, sizeof(script), "%s \"$@\"", custom);
		char *argv[] = {"/bin/sh", "-c", script, "sh", fresh ? "--fresh" : NULL, NULL};
		rc = run(argv, NULL, NULL, NULL);
		printf("ran %s%s: exit status %d\n", custom, fresh ? " --fresh" : "", rc);
	} else if (s->root[0]) {
		/* a scratch root: its own links, bundle and hooks, the host's CA list */
		snprintf(local, sizeof(local), "%s", s->dir);
		snprintf(etc, sizeof(etc), "%s/etc/ssl/certs", s->root);
		snprintf(hooks, sizeof(hooks), "%s/etc/ca-certificates/update.d", s->root);
		char *argv[] = {"update-ca-certificates",
		                "--localcertsdir",
		                local,
		                "--etccertsdir",
		                etc,
		                "--hooksdir",
		                hooks,
		                fresh ? "--fresh" : NULL,
		                NULL};
		rc = run(argv, NULL, NULL, NULL);
		printf("ran update-ca-certificates%s for %s: exit status %d\n",
		       fresh ? " --fresh" : "", s->root, rc);
	} else {
		char *argv[] = {"update-ca-certificates", fresh ? "--fresh" : NULL, NULL};
		rc = run(argv, NULL, NULL, NULL);
		printf("ran update-ca-certificates%s: exit status %d\n", fresh ? " --fresh" : "",
		       rc);
	}
	if (rc != 0)
		fprintf(stderr,
		        "muxd trust: updating the system trust store failed (exit status %d)\n",
		        rc);
	return rc == 0;
}

static bool privileges_error(int err)
{
	return err == EACCES || err == EPERM || err == EROFS;
}

static void refuse(const char *what, const char *path, int err, bool remove)
{
	fprintf(stderr,
	        "muxd trust: refused: cannot %s %s (%s): the system trust store belongs to root; "
	        "run: sudo muxd trust%s\n",
	        what, path, strerror(err), remove ? " --remove" : "");
}

/* 1 changed, 0 unchanged, -1 refused or failed. */
static int system_install(const struct store *s, const char *pem, size_t pem_len)
{
	char err[1400];
	bool changed;

	if (!admin_make_dirs(s->dir, 0755)) {
		if (privileges_error(errno))
			refuse("create", s->dir, errno, false);
		else
			fprintf(stderr, "muxd trust: cannot create %s: %s\n", s->dir,
			        strerror(errno));
		return -1;
	}
	if (!admin_write_file(s->file, pem, pem_len, "", 0, &changed, err, sizeof(err))) {
		if (privileges_error(errno))
			refuse("write", s->file, errno, false);
		else
			fprintf(stderr, "muxd trust: %s\n", err);
		return -1;
	}
	if (!changed) {
		printf("system trust store: %s already holds this CA: unchanged\n", s->file);
		return 0;
	}
	printf("system trust store: installed %s\n", s->file);
	return update_store(s, false) ? 1 : -1;
}

static int system_remove(const struct store *s)
{
	if (unlink(s->file) != 0) {
		if (errno == ENOENT) {
			printf("system trust store: no %s: unchanged\n", s->file);
			return 0;
		}
		if (privileges_error(errno))
			refuse("remove", s->file, errno, true);
		else
			fprintf(stderr, "muxd trust: cannot remove %s: %s\n", s->file,
			        strerror(errno));
		return -1;
	}
	printf("system trust store: removed %s\n", s->file);
	return update_store(s, true) ? 1 : -1;
}

/* The base64 of a PEM text, without armour or white space. */
static void pem_core(const char *pem, char *out, size_t size)
{
	size_t o = 0;
	for (const char *l = pem; *l && o + 1 < size;) {
		size_t n = strcspn(l, "\n");
		if (*l != '-')
			for (size_t i = 0; i < n && o + 1 < size; i++)
				if (l[i] != '\r' && l[i] != ' ' && l[i] != '\t')
					out[o++] = l[i];
		l += n;
		if (*l)
			l++;
	}
	out[o] = '\0';
}

/* The NSS database of the user (~/.pki/nssdb), or NULL with a note why not. */
static bool nss_db(char *db, size_t size)
{
	const char *home = getenv("HOME"), *sudo_user = getenv("SUDO_USER");
	struct stat st;

	if (!in_path("certutil")) {
		printf("NSS database: certutil is not installed (libnss3-tools): skipped\n");
		return false;
	}
	if (geteuid() == 0 && sudo_user && *sudo_user && strcmp(sudo_user, "root") != 0) {
		printf("NSS database: skipped under sudo; run `muxd trust` as %s for theirs\n",
		       sudo_user);
		return false;
	}
	if (!home || home[0] != '/') {
		struct passwd *pw = getpwuid(geteuid());
		home = pw && pw->pw_dir ? pw->pw_dir : "";
	}
	snprintf(db, size, "%s/.pki/nssdb", home);
	if (stat(db, &st) != 0 || !S_ISDIR(st.st_mode)) {
		printf("NSS database: none at %s: skipped\n", db);
		return false;
	}
	return true;
}

/* The certificate NSS holds under our nickname, or NULL. */
static char *nss_find(const char *dbarg)
{
	char *argv[] = {"certutil", "-d", (char *)dbarg, "-L", "-n", NSS_NICKNAME, "-a", NULL};
	char *out;
	size_t len;
	int rc = run(argv, NULL, &out, &len);

	if (rc != 0 || !strstr(out, "BEGIN CERTIFICATE")) {
		free(out);
		return NULL;
	}
	return out;
}

static bool nss_delete(const char *db, const char *dbarg)
{
	char *argv[] = {"certutil", "-d", (char *)dbarg, "-D", "-n", NSS_NICKNAME, NULL};
	int rc = run(argv, NULL, NULL, NULL);
	if (rc != 0)
		fprintf(stderr, "muxd trust: certutil -D in %s failed (exit status %d)\n", db, rc);
	return rc == 0;
}

static int nss_install(const char *pem)
{
	char db[1100], dbarg[1200], *have;
	int rc;

	if (!nss_db(db, sizeof(db)))
		return 0;
	snprintf(dbarg, sizeof(dbarg), "sql:%s", db);
	if ((have = nss_find(dbarg))) {
		char a[8192], b[8192];
		pem_core(have, a, sizeof(a));
		pem_core(pem, b, sizeof(b));
		free(have);
		if (strcmp(a, b) == 0) {
			printf("NSS database: %s already holds this CA: unchanged\n", db);
			return 0;
		}
		if (!nss_delete(db, dbarg)) /* an older CA of a previous muxd */
			return -1;
	}
	char *argv[] = {"certutil", "-d", dbarg, "-A", "-n", NSS_NICKNAME, "-t", "C,,", NULL};
	rc = run(argv, pem, NULL, NULL);
	if (rc != 0) {
		fprintf(stderr, "muxd trust: certutil -A in %s failed (exit status %d)\n", db, rc);
		return -1;
	}
	printf("NSS database: added \"%s\" to %s\n", NSS_NICKNAME, db);
	return 1;
}

static int nss_remove(void)
{
	char db[1100], dbarg[1200], *have;
	int n = 0;

	if (!nss_db(db, sizeof(db)))
		return 0;
	snprintf(dbarg, sizeof(dbarg), "sql:%s", db);
	for (; n < 16 && (have = nss_find(dbarg)); n++) {
		free(have);
		if (!nss_delete(db, dbarg))
			return -1;
	}
	if (n == 0)
		printf("NSS database: no \"%s\" in %s: unchanged\n", NSS_NICKNAME, db);
	else
		printf("NSS database: removed \"%s\" from %s\n", NSS_NICKNAME, db);
	return n > 0;
}

/* The CA to install: the daemon's, else the state directory's. */
static char *find_ca(const struct config *cfg, size_t *len)
{
	const struct config_listen *which = NULL;
	char err[600], *pem = NULL, *path = NULL;

	switch (admin_get_ca(cfg, &which, &pem, len, err, sizeof(err))) {
	case ADMIN_CA_OK:
		printf("CA: from muxd at %s\n", which->text);
		return pem;
	case ADMIN_CA_NONE:
		fprintf(stderr,
		        "muxd trust: muxd at %s does not intercept HTTPS ([intercept] enabled = "
		        "off): it has no CA to trust\n",
		        which->text);
		return NULL;
	case ADMIN_CA_ERROR:
		fprintf(stderr, "muxd trust: %s\n", err);
		return NULL;
	case ADMIN_CA_NO_DAEMON:
		break;
	}
	if (asprintf(&path, "%s/ca.pem", cfg->state_dir) < 0)
		return NULL;
	pem = admin_read_file(path, len);
	if (!pem || !strstr(pem, "BEGIN CERTIFICATE")) {
		fprintf(stderr,
		        "muxd trust: no muxd answers at %s (%s), and there is no readable CA in %s "
		        "(%s): start muxd first\n",
		        cfg->nlisten ? cfg->listen[0].text : "-", err, path,
		        pem ? "not a certificate" : strerror(errno));
		free(pem);
		free(path);
		return NULL;
	}
	printf("CA: muxd is not running; using %s\n", path);
	free(path);
	return pem;
}

int trust_cmd(const struct config *cfg, bool remove)
{
	const char *root = getenv("MUXD_TRUST_ROOT");
	struct store s;
	size_t pem_len;
	char *pem;
	int sys, nss;

	if (!root)
		root = "";
	if (root[0] && root[0] != '/') {
		fprintf(stderr, "muxd trust: MUXD_TRUST_ROOT must be an absolute path\n");
		return 2;
	}
	snprintf(s.root, sizeof(s.root), "%s", strcmp(root, "/") == 0 ? "" : root);
	snprintf(s.dir, sizeof(s.dir), "%s%s", s.root, STORE_DIR);
	snprintf(s.file, sizeof(s.file), "%s/%s", s.dir, STORE_NAME);
	if (remove) {
		sys = system_remove(&s);
		nss = nss_remove();
		return sys < 0 || nss < 0;
	}
	pem = find_ca(cfg, &pem_len);
	if (!pem)
		return 1;
	sys = system_install(&s, pem, pem_len);
	nss = nss_install(pem);
	free(pem);
	return sys < 0 || nss < 0;
}
