/*
 * env_cmd — `muxd env`. The order of the search: a muxd answering at one of
 * the config's listen addresses (its CA from /ca.pem, the bundle written to
 * $XDG_CACHE_HOME/muxd or ~/.cache/muxd); else the CA of the state
 * directory, created if missing, but only when that directory is the
 * user's own (a system service's /var/lib/muxd is not: the user is told to
 * start the daemon instead of getting a CA that no daemon uses).
 */
#include "env_cmd.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin_client.h"
#include "config.h"
#include "tls/ca.h"

enum shell { SH, FISH, CSH };

static bool shell_from_name(const char *name, enum shell *out)
{
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	if (strcmp(base, "sh") == 0 || strcmp(base, "bash") == 0 || strcmp(base, "dash") == 0 ||
	    strcmp(base, "zsh") == 0 || strcmp(base, "ksh") == 0 || strcmp(base, "mksh") == 0)
		*out = SH;
	else if (strcmp(base, "fish") == 0)
		*out = FISH;
	else if (strcmp(base, "csh") == 0 || strcmp(base, "tcsh") == 0)
		*out = CSH;
	else
		return false;
	return true;
}

/* One variable, single-quoted for the shell. */
static void print_var(enum shell sh, const char *name, const char *value)
{
	printf(sh == SH ? "export %s='" : sh == FISH ? "set -gx %s '" : "setenv %s '", name);
	for (const char *c = value; *c; c++) {
		if (*c == '\'')
			fputs(sh == FISH ? "\\'" : "'\\''", stdout);
		else if (*c == '\\' && sh == FISH)
			fputs("\\\\", stdout);
		else if (*c == '!' && sh == CSH)
			fputs("'\\!'", stdout);
		else
			putchar(*c);
	}
	fputs(sh == SH ? "'\n" : "';\n", stdout);
}

static void print_exports(enum shell sh, const char *listen_text, const char *bundle,
                          const char *ca)
{
	static const char *const proxy_vars[] = {"http_proxy", "https_proxy", "HTTP_PROXY",
	                                         "HTTPS_PROXY"};
	static const char *const ca_vars[] = {"SSL_CERT_FILE", "CURL_CA_BUNDLE",
	                                      "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"};
	char url[128];

	snprintf(url, sizeof(url), "http://%s", listen_text);
	for (size_t i = 0; i < 4; i++)
		print_var(sh, proxy_vars[i], url);
	print_var(sh, "no_proxy", "localhost,127.0.0.1,::1");
	print_var(sh, "NO_PROXY", "localhost,127.0.0.1,::1");
	print_var(sh, "NODE_USE_ENV_PROXY", "1");
	if (!bundle)
		return;
	for (size_t i = 0; i < 4; i++)
		print_var(sh, ca_vars[i], bundle);
	print_var(sh, "NODE_EXTRA_CA_CERTS", ca);
}

/* $XDG_CACHE_HOME/muxd (when absolute), else $HOME/.cache/muxd; created. */
static char *cache_dir(char *err, size_t errsize)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char *dir = NULL, *abs;

	if (xdg && xdg[0] == '/') {
		if (asprintf(&dir, "%s/muxd", xdg) < 0)
			dir = NULL;
	} else {
		if (!home || home[0] != '/') {
			struct passwd *pw = getpwuid(geteuid());
			home = pw && pw->pw_dir && pw->pw_dir[0] == '/' ? pw->pw_dir : NULL;
		}
		if (!home) {
			snprintf(err, errsize, "no home directory: set HOME or XDG_CACHE_HOME");
			return NULL;
		}
		if (asprintf(&dir, "%s/.cache/muxd", home) < 0)
			dir = NULL;
	}
	if (!dir) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	if (!admin_make_dirs(dir, 0700)) {
		snprintf(err, errsize, "cannot create %s: %s", dir, strerror(errno));
		free(dir);
		return NULL;
	}
	abs = realpath(dir, NULL);
	free(dir);
	if (!abs)
		snprintf(err, errsize, "cache directory: %s", strerror(errno));
	return abs;
}

