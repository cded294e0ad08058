/*
 * h2_mem — the allocator muxd gives each nghttp2 session
 * (nghttp2_session_*_new3): the C library's for everything but allocations
 * of H2_MEM_MAP_MIN bytes or more, which get pages of their own (mmap),
 * page-aligned and without a header. Two such blocks live as long as the
 * session in practice: nghttp2's outbound frame buffer (16 KiB + a frame
 * header), into which every frame is serialised from its start, and its
 * stream map's table (256 buckets of 16 bytes, all zero when no stream is
 * open). Mapped, only pages written take memory, and h2_mem_release gives
 * them back while the connection is idle: the frame buffer's pages (dead
 * between frames) and every page of a mapped block that is all zero (its
 * content unchanged). bench/scale, phase 3: an idle pooled connection keeps
 * neither. Owns: its mapped blocks' bookkeeping (H2_MEM_MAPS of them; more
 * large blocks at once come from malloc).
 */
#ifndef MUXD_UPSTREAM_H2_MEM_H
#define MUXD_UPSTREAM_H2_MEM_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>

#define H2_MEM_MAP_MIN 4096
#define H2_MEM_MAPS 4

struct h2_mem {
	nghttp2_mem mem; /* what nghttp2 is given; mem_user_data is this struct */
	struct h2_mem_map {
		void *p; /* NULL: free slot */
		size_t size;
		bool frames; /* the frame buffer: content dead between frames */
	} maps[H2_MEM_MAPS];
};

/* Sets m up (embedded in the connection; it must outlive the session). */
void h2_mem_init(struct h2_mem *m);
static inline nghttp2_mem *h2_mem_nghttp2(struct h2_mem *m)
{
	return &m->mem;
}
/* Right after the session was made: the mapped blocks of 16 KiB or more that
 * exist now are its outbound frame buffer (nghttp2 1.52 allocates nothing
 * else that large when it makes a session). */
void h2_mem_mark_frames(struct h2_mem *m);
/*
 * Gives back the pages of the mapped blocks that hold nothing: every page
 * that is all zero, and, when frames_dead (no frame in flight: the session
 * has nothing to write, nghttp2_session_want_write() is 0, so its next frame
 * is serialised from the buffer's start), the frame buffer's. A page given
 * back reads as zero and takes memory again once written. Returns the bytes
 * given back (pages that were not resident count too). Costs a read of the
 * blocks and a madvise each: call it once per idle period, not per request.
 */
size_t h2_mem_release(struct h2_mem *m, bool frames_dead);

#endif
