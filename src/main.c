/*
 * main — command line, startup, signals, reload and shutdown.
 *
 *   muxd [-c FILE] [-l ADDR:PORT]... [-S DIR] [-v] [-t] [-V] [-h]
 *   muxd env|trust|ca|status|warm ...  (env_cmd.c, trust_cmd.c, status_cmd.c,
 *   warm_cmd.c)
 *
 * SIGHUP reloads the file: new requests use the new config, in-flight ones
 * keep theirs (refcounted), the pool survives, listeners are re-bound only
 * when the list changed; a bad file keeps the old config. SIGTERM/SIGINT
 * stop accepting and let in-flight exchanges finish (shutdown_timeout).
 *
 * Under systemd (Type=notify) the service manager hears READY=1 once the
 * listeners are bound (or adopted from socket activation) and the CA is
 * loaded, RELOADING=1/READY=1 around a reload, STOPPING=1 at shutdown, a
 * STATUS= line every few seconds, and WATCHDOG=1 at half of WATCHDOG_USEC.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "client/h1_session.h"
#include "config.h"
#include "dns.h"
#include "env_cmd.h"
#include "exchange.h"
#include "heap.h"
#include "listen.h"
#include "log.h"
#include "muxd.h"
#include "notify.h"
#include "pool.h"
#include "status_cmd.h"
#include "timeutil.h"
#include "tls/ca.h"
#include "transport/tls.h"
#include "trust_cmd.h"
#include "upstream/upstream.h"
#include "warm_cmd.h"

#define MUXD_VERSION "0.1.0"
#define DEFAULT_CONFIG "/etc/muxd/muxd.conf"
#define STATUS_INTERVAL_S 10

struct options {
	const char *config_file; /* NULL: built-in defaults */
	const char *listen[CONFIG_MAX_LISTEN];
	size_t nlisten;
	const char *state_dir;
	bool verbose;
	bool check_only;
	const char *shell; /* muxd env --shell */
	bool apt;          /* muxd env --apt */
	bool remove;       /* muxd trust --remove */
};

/* The daemon's root state and what only main needs next to it. */
struct daemon {
	struct muxd m;
	struct upstream_env env; /* m.env */
	struct options opt;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *shutdown_timer;
	struct event *status_timer;   /* STATUS= to the service manager */
	struct event *watchdog_timer; /* WATCHDOG=1 */
};

/* The listeners feed the HTTP/1.1 client side. */
static const struct listener_cbs client_side = {downstream_accept, downstream_close_idle};

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: muxd [-c FILE] [-l ADDR:PORT]... [-S DIR] [-v] [-t] [-V] [-h]\n"
	    "       muxd env [-c FILE] [-l ADDR:PORT] [-S DIR] [--shell sh|fish|csh]\n"
	    "                                     print shell exports pointing clients at muxd\n"
	    "       muxd env [-c FILE] [-l ADDR:PORT] --apt\n"
	    "                                     print apt.conf lines pointing apt at muxd\n"
	    "       muxd trust [-c FILE] [-l ADDR:PORT] [-S DIR] [--remove]\n"
	    "                                     install (remove) muxd's CA in the system store\n"
	    "       muxd ca [-c FILE] [-S DIR]    create the local CA if missing; print it\n"
	    "       muxd status [-c FILE] [-l ADDR:PORT]  print the live pool of a running muxd\n"
	    "       muxd warm [-c FILE] [-l ADDR:PORT] URL...\n"
	    "                                     have a running muxd connect to those origins "
	    "now\n"
	    "  -c FILE       configuration file (default %s when it exists)\n"
	    "  -l ADDR:PORT  listen address, repeatable; replaces [muxd] listen\n"
	    "  -S DIR        state directory\n"
	    "  -v            debug logging\n"
	    "  -t            check the configuration and exit (0 = valid)\n"
	    "  -V            print the version\n"
	    "  -h            this help\n",
	    DEFAULT_CONFIG);
}

/* Load the file (or defaults) and apply the command line on top. */
static struct config *load_config(const struct options *opt, bool report)
{
	struct config_errors errs = {0};
	struct config *cfg;
	char err[256];

