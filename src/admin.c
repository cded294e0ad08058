/* admin — muxd's own pages: /metrics in the Prometheus text format. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "tls/ca.h"

static void render_metrics(struct muxd *m, FILE *f)
{
	const struct metrics *mt = &m->metrics;
	struct pool_counts counts;

	pool_count(m->pool, &counts);
	fprintf(f, "# HELP muxd_requests_total Requests forwarded, by upstream protocol.\n"
	           "# TYPE muxd_requests_total counter\n");
	for (int p = 0; p < PROTO_COUNT; p++)
		fprintf(f, "muxd_requests_total{proto=\"%s\"} %llu\n", proto_name(p),
		        (unsigned long long)mt->requests[p]);
	fprintf(f, "# HELP muxd_upstream_connections_opened_total Upstream connections opened.\n"
	           "# TYPE muxd_upstream_connections_opened_total counter\n");
	for (int p = 0; p < PROTO_COUNT; p++)
		fprintf(f, "muxd_upstream_connections_opened_total{proto=\"%s\"} %llu\n",
		        proto_name(p), (unsigned long long)mt->upstream_opened[p]);
	fprintf(f, "# HELP muxd_upstream_connections Upstream connections in the pool.\n"
	           "# TYPE muxd_upstream_connections gauge\n");
	for (int p = 0; p < PROTO_COUNT; p++) {
		fprintf(f, "muxd_upstream_connections{proto=\"%s\",state=\"active\"} %u\n",
		        proto_name(p), counts.active[p]);
		fprintf(f, "muxd_upstream_connections{proto=\"%s\",state=\"idle\"} %u\n",
		        proto_name(p), counts.idle[p]);
	}
	fprintf(f,
	        "# HELP muxd_upstream_reuses_total Requests sent on an already used connection.\n"
	        "# TYPE muxd_upstream_reuses_total counter\n"
	        "muxd_upstream_reuses_total %llu\n"
	        "# HELP muxd_upstream_retries_total Requests retried after a reused connection "
	        "failed.\n"
	        "# TYPE muxd_upstream_retries_total counter\n"
	        "muxd_upstream_retries_total %llu\n",
	        (unsigned long long)mt->upstream_reuses, (unsigned long long)mt->upstream_retries);
	fprintf(f, "# HELP muxd_pool_evictions_total Connections that left the pool, by reason.\n"
	           "# TYPE muxd_pool_evictions_total counter\n");
	for (int r = 0; r < EVICT_COUNT; r++)
		fprintf(f, "muxd_pool_evictions_total{reason=\"%s\"} %llu\n", evict_reason_name(r),
		        (unsigned long long)mt->evictions[r]);
	fprintf(f, "# HELP muxd_h3_fallbacks_total QUIC attempts that failed over to TCP.\n"
	           "# TYPE muxd_h3_fallbacks_total counter\n"
	           "muxd_h3_fallbacks_total %llu\n"
	           "# HELP muxd_altsvc_entries Origins with a live HTTP/3 alternative.\n"
	           "# TYPE muxd_altsvc_entries gauge\n"
	           "muxd_altsvc_entries %zu\n",
	        (unsigned long long)mt->h3_fallbacks, pool_altsvc_count(m->pool));
	fprintf(f, "# HELP muxd_tls_leaf_issued_total Leaf certificates issued for interception.\n"
	           "# TYPE muxd_tls_leaf_issued_total counter\n"
	           "muxd_tls_leaf_issued_total %llu\n",
	        (unsigned long long)mt->tls_leaf_issued);
	fprintf(f, "# HELP muxd_client_connections Open client connections.\n"
	           "# TYPE muxd_client_connections gauge\n"
	           "muxd_client_connections %u\n",
	        m->nclients);
}

void admin_handle(struct muxd *m, const struct http1_msg *req, struct admin_response *out)
{
	FILE *f;
	size_t len = 0;
	const char *path = req->target;
	size_t plen = strcspn(path, "?");

	memset(out, 0, sizeof(*out));
	f = open_memstream(&out->body, &len);
	if (!f) {
		out->status = 500;
		out->content_type = "text/plain";
		return;
	}
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
		out->status = 405;
		out->content_type = "text/plain";
		fprintf(f, "muxd: admin pages answer GET only\n");
	} else if (plen == 8 && strncmp(path, "/metrics", 8) == 0) {
		out->status = 200;
		out->content_type = "text/plain; version=0.0.4";
		render_metrics(m, f);
	} else if (plen == 7 && strncmp(path, "/ca.pem", 7) == 0 && m->ca) {
		size_t n;
		const char *pem = local_ca_pem(m->ca, &n);
		out->status = 200;
		out->content_type = "application/x-pem-file";
		fwrite(pem, 1, n, f);
	} else {
		out->status = 404;
		out->content_type = "text/plain";
		fprintf(f, "muxd: no such page\n");
	}
	fclose(f);
	out->body_len = len;
}

void admin_response_free(struct admin_response *r)
{
	free(r->body);
	r->body = NULL;
}
