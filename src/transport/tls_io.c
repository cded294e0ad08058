/*
 * tls_io — the record pump shared by the TLS client layer (tls.c) and the
 * TLS server layer (tls_server.c): a GnuTLS session whose push/pull functions
 * move ciphertext through the buffers of the layer below, while the user
 * sees plaintext in this layer's own input and output buffers. All work runs
 * in "passes" (handshake, encrypt, decrypt, report) started from the lower
 * layer's callbacks or from a deferred event, never from inside a user's
 * call; user callbacks are never called re-entrantly, and a hold keeps the
 * layer alive while they run. Owns: the GnuTLS session, the plaintext
 * buffers, the pass event and the layer below; the sides own the rest
 * (through struct tls_io_hooks).
 */
#include "transport/tls_io.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hold.h"
#include "log.h"
#include "muxd.h"
#include "timeutil.h"

#define RECORD_MAX 16384
#define ALPN_MAX 8

static const char oom_reason[] = "out of memory";

static void free_reason(const char *r)
{
	if (r != oom_reason)
		free((char *)r);
}

void tls_io_reason(const char **reason, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	free_reason(*reason);
	*reason = s ? s : oom_reason;
}

void tls_io_free(struct tls_io *io)
{
	if (io->s)
		gnutls_deinit(io->s);
	if (io->pass_ev)
		event_free(io->pass_ev);
	if (io->early_deadline)
		event_free(io->early_deadline);
	if (io->in)
		evbuffer_free(io->in);
	if (io->out)
		evbuffer_free(io->out);
	if (io->lower)
		transport_close(io->lower);
	free_reason(io->lower_reason);
	free_reason(io->fail_reason);
	io->hooks->destroy(io);
}

static void hold(struct tls_io *io)
{
	hold_take(&io->holds);
}

/* Returns false when the layer is closed (and maybe freed): touch nothing. */
static bool release(struct tls_io *io)
{
	if (hold_release(&io->holds) && io->closing) {
		tls_io_free(io);
		return false;
	}
	return !io->closing;
}

static void schedule(struct tls_io *io)
{
	if (io->pass_ev && io->state != TLS_IO_DEAD)
		event_active(io->pass_ev, EV_TIMEOUT, 0);
}

/* GnuTLS transport functions: ciphertext to and from the layer below. */
static ssize_t push_fn(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tls_io *io = ptr;

	if (evbuffer_add(transport_output(io->lower), data, len) < 0) {
		gnutls_transport_set_errno(io->s, ENOMEM);
		return -1;
	}
	return (ssize_t)len;
}

static ssize_t pull_fn(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tls_io *io = ptr;
	struct evbuffer *in = transport_input(io->lower);
	int n;

	if (evbuffer_get_length(in) == 0) {
		if (io->lower_eof || io->lower_failed)
			return 0;
		gnutls_transport_set_errno(io->s, EAGAIN);
		return -1;
	}
	n = evbuffer_remove(in, data, len);
	if (n < 0) {
		gnutls_transport_set_errno(io->s, EIO);
		return -1;
	}
	return n;
}

/* Never waits: GnuTLS asks this only to learn whether bytes are there. */
static int pull_timeout_fn(gnutls_transport_ptr_t ptr, unsigned ms)
{
	struct tls_io *io = ptr;

	(void)ms;
	if (evbuffer_get_length(transport_input(io->lower)) > 0 || io->lower_eof ||
	    io->lower_failed)
		return 1;
	return 0;
}

void tls_io_set_session(struct tls_io *io, gnutls_session_t s)
{
	gnutls_transport_set_ptr(s, io);
	gnutls_transport_set_push_function(s, push_fn);
	gnutls_transport_set_pull_function(s, pull_fn);
	gnutls_transport_set_pull_timeout_function(s, pull_timeout_fn);
	io->s = s;
}

static void apply_reading(struct tls_io *io)
{
	bool on = (io->state == TLS_IO_HANDSHAKE && !io->early_wait) ||
	          (io->state == TLS_IO_OPEN && io->reading);

	io->lower->ops->set_reading(io->lower, on);
}

/* Reports an event to the user and marks the layer dead (for errors). Returns
 * false when the user closed the layer. */
static bool report(struct tls_io *io, enum transport_event ev, enum muxd_err err,
                   const char *reason)
{
	if (ev == TRANSPORT_ERROR) {
		io->state = TLS_IO_DEAD;
		if (io->pass_ev)
			event_del(io->pass_ev);
	}
	io->base.cbs.on_event(io->base.ctx, ev, err, reason);
	return !io->closing;
}

