/*
 * Fuzz target for the HTTP/2 server session of intercepted clients
 * (src/client/h2_session.c): the input is what a client sends after the
 * connection preface (which the target sends first), cut into reads at the
 * points its first bytes choose, over an in-memory transport. The exchanges
 * are fakes (ld --wrap, H2_SESSION_SEAMS in the Makefile) that take the
 * request body and answer each request with a head, a body and trailers, or
 * an abort, from the event loop.
 *
 * Checks: every request an exchange gets is a valid HTTP/1.1 head naming a
 * method and an origin-form target, with a Host; request body bytes held per
 * stream stay within one stream window; what muxd writes stays bounded;
 * nothing hangs; and the session is freed cleanly whatever state it is in.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/h2_session.h"
#include "client/session.h"
#include "config.h"
#include "exchange.h"
#include "fuzz.h"
#include "http1.h"
#include "log.h"
#include "muxd.h"
#include "transport/transport.h"

static struct muxd m;

#define NEX 64

struct exchange {
	struct client_stream *cs;
	struct http1_msg req;
	bool answered, gone;
	size_t body;
};

static struct exchange exs[NEX];
static int nex;

struct exchange *__wrap_exchange_start(struct muxd *mm, struct client_stream *client,
                                       struct http1_msg *req, const struct http1_uri *uri,
                                       const char *tls_name);
void __wrap_exchange_client_read(struct exchange *ex);
void __wrap_exchange_client_drain(struct exchange *ex);
void __wrap_exchange_abort(struct exchange *ex);
bool __wrap_exchange_awaits_client(const struct exchange *ex);

static void take_body(struct exchange *ex)
{
	const char *data;
	size_t len;
	enum client_body e;

	do {
		e = ex->cs->ops->read_body(ex->cs, 1000, &data, &len);
		CHECK(len <= 1000);
		ex->body += len;
		if (e == CLIENT_BODY_DATA || e == CLIENT_BODY_END)
			ex->cs->ops->consumed(ex->cs);
		if (e == CLIENT_BODY_END)
			(void)ex->cs->ops->trailers(ex->cs);
	} while (e == CLIENT_BODY_DATA);
}

struct exchange *__wrap_exchange_start(struct muxd *mm, struct client_stream *client,
                                       struct http1_msg *req, const struct http1_uri *uri,
                                       const char *tls_name)
{
	struct exchange *ex;

	(void)mm;
	(void)tls_name;
	CHECK(req->method && req->target && req->target[0] == '/' && http1_find(req, "host"));
	CHECK(uri->path[0] == '/');
	if (nex == NEX)
		return NULL; /* the session answers 500 */
	ex = &exs[nex++];
	memset(ex, 0, sizeof(*ex));
	ex->cs = client;
	ex->req = *req;
	memset(req, 0, sizeof(*req));
	return ex;
}

void __wrap_exchange_client_read(struct exchange *ex)
{
	CHECK(!ex->gone);
	take_body(ex);
}

void __wrap_exchange_client_drain(struct exchange *ex)
{
	CHECK(!ex->gone);
}

void __wrap_exchange_abort(struct exchange *ex)
{
	CHECK(!ex->gone);
	ex->gone = true;
}

bool __wrap_exchange_awaits_client(const struct exchange *ex)
{
	return !ex->gone && !ex->answered;
}

/* Answers from the event loop, as a real exchange would. */
static void answer_all(unsigned salt)
{
	static const char body[] = "fuzzed answer";

	for (int i = 0; i < nex; i++) {
		struct exchange *ex = &exs[i];
		struct http1_msg h;
		struct evbuffer *b;
		if (ex->gone || ex->answered)
			continue;
		take_body(ex);
		ex->answered = true;
		ex->gone = true;
		if ((salt + (unsigned)i) % 5 == 4) {
			ex->cs->ops->respond(ex->cs, 502, "text/plain", body, sizeof(body) - 1);
			ex->cs->ops->done(ex->cs);
			continue;
		}
		memset(&h, 0, sizeof(h));
		h.status = 200;
		h.reason = "OK";
		h.body = (salt + (unsigned)i) % 3 ? HTTP1_BODY_UNKNOWN : HTTP1_BODY_NONE;
		h.fields[0] = (struct http1_field){"Content-Type", 12, "text/plain", 10};
		h.nfields = 1;
		ex->cs->ops->send_head(ex->cs, &h, "1.1 muxd", false);
		if (h.body == HTTP1_BODY_NONE) {
			ex->cs->ops->send_end(ex->cs, "");
			ex->cs->ops->done(ex->cs);
			continue;
		}
		if ((salt + (unsigned)i) % 7 == 6) {
			ex->cs->ops->abort(ex->cs);
			continue;
		}
		b = evbuffer_new();
		CHECK(b);
		evbuffer_add(b, body, sizeof(body) - 1);
		if (ex->cs->ops->send_space(ex->cs) >= sizeof(body) - 1)
			ex->cs->ops->send_body(ex->cs, b, sizeof(body) - 1);
		evbuffer_free(b);
		ex->cs->ops->send_end(ex->cs, "grpc-status: 0\r\n");
		ex->cs->ops->done(ex->cs);
	}
}

