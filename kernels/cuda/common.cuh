// Internal device helpers shared by the kernel files: element types, 16-byte vector access,
// warp/block reductions, launch sizing and dtype dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "engine/tensor.h"
#include "kernels/cuda/context.h"

namespace sd3::cuda {

// ---- element conversion -----------------------------------------------------------------

__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// A float tensor whose dtype is known only at run time (small parameter vectors: norm
// weights, modulation vectors). The switch is uniform across a warp, so it costs little.
struct AnyPtr {
  const void* p = nullptr;
  int dtype = 0;  // 0 f32, 1 f16, 2 bf16
  __device__ __forceinline__ float operator[](int64_t i) const {
    switch (dtype) {
      case 1: return __half2float(static_cast<const __half*>(p)[i]);
      case 2: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
      default: return static_cast<const float*>(p)[i];
    }
  }
};
// The tensor must be contiguous (callers pass ops::contiguous results) or undefined.
AnyPtr any_ptr(const Tensor& t);

// ---- 16-byte vectors ----------------------------------------------------------------------

// kVec elements of T in one 16-byte access.
template <class T>
struct Vec {
  static constexpr int kVec = 16 / sizeof(T);
  union {
    uint4 raw;
    T v[kVec];
  };
  __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void load_nc(const T* p) {
    raw = __ldg(reinterpret_cast<const uint4*>(p));
  }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ __forceinline__ void to_float(float* f) const {
#pragma unroll
    for (int i = 0; i < kVec; ++i) f[i] = to_f32(v[i]);
  }
  __device__ __forceinline__ void from_float(const float* f) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = from_f32<T>(f[i]);
  }
};

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// ---- reductions ---------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats and may be
// reused after the call returns (the function ends with a barrier).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : 0.0f;
  r = warp_sum(r);
  return r;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  return r;
}

// ---- launch helpers -----------------------------------------------------------------------

inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<unsigned>(b);
}

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on the current device, once per
// device (the attribute belongs to the device's context): `done` is the caller's per-kernel
// set of devices already raised (bit d for device d < 64; later devices are raised each call).
// Returns true when it set the attribute (the caller may set others alongside).
inline bool raise_smem_limit(const void* kernel, size_t bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__);
  const uint64_t bit = dev >= 0 && dev < 64 ? uint64_t{1} << dev : 0;
  if (bit && (done.load() & bit)) return false;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(bytes)),
             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", __FILE__, __LINE__);
  done.fetch_or(bit);
  return true;
}

// Runs f(T{}) with T the CUDA element type of a float dtype.
template <class F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::F16: f(__half{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    default: fail(op, ": CUDA kernel takes f32, f16 or bf16, got ", dtype_name(dt));
  }
}

// Checks that t is a defined CUDA float tensor; names the op and argument on failure.
void check_float_input(const Tensor& t, const char* op, const char* arg);
// Contiguous f32/f16/bf16 vector of `n` elements (or undefined when t is undefined).
Tensor param_vector(const Tensor& t, int64_t n, const char* op, const char* arg);

}  // namespace sd3::cuda