bool tls_io_fail(struct tls_io *io, const char *reason)
{
	log_debug("%s: %s: %s", io->hooks->log_name, io->hooks->fail_name(io), reason);
	return report(io, TRANSPORT_ERROR, ERR_TLS, reason);
}

/* Returns false when the layer is dead or closed. */
static bool do_handshake(struct tls_io *io)
{
	int r;

	do {
		r = gnutls_handshake(io->s);
	} while (r == GNUTLS_E_INTERRUPTED ||
	         (r < 0 && r != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(r)));
	if (r == GNUTLS_E_AGAIN && !io->lower_eof && !io->lower_failed)
		return true;
	if (r < 0) {
		io->hooks->handshake_failed(io, r);
		return false;
	}
	io->state = TLS_IO_OPEN;
	if (io->early_deadline)
		evtimer_del(io->early_deadline);
	io->hooks->connected(io);
	if (io->fail_reason) {
		log_debug("%s: %s: %s", io->hooks->log_name, io->hooks->fail_name(io),
		          io->fail_reason);
		report(io, TRANSPORT_ERROR, io->fail_err ? io->fail_err : ERR_TLS, io->fail_reason);
		return false;
	}
	if (io->early_len > 0 && io->early_accepted) /* else they go again now */
		evbuffer_drain(io->out, io->early_len);
	io->early_safe = io->early_len = 0;
	apply_reading(io);
	if (io->connected_reported)
		return true; /* the user was told before the handshake (0-RTT) */
	io->connected_reported = true;
	return report(io, TRANSPORT_CONNECTED, ERR_NONE, NULL);
}

/* The handshake that an early TRANSPORT_CONNECTED left running did not end
 * within its deadline (the chain's connect_timeout no longer covers it). */
static void early_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tls_io *io = arg;
	char reason[160];

	(void)fd;
	(void)what;
	hold(io);
	if (io->state == TLS_IO_HANDSHAKE) {
		snprintf(reason, sizeof(reason), "TLS handshake with %s timed out after %llu ms",
		         io->name ? io->name : "?", (unsigned long long)io->early_timeout_ms);
		log_debug("%s: %s", io->hooks->log_name, reason);
		report(io, TRANSPORT_ERROR, ERR_CONNECT_TIMEOUT, reason);
	}
	release(io);
}

/* 0-RTT: before the handshake, the user is told the layer is up; the pass
 * after that hands the replay-safe bytes written by then to GnuTLS, which
 * sends them as early data right after the ClientHello. Returns false when
 * the layer is closed or there is nothing more to do in this pass. */
static bool early_step(struct tls_io *io)
{
	size_t n;

	if (!io->connected_reported) {
		io->connected_reported = io->early_wait = true;
		if (io->early_timeout_ms > 0 &&
		    (io->early_deadline =
		         evtimer_new(event_get_base(io->pass_ev), early_deadline_cb, io))) {
			struct timeval tv = ms_to_timeval(io->early_timeout_ms);
			evtimer_add(io->early_deadline, &tv);
		}
		if (!report(io, TRANSPORT_CONNECTED, ERR_NONE, NULL))
			return false;
		schedule(io); /* the handshake, once the user's first bytes are in */
		return false;
	}
	io->early_wait = false;
	n = evbuffer_get_length(io->out);
	if (n > io->early_safe)
		n = io->early_safe;
	if (n > io->early_max)
		n = io->early_max;
	if (n > 0) {
		unsigned char *p = evbuffer_pullup(io->out, (ssize_t)n);
		/* GnuTLS keeps them all (or none) for after the ClientHello and
		 * answers 0 */
		ssize_t r = p ? gnutls_record_send_early_data(io->s, p, n) : -1;
		io->early_len = r >= 0 ? n : 0;
	}
	apply_reading(io);
	return true;
}

void tls_io_early_safe(struct tls_io *io, size_t n)
{
	if (io->early_wait)
		io->early_safe = n;
}

/* Plaintext out → ciphertext below while the layer below has room. Returns
 * a negative GnuTLS error, else 0; *took says whether plaintext was taken. */
static int encrypt_pass(struct tls_io *io, bool *took)
{
	struct evbuffer *low = transport_output(io->lower);

	*took = false;
	while (evbuffer_get_length(io->out) > 0 && evbuffer_get_length(low) < TRANSPORT_BUF) {
		size_t n = evbuffer_get_length(io->out);
		unsigned char *p;
		ssize_t r;

		if (n > RECORD_MAX)
			n = RECORD_MAX;
		p = evbuffer_pullup(io->out, (ssize_t)n);
		if (!p)
			return GNUTLS_E_MEMORY_ERROR;
		r = gnutls_record_send(io->s, p, n);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			break;
		if (r < 0)
			return (int)r;
		evbuffer_drain(io->out, (size_t)r);
		*took = true;
	}
	if (io->shut_wanted && !io->shut_done && evbuffer_get_length(io->out) == 0) {
		int r = gnutls_bye(io->s, GNUTLS_SHUT_WR);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			return 0;
		io->shut_done = true;
		io->lower->ops->shutdown(io->lower);
	}
	return 0;
}