/* ---- the owner and the in-memory transport ---- */

static bool over;

static int route(void *ctx, const struct http1_msg *req, struct http1_uri *uri,
                 const char **tls_name, char *why, size_t why_size)
{
	(void)ctx;
	memset(uri, 0, sizeof(*uri));
	if (strlen(req->target) >= sizeof(uri->path)) {
		snprintf(why, why_size, "muxd: too long\n");
		return 414;
	}
	strcpy(uri->scheme, "https");
	strcpy(uri->host, "origin.test");
	uri->port = 443;
	strcpy(uri->path, req->target);
	*tls_name = NULL;
	return 0;
}

static void on_over(void *ctx, bool flush, bool peer_eof)
{
	(void)ctx;
	(void)flush;
	(void)peer_eof;
	over = true;
}

static const struct h2_session_owner owner = {route, on_over};

static struct mem {
	struct transport t;
	struct evbuffer *in, *out;
} ft;

static struct evbuffer *mem_input(struct transport *t)
{
	(void)t;
	return ft.in;
}

static struct evbuffer *mem_output(struct transport *t)
{
	(void)t;
	return ft.out;
}

static void mem_set_reading(struct transport *t, bool on)
{
	(void)t;
	(void)on;
}

static void mem_nothing(struct transport *t)
{
	(void)t;
}

static bool mem_alive(struct transport *t)
{
	(void)t;
	return true;
}

static const struct transport_ops mem_ops = {mem_input,   mem_output,  mem_set_reading,
                                             mem_nothing, mem_nothing, mem_alive};

static void init(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	log_set_level(LOG_ERROR);
	m.base = event_base_new();
	m.cfg = config_defaults();
	CHECK(m.base && m.cfg);
	ft.t.ops = &mem_ops;
}

/* One turn of the loop: the kicks run; the client reads what muxd wrote. */
static void turn(unsigned salt)
{
	event_base_loop(m.base, EVLOOP_NONBLOCK);
	if (!over)
		answer_all(salt);
	event_base_loop(m.base, EVLOOP_NONBLOCK);
	CHECK(evbuffer_get_length(ft.out) <= 8 * 1024 * 1024);
	evbuffer_drain(ft.out, evbuffer_get_length(ft.out));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	struct h2_session_params p = {.peer = "fuzz", .max_streams = 16};
	struct h2_session *s;
	unsigned salt, step;

	init();
	if (size < 2)
		return 0;
	salt = data[0];
	step = (unsigned)data[1] * 64 + 1; /* bytes per read */
	data += 2;
	size -= 2;
	nex = 0;
	over = false;
	ft.in = evbuffer_new();
	ft.out = evbuffer_new();
	CHECK(ft.in && ft.out);
	s = h2_session_new(&m, &ft.t, &p, &owner, NULL);
	CHECK(s);
	turn(salt);
	evbuffer_add(ft.in, preface, sizeof(preface) - 1);
	for (size_t off = 0; off < size && !over; off += step) {
		size_t n = size - off < step ? size - off : step;
		evbuffer_add(ft.in, data + off, n);
		ft.t.cbs.on_read(ft.t.ctx);
		turn(salt);
	}
	for (int i = 0; i < 4 && !over; i++)
		turn(salt);
	h2_session_free(s);
	event_base_loop(m.base, EVLOOP_NONBLOCK);
	for (int i = 0; i < nex; i++)
		http1_msg_free(&exs[i].req);
	evbuffer_free(ft.in);
	evbuffer_free(ft.out);
	return 0;
}
