/* flood — see flood.h. */
#include "upstream/flood.h"

#include <string.h>

bool flood_add(struct flood_meter *fm, uint64_t now_ms, unsigned kind, uint64_t amount,
               uint64_t limit)
{
	if (kind >= FLOOD_KINDS)
		return false;
	if (!fm->started || now_ms - fm->since_ms >= 1000) {
		memset(fm->n, 0, sizeof(fm->n));
		fm->since_ms = now_ms;
		fm->started = true;
	}
	fm->n[kind] = amount > UINT64_MAX - fm->n[kind] ? UINT64_MAX : fm->n[kind] + amount;
	return fm->n[kind] > limit;
}