/* The daemon's CA in the cache directory: ca.pem and ca-bundle.pem. */
static int from_daemon(enum shell sh, const struct config_listen *l, const char *pem,
                       size_t pem_len)
{
	char err[600], *dir, *ca_path = NULL, *bundle_path = NULL, *sys;
	size_t sys_len = 0;
	bool changed;
	int rc = 1;

	if (!(dir = cache_dir(err, sizeof(err)))) {
		fprintf(stderr, "muxd env: %s\n", err);
		return 1;
	}
	sys = admin_read_file(ADMIN_SYSTEM_TRUST_FILE, &sys_len);
	if (!sys && errno != ENOENT) {
		fprintf(stderr, "muxd env: cannot read %s: %s\n", ADMIN_SYSTEM_TRUST_FILE,
		        strerror(errno));
		goto out;
	}
	if (asprintf(&ca_path, "%s/ca.pem", dir) < 0 ||
	    asprintf(&bundle_path, "%s/ca-bundle.pem", dir) < 0) {
		ca_path = bundle_path = NULL;
		fprintf(stderr, "muxd env: out of memory\n");
		goto out;
	}
	/* the system store may lack a final newline: never glue two PEM lines */
	if (sys && sys_len && sys[sys_len - 1] != '\n')
		sys[sys_len++] = '\n';
	if (!admin_write_file(ca_path, pem, pem_len, "", 0, &changed, err, sizeof(err)) ||
	    !admin_write_file(bundle_path, sys ? sys : "", sys_len, pem, pem_len, &changed, err,
	                      sizeof(err))) {
		fprintf(stderr, "muxd env: %s\n", err);
		goto out;
	}
	print_exports(sh, l->text, bundle_path, ca_path);
	rc = 0;
out:
	free(sys);
	free(ca_path);
	free(bundle_path);
	free(dir);
	return rc;
}

/* No daemon: the state directory's CA, when that directory is ours. */
static int from_state_dir(enum shell sh, const struct config *cfg, const char *why)
{
	struct stat st;
	struct local_ca *ca;
	char err[600], *bundle, *cert;
	int rc = 1;

	const char *not_ours = NULL;

	if (stat(cfg->state_dir, &st) == 0) {
		if (st.st_uid != geteuid())
			not_ours = "it belongs to another user";
	} else if (errno != ENOENT) {
		not_ours = strerror(errno);
	}
	if (not_ours) {
		fprintf(stderr,
		        "muxd env: no muxd answers at %s (%s), and the state directory %s is not "
		        "yours (%s): start muxd (systemctl start muxd), or name a running one "
		        "with -l ADDR:PORT\n",
		        cfg->listen[0].text, why, cfg->state_dir, not_ours);
		return 1;
	}
	ca = local_ca_open(cfg->state_dir, cfg->leaf_cache, err, sizeof(err));
	if (!ca) {
		fprintf(stderr, "muxd env: local CA: %s\n", err);
		return 1;
	}
	bundle = realpath(local_ca_bundle_path(ca), NULL);
	cert = realpath(local_ca_cert_path(ca), NULL);
	if (bundle && cert) {
		fprintf(stderr, "muxd env: no muxd answers at %s yet: using the CA in %s\n",
		        cfg->listen[0].text, cfg->state_dir);
		print_exports(sh, cfg->listen[0].text, bundle, cert);
		rc = 0;
	} else {
		fprintf(stderr, "muxd env: %s: %s\n", cfg->state_dir, strerror(errno));
	}
	free(bundle);
	free(cert);
	local_ca_free(ca);
	return rc;
}

int env_cmd(const struct config *cfg, const char *shell)
{
	const struct config_listen *which = NULL;
	const char *env_shell = getenv("SHELL");
	enum shell sh = SH;
	char err[600], *pem;
	size_t pem_len;
	int rc;

	if (shell && !shell_from_name(shell, &sh)) {
		fprintf(stderr, "muxd env: --shell %s: expected sh, fish or csh\n", shell);
		return 2;
	}
	if (!shell && env_shell && *env_shell && !shell_from_name(env_shell, &sh))
		sh = SH;
	if (cfg->nlisten == 0) {
		fprintf(stderr, "muxd env: the configuration has no listen address\n");
		return 1;
	}
	switch (admin_get_ca(cfg, &which, &pem, &pem_len, err, sizeof(err))) {
	case ADMIN_CA_OK:
		rc = from_daemon(sh, which, pem, pem_len);
		free(pem);
		return rc;
	case ADMIN_CA_NONE:
		fprintf(stderr, "muxd env: muxd at %s does not intercept HTTPS: no CA to trust\n",
		        which->text);
		print_exports(sh, which->text, NULL, NULL);
		return 0;
	case ADMIN_CA_NO_DAEMON:
		return from_state_dir(sh, cfg, err);
	case ADMIN_CA_ERROR:
		break;
	}
	fprintf(stderr, "muxd env: %s\n", err);
	return 1;
}
