/*
 * window — the receive-window auto-tuning rule (see window.h).
 */
#include "upstream/window.h"

uint64_t window_next(const struct window_in *in)
{
	uint64_t grown, room;

	if (in->rtt_us == 0 || in->consumed < in->window || in->window >= in->max)
		return in->window;
	if (in->elapsed_us >= WINDOW_GROW_RTTS * in->rtt_us)
		return in->window; /* the client, not the window, set the pace */
	grown = in->window * 2 < in->max ? in->window * 2 : in->max;
	room = grown - in->window;
	if (room > in->budget_left)
		room = in->budget_left;
	return in->window + room;
}
