/*
 * heap — where allocations land, so that a load peak's memory goes back to
 * the system when the peak is over.
 *
 * libevent keeps a small slot per descriptor number once one was watched,
 * until the event base is freed. Made from malloc during a load peak, each
 * slot takes a hole of the peak's freed heap and pins that page after the
 * peak (1600 descriptors left ~1.2 MiB that malloc_trim could not return).
 * heap_libevent_init() gives libevent allocation functions that put its
 * allocations of at most HEAP_SMALL_MAX bytes (those slots) on pages of
 * their own, packed, and hand everything else to malloc. Call it first,
 * before anything allocates through libevent (it is not thread-safe; muxd
 * has one thread).
 *
 * glibc keeps the last 7 freed chunks of each small size (up to 1 KiB) in a
 * per-thread cache that malloc_trim does not empty; after a peak those 448
 * chunks lie all over the freed heap and pin a page each (~290 pages after
 * 1000 clients). heap_trim() moves chunks reserved at start into that cache
 * in their place, so that the peak's chunks go back to the heap's free
 * lists, then trims. heap_trim_init() makes that reserve (~240 KiB, at
 * start, while the heap is compact).
 */
#ifndef MUXD_HEAP_H
#define MUXD_HEAP_H

#include <stdbool.h>
#include <stddef.h>

#define HEAP_SMALL_MAX 32

/* Installs the functions; false (and libevent keeps malloc) when the
 * region for the small allocations cannot be reserved. */
bool heap_libevent_init(void);

/* Reserves the chunks heap_trim() swaps into glibc's cache (none elsewhere). */
void heap_trim_init(void);
/* Returns free heap memory to the system: glibc's small-chunk cache swapped
 * for the reserve, then malloc_trim. Call while idle: it costs ~1800 malloc
 * and free calls and two walks of the free heap. */
void heap_trim(void);

/* The small-allocation region's use: cells handed out now, and bytes of
 * the region ever touched (for tests). */
void heap_small_usage(size_t *cells_in_use, size_t *bytes_touched);

/* Whether p lies in the small-allocation region (tests). */
bool heap_is_small(const void *p);

#endif
