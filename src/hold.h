/*
 * hold — the re-entrancy guard of an object whose callbacks may free it.
 *
 * The rule: call the user last; a callback may free the object. Code that
 * calls out (a user's or an owner's callback) and still has work to do on
 * the object afterwards takes a hold around the calls. A close that arrives
 * while a hold is taken (from inside a callback) only marks the object
 * closing; the last release frees it. After a release that freed the object,
 * or once closing is set, touch nothing of it but what the guard says.
 *
 *	hold_take(&o->holds);
 *	o->cbs.on_event(o->ctx, ...);          may call o's close()
 *	if (hold_release(&o->holds) && o->closing)
 *		o_free(o);                     the deferred close
 *
 *	close():  if (hold_close(o->holds, &o->closing)) o_free(o);
 *
 * A leaf: the object keeps its own counter and flag (an unsigned and a bool).
 */
#ifndef MUXD_HOLD_H
#define MUXD_HOLD_H

#include <stdbool.h>

/* Enter a stretch that calls out; holds nest. */
static inline void hold_take(unsigned *holds)
{
	(*holds)++;
}

/* Leave it. True when that was the last hold: a close that came in
 * meanwhile (closing) may be carried out now. */
static inline bool hold_release(unsigned *holds)
{
	return --*holds == 0;
}

/* A close request. True when no hold is taken: free the object now.
 * Otherwise marks it closing, for the last hold_release to free. */
static inline bool hold_close(unsigned holds, bool *closing)
{
	if (holds == 0)
		return true;
	*closing = true;
	return false;
}

#endif
