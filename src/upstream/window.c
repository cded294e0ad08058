/*
 * window — the receive-window auto-tuning rule (see window.h).
 */
#include "upstream/window.h"

uint64_t window_next(const struct window_in *in)
{
	uint64_t grown, room;

	if (in->rtt_us == 0 || in->consumed < in->window / 2 || in->window >= in->max)
		return in->window;
	/* drained at window / (WINDOW_GROW_RTTS round trips) or slower: the
	 * client, not the window, set the pace */
	if ((double)in->elapsed_us * (double)in->window >=
	    (double)WINDOW_GROW_RTTS * (double)in->rtt_us * (double)in->consumed)
		return in->window;
	grown = in->window * 2 < in->max ? in->window * 2 : in->max;
	room = grown - in->window;
	if (room > in->budget_left)
		room = in->budget_left;
	return in->window + room;
}
