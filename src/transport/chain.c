/*
 * chain — a connection path built from layers, presented as one layer.
 *
 * The steps are planned up front from the spec: TCP to the first hop; for
 * each parent, TLS to it when it is https://, then CONNECT (http/https) or
 * SOCKS5 to the next hop or the target (not for the last hop in forward
 * mode); then TLS to the target. A first hop that is an https:// parent is
 * opened by the spec's shared_hop when the creator gives one (the pool: a
 * CONNECT stream on its shared connection to that parent). Each step's
 * layer owns the one before it.
 * While building, the chain listens to the newest layer; once everything is
 * up it forwards that layer's events to its user, and its operations go to
 * that top layer. The build state (the spec's strings copied, the steps,
 * the deadline: ~8 KiB) is freed then: a pooled connection idles for long
 * and keeps only struct chain.
 *
 * One deadline (spec->timeout_ms, connect_timeout) covers the whole build,
 * from DNS to the last handshake: when it passes, the chain reports
 * ERR_CONNECT_TIMEOUT naming the step that was running and its peer ("TLS
 * handshake with api.example.com:443 timed out after 10 s") and ignores
 * whatever its layers say afterwards.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "muxd.h"
#include "timeutil.h"
#include "transport/tls.h"
#include "transport/transport.h"

#define CHAIN_MAX_STEPS (2 * CONFIG_MAX_HOPS + 2)

enum step_kind {
	STEP_TCP,
	STEP_TLS_HOP,
	STEP_TUNNEL,
	STEP_SHARED_HOP, /* spec->shared_hop: a tunnel through hop 0 on a shared connection */
	STEP_TLS_TARGET,
};

struct step {
	enum step_kind kind;
	size_t hop; /* the hop this step talks to (TLS_HOP, TUNNEL) */
};

/* What the user holds, for the connection's whole life. */
struct chain {
	struct transport base;
	struct transport *top;     /* once up (while building: build->top) */
	struct chain_build *build; /* while building */
	bool up;
	bool tls_top;    /* the last step was a TLS handshake: chain_alpn asks it */
	bool tls_target; /* ... the TLS to the target (not to a forwarding parent) */
	bool direct_tls; /* TCP then TLS to the target, no parent (chain_peer) */
};

/* The build: its layers' callbacks have it as their context until the
 * chain is up, when it is freed. */
struct chain_build {
	struct chain *owner;
	struct transport_env env;
	struct transport *top;
	struct chain_spec spec; /* strings copied below */
	struct chain_hop hops[CONFIG_MAX_HOPS];
	char strs[CONFIG_MAX_HOPS][3][256];
	char host[256], sni[256], alpn[32], ca_file[512], proxy_ca_file[512], session_key[1024];
	char proxy_ca_file_id[1200];
	char client_cert[512], client_key[512];
	struct step steps[CHAIN_MAX_STEPS];
	size_t nsteps, next;    /* steps planned; the next one to start */
	bool timed_out;         /* reported; only close() is left */
	struct event *deadline; /* connect_timeout for the whole build */
};

static struct transport *top_of(struct transport *t)
{
	struct chain *c = (struct chain *)t;
	return c->build ? c->build->top : c->top;
}

static struct evbuffer *c_input(struct transport *t)
{
	return transport_input(top_of(t));
}

static struct evbuffer *c_output(struct transport *t)
{
	return transport_output(top_of(t));
}

static void c_set_reading(struct transport *t, bool on)
{
	struct transport *top = top_of(t);
	top->ops->set_reading(top, on);
}

static void c_shutdown(struct transport *t)
{
	struct transport *top = top_of(t);
	top->ops->shutdown(top);
}

static void build_free(struct chain_build *c)
{
	if (c->deadline)
		event_free(c->deadline);
	free(c);
}

static void c_close(struct transport *t)
{
	struct chain *c = (struct chain *)t;
	struct transport *top = top_of(t);

	if (top)
		transport_close(top);
	if (c->build)
		build_free(c->build);
	free(c);
}

static bool c_is_alive(struct transport *t)
{
	struct chain *c = (struct chain *)t;
	return c->up && c->top->ops->is_alive(c->top);
}

static const struct transport_ops chain_ops = {c_input,    c_output, c_set_reading,
                                               c_shutdown, c_close,  c_is_alive};

/* While building, bytes wait for the user (it reads once told it is up). */
static void on_read(void *ctx)
{
	(void)ctx;
}

static void on_drain(void *ctx)
{
	(void)ctx;
}

/* Once up, the top layer's events go straight to the user. */
static void up_read(void *ctx)
{
	struct chain *c = ctx;
	if (c->base.cbs.on_read)
		c->base.cbs.on_read(c->base.ctx);
}

