/*
 * Shared scaffolding of the transport unit tests (linked into every unit test
 * binary): a minimal struct muxd set up and torn down around each test, the
 * event loop run with a time limit, sockets (listeners, free ports, blocking
 * read/write), forked children (that die with the parent, are reaped, or exec
 * a program quietly), an echo server, one-connection scripted servers, temp
 * dirs, and a recording client for a transport layer (struct client: the
 * callbacks' outcome, an input collector and a backpressure-respecting
 * sender), with the whole tcp-then-proxy-layer client of the CONNECT and
 * SOCKS5 tests.
 */
#ifndef MUXD_TESTS_UNIT_HARNESS_H
#define MUXD_TESTS_UNIT_HARNESS_H

#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "muxd.h"
#include "transport/transport.h"
#include "upstream/upstream.h"

#define MB (1024 * 1024)

/* ---- the daemon state of the running test ---- */

extern struct muxd m;

enum { HM_CFG = 1, HM_DNS = 2, HM_TLS = 4 }; /* what muxd_setup makes besides m.base */

void muxd_setup(unsigned parts);
/* Points d->env at e, made from d's base, dns, tls and counters (as main.c
 * does); muxd_setup does it for m. */
void muxd_env_fill(struct muxd *d, struct upstream_env *e);
/* m's transport environment */
#define TENV (&m.env->transport)
void muxd_teardown(void); /* frees what muxd_setup made, then zeroes m */

/* Runs the suite (CK_NORMAL); returns the number of failed tests. */
int run_suite(Suite *s);

/* n pseudo-random bytes from seed (malloc'd; NULL when out of memory). */
unsigned char *pattern_new(size_t n, unsigned seed);

/* Runs m.base for at most ms; true when the time ran out. */
bool loop_run(int ms);

/* ---- sockets ---- */

/* A listening socket on addr (port want, 0: any); returns the fd, sets *port. */
int listen_on(const char *addr, uint16_t want, uint16_t *port);
uint16_t free_port(void);              /* a port nobody listens on (a moment ago) */
bool wait_port(uint16_t port, int ms); /* until 127.0.0.1:port accepts */
bool write_all(int fd, const void *p, size_t n);
bool read_exact(int fd, void *p, size_t n);

/* ---- processes ---- */

void child_init(pid_t parent);           /* in a forked child: die with the parent */
void stop_child(pid_t *pid);             /* SIGKILL, reap, *pid = 0 (nothing when <= 0) */
pid_t spawn_quiet(char *const argv[]);   /* execv with stdout and stderr on /dev/null */
void echo_loop(int fd);                  /* echoes until EOF, half-closes, waits for close */
pid_t echo_server_start(uint16_t *port); /* 127.0.0.1 and ::1 (if any), one child each */

/* Forks serve(fd, arg) for one connection on 127.0.0.1; sets *pid, returns the port.
 * serve must not return. */
uint16_t fork_server(void (*serve)(int fd, const void *arg), const void *arg, pid_t *pid);

/* Reaps *pid (which must exit), sets it to 0; returns its exit status. */
int reap_child(pid_t *pid);

/* How a scripted server ends its connection. */
enum after { AFTER_CLOSE, AFTER_ECHO, AFTER_WAIT_EOF };

/* In a scripted server's child: echo_loop or read until EOF (or neither), close fd,
 * exit with status. */
_Noreturn void serve_end(int fd, enum after after, int status);

/* ---- temp dirs ---- */

/* Makes /tmp/muxd-NAME-XXXXXX into buf; false on failure. */
bool tmpdir_new(char *buf, size_t size, const char *name);
void tmpdir_remove(const char *dir); /* with everything inside */

/* ---- a recording client of a transport layer ---- */

struct peaks {
	size_t in, out, lower_in, lower_out; /* the buffers' largest lengths seen */
};

void peaks_track(struct peaks *p, struct transport *t, struct transport *lower);

