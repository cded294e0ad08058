/*
 * window — the receive-window auto-tuning rule (see window.h).
 */
#include "upstream/window.h"

uint64_t window_next(const struct window_in *in)
{
	double elapsed, target;
	uint64_t grown, room;

	if (in->rtt_us == 0 || in->consumed < in->window / 2 || in->window >= in->max)
		return in->window;
	/* the client's drain rate times WINDOW_GROW_RTTS round trips: when that
	 * is no more than the window, the client, not the window, set the pace */
	elapsed = in->elapsed_us ? (double)in->elapsed_us : 1.0;
	target = (double)in->consumed * (double)WINDOW_GROW_RTTS * (double)in->rtt_us / elapsed;
	if (target <= (double)in->window)
		return in->window;
	/* straight to the target (one check when the rate is known), at least
	 * doubling (a rate measured across the origin's wait for the window
	 * update understates the path) */
	grown = target >= (double)in->max ? in->max : (uint64_t)target;
	if (grown < in->window * 2)
		grown = in->window * 2 < in->max ? in->window * 2 : in->max;
	room = grown - in->window;
	if (room > in->budget_left)
		room = in->budget_left;
	return in->window + room;
}
