/* listen — listening sockets on libevent connection listeners. */
#include "listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "downstream.h"
#include "log.h"

struct listeners {
	struct muxd *m;
	size_t n;
	char text[CONFIG_MAX_LISTEN][64]; /* as configured */
	struct evconnlistener *l[CONFIG_MAX_LISTEN];
	bool paused;
};

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
	struct listeners *ls = arg;

	(void)l;
	downstream_accept(ls->m, fd, sa, (socklen_t)len);
	if (ls->m->nclients >= ls->m->cfg->max_clients)
		listeners_pause(ls, true);
}

static void error_cb(struct evconnlistener *l, void *arg)
{
	int e = EVUTIL_SOCKET_ERROR();
	(void)l;
	(void)arg;
	/* EMFILE and friends: logged; libevent retries on the next readiness */
	log_warn("accept failed: %s", strerror(e));
}

static int bind_one(const struct config_listen *cl, char *actual, size_t actual_size, char *err,
                    size_t err_size)
{
	int one = 1, fd = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];

	if (fd < 0) {
		snprintf(err, err_size, "%s: %s", cl->text, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (cl->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&cl->addr, cl->addr_len) < 0 || listen(fd, 511) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
		int e = errno;
		snprintf(err, err_size, "cannot listen on %s: %s", cl->text, strerror(e));
		close(fd);
		errno = e;
		return -1;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(actual, actual_size, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(actual, actual_size, "%s:%u", ip, ntohs(s4->sin_port));
	}
	return fd;
}

struct listeners *listeners_open(struct muxd *m, const struct config *cfg, char *err,
                                 size_t err_size)
{
	struct listeners *ls = calloc(1, sizeof(*ls));
	size_t bound = 0;

	if (!ls) {
		snprintf(err, err_size, "out of memory");
		return NULL;
	}
	ls->m = m;
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
		ls->l[ls->n] = evconnlistener_new(m->base, accept_cb, ls,
		                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
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

bool listeners_match(const struct listeners *ls, const struct config *cfg)
{
	if (ls->n != cfg->nlisten)
		return false;
	for (size_t i = 0; i < ls->n; i++)
		if (strcmp(ls->text[i], cfg->listen[i].text) != 0)
			return false;
	return true;
}

void listeners_pause(struct listeners *ls, bool paused)
{
	if (!ls || ls->paused == paused)
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
	free(ls);
}
