// GroupNorm for the VAE, plain and fused with SiLU:
//
//   y[b, c, s] = act((x[b, c, s] - mean[b, g]) * rstd[b, g] * w[c] + bias[c]),  g = c / (C/G)
//   mean, var over the (C/G) * S elements of group g (S = H * W), rstd = 1/sqrt(var + eps),
//   act = SiLU (groupnorm_silu) or identity (group_norm).
//
// Bytes at best: x read once, y written once, 2 B C S sizeof(T). A VAE group at 1024x1024
// holds 4 channels x 1M pixels (8 MB in bf16), far more than a block can keep on chip, and
// there are only G = 32 groups per image, so one block per group would leave most of the GPU
// idle: a group is split over many blocks, whose statistics must meet before any of them can
// normalise. Two designs, chosen per call (Note [One-pass group norm]):
//   one pass  (2 B C S sizeof(T)): blocks keep their chunk in registers while the group's
//             statistics meet in global memory;
//   two pass  (3 B C S sizeof(T)): a statistics kernel, then a normalise kernel that reads x
//             again (Note [Split group statistics]); the fallback for shapes the first does
//             not take, and a lab variant.
// The unfused composition (group_norm then silu) moves 5 passes.
//
// Note [Split group statistics]
// Kernel 1 splits each group into chunks (grid = chunks x B*G); each block reduces its chunk
// to (count, mean, M2) from per-thread shifted sums and a block merge by Chan's formula,
// writing one partial per chunk. Kernel 2 (one thread per 16-byte vector) merges the
// group's partials once per block (one warp, lanes in parallel) into shared memory, then
// normalises, applies the affine and the activation, and writes. Chan's merge keeps the variance
// accurate where E[x^2] - E[x]^2 would cancel on large groups with a large mean.
//
// Note [One-pass group norm]
// One kernel, launched cooperatively (every block resident at once) with a grid of at most
// the GPU's resident capacity. Each group is cut into chunks of kOneThreads x kVecs 16-byte
// vectors (32 or 64 KB); a block repeatedly takes the next chunk number from a global ticket
// counter, loads its chunk into registers (8 independent 16-byte loads per thread in flight),
// reduces it to (n, mean, M2) as in the two-pass kernel, publishes that partial (store, fence,
// atomic increment of the group's count), waits until the group's count reaches its chunk
// total, merges the group's partials (one warp) and normalises the chunk it still holds. x is
// read from memory once.
// Why this cannot deadlock: tickets are taken in increasing order and each block holds one
// chunk at a time, so a block can be stuck only on the group that contains the newest ticket
// taken; if every resident block were stuck, all R of them would hold distinct chunks of that
// one group and it would have more than R chunks. The host takes this path only when a
// group's chunk count is at most R (R = resident blocks, from the occupancy calculator), and
// the cooperative launch guarantees that all R blocks run together (it fails rather than
// oversubscribe; the host then falls back to two passes).
// Should co-residency ever fail anyway, a wait of 20 s traps: the launch fails with an error
// (reported at the next check) rather than hanging.
// Memory ordering: the publishing thread stores its partial, __threadfence()s, then increments
// the count; the waiting lane reads the count with ld.acquire.gpu, and the merging warp reads
// partials through L2 (__ldcg) after a fence, so it never sees a stale partial.
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kStatThreads = 256;
constexpr int64_t kChunk = 16384;  // elements per statistics block

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford merge(Welford a, Welford b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean;
  const float f = b.n / n;
  return Welford{n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

// Merges w across the warp (every lane gets the result).
__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Welford other{__shfl_xor_sync(0xffffffffu, w.n, o), __shfl_xor_sync(0xffffffffu, w.mean, o),
                  __shfl_xor_sync(0xffffffffu, w.m2, o)};
    w = merge(w, other);
  }
  return w;
}

// Reduces per-thread partials to one Welford in thread 0 (others get garbage). `red` holds
// one entry per warp and is free for reuse after the caller's next barrier.
__device__ __forceinline__ Welford block_welford(Welford w, Welford* red) {
  w = warp_welford(w);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = w;
  __syncthreads();
  Welford t = red[0];
  if (threadIdx.x == 0)
    for (int i = 1; i < static_cast<int>(blockDim.x >> 5); ++i) t = merge(t, red[i]);
  return t;
}

