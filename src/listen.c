/*
 * listen — listening sockets on libevent connection listeners, bound from the
 * config or adopted from the service manager (systemd socket activation:
 * $LISTEN_FDS sockets from fd 3 on, meant for us when $LISTEN_PID is our pid).
 *
 * Descriptor reserve: accepting pauses while fewer than max(16, 10 %) of
 * RLIMIT_NOFILE descriptors are free, so that clients cannot take the
 * descriptors their own upstream connections need; before pausing, the
 * client connections idle longest between requests are closed. Open
 * descriptors are counted in /proc/self/fd, and only when the estimate
 * (descriptors not of clients at the last count, plus the clients now) comes
 * near the reserve or the last count is older than FD_RECOUNT_MS. Only a
 * count near the reserve is made in the accept callback; a count that is
 * merely stale is left to a timer FD_RECOUNT_DEFER_MS later, so that a
 * fresh client's request does not wait for the directory scan.
 */
#include "listen.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "timeutil.h"

struct listeners {
	struct muxd *m;
	const struct listener_cbs *cbs;
	size_t n;
	char text[CONFIG_MAX_LISTEN][64]; /* as configured */
	struct evconnlistener *l[CONFIG_MAX_LISTEN];
	bool paused;
	bool activated;        /* sockets from the service manager: never re-bound */
	struct event *backoff; /* accepting paused after running out of descriptors */
	struct event *recount; /* the deferred count of a stale estimate */
	bool backing_off;      /* backoff pending: only it resumes accepting */
	long nofile;           /* RLIMIT_NOFILE; 0 when unlimited or unknown */
	long other_fds;        /* open descriptors not of clients, at the last count */
	uint64_t counted_ms;   /* when they were counted */
	int fd_slots;          /* libevent's per-descriptor slots made below this */
};

#define ACCEPT_BACKOFF_MS 100

static void backoff_done(evutil_socket_t fd, short what, void *arg);
static void recount_cb(evutil_socket_t fd, short what, void *arg);
#define FD_RECOUNT_MS 100
#define FD_RECOUNT_DEFER_MS 5
#define FD_RESERVE_MIN 16

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static long fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > (rlim_t)1 << 30)
		return 0;
	return (long)rl.rlim_cur;
}

/* Open descriptors of this process; -1 when they cannot be counted. Linux
 * 6.2 and later give the number as the size of /proc/self/fd: one stat,
 * 2 us, where walking the directory takes 7.6 ms at 10 000 descriptors. */
static long count_open_fds(void)
{
	struct stat st;
	DIR *d;
	struct dirent *e;
	long n = 0;

	if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
		return (long)st.st_size;
	if (!(d = opendir("/proc/self/fd")))
		return errno == EMFILE || errno == ENFILE ? LONG_MAX : -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n > 0 ? n - 1 : 0; /* less the directory's own */
}

/* Whether free descriptors are below the reserve, after closing idle
 * client connections to make up for it. force: count now even when the
 * estimate is far from the reserve (else a stale count is deferred). */
static bool fds_short(struct listeners *ls, bool force)
{
	struct muxd *m = ls->m;
	long reserve, open, free_fds;
	uint64_t now = mono_ms();

	if (ls->nofile <= 0)
		return false;
	reserve = ls->nofile / 10 > FD_RESERVE_MIN ? ls->nofile / 10 : FD_RESERVE_MIN;
	if (!force && ls->nofile - (ls->other_fds + (long)m->nclients) >= 2 * reserve) {
		struct timeval tv = ms_to_timeval(FD_RECOUNT_DEFER_MS);

		if (now - ls->counted_ms < FD_RECOUNT_MS)
			return false;
		/* stale but far from the reserve: count off the accept path */
		if (!ls->recount && !(ls->recount = evtimer_new(m->base, recount_cb, ls)))
			return false;
		if (!evtimer_pending(ls->recount, NULL))
			evtimer_add(ls->recount, &tv);
		return false;
	}
	open = count_open_fds();
	if (open < 0)
		return false;
	if (open == LONG_MAX)
		open = ls->nofile;
	ls->other_fds = open - (long)m->nclients;
	ls->counted_ms = now;
	free_fds = ls->nofile - open;
	if (free_fds >= reserve)
		return false;
	free_fds += ls->cbs->close_idle(m, (unsigned)(reserve - free_fds));
	return free_fds < reserve;
}