	cfg = opt->config_file ? config_load(opt->config_file, &errs) : config_defaults();
	if (!cfg) {
		for (size_t i = 0; i < errs.n; i++)
			if (report)
				fprintf(stderr, "%s\n", errs.lines[i]);
			else
				log_error("%s", errs.lines[i]);
		if (errs.n == 0)
			log_error("out of memory loading the configuration");
		config_errors_free(&errs);
		return NULL;
	}
	if (opt->nlisten && !config_set_listen(cfg, opt->listen, opt->nlisten, err, sizeof(err))) {
		if (report)
			fprintf(stderr, "-l: %s\n", err);
		else
			log_error("-l: %s", err);
		config_unref(cfg);
		return NULL;
	}
	if (opt->state_dir) {
		char *dir = strdup(opt->state_dir);
		if (!dir) {
			config_unref(cfg);
			return NULL;
		}
		free(cfg->state_dir);
		cfg->state_dir = dir;
	}
	if (opt->verbose)
		cfg->log_level = LOG_DEBUG;
	return cfg;
}

/* Say loudly which routes skip certificate checks. */
static void warn_insecure(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nroutes; i++)
		if (cfg->routes[i].verify == 0)
			log_warn("[route %s] verify = off: origin certificates are not checked",
			         cfg->routes[i].pattern);
}

/* (Re)open the access log; the old one is flushed and closed. */
static bool open_access_log(struct muxd *m, const struct config *cfg)
{
	struct access_log *al = NULL;
	char err[600];

	if (cfg->access_log &&
	    !(al = access_log_open(m->base, cfg->access_log, err, sizeof(err)))) {
		log_error("%s", err);
		return false;
	}
	access_log_close(m->access_log);
	m->access_log = al;
	return true;
}

/* TLS/QUIC session resumption across restarts: [pool] session_file,
 * relative to state_dir. */
static bool persist_sessions(struct muxd *m, const struct config *cfg)
{
	char path[4200];

	if (cfg->session_file && cfg->session_file[0] != '/')
		snprintf(path, sizeof(path), "%s/%s", cfg->state_dir, cfg->session_file);
	else if (cfg->session_file)
		snprintf(path, sizeof(path), "%s", cfg->session_file);
	return tls_client_ctx_persist(m->tls, m->base, cfg->session_file ? path : NULL);
}

/* What muxd must never connect to: its own listeners. */
static void note_self(struct muxd *m)
{
	m->nself = listeners_addrs(m->listeners, m->self, sizeof(m->self) / sizeof(m->self[0]));
}

/* "N clients, N upstream connections, N requests" for STATUS=. */
static void status_line(const struct muxd *m, char *buf, size_t size)
{
	struct pool_counts pc;
	unsigned conns = 0;
	uint64_t requests = 0;

	memset(&pc, 0, sizeof(pc));
	pool_count(m->pool, &pc);
	for (int p = 0; p < PROTO_COUNT; p++) {
		conns += pc.active[p] + pc.idle[p];
		requests += m->metrics.requests[p];
	}
	snprintf(buf, size, "%u clients, %u upstream connections, %llu requests", m->nclients,
	         conns, (unsigned long long)requests);
}

/* Tell the service manager state (READY=1 ...) along with the status line. */
static void notify_state(const struct muxd *m, const char *state)
{
	char status[160];

	if (!notify_enabled())
		return;
	status_line(m, status, sizeof(status));
	notify_sendf("%s%sSTATUS=%s%s", state, *state ? "\n" : "", m->draining ? "stopping: " : "",
	             status);
}

static void status_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	(void)fd;
	(void)what;
	notify_state(&d->m, "");
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	notify_send("WATCHDOG=1");
}

