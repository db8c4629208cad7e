// The CUDA runtime behind engine/device.cpp: availability, the caching allocator, copies,
// synchronisation and memory statistics. A pure C++ header (no CUDA types) so the engine
// compiles it without the CUDA headers; kernels reach the stream and library handles
// through kernels/cuda/context.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/device.h"

namespace sd3::cuda {

// True when the CUDA runtime initialises and reports at least one device. Never throws; the
// first call decides and the answer is cached.
bool runtime_available();
// Why runtime_available() is false (the runtime's own message), or "" when it is true.
std::string runtime_unavailable_reason();

// The device's name as the driver reports it (e.g. "NVIDIA H100 80GB HBM3"), for reports.
std::string device_name(int device);

// Device memory from the caching allocator: freed blocks go back to per-size free lists and
// are reused by later requests of about the same size, so a sampling loop that allocates the
// same shapes every step never reaches cudaMalloc/cudaFree after its first step.
void* alloc(int device, size_t bytes);
void free(int device, void* p, size_t bytes);
// Returns every cached free block to the driver (cudaFree); live blocks are untouched.
void empty_cache();
// Debugging and tests: when on, every block alloc() hands out is first filled with 0xFF bytes
// (NaN in f32, f16 and bf16), so an output element a kernel forgets to write shows as NaN.
// Also switched on by the environment variable SD3_CUDA_POISON=1.
void set_alloc_poison(bool on);

// Copies between host and device memory (or device to device). Host->device goes through
// pinned staging buffers and returns without waiting for the device; device->host waits.
void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t bytes);
void synchronize(int device);

// The op profile's timestamps (Note [Op profile], engine/op_profile.h): profile_mark records
// an event on the device's stream and returns its slot; profile_elapsed_ms reads the time
// between two slots once the device has passed them (synchronize first); profile_reset_events
// frees every slot for reuse (the events themselves are kept).
int64_t profile_mark(int device);
double profile_elapsed_ms(int device, int64_t from, int64_t to);
void profile_reset_events();

// Statistics summed over all devices: current = bytes in live blocks, peak = the most
// current ever was since the last reset, reserved = bytes obtained from cudaMalloc.
MemoryStats memory_stats();
void reset_peak_memory();

}  // namespace sd3::cuda