static void start_backoff(struct listeners *ls)
{
	struct timeval tv = ms_to_timeval(ACCEPT_BACKOFF_MS);

	if (!ls->backoff && !(ls->backoff = evtimer_new(ls->m->base, backoff_done, ls)))
		return;
	listeners_pause(ls, true);
	ls->backing_off = true;
	evtimer_add(ls->backoff, &tv);
}

#define LISTEN_FDS_START 3

/*
 * libevent keeps a small slot per descriptor number once one was watched,
 * until the event base is freed. Made one by one as a load peak opens
 * descriptors, these slots land between the peak's connection state and pin
 * a heap page each after it is freed: 1600 descriptors left ~4 MiB of RSS
 * that malloc_trim could not return. So when a client's descriptor comes
 * within half a batch of the slots made so far, the slots up to
 * FD_SLOT_BATCH numbers past it are made together (a dup of the client
 * socket watched and unwatched at each free number). The slots themselves
 * now live on pages of their own (heap.c); making them ahead still leaves
 * ~0.4 MiB less after a peak of 1600 descriptors (test_memory.py's mixed
 * peak), likely because libevent's descriptor-indexed array, which it
 * doubles as numbers climb, then grows before the peak instead of amid it.
 */
#define FD_SLOT_BATCH 256

static void slot_noop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static void reserve_fd_slots(struct listeners *ls, evutil_socket_t fd)
{
	struct event *ev;
	int end = fd + FD_SLOT_BATCH;

	if (fd + FD_SLOT_BATCH / 2 < ls->fd_slots)
		return; /* upstream descriptors rarely overtake a half batch ahead */
	if (ls->nofile > 0 && end > ls->nofile)
		end = (int)ls->nofile;
	for (int n = ls->fd_slots; n < end; n++) {
		if (fcntl(n, F_GETFD) != -1 || errno != EBADF || dup2(fd, n) != n)
			continue;
		ev = event_new(ls->m->base, n, EV_READ, slot_noop, NULL);
		if (ev) {
			event_add(ev, NULL);
			event_free(ev); /* deletes it: the slot stays */
		}
		close(n);
	}
	ls->fd_slots = end;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
	struct listeners *ls = arg;

	(void)l;
	reserve_fd_slots(ls, fd);
	ls->cbs->accept(ls->m, fd, sa, (socklen_t)len);
	if (ls->m->nclients >= ls->m->cfg->max_clients)
		listeners_pause(ls, true);
	else if (fds_short(ls, false)) {
		log_debug("fewer than max(%d, 10 %%) of %ld descriptors free: accepting paused",
		          FD_RESERVE_MIN, ls->nofile);
		start_backoff(ls);
	}
}

static void backoff_done(evutil_socket_t fd, short what, void *arg)
{
	struct listeners *ls = arg;
	(void)fd;
	(void)what;
	ls->backing_off = false;
	if (fds_short(ls, true))
		start_backoff(ls);
	else if (ls->m->nclients < ls->m->cfg->max_clients)
		listeners_pause(ls, false);
}

static void recount_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listeners *ls = arg;

	(void)fd;
	(void)what;
	if (ls->backing_off || ls->paused)
		return; /* resuming counts again */
	if (fds_short(ls, true)) {
		log_debug("fewer than max(%d, 10 %%) of %ld descriptors free: accepting paused",
		          FD_RESERVE_MIN, ls->nofile);
		start_backoff(ls);
	}
}

static void error_cb(struct evconnlistener *l, void *arg)
{
	struct listeners *ls = arg;
	int e = EVUTIL_SOCKET_ERROR();

	(void)l;
	log_warn("accept failed: %s", strerror(e));
	if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
		return;
	/* The pending connection stays readable: without a pause the loop
	 * would spin. Give idle upstream connections back and retry shortly. */
	pool_relieve(ls->m->pool);
	ls->cbs->close_idle(ls->m, FD_RESERVE_MIN);
	start_backoff(ls);
}