// Called by one whole warp: merges a group's `chunks` partials (a strided share per lane,
// read through L2, then shuffles) and has lane 0 store mean and 1/sqrt(var + eps) in stats.
__device__ __forceinline__ void merge_group_stats(const Welford* gp, int chunks, float eps,
                                                  float* stats) {
  Welford t{0.0f, 0.0f, 0.0f};
  for (int i = threadIdx.x & 31; i < chunks; i += 32)
    t = merge(t, Welford{__ldcg(&gp[i].n), __ldcg(&gp[i].mean), __ldcg(&gp[i].m2)});
  t = warp_welford(t);
  if ((threadIdx.x & 31) == 0) {
    stats[0] = t.mean;
    stats[1] = rsqrtf(t.m2 / t.n + eps);
  }
}

// One thread's statistics: sums of (v - K) and (v - K)^2 with K the thread's first value (the
// shift keeps the one-pass variance from cancelling), turned into (n, mean, M2) for merging.
struct ShiftedSums {
  float n = 0.0f, shift = 0.0f, s1 = 0.0f, s2 = 0.0f;
  template <int E>
  __device__ __forceinline__ void add(const float (&v)[E]) {
    if (n == 0.0f) shift = v[0];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float d = v[e] - shift;
      s1 += d;
      s2 += d * d;
    }
    n += E;
  }
  __device__ __forceinline__ Welford welford() const {
    Welford w{n, 0.0f, 0.0f};
    if (n > 0.0f) {
      const float dm = s1 / n;
      w.mean = shift + dm;
      w.m2 = fmaxf(s2 - s1 * dm, 0.0f);
    }
    return w;
  }
};

template <class T, int E>
__global__ void group_stats_kernel(Welford* __restrict__ partial, const T* __restrict__ x,
                                   int64_t group_elems, int chunks) {
  __shared__ Welford red[kStatThreads / 32];
  const int chunk = blockIdx.x, group = blockIdx.y;
  const T* gx = x + static_cast<int64_t>(group) * group_elems;
  const int64_t begin = chunk * kChunk;
  const int64_t end = min(group_elems, begin + kChunk);
  ShiftedSums sums;
  for (int64_t i = begin + threadIdx.x * E; i < end; i += blockDim.x * E) {
    float v[E];
    if constexpr (E > 1) {
      Vec<T> in;
      in.load_nc(gx + i);
      in.to_float(v);
    } else {
      v[0] = to_f32(gx[i]);
    }
    sums.add(v);
  }
  const Welford t = block_welford(sums.welford(), red);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(group) * chunks + chunk] = t;
}

// SiLU of the fused epilogue. For f32 outputs, full-precision expf and division, as the CPU
// reference. For 16-bit outputs, the fast exponential and reciprocal (relative error about
// 2^-21, far below the output's own rounding, 2^-9 in bf16 and 2^-12 in f16): at 3 TB/s a
// 16-bit group norm has about 38 instructions per element to spend on an H100, and the precise
// expf + IEEE division alone take most of them.
template <class T>
__device__ __forceinline__ float silu_out(float v) {
  if constexpr (sizeof(T) == 2) {
    return __fdividef(v, 1.0f + __expf(-v));
  } else {
    return apply_activation<ops::Activation::Silu>(v);
  }
}

template <class T, int E, bool kSilu>
__global__ void group_apply_kernel(T* __restrict__ out, const T* __restrict__ x,
                                   const Welford* __restrict__ partial, int chunks,
                                   const float* __restrict__ w, const float* __restrict__ b,
                                   int64_t S, int C, int G, float eps) {
  __shared__ float stats[2];
  const int group = blockIdx.y;  // b * G + g
  if (threadIdx.x < 32)          // the first warp merges the group's partials
    merge_group_stats(partial + static_cast<int64_t>(group) * chunks, chunks, eps, stats);
  __syncthreads();
  const float mean = stats[0], rstd = stats[1];
  const int cg = C / G;
  const int64_t group_elems = cg * S;
  const int64_t base = static_cast<int64_t>(group) * group_elems;
  const int c0 = (group % G) * cg;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * E;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * E;
       i < group_elems; i += stride) {
    const int c = c0 + static_cast<int>(i / S);  // E divides S: a vector stays in one channel
    const float mul = (w ? w[c] : 1.0f) * rstd;
    const float add = (b ? b[c] : 0.0f) - mean * mul;
    float v[E];
    if constexpr (E > 1) {
      Vec<T> in;
      in.load_nc(x + base + i);
      in.to_float(v);
    } else {
      v[0] = to_f32(x[base + i]);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      v[e] = v[e] * mul + add;
      if constexpr (kSilu) v[e] = silu_out<T>(v[e]);
    }
    if constexpr (E > 1) {
      Vec<T> o;
      o.from_float(v);
      o.store(out + base + i);
    } else {
      out[base + i] = from_f32<T>(v[0]);
    }
  }
}

