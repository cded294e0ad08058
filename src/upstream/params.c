/*
 * params — the configuration an upstream connection runs with, taken from
 * the current config when the connection is made (upstream.h): the codecs
 * never hold or read a config, so a reload applies to new connections only.
 */
#include "config.h"
#include "upstream/upstream.h"

void upstream_params_init(struct upstream_params *p, const struct config *cfg)
{
	*p = (struct upstream_params){
	    .response_timeout_ms = cfg->response_timeout_ms,
	    .max_stream_window_kib = cfg->max_stream_window_kib,
	    .max_conn_window_kib = cfg->max_conn_window_kib,
	    .window_budget_kib = cfg->window_budget_kib,
	};
}