struct client {
	/* the hop (proxy layers) */
	uint16_t proxy_port;
	char proxy_name[32];
	const char *host;
	uint16_t port;
	const char *auth;        /* CONNECT: Proxy-Authorization user:pass */
	bool remote_dns;         /* SOCKS5: the proxy resolves host */
	const char *user, *pass; /* SOCKS5 */
	/* state */
	struct transport *t, *lower;
	pid_t pid;       /* a server child of the connection (TLS) */
	bool layer_made; /* lower belongs to the layer */
	bool connected, eof, failed, timed_out;
	int reads; /* on_read calls */
	enum muxd_err err;
	char reason[512];
	struct evbuffer *got;
	size_t expect;            /* break the loop once this much arrived (0: never) */
	const unsigned char *src; /* bytes to send, respecting backpressure */
	size_t src_len, sent;
	bool shutdown_after_send;
	bool slow;             /* TLS: drain input from a timer, not from on_read */
	bool close_on_read;    /* close the layer inside on_read */
	bool close_on_connect; /* ... inside on_event(CONNECTED) */
	bool close_on_create;  /* proxy: ... right after the layer is made */
	const char *early;     /* proxy: written right after the layer is made */
	bool pause_on_connect; /* set_reading(false) on CONNECTED (proxy: on again 100 ms later) */
	struct event *resume_timer; /* proxy */
	struct event *drain_timer;  /* TLS */
	struct peaks max;
	bool track_lower; /* c->max follows the lower layer's buffers too */
};

void track(struct client *c);       /* updates c->max */
void pump(struct client *c);        /* sends more of c->src; shuts down after it if asked */
void take_input(struct client *c);  /* moves the input to c->got; breaks at c->expect */
void run(struct client *c, int ms); /* loop_run; c->timed_out when the time ran out */
void client_expect_got(struct client *c, const void *data, size_t n); /* c->got is data */

/* Pieces of a client's callbacks; each breaks the loop. */
void client_close_layer(struct client *c); /* closes c->t, sets it to NULL */
void client_read_close(struct client *c);  /* keeps the input, then client_close_layer */
void client_eof(struct client *c);         /* c->eof, then take_input */
void client_error(struct client *c, enum muxd_err err, const char *reason); /* c->failed... */

/* ---- a client through a proxy layer over tcp to 127.0.0.1:proxy_port ---- */

typedef struct transport *(*proxy_layer_fn)(struct client *c, const struct transport_cbs *cbs);

extern pid_t proxy_pid; /* the proxy of the running test (stopped by proxy_teardown) */

int fake_status(void); /* reap_child(&proxy_pid) */

/* Fixtures: SIGPIPE ignored, m with cfg and dns; name and make the layer. */
void proxy_setup(const char *layer_name, proxy_layer_fn make);
void proxy_teardown(void);

void proxy_open(struct client *c, uint16_t proxy_port);
void proxy_done(struct client *c);
/* Opens a tunnel, sends msg, expects it echoed (no half-close). */
void proxy_expect_echo(struct client *c, uint16_t proxy_port, const char *msg);
/* Opens a tunnel and expects it to fail with err. */
void proxy_expect_failure(struct client *c, uint16_t proxy_port, enum muxd_err err);
/* Opens a tunnel and echoes 1 MB (pattern_new(MB, seed)) through it within ms, the
 * buffers staying bounded. */
void proxy_expect_bulk_echo(struct client *c, uint16_t proxy_port, unsigned seed, int ms);
/* Opens a tunnel whose first bytes, right after the handshake, are first. */
void proxy_expect_first(struct client *c, uint16_t proxy_port, const char *first);
/* Then: drops what arrived, sends "again" with a half-close, expects it echoed and EOF. */
void proxy_expect_again(struct client *c);
/* The layer closed inside on_event(CONNECTED), inside on_read (the server sends two
 * bytes after the handshake) and right after it is made, for the hops c[0..2] (the
 * flags are set here), each against serve(fd, arg) forked for one connection. */
void proxy_close_inside_callbacks(struct client c[3], void (*serve)(int fd, const void *arg),
                                  const void *arg);

#endif