// ---- one pass (Note [One-pass group norm]) ------------------------------------------------

// kVecs 16-byte vectors per thread held on chip: 8 (32 KB chunks, in registers) or, for groups
// with more chunks than that leaves resident, 16 (64 KB: 8 in registers, 8 in shared memory).
// Either way ~70 registers and at most 32 KB of shared memory: 3 blocks per SM.
constexpr int kOneThreads = 256;

template <class T, int kVecs>
constexpr int64_t onepass_chunk_elems() {
  return static_cast<int64_t>(kOneThreads) * kVecs * Vec<T>::kVec;
}

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
constexpr uint64_t kWaitLimitNs = 20ull * 1000 * 1000 * 1000;  // 20 s

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// One 16-byte vector of the chunk a thread holds, with its place in the group.
template <class T>
__device__ __forceinline__ int onepass_offset(int r, int kV) {
  return (r * kOneThreads + static_cast<int>(threadIdx.x)) * kV;
}

// sync[0]: the ticket counter; sync[1 + group]: the group's published chunks. Both zero at
// launch. partial: one Welford per chunk, indexed by ticket. A thread's vectors r < kRegVecs
// live in registers, the rest (kVecs = 16) in shared memory, filled by cp.async, each thread
// reading back only its own slots (no barrier needed for them).
template <class T, int kVecs, bool kSilu>
__global__ void __launch_bounds__(kOneThreads, 3)
    group_norm_onepass_kernel(T* __restrict__ out, const T* __restrict__ x,
                              Welford* __restrict__ partial, unsigned* __restrict__ sync,
                              int group_elems, int chunks, int total_chunks,
                              const float* __restrict__ w, const float* __restrict__ b, int S,
                              int C, int G, float eps) {
  constexpr int kV = Vec<T>::kVec;
  constexpr int kRegVecs = kVecs < 8 ? kVecs : 8;
  constexpr int kSmemVecs = kVecs - kRegVecs;
  constexpr int kChunkElems = static_cast<int>(onepass_chunk_elems<T, kVecs>());
  __shared__ Welford red[kOneThreads / 32];
  __shared__ float stats[2];
  __shared__ int ticket_s;
  __shared__ uint4 held[kSmemVecs > 0 ? kSmemVecs * kOneThreads : 1];
  const int cg = C / G;
  auto slot = [&](int r) -> uint4& { return held[(r - kRegVecs) * kOneThreads + threadIdx.x]; };
  for (;;) {
    if (threadIdx.x == 0) ticket_s = static_cast<int>(atomicAdd(&sync[0], 1u));
    __syncthreads();
    const int ticket = ticket_s;
    if (ticket >= total_chunks) return;  // uniform across the block
    const int group = ticket / chunks;
    const int begin = (ticket % chunks) * kChunkElems;  // within the group (< 2^31, host-checked)
    const int rem = group_elems - begin;                // elements of the group from begin on
    const int64_t at = static_cast<int64_t>(group) * group_elems + begin;
    const T* gx = x + at;
    T* go = out + at;

    // Load the chunk: vector r of this thread is element begin + (r * threads + tid) * kV.
    // The shared-memory part is issued first so that every load is in flight at once.
#pragma unroll
    for (int r = kRegVecs; r < kVecs; ++r) {
      const int i = onepass_offset<T>(r, kV);
      if (i < rem)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                         static_cast<unsigned>(__cvta_generic_to_shared(&slot(r)))),
                     "l"(gx + i));
    }
    if constexpr (kSmemVecs > 0) asm volatile("cp.async.commit_group;\n" ::);
    Vec<T> in[kRegVecs];