/* Ciphertext below → plaintext in while in has room. Returns a negative
 * GnuTLS error, else 0; *got says whether plaintext arrived. */
static int decrypt_pass(struct tls_io *io, bool *got)
{
	struct evbuffer *low = transport_input(io->lower);

	*got = false;
	io->in_full = false;
	while (io->reading && !io->peer_eof) {
		struct evbuffer_iovec v;
		size_t before;
		ssize_t r;

		if (evbuffer_get_length(io->in) >= TRANSPORT_BUF) {
			io->in_full = true;
			break;
		}
		if (evbuffer_get_length(low) == 0 && gnutls_record_check_pending(io->s) == 0 &&
		    !io->lower_eof && !io->lower_failed)
			break;
		if (evbuffer_get_length(low) == 0 && gnutls_record_check_pending(io->s) == 0 &&
		    io->lower_eof && !io->lower_failed) {
			/* a FIN without close_notify: the peer's end of input, and a
			 * half-close. gnutls_record_recv would call it a premature
			 * termination and invalidate the session, and with it the
			 * answer still to be sent. */
			io->peer_eof = true;
			break;
		}
		if (evbuffer_reserve_space(io->in, RECORD_MAX, &v, 1) < 1)
			return GNUTLS_E_MEMORY_ERROR;
		before = evbuffer_get_length(low);
		r = gnutls_record_recv(io->s, v.iov_base, v.iov_len);
		if (r > 0) {
			v.iov_len = (size_t)r;
			evbuffer_commit_space(io->in, &v, 1);
			*got = true;
		}
		if (io->hooks->after_record)
			io->hooks->after_record(io);
		if (r > 0)
			continue;
		if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) {
			io->peer_eof = true;
			break;
		}
		if (r == GNUTLS_E_AGAIN) {
			/* also returned after a post-handshake message (a ticket, a key
			 * update) while more records may wait below */
			if (evbuffer_get_length(low) > 0 && evbuffer_get_length(low) < before)
				continue;
			if ((io->lower_eof || io->lower_failed) && evbuffer_get_length(low) == 0)
				io->peer_eof = true; /* a truncated record at EOF */
			break;
		}
		if (gnutls_error_is_fatal((int)r))
			return (int)r;
		/* a warning alert, a renegotiation request (refused by ignoring it) */
		if (evbuffer_get_length(low) >= before)
			break;
	}
	return 0;
}

/* One round of work; calls user callbacks last. Caller holds io. */
static void run_pass(struct tls_io *io)
{
	bool took = false, got = false;
	int r;

	if (io->state == TLS_IO_DEAD)
		return;
	if (!io->s) {
		tls_io_fail(io,
		            io->fail_reason ? io->fail_reason : "cannot set up the TLS session");
		return;
	}
	if (io->state == TLS_IO_HANDSHAKE && io->early_max > 0 &&
	    (!io->connected_reported || io->early_wait) && !early_step(io))
		return;
	if (io->state == TLS_IO_HANDSHAKE && !do_handshake(io))
		return;
	if (io->state != TLS_IO_OPEN)
		return;
	r = encrypt_pass(io, &took);
	if (r == 0)
		r = decrypt_pass(io, &got);
	if (got && io->base.cbs.on_read) {
		io->base.cbs.on_read(io->base.ctx);
		if (io->closing || io->state != TLS_IO_OPEN)
			return;
	}
	if (r < 0) {
		log_debug("%s: %s: %s", io->hooks->log_name, io->name, gnutls_strerror(r));
		report(io, TRANSPORT_ERROR, ERR_CLOSED, gnutls_strerror(r));
		return;
	}
	if (took && evbuffer_get_length(io->out) < TRANSPORT_BUF / 2 && io->base.cbs.on_drain) {
		io->base.cbs.on_drain(io->base.ctx);
		if (io->closing || io->state != TLS_IO_OPEN)
			return;
	}
	if (io->lower_failed && (!io->reading || io->peer_eof)) {
		report(io, TRANSPORT_ERROR, io->lower_err,
		       io->lower_reason ? io->lower_reason : "connection error");
		return;
	}
	if (io->peer_eof && !io->eof_reported) {
		io->eof_reported = true;
		report(io, TRANSPORT_EOF, ERR_CLOSED, "connection closed");
	}
}