/* Periodic STATUS= and, when asked for, WATCHDOG=1 at half the interval. */
static bool start_notify_timers(struct daemon *d)
{
	struct timeval status_tv = {STATUS_INTERVAL_S, 0};
	uint64_t half = notify_watchdog_usec() / 2;

	if (!notify_enabled())
		return true;
	d->status_timer = event_new(d->m.base, -1, EV_PERSIST, status_cb, d);
	if (!d->status_timer || event_add(d->status_timer, &status_tv) < 0)
		return false;
	if (half > 0) {
		struct timeval tv = {(time_t)(half / 1000000), (suseconds_t)(half % 1000000)};
		d->watchdog_timer = event_new(d->m.base, -1, EV_PERSIST, watchdog_cb, d);
		if (!d->watchdog_timer || event_add(d->watchdog_timer, &tv) < 0)
			return false;
		log_debug("watchdog: WATCHDOG=1 every %llu us", (unsigned long long)half);
	}
	return true;
}

static void reload_config(struct daemon *d)
{
	struct muxd *m = &d->m;
	struct config *cfg;
	char err[300];

	log_info("reloading %s", d->opt.config_file ? d->opt.config_file : "built-in defaults");
	cfg = load_config(&d->opt, false);
	if (!cfg) {
		log_error("reload failed: keeping the running configuration");
		return;
	}
	if (!listeners_match(m->listeners, cfg)) {
		struct listeners *l;
		listeners_free(m->listeners); /* free first: the new set may reuse ports */
		m->listeners = NULL;
		l = listeners_open(m, cfg, &client_side, err, sizeof(err));
		if (!l) {
			log_error("reload: %s; keeping the running configuration", err);
			m->listeners = listeners_open(m, m->cfg, &client_side, err, sizeof(err));
			if (!m->listeners)
				log_error("cannot restore listeners: %s", err);
			note_self(m);
			config_unref(cfg);
			return;
		}
		m->listeners = l;
		note_self(m);
	}
	open_access_log(m, cfg);
	persist_sessions(m, cfg);
	log_set_level(cfg->log_level);
	warn_insecure(cfg);
	config_unref(m->cfg);
	m->cfg = cfg;
	pool_reconfigured(m->pool);
	downstream_reconfigured(m);
	log_info("configuration reloaded");
}

static void reload(struct daemon *d)
{
	struct muxd *m = &d->m;

	if (m->draining) {
		log_info("SIGHUP while shutting down: ignored");
		return;
	}
	if (notify_enabled()) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		notify_sendf("RELOADING=1\nMONOTONIC_USEC=%llu",
		             (unsigned long long)ts.tv_sec * 1000000ULL +
		                 (unsigned long long)ts.tv_nsec / 1000ULL);
	}
	reload_config(d);
	notify_state(m, "READY=1");
}

static void shutdown_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	(void)fd;
	(void)what;
	log_warn("shutdown_timeout reached: closing %u client connections", d->m.nclients);
	downstream_close_all(&d->m);
	event_base_loopbreak(d->m.base);
}

static void begin_shutdown(struct daemon *d)
{
	struct muxd *m = &d->m;
	uint64_t ms = m->cfg->shutdown_timeout_ms;
	struct timeval tv = ms_to_timeval(ms);

	if (m->draining)
		return;
	log_info("shutting down: %u client connections open", m->nclients);
	m->draining = true;
	notify_state(m, "STOPPING=1");
	listeners_free(m->listeners);
	m->listeners = NULL;
	pool_close_idle(m->pool);
	downstream_drain_all(m);
	d->shutdown_timer = evtimer_new(m->base, shutdown_deadline, d);
	if (d->shutdown_timer)
		evtimer_add(d->shutdown_timer, &tv);
	muxd_client_closed(m);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	if (sig == SIGHUP)
		reload(arg);
	else
		begin_shutdown(arg);
}

static struct local_ca *open_ca(const struct config *cfg)
{
	char err[512];
	struct local_ca *ca = local_ca_open(cfg->state_dir, cfg->leaf_cache, err, sizeof(err));

	if (!ca)
		log_error("local CA: %s", err);
	return ca;
}

/* muxd ca: create the CA if missing, print its path and fingerprint. */
static int cmd_ca(const struct config *cfg)
{
	struct local_ca *ca = open_ca(cfg);
	char fp[200];

	if (!ca)
		return 1;
	local_ca_fingerprint(ca, fp, sizeof(fp));
	printf("%s\n%s\n", local_ca_cert_path(ca), fp);
	local_ca_free(ca);
	return 0;
}