#pragma unroll
    for (int r = 0; r < kRegVecs; ++r) {
      const int i = onepass_offset<T>(r, kV);
      if (i < rem) in[r].load_nc(gx + i);
    }
    if constexpr (kSmemVecs > 0) asm volatile("cp.async.wait_all;\n" ::: "memory");

    // Statistics as in group_stats_kernel (the shift is the first valid vector's first value).
    ShiftedSums sums;
    auto accumulate = [&](const Vec<T>& vv) {
      float v[kV];
      vv.to_float(v);
      sums.add(v);
    };
#pragma unroll
    for (int r = 0; r < kRegVecs; ++r)
      if (onepass_offset<T>(r, kV) < rem) accumulate(in[r]);
#pragma unroll
    for (int r = kRegVecs; r < kVecs; ++r) {
      if (onepass_offset<T>(r, kV) < rem) {
        Vec<T> vv;
        vv.raw = slot(r);
        accumulate(vv);
      }
    }
    const Welford chunk_stats = block_welford(sums.welford(), red);

    // Publish, wait for the group, merge its partials (warp 0).
    if (threadIdx.x < 32) {
      if (threadIdx.x == 0) {
        partial[ticket] = chunk_stats;
        __threadfence();
        atomicAdd(&sync[1 + group], 1u);
        const uint64_t t0 = global_ns();
        while (load_acquire(&sync[1 + group]) < static_cast<unsigned>(chunks)) {
          __nanosleep(64);
          // A wait this long means the residency assumption broke (e.g. a tool serialising
          // blocks): fail the launch with an error instead of hanging the process.
          if (global_ns() - t0 > kWaitLimitNs) __trap();
        }
      }
      __syncwarp();
      __threadfence();
      merge_group_stats(partial + static_cast<int64_t>(group) * chunks, chunks, eps, stats);
    }
    __syncthreads();
    const float mean = stats[0], rstd = stats[1];
    const int c0 = (group % G) * cg;

    // Normalise the chunk still held on chip.
    auto emit = [&](const Vec<T>& vv, int i) {
      const int c = c0 + (begin + i) / S;  // kV divides S: one channel per vector
      const float mul = (w ? w[c] : 1.0f) * rstd;
      const float add = (b ? b[c] : 0.0f) - mean * mul;
      float v[kV];
      vv.to_float(v);
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        v[e] = v[e] * mul + add;
        if constexpr (kSilu) v[e] = silu_out<T>(v[e]);
      }
      Vec<T> o;
      o.from_float(v);
      o.store(go + i);
    };
#pragma unroll
    for (int r = 0; r < kRegVecs; ++r) {
      const int i = onepass_offset<T>(r, kV);
      if (i < rem) emit(in[r], i);
    }
#pragma unroll
    for (int r = kRegVecs; r < kVecs; ++r) {
      const int i = onepass_offset<T>(r, kV);
      if (i < rem) {
        Vec<T> vv;
        vv.raw = slot(r);
        emit(vv, i);
      }
    }
  }
}

// Lab/test switch: the one-pass kernel's chunk (8 or 16 vectors per thread); 0 = 8 where it
// fits, else 16.
std::atomic<int> g_onepass_vecs{0};
// Lab/test switch: at most this many resident blocks (never fewer than a group's chunks, the
// deadlock bound), so that blocks take many tickets each; 0 = the device's capacity.
std::atomic<int> g_onepass_grid{0};
// One-pass launches made (tests check that a call took the one-pass kernel).
std::atomic<uint64_t> g_onepass_launches{0};

// 1: one pass where the shape allows (default); 2: always two passes. -1: not yet read from
// SD3_GROUPNORM_PASSES.
std::atomic<int> g_passes{-1};

int groupnorm_passes() {
  int v = g_passes.load();
  if (v < 0) {
    const char* e = std::getenv("SD3_GROUPNORM_PASSES");
    v = e && std::atoi(e) == 2 ? 2 : 1;
    g_passes.store(v);
  }
  return v;
}

