/*
 * via — reading Via field values (RFC 9110 §7.6.3) for loop detection: walks
 * the comma-separated "received-protocol RWS received-by [RWS comment]"
 * entries of one field value and hands each received-by to a callback.
 * A pure leaf: no allocation, no state, no knowledge of which name is ours.
 */
#ifndef MUXD_VIA_H
#define MUXD_VIA_H

#include <stdbool.h>
#include <stddef.h>

/* Called with each received-by (a pseudonym or host[:port], never empty, never
 * containing SP, HTAB, ',' or '('), in field order; return true to stop. */
typedef bool (*via_name_fn)(void *arg, const char *name, size_t len);

/* Walks the value (len bytes, no terminator needed). Empty entries and
 * entries without a received-by are skipped; commas inside comments (which
 * nest and take backslash escapes) do not split entries, and names inside
 * comments are never reported; an unclosed comment runs to the end of the
 * value. Returns true as soon as fn does, false when the value is done. */
bool via_names(const char *value, size_t len, via_name_fn fn, void *arg);

#endif