/* muxd_client_closed: a client slot is free again. */
static void resume_accepting(struct muxd *m)
{
	listeners_pause(m->listeners, false);
}

static int run(struct daemon *d)
{
	struct muxd *m = &d->m;
	char err[300];
	int rc = 1;

	if (!heap_libevent_init())
		log_warn("cannot reserve memory for libevent's small allocations: using malloc");
	heap_trim_init();
	m->base = event_base_new();
	if (!m->base)
		return 1;
	if (gnutls_rnd(GNUTLS_RND_KEY, m->secret, sizeof(m->secret)) < 0 ||
	    !muxd_load_instance(m, m->cfg->state_dir, err, sizeof(err))) {
		log_error("cannot start: no random bytes");
		event_base_free(m->base);
		return 1;
	}
	if (err[0])
		log_warn("%s: the Via token lasts only as long as this process", err);
	log_debug("instance: Via: %s", m->via_token);
	m->dns = dns_new(m->base);
	m->clients = downstream_list_new();
	m->pool = pool_new(m);
	admin_start(m);
	m->tls = tls_client_ctx_new();
	d->env = (struct upstream_env){
	    .transport = {.base = m->base,
	                  .dns = m->dns,
	                  .tls = m->tls,
	                  .is_self = muxd_is_self_arg,
	                  .self_arg = m,
	                  .tls_leaf_issued = &m->metrics.tls_leaf_issued},
	    .window_granted = &m->window_granted,
	    .floods = m->metrics.upstream_floods,
	};
	m->env = &d->env;
	if (!m->dns || !m->clients || !m->pool || !m->tls || !persist_sessions(m, m->cfg)) {
		log_error("cannot start: out of memory");
		goto out;
	}
	if (!open_access_log(m, m->cfg))
		goto out;
	if (m->cfg->intercept_enabled && !(m->ca = open_ca(m->cfg)))
		goto out;
	m->resume_accepting = resume_accepting;
	m->listeners = listeners_from_env(m, &client_side, err, sizeof(err));
	if (!m->listeners && err[0]) {
		log_error("socket activation: %s", err);
		goto out;
	}
	if (!m->listeners)
		m->listeners = listeners_open(m, m->cfg, &client_side, err, sizeof(err));
	if (!m->listeners) {
		log_error("%s", err);
		goto out;
	}
	note_self(m);
	d->sig_term = evsignal_new(m->base, SIGTERM, signal_cb, d);
	d->sig_int = evsignal_new(m->base, SIGINT, signal_cb, d);
	d->sig_hup = evsignal_new(m->base, SIGHUP, signal_cb, d);
	if (!d->sig_term || !d->sig_int || !d->sig_hup)
		goto out;
	evsignal_add(d->sig_term, NULL);
	evsignal_add(d->sig_int, NULL);
	evsignal_add(d->sig_hup, NULL);
	if (!start_notify_timers(d)) {
		log_error("cannot start: out of memory");
		goto out;
	}
	log_info("muxd %s ready", MUXD_VERSION);
	notify_state(m, "READY=1");
	event_base_dispatch(m->base);
	log_info("stopped");
	rc = 0;
out:
	downstream_close_all(m);
	downstream_list_free(m->clients);
	m->clients = NULL;
	pool_free(m->pool);
	exchange_spare_free(m);
	listeners_free(m->listeners);
	dns_free(m->dns);
	tls_client_ctx_free(m->tls);
	local_ca_free(m->ca);
	if (d->sig_term)
		event_free(d->sig_term);
	if (d->sig_int)
		event_free(d->sig_int);
	if (d->sig_hup)
		event_free(d->sig_hup);
	if (d->shutdown_timer)
		event_free(d->shutdown_timer);
	if (d->status_timer)
		event_free(d->status_timer);
	if (d->watchdog_timer)
		event_free(d->watchdog_timer);
	muxd_idle_trim_free(m);
	access_log_close(m->access_log);
	m->access_log = NULL;
	config_unref(m->cfg);
	admin_stop(m);
	/* a bufferevent freed while its deferred callback was queued (a client
	 * closed in the loop's last pass) is released only when that callback
	 * runs: one more pass, with nothing of muxd's left to call */
	event_base_loop(m->base, EVLOOP_NONBLOCK);
	event_base_free(m->base);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {{"shell", required_argument, NULL, 's'},
	                                          {"remove", no_argument, NULL, 'r'},
	                                          {"apt", no_argument, NULL, 'a'},
	                                          {NULL, 0, NULL, 0}};
	struct daemon d;
	int c;

	memset(&d, 0, sizeof(d));
	while ((c = getopt_long(argc, argv, "c:l:S:vtVh", long_opts, NULL)) != -1) {
		switch (c) {
		case 's':
			d.opt.shell = optarg;
			break;
		case 'r':
			d.opt.remove = true;
			break;
		case 'a':
			d.opt.apt = true;
			break;
		case 'c':
			d.opt.config_file = optarg;
			break;
		case 'l':
			if (d.opt.nlisten == CONFIG_MAX_LISTEN) {
				fprintf(stderr, "muxd: at most %d -l options\n", CONFIG_MAX_LISTEN);
				return 2;
			}
			d.opt.listen[d.opt.nlisten++] = optarg;
			break;
		case 'S':
			d.opt.state_dir = optarg;
			break;
		case 'v':
			d.opt.verbose = true;
			break;
		case 't':
			d.opt.check_only = true;
			break;
		case 'V':
			printf("muxd %s\n", MUXD_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	/* GNU getopt has already taken the options after the command word too */
	const char *command = NULL;
	if (optind < argc &&
	    (strcmp(argv[optind], "env") == 0 || strcmp(argv[optind], "ca") == 0 ||
	     strcmp(argv[optind], "status") == 0 || strcmp(argv[optind], "trust") == 0 ||
	     strcmp(argv[optind], "warm") == 0))
		command = argv[optind++];
	bool warm = command && strcmp(command, "warm") == 0; /* the rest are its URLs */
	if ((d.opt.shell && (!command || strcmp(command, "env") != 0)) ||
	    (d.opt.remove && (!command || strcmp(command, "trust") != 0))) {
		fprintf(stderr, "muxd: %s goes with muxd %s only\n",
		        d.opt.shell ? "--shell" : "--remove", d.opt.shell ? "env" : "trust");
		return 2;
	}
	if (d.opt.apt && (!command || strcmp(command, "env") != 0 || d.opt.shell)) {
		fprintf(stderr, "muxd: --apt goes with muxd env only, without --shell\n");
		return 2;
	}
	if (optind < argc && !warm) {
		fprintf(stderr, "muxd: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!d.opt.config_file && access(DEFAULT_CONFIG, F_OK) == 0)
		d.opt.config_file = DEFAULT_CONFIG;
	d.m.cfg = load_config(&d.opt, true);
	if (!d.m.cfg)
		return 1;
	if (command) {
		int rc = d.opt.apt                        ? env_apt_cmd(d.m.cfg) /* env only */
		         : strcmp(command, "env") == 0    ? env_cmd(d.m.cfg, d.opt.shell)
		         : strcmp(command, "trust") == 0  ? trust_cmd(d.m.cfg, d.opt.remove)
		         : strcmp(command, "status") == 0 ? status_cmd(d.m.cfg)
		         : warm ? warm_cmd(d.m.cfg, argv + optind, (size_t)(argc - optind))
		                : cmd_ca(d.m.cfg);
		config_unref(d.m.cfg);
		return rc;
	}
	if (d.opt.check_only) {
		printf("%s: configuration ok\n",
		       d.opt.config_file ? d.opt.config_file : "defaults");
		config_unref(d.m.cfg);
		return 0;
	}
	log_set_level(d.m.cfg->log_level);
	warn_insecure(d.m.cfg);
	notify_init();
	signal(SIGPIPE, SIG_IGN);
	return run(&d);
}