// Resident blocks of the one-pass kernel on `device`, 0 when cooperative launch is missing.
template <class T, int kVecs, bool kSilu>
int onepass_capacity(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // per instantiation and device; 0 = not known
  if (device < 0 || device >= kMaxDevices) return 0;
  int v = cached[device].load();
  if (v > 0) return v - 1;
  stream(device);  // makes `device` current for the occupancy query
  int coop = 0;
  SD3_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  int per_sm = 0;
  SD3_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, group_norm_onepass_kernel<T, kVecs, kSilu>, kOneThreads, 0));
  v = coop ? per_sm * device_props(device).multiProcessorCount : 0;
  cached[device].store(v + 1);
  return v;
}

// Chunks per group for kVecs, or 0 when the one-pass kernel with kVecs cannot take the shape
// (int32 indexing inside a group, with room for a chunk that ends past it; more chunks per
// group than resident blocks).
template <class T, int kVecs, bool kSilu>
int64_t onepass_chunks(int64_t group_elems, int64_t bg, int device) {
  constexpr int64_t per = onepass_chunk_elems<T, kVecs>();
  const int64_t chunks = (group_elems + per - 1) / per;
  if (chunks * bg >= (1LL << 31) || group_elems + per >= (1LL << 31)) return 0;
  return chunks <= onepass_capacity<T, kVecs, kSilu>(device) ? chunks : 0;
}

// Runs the one-pass kernel with kVecs when the shape and device allow; false means "not taken".
template <class T, int kVecs, bool kSilu>
bool try_onepass(T* out, const T* x, int64_t group_elems, int64_t bg, const float* w,
                 const float* b, int64_t S, int C, int G, float eps, int device, cudaStream_t st) {
  const int64_t chunks = onepass_chunks<T, kVecs, kSilu>(group_elems, bg, device);
  if (chunks == 0) return false;
  const int64_t total = chunks * bg;
  const int capacity = onepass_capacity<T, kVecs, kSilu>(device);
  Scratch partial(device, sizeof(Welford) * total);
  Scratch sync(device, sizeof(unsigned) * (1 + bg));
  SD3_CUDA_CHECK(cudaMemsetAsync(sync.get(), 0, sync.bytes(), st));
  auto* pp = static_cast<Welford*>(partial.get());
  auto* ps = static_cast<unsigned*>(sync.get());
  int ielems = static_cast<int>(group_elems), ichunks = static_cast<int>(chunks),
      itotal = static_cast<int>(total), iS = static_cast<int>(S);
  void* args[] = {&out, &x, &pp, &ps, &ielems, &ichunks, &itotal, &w, &b, &iS, &C, &G, &eps};
  int64_t blocks = std::min<int64_t>(total, capacity);
  if (const int cap = g_onepass_grid.load(); cap > 0)
    blocks = std::min<int64_t>(blocks, std::max<int64_t>(cap, chunks));
  const unsigned grid = static_cast<unsigned>(blocks);
  const cudaError_t e = cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(group_norm_onepass_kernel<T, kVecs, kSilu>), dim3(grid),
      dim3(kOneThreads), args, 0, st);
  if (e == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // the GPU is shared more than the calculator knew: two passes
    return false;
  }
  SD3_CUDA_CHECK(e);
  SD3_LAUNCH_CHECK("group_norm_onepass_kernel");
  g_onepass_launches.fetch_add(1);
  return true;
}

