// Host (CPU) memory for tensors: 64-byte aligned blocks, with large blocks cached for reuse.
//
// Note [Host block cache]
// glibc serves blocks above its mmap threshold (128 KiB to 32 MiB, adaptive) with fresh
// mmap()s and returns them with munmap(), so every large op output page-faults on first touch:
// measured 3-10x the kernel's own time for memory-bound ops (gelu_tanh on a 58 MB tensor:
// 26 ms instead of ~8 ms). The shapes of a sampling loop repeat every step, so freed blocks
// of at least kMinCachedBytes are kept in free lists keyed by a size class (the size rounded
// up to 1/8 of its power of two: at most 12.5% slack) and handed out again, their pages
// already mapped. The cache holds at most cache_limit() bytes (SD3_HOST_CACHE_MB, default
// 2048; 0 turns it off); a block freed beyond that goes back to the system.
#pragma once

#include <cstddef>

#include "engine/device.h"

namespace sd3::host {

constexpr size_t kAlignment = 64;
constexpr size_t kMinCachedBytes = size_t{1} << 20;

void* alloc(size_t bytes);
// `bytes` must be the size given to alloc.
void free(void* ptr, size_t bytes);

// current: bytes handed out and not freed (size classes included); peak: its maximum since the
// start or the last reset; reserved: current plus the cached free blocks.
MemoryStats stats();
void reset_peak();

size_t cache_limit();
void set_cache_limit(size_t bytes);  // also releases cached blocks beyond the new limit
// Returns every cached block to the system.
void trim();

}  // namespace sd3::host