/* The bound address of fd as ADDR:PORT ("[v6]:PORT", "unix:PATH"). */
static bool sock_name(int fd, char *out, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];

	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, size, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else if (ss.ss_family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, size, "%s:%u", ip, ntohs(s4->sin_port));
	} else if (ss.ss_family == AF_UNIX) {
		struct sockaddr_un *su = (struct sockaddr_un *)&ss;
		size_t n = len > offsetof(struct sockaddr_un, sun_path)
		               ? len - offsetof(struct sockaddr_un, sun_path)
		               : 0;
		if (n > 0 && su->sun_path[0] == '\0')
			snprintf(out, size, "unix:@%.*s", (int)(n - 1), su->sun_path + 1);
		else
			snprintf(out, size, "unix:%.*s", (int)strnlen(su->sun_path, n),
			         su->sun_path);
	} else {
		snprintf(out, size, "family %d", ss.ss_family);
	}
	return true;
}

static int bind_one(const struct config_listen *cl, char *actual, size_t actual_size, char *err,
                    size_t err_size)
{
	int one = 1, fd = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		snprintf(err, err_size, "%s: %s", cl->text, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (cl->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&cl->addr, cl->addr_len) < 0 || listen(fd, 511) < 0 ||
	    !sock_name(fd, actual, actual_size)) {
		int e = errno;
		snprintf(err, err_size, "cannot listen on %s: %s", cl->text, strerror(e));
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

struct listeners *listeners_open(struct muxd *m, const struct config *cfg,
                                 const struct listener_cbs *cbs, char *err, size_t err_size)
{
	struct listeners *ls = calloc(1, sizeof(*ls));
	size_t bound = 0;

	if (!ls) {
		snprintf(err, err_size, "out of memory");
		return NULL;
	}
	ls->m = m;
	ls->cbs = cbs;
	ls->nofile = fd_limit();
	for (size_t i = 0; i < cfg->nlisten; i++) {
		const struct config_listen *cl = &cfg->listen[i];
		char actual[80];
		int fd = bind_one(cl, actual, sizeof(actual), err, err_size);

		snprintf(ls->text[ls->n], sizeof(ls->text[0]), "%s", cl->text);
		if (fd < 0) {
			/* a host without IPv6 still serves the IPv4 default */
			bool no_v6 = cl->addr.ss_family == AF_INET6 &&
			             (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT);
			if (no_v6 && cfg->nlisten > 1) {
				log_warn("%s (skipped)", err);
				ls->n++;
				continue;
			}
			listeners_free(ls);
			return NULL;
		}
		ls->l[ls->n] = evconnlistener_new(
		    m->base, accept_cb, ls, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
		if (!ls->l[ls->n]) {
			close(fd);
			snprintf(err, err_size, "cannot listen on %s: out of memory", cl->text);
			listeners_free(ls);
			return NULL;
		}
		evconnlistener_set_error_cb(ls->l[ls->n], error_cb);
		ls->n++;
		bound++;
		log_info("listening on %s", actual);
	}
	if (bound == 0) {
		snprintf(err, err_size, "no address to listen on");
		listeners_free(ls);
		return NULL;
	}
	return ls;
}

/* A listening stream socket handed over by the service manager, made ready for
 * libevent; its name in out. */
static bool adopt_fd(int fd, char *out, size_t size, char *err, size_t err_size)
{
	int type = 0, accepting = 0, flags;
	socklen_t len = sizeof(type), alen = sizeof(accepting);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
		snprintf(err, err_size, "LISTEN_FDS: fd %d: %s (expected a socket)", fd,
		         strerror(errno));
		return false;
	}
	if (type != SOCK_STREAM ||
	    (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) == 0 && !accepting)) {
		snprintf(err, err_size,
		         "LISTEN_FDS: fd %d is not a listening stream socket (expected "
		         "ListenStream=)",
		         fd);
		return false;
	}
	if (!sock_name(fd, out, size)) {
		snprintf(err, err_size, "LISTEN_FDS: fd %d: %s", fd, strerror(errno));
		return false;
	}
	flags = fcntl(fd, F_GETFD);
	if (flags >= 0)
		fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
	if (evutil_make_socket_nonblocking(fd) < 0) {
		snprintf(err, err_size, "LISTEN_FDS: fd %d: cannot make it non-blocking", fd);
		return false;
	}
	return true;
}

struct listeners *listeners_from_env(struct muxd *m, const struct listener_cbs *cbs, char *err,
                                     size_t err_size)
{
	const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
	struct listeners *ls;
	char *end;
	long pid, n;

	err[0] = '\0';
	if (!pid_s || !fds_s)
		return NULL;
	errno = 0;
	pid = strtol(pid_s, &end, 10);
	if (errno || end == pid_s || *end || pid != (long)getpid())
		return NULL; /* meant for another process: leave them alone */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	errno = 0;
	n = strtol(fds_s, &end, 10);
	if (errno || end == fds_s || *end || n < 0) {
		snprintf(err, err_size, "LISTEN_FDS=%s: not a number", fds_s);
		return NULL;
	}
	if (n == 0)
		return NULL;
	if (n > CONFIG_MAX_LISTEN) {
		snprintf(err, err_size, "LISTEN_FDS=%ld: too many sockets (expected at most %d)", n,
		         CONFIG_MAX_LISTEN);
		return NULL;
	}
	ls = calloc(1, sizeof(*ls));
	if (!ls) {
		snprintf(err, err_size, "out of memory");
		return NULL;
	}
	ls->m = m;
	ls->cbs = cbs;
	ls->nofile = fd_limit();
	ls->activated = true;
	for (long i = 0; i < n; i++) {
		int fd = LISTEN_FDS_START + (int)i;

		if (!adopt_fd(fd, ls->text[ls->n], sizeof(ls->text[0]), err, err_size)) {
			listeners_free(ls);
			return NULL;
		}
		ls->l[ls->n] = evconnlistener_new(
		    m->base, accept_cb, ls, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
		if (!ls->l[ls->n]) {
			snprintf(err, err_size, "LISTEN_FDS: fd %d: out of memory", fd);
			listeners_free(ls);
			return NULL;
		}
		evconnlistener_set_error_cb(ls->l[ls->n], error_cb);
		log_info("listening on %s (socket activation)", ls->text[ls->n]);
		ls->n++;
	}
	return ls;
}

bool listeners_activated(const struct listeners *ls)
{
	return ls && ls->activated;
}

bool listeners_match(const struct listeners *ls, const struct config *cfg)
{
	if (ls->activated)
		return true; /* the service manager owns the addresses */
	if (ls->n != cfg->nlisten)
		return false;
	for (size_t i = 0; i < ls->n; i++)
		if (strcmp(ls->text[i], cfg->listen[i].text) != 0)
			return false;
	return true;
}

size_t listeners_addrs(const struct listeners *ls, struct sockaddr_storage *out, size_t max)
{
	size_t n = 0;

	for (size_t i = 0; ls && i < ls->n && n < max; i++) {
		socklen_t len = sizeof(out[n]);
		if (!ls->l[i])
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		if (getsockname(evconnlistener_get_fd(ls->l[i]), (struct sockaddr *)&out[n],
		                &len) == 0 &&
		    (out[n].ss_family == AF_INET || out[n].ss_family == AF_INET6))
			n++;
	}
	return n;
}

void listeners_pause(struct listeners *ls, bool paused)
{
	if (!ls || ls->paused == paused || (!paused && ls->backing_off))
		return;
	ls->paused = paused;
	for (size_t i = 0; i < ls->n; i++) {
		if (!ls->l[i])
			continue;
		if (paused)
			evconnlistener_disable(ls->l[i]);
		else
			evconnlistener_enable(ls->l[i]);
	}
}

void listeners_free(struct listeners *ls)
{
	if (!ls)
		return;
	for (size_t i = 0; i < ls->n; i++)
		if (ls->l[i])
			evconnlistener_free(ls->l[i]);
	if (ls->backoff)
		event_free(ls->backoff);
	if (ls->recount)
		event_free(ls->recount);
	free(ls);
}