static void up_drain(void *ctx)
{
	struct chain *c = ctx;
	if (c->base.cbs.on_drain)
		c->base.cbs.on_drain(c->base.ctx);
}

static void up_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct chain *c = ctx;
	c->base.cbs.on_event(c->base.ctx, ev, err, reason);
}

/* Tell the user about the build. */
static void tell(struct chain_build *c, enum transport_event ev, enum muxd_err err,
                 const char *reason)
{
	struct chain *o = c->owner;
	o->base.cbs.on_event(o->base.ctx, ev, err, reason);
}

/* Everything is up: the user gets the top layer, the build state goes. The
 * user is told last (it may close the chain). */
static void go_up(struct chain_build *c)
{
	static const struct transport_cbs cbs = {up_read, up_drain, up_event};
	struct chain *o = c->owner;
	enum step_kind last = c->steps[c->nsteps - 1].kind;

	o->up = true;
	o->top = c->top;
	o->tls_top = last == STEP_TLS_TARGET || last == STEP_TLS_HOP;
	o->tls_target = last == STEP_TLS_TARGET;
	o->direct_tls = c->spec.nhops == 0 && c->nsteps == 2 && c->steps[1].kind == STEP_TLS_TARGET;
	o->build = NULL;
	transport_set_cbs(o->top, &cbs, o);
	build_free(c);
	o->base.cbs.on_event(o->base.ctx, TRANSPORT_CONNECTED, ERR_NONE, NULL);
}

static const char *hop_name(struct chain_build *c, size_t i, char *buf, size_t size)
{
	const struct chain_hop *h = &c->hops[i];
	snprintf(buf, size, "%s%s%s:%u", strchr(h->host, ':') ? "[" : "", h->host,
	         strchr(h->host, ':') ? "]" : "", h->port);
	return buf;
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason);

/* Put the next step's layer on top; false when it could not be made. */
static bool start_step(struct chain_build *c)
{
	static const struct transport_cbs cbs = {on_read, on_drain, on_event};
	const struct step *st = &c->steps[c->next++];
	const struct chain_spec *sp = &c->spec;
	char name[300];

	switch (st->kind) {
	case STEP_TCP: {
		const char *host = sp->nhops ? c->hops[0].host : sp->host;
		uint16_t port = sp->nhops ? c->hops[0].port : sp->port;
		c->top = tcp_connect(&c->env, host, port, 0, &cbs, c); /* our deadline covers it */
		if (c->top && sp->deny_loopback && sp->nhops == 0)
			tcp_deny_loopback(c->top);
		break;
	}
	case STEP_SHARED_HOP: {
		bool last = sp->nhops == 1;
		c->top =
		    sp->shared_hop.open(sp->shared_hop.arg, sp, last ? sp->host : c->hops[1].host,
		                        last ? sp->port : c->hops[1].port, &cbs, c);
		break;
	}
	case STEP_TLS_HOP: {
		/* forwarding to this parent: it may speak HTTP/2 (requests as streams) */
		bool fwd = sp->forward && st->hop + 1 == sp->nhops;
		struct tls_client_params p = {.sni = c->hops[st->hop].host,
		                              .alpn = fwd ? "h2,http/1.1" : "http/1.1",
		                              .ca_file = sp->proxy_ca_file,
		                              .verify = true,
		                              .session_key = NULL};
		c->top = tls_client_new(&c->env, c->top, &p, &cbs, c);
		break;
	}
	case STEP_TUNNEL: {
		const struct chain_hop *h = &c->hops[st->hop];
		bool last = st->hop + 1 == sp->nhops;
		const char *host = last ? sp->host : c->hops[st->hop + 1].host;
		uint16_t port = last ? sp->port : c->hops[st->hop + 1].port;
		char auth[600];
		hop_name(c, st->hop, name, sizeof(name));
		if (h->kind == HOP_SOCKS5 || h->kind == HOP_SOCKS5H) {
			c->top = socks5_connect(&c->env, c->top, name, host, port,
			                        h->kind == HOP_SOCKS5H, h->user, h->pass, &cbs, c);
		} else {
			if (h->user)
				snprintf(auth, sizeof(auth), "%s:%s", h->user,
				         h->pass ? h->pass : "");
			c->top = h1_connect_layer_new(&c->env, c->top, name, host, port,
			                              h->user ? auth : NULL, &cbs, c);
		}
		break;
	}
	case STEP_TLS_TARGET: {
		struct tls_client_params p = {.sni = sp->sni,
		                              .alpn = sp->alpn,
		                              .ca_file = sp->ca_file,
		                              .verify = sp->verify,
		                              .session_key = sp->session_key,
		                              .early_data = sp->early_data,
		                              .early_timeout_ms = sp->timeout_ms};
		c->top = tls_client_new_cert(&c->env, c->top, &p, sp->client_cert, sp->client_key,
		                             &cbs, c);
		break;
	}
	}
	return c->top != NULL;
}