static void pass_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tls_io *io = arg;

	(void)fd;
	(void)what;
	hold(io);
	run_pass(io);
	release(io);
}

static void lower_on_read(void *ctx)
{
	pass_cb(-1, 0, ctx);
}

static void lower_on_drain(void *ctx)
{
	pass_cb(-1, 0, ctx);
}

static void lower_on_event(void *ctx, enum transport_event ev, enum muxd_err err,
                           const char *reason)
{
	struct tls_io *io = ctx;

	if (ev == TRANSPORT_EOF) {
		io->lower_eof = true;
	} else if (ev == TRANSPORT_ERROR) {
		io->lower_failed = true;
		io->lower_err = err;
		tls_io_reason(&io->lower_reason, "%s", reason ? reason : "connection error");
	} else {
		return; /* CONNECTED: lower was connected already */
	}
	pass_cb(-1, 0, io);
}

/* Plaintext buffer callbacks: only schedule a pass, never call the user. */
static void out_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	(void)buf;
	if (info->n_added > 0)
		schedule(arg);
}

static void in_changed(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct tls_io *io = arg;

	if (info->n_deleted > 0 && io->in_full && evbuffer_get_length(buf) < TRANSPORT_BUF)
		schedule(io);
}

static struct evbuffer *io_input(struct transport *base)
{
	return ((struct tls_io *)base)->in;
}

static struct evbuffer *io_output(struct transport *base)
{
	return ((struct tls_io *)base)->out;
}

static void io_set_reading(struct transport *base, bool on)
{
	struct tls_io *io = (struct tls_io *)base;

	if (io->reading == on)
		return;
	io->reading = on;
	if (io->state == TLS_IO_DEAD)
		return;
	apply_reading(io);
	if (on)
		schedule(io); /* plaintext may be waiting inside GnuTLS or below */
}

static void io_shutdown(struct transport *base)
{
	struct tls_io *io = (struct tls_io *)base;

	if (io->shut_wanted)
		return;
	io->shut_wanted = true;
	schedule(io);
}

static void io_close(struct transport *base)
{
	struct tls_io *io = (struct tls_io *)base;

	if (!hold_close(io->holds, &io->closing)) {
		if (io->pass_ev)
			event_del(io->pass_ev);
		return;
	}
	tls_io_free(io);
}

static bool io_is_alive(struct transport *base)
{
	struct tls_io *io = (struct tls_io *)base;

	/* after an early TRANSPORT_CONNECTED (0-RTT) the handshake still runs */
	bool up =
	    io->state == TLS_IO_OPEN || (io->state == TLS_IO_HANDSHAKE && io->connected_reported);

	return up && !io->peer_eof && !io->lower_eof && !io->lower_failed &&
	       io->lower->ops->is_alive(io->lower);
}

static const struct transport_ops io_ops = {
    .input = io_input,
    .output = io_output,
    .set_reading = io_set_reading,
    .shutdown = io_shutdown,
    .close = io_close,
    .is_alive = io_is_alive,
};

bool tls_io_init(struct tls_io *io, const struct tls_io_hooks *hooks, struct event_base *base,
                 struct transport *lower, const struct transport_cbs *cbs, void *ctx)
{
	io->base.ops = &io_ops;
	transport_set_cbs(&io->base, cbs, ctx);
	io->hooks = hooks;
	io->lower = lower;
	io->reading = true;
	io->in = evbuffer_new();
	io->out = evbuffer_new();
	io->pass_ev = event_new(base, -1, 0, pass_cb, io);
	return io->in && io->out && io->pass_ev && evbuffer_add_cb(io->in, in_changed, io) &&
	       evbuffer_add_cb(io->out, out_changed, io);
}

void tls_io_start(struct tls_io *io)
{
	static const struct transport_cbs lower_cbs = {lower_on_read, lower_on_drain,
	                                               lower_on_event};

	transport_set_cbs(io->lower, &lower_cbs, io);
	apply_reading(io);
	/* the first pass runs from the loop: the handshake (which may find the
	 * start of the peer's hello already waiting below), or the setup failure */
	event_active(io->pass_ev, EV_TIMEOUT, 0);
}

int tls_io_set_alpn(gnutls_session_t s, const char *list, unsigned flags)
{
	gnutls_datum_t protos[ALPN_MAX];
	unsigned n = 0;
	const char *p = list;

	while (*p && n < ALPN_MAX) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > 0 && len < 256) {
			protos[n].data = (unsigned char *)p;
			protos[n].size = (unsigned)len;
			n++;
		}
		if (!end)
			break;
		p = end + 1;
	}
	return n ? gnutls_alpn_set_protocols(s, protos, n, flags) : 0;
}
