/*
 * h2_mem — the allocator muxd gives nghttp2 (nghttp2_session_*_new3): the
 * C library's for everything but allocations of H2_MEM_MAP_MIN bytes or
 * more, which get pages of their own (mmap). Such a block is one per session
 * in practice: the outbound frame buffer (16 KiB + a frame header), kept for
 * the session's life, into which every frame is serialised from its start.
 * Mapped, only the pages frames were written to take memory, so an idle
 * pooled connection that carried small frames keeps one page of it rather
 * than 16 KiB (bench/scale, phase 3). Stateless; nothing to set up.
 */
#ifndef MUXD_UPSTREAM_H2_MEM_H
#define MUXD_UPSTREAM_H2_MEM_H

#include <nghttp2/nghttp2.h>

#define H2_MEM_MAP_MIN (16 * 1024)

/* The allocator (static storage; its mem_user_data is unused). */
nghttp2_mem *h2_mem(void);

#endif