static void on_event(void *ctx, enum transport_event ev, enum muxd_err err, const char *reason)
{
	struct chain_build *c = ctx;

	if (c->timed_out)
		return;
	if (ev == TRANSPORT_CONNECTED && c->next < c->nsteps) {
		if (!start_step(c)) { /* the failed layer closed those below it */
			event_del(c->deadline);
			tell(c, TRANSPORT_ERROR, ERR_CONNECT, "out of memory");
		}
		return;
	}
	if (ev == TRANSPORT_CONNECTED) {
		go_up(c);
		return;
	}
	/* a failure while building: say which hop */
	event_del(c->deadline);
	const struct step *st = &c->steps[c->next - 1];
	char msg[700], name[300];
	bool via_hop = st->kind == STEP_TLS_HOP || (st->kind == STEP_TCP && c->spec.nhops > 0);
	if (via_hop) {
		snprintf(msg, sizeof(msg), "proxy %s: %s",
		         hop_name(c, st->kind == STEP_TCP ? 0 : st->hop, name, sizeof(name)),
		         reason ? reason : "failed");
		tell(c, TRANSPORT_ERROR,
		     err == ERR_CONNECT_TIMEOUT || err == ERR_LOOP ? err : ERR_CONNECT, msg);
		return;
	}
	tell(c, ev == TRANSPORT_EOF ? TRANSPORT_ERROR : ev, ev == TRANSPORT_EOF ? ERR_CONNECT : err,
	     reason ? reason : "connection closed");
}

/* What the running step is, for the timeout message: "TLS handshake with
 * api.example.com:443", "CONNECT via proxy 127.0.0.1:3128". */
static void step_name(struct chain_build *c, char *buf, size_t size)
{
	const struct step *st = &c->steps[c->next - 1];
	const struct chain_spec *sp = &c->spec;
	const char *v6 = strchr(sp->host, ':') ? "[" : "", *v6e = *v6 ? "]" : "";
	char name[300];

	switch (st->kind) {
	case STEP_TCP:
		if (sp->nhops)
			snprintf(buf, size, "DNS/TCP connect to proxy %s",
			         hop_name(c, 0, name, sizeof(name)));
		else
			snprintf(buf, size, "DNS/TCP connect to %s%s%s:%u", v6, sp->host, v6e,
			         sp->port);
		break;
	case STEP_TLS_HOP:
		snprintf(buf, size, "TLS handshake with proxy %s",
		         hop_name(c, st->hop, name, sizeof(name)));
		break;
	case STEP_SHARED_HOP:
	case STEP_TUNNEL: {
		int kind = c->hops[st->hop].kind;
		snprintf(buf, size, "%s via proxy %s",
		         kind == HOP_SOCKS5 || kind == HOP_SOCKS5H ? "SOCKS5" : "CONNECT",
		         hop_name(c, st->hop, name, sizeof(name)));
		break;
	}
	case STEP_TLS_TARGET:
		snprintf(buf, size, "TLS handshake with %s%s%s:%u", v6, sp->host, v6e, sp->port);
		break;
	}
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct chain_build *c = arg;
	char msg[500], step[400];
	uint64_t ms = c->spec.timeout_ms;

	(void)fd;
	(void)what;
	step_name(c, step, sizeof(step));
	if (ms % 1000 == 0)
		snprintf(msg, sizeof(msg), "%s timed out after %llu s", step,
		         (unsigned long long)(ms / 1000));
	else
		snprintf(msg, sizeof(msg), "%s timed out after %llu ms", step,
		         (unsigned long long)ms);
	c->timed_out = true;
	tell(c, TRANSPORT_ERROR, ERR_CONNECT_TIMEOUT, msg);
}

static void copy(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src ? src : "");
}