Tensor group_norm_impl(const Tensor& x_in, int64_t groups, const Tensor& weight, const Tensor& bias,
                       float eps, bool silu, const char* op) {
  check_float_input(x_in, op, "x");
  SD3_CHECK(x_in.dim() >= 2, op, ": x ", x_in.str(), " must be [B, C, ...]");
  const int64_t B = x_in.size(0), C = x_in.size(1);
  SD3_CHECK(groups > 0 && C % groups == 0, op, ": ", C, " channels not divisible into ", groups,
            " groups");
  Tensor x = contiguous(x_in);
  const int64_t S = C ? x.numel() / (B * C) : 0;
  // The affine parameters as f32 (a [C] cast at most): a dtype switch per element in the
  // kernels would multiply their code (the one-pass kernel's unrolled stores were duplicated
  // per dtype combination, past the instruction cache).
  Tensor w = param_vector(weight, C, op, "weight");
  Tensor b = param_vector(bias, C, op, "bias");
  if (w.defined() && w.dtype() != DType::F32) w = cast(w, DType::F32);
  if (b.defined() && b.dtype() != DType::F32) b = cast(b, DType::F32);
  const float* pw = w.defined() ? static_cast<const float*>(w.raw_data()) : nullptr;
  const float* pb = b.defined() ? static_cast<const float*>(b.raw_data()) : nullptr;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  const int64_t group_elems = (C / groups) * S;
  const int64_t bg = B * groups;
  SD3_CHECK(bg < 65536 && C < (1LL << 31), op, ": ", x.str(), " has too many groups");
  const int device = x.device().index;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    constexpr int kV = Vec<T>::kVec;
    const bool vec = S % kV == 0 && aligned16(px) && aligned16(po);
    const int iC = static_cast<int>(C), iG = static_cast<int>(groups);
    if (vec && groupnorm_passes() == 1) {
      const int vecs = g_onepass_vecs.load();
      auto go = [&](auto silu_const) {
        constexpr bool kS = decltype(silu_const)::value;
        return (vecs != 16 && try_onepass<T, 8, kS>(po, px, group_elems, bg, pw, pb, S, iC, iG, eps,
                                                    device, st)) ||
               (vecs != 8 && try_onepass<T, 16, kS>(po, px, group_elems, bg, pw, pb, S, iC, iG, eps,
                                                    device, st));
      };
      if (silu ? go(std::true_type{}) : go(std::false_type{})) return;
    }
    const int chunks = static_cast<int>((group_elems + kChunk - 1) / kChunk);
    Scratch partial(device, sizeof(Welford) * chunks * bg);
    auto* pp = static_cast<Welford*>(partial.get());
    const dim3 sgrid(chunks, static_cast<unsigned>(bg));
    if (vec) {
      group_stats_kernel<T, kV><<<sgrid, kStatThreads, 0, st>>>(pp, px, group_elems, chunks);
    } else {
      group_stats_kernel<T, 1><<<sgrid, kStatThreads, 0, st>>>(pp, px, group_elems, chunks);
    }
    SD3_LAUNCH_CHECK("group_stats_kernel");
    const int64_t per = vec ? group_elems / kV : group_elems;
    const unsigned gx = grid_for(per, 256, std::max<int64_t>(1, 4096 / bg));
    auto launch = [&](auto e_const, auto silu_const) {
      constexpr int E = decltype(e_const)::value;
      constexpr bool kS = decltype(silu_const)::value;
      group_apply_kernel<T, E, kS><<<dim3(gx, static_cast<unsigned>(bg)), 256, 0, st>>>(
          po, px, pp, chunks, pw, pb, S, iC, iG, eps);
      SD3_LAUNCH_CHECK("group_apply_kernel");
    };
    using V = std::integral_constant<int, kV>;
    using One = std::integral_constant<int, 1>;
    if (vec) {
      silu ? launch(V{}, std::true_type{}) : launch(V{}, std::false_type{});
    } else {
      silu ? launch(One{}, std::true_type{}) : launch(One{}, std::false_type{});
    }
  });
  return out;
}

}  // namespace

void set_groupnorm_passes(int passes) {
  g_passes.store(passes == 1 || passes == 2 ? passes : -1);
}

void set_groupnorm_onepass_grid(int blocks) {
  g_onepass_grid.store(blocks > 0 ? blocks : 0);
}

uint64_t groupnorm_onepass_launches() {
  return g_onepass_launches.load();
}

void set_groupnorm_onepass_vecs(int vecs) {
  g_onepass_vecs.store(vecs == 8 || vecs == 16 ? vecs : 0);
}

bool groupnorm_onepass_possible(const Tensor& x, int64_t groups) {
  if (!x.defined() || x.dim() < 2 || x.numel() == 0 || groups <= 0 || x.size(1) % groups)
    return false;
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / (B * C);
  bool ok = false;
  dispatch_float(x.dtype(), "group_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t ge = (C / groups) * S, bg = B * groups;
    const int dev = x.device().index;
    ok = S % Vec<T>::kVec == 0 && (onepass_chunks<T, 8, true>(ge, bg, dev) > 0 ||
                                   onepass_chunks<T, 16, true>(ge, bg, dev) > 0);
  });
  return ok;
}

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps) {
  return group_norm_impl(x, groups, weight, bias, eps, false, "group_norm");
}

Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps) {
  return group_norm_impl(x, groups, weight, bias, eps, true, "groupnorm_silu");
}

}  // namespace sd3::cuda