struct transport *chain_connect(const struct transport_env *env, const struct chain_spec *spec,
                                const struct transport_cbs *cbs, void *ctx)
{
	struct chain *o = calloc(1, sizeof(*o));
	struct chain_build *c = calloc(1, sizeof(*c));

	if (!o || !c || spec->nhops > CONFIG_MAX_HOPS) {
		free(o);
		free(c);
		return NULL;
	}
	o->base.ops = &chain_ops;
	transport_set_cbs(&o->base, cbs, ctx);
	o->build = c;
	c->owner = o;
	c->env = *env;
	c->spec = *spec;
	for (size_t i = 0; i < spec->nhops; i++) {
		c->hops[i] = spec->hops[i];
		copy(c->strs[i][0], sizeof(c->strs[i][0]), spec->hops[i].host);
		c->hops[i].host = c->strs[i][0];
		if (spec->hops[i].user) {
			copy(c->strs[i][1], sizeof(c->strs[i][1]), spec->hops[i].user);
			copy(c->strs[i][2], sizeof(c->strs[i][2]), spec->hops[i].pass);
			c->hops[i].user = c->strs[i][1];
			c->hops[i].pass = c->strs[i][2];
		}
	}
	c->spec.hops = c->hops;
	copy(c->host, sizeof(c->host), spec->host);
	copy(c->sni, sizeof(c->sni), spec->sni);
	copy(c->alpn, sizeof(c->alpn), spec->alpn);
	copy(c->ca_file, sizeof(c->ca_file), spec->ca_file);
	copy(c->proxy_ca_file, sizeof(c->proxy_ca_file), spec->proxy_ca_file);
	copy(c->proxy_ca_file_id, sizeof(c->proxy_ca_file_id), spec->proxy_ca_file_id);
	copy(c->session_key, sizeof(c->session_key), spec->session_key);
	copy(c->client_cert, sizeof(c->client_cert), spec->client_cert);
	copy(c->client_key, sizeof(c->client_key), spec->client_key);
	c->spec.host = c->host;
	c->spec.sni = c->sni;
	c->spec.alpn = c->alpn;
	c->spec.ca_file = spec->ca_file ? c->ca_file : NULL;
	c->spec.proxy_ca_file = spec->proxy_ca_file ? c->proxy_ca_file : NULL;
	c->spec.proxy_ca_file_id = spec->proxy_ca_file_id ? c->proxy_ca_file_id : NULL;
	c->spec.session_key = spec->session_key ? c->session_key : NULL;
	c->spec.client_cert = spec->client_cert ? c->client_cert : NULL;
	c->spec.client_key = spec->client_key ? c->client_key : NULL;

	size_t first = 0;
	if (spec->nhops > 0 && spec->hops[0].kind == HOP_HTTPS && spec->shared_hop.open &&
	    !(spec->forward && spec->nhops == 1)) {
		c->steps[c->nsteps++] = (struct step){STEP_SHARED_HOP, 0};
		first = 1;
	} else {
		c->steps[c->nsteps++] = (struct step){STEP_TCP, 0};
	}
	for (size_t i = first; i < spec->nhops; i++) {
		if (spec->hops[i].kind == HOP_HTTPS)
			c->steps[c->nsteps++] = (struct step){STEP_TLS_HOP, i};
		if (!(spec->forward && i + 1 == spec->nhops))
			c->steps[c->nsteps++] = (struct step){STEP_TUNNEL, i};
	}
	if (spec->tls && !spec->forward)
		c->steps[c->nsteps++] = (struct step){STEP_TLS_TARGET, 0};
	c->deadline = evtimer_new(env->base, deadline_cb, c);
	if (!c->deadline) {
		free(o);
		free(c);
		return NULL;
	}
	if (spec->timeout_ms > 0) {
		struct timeval tv = ms_to_timeval(spec->timeout_ms);
		evtimer_add(c->deadline, &tv);
	}
	if (!start_step(c)) {
		free(o);
		build_free(c);
		return NULL;
	}
	return &o->base;
}

const char *chain_alpn(struct transport *t)
{
	struct chain *c = (struct chain *)t;

	if (!c->up || !c->tls_top)
		return "";
	return tls_alpn(c->top);
}

/* The chain's own top is its TLS to the target, and it is up. */
static bool tls_target_up(struct transport *t)
{
	struct chain *c = (struct chain *)t;

	return t->ops == &chain_ops && c->up && c->tls_target;
}

bool chain_early(struct transport *t)
{
	return tls_target_up(t) && tls_early(((struct chain *)t)->top);
}

void chain_early_safe(struct transport *t, size_t n)
{
	if (tls_target_up(t))
		tls_early_safe(((struct chain *)t)->top, n);
}

bool chain_peer(struct transport *t, struct sockaddr_storage *addr, const void **cert,
                size_t *cert_len)
{
	struct chain *c = (struct chain *)t;

	if (!c->up || !c->direct_tls)
		return false;
	return tls_peer_cert(c->top, cert, cert_len) && tcp_peer_addr(tls_lower(c->top), addr);
}
