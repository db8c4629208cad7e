// GroupNorm for the VAE, plain and fused with SiLU:
//
//   y[b, c, s] = act((x[b, c, s] - mean[b, g]) * rstd[b, g] * w[c] + bias[c]),  g = c / (C/G)
//   mean, var over the (C/G) * S elements of group g (S = H * W), rstd = 1/sqrt(var + eps),
//   act = SiLU (groupnorm_silu) or identity (group_norm).
//
// Bytes: x is read twice (statistics, then normalisation) and y written once: 3 B C S
// sizeof(T). A VAE group at 1024x1024 holds 4 channels x 1M pixels (8 MB in bf16), far more
// than a block can keep on chip, and there are only G = 32 groups per image, so one block per
// group would leave most of the GPU idle. Hence two kernels (Note [Split group statistics]).
// The unfused composition (group_norm then silu) moves 5 passes; fused moves 3.
//
// Note [Split group statistics]
// Kernel 1 splits each group into chunks (grid = chunks x B*G); each block reduces its chunk
// to (count, mean, M2) from per-thread shifted sums and a block merge by Chan's formula,
// writing one partial per chunk. Kernel 2 (one thread per 16-byte vector) merges the
// group's partials once per block (one warp, lanes in parallel) into shared memory, then
// normalises, applies the affine and the activation, and writes. Chan's merge keeps the variance
// accurate where E[x^2] - E[x]^2 would cancel on large groups with a large mean.
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

// Per thread: sums of (v - K) and (v - K)^2 with K the thread's first value (the shift keeps
// the one-pass variance from cancelling), turned into (n, mean, M2) before the merges.
template <class T, int E>
__global__ void group_stats_kernel(Welford* __restrict__ partial, const T* __restrict__ x,
                                   int64_t group_elems, int chunks) {
  __shared__ Welford red[kStatThreads / 32];
  const int chunk = blockIdx.x, group = blockIdx.y;
  const T* gx = x + static_cast<int64_t>(group) * group_elems;
  const int64_t begin = chunk * kChunk;
  const int64_t end = min(group_elems, begin + kChunk);
  float n = 0.0f, shift = 0.0f, s1 = 0.0f, s2 = 0.0f;
  for (int64_t i = begin + threadIdx.x * E; i < end; i += blockDim.x * E) {
    float v[E];
    if constexpr (E > 1) {
      Vec<T> in;
      in.load_nc(gx + i);
      in.to_float(v);
    } else {
      v[0] = to_f32(gx[i]);
    }
    if (n == 0.0f) shift = v[0];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float d = v[e] - shift;
      s1 += d;
      s2 += d * d;
    }
    n += E;
  }
  Welford w{n, 0.0f, 0.0f};
  if (n > 0.0f) {
    const float dm = s1 / n;
    w.mean = shift + dm;
    w.m2 = fmaxf(s2 - s1 * dm, 0.0f);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Welford other{__shfl_xor_sync(0xffffffffu, w.n, o), __shfl_xor_sync(0xffffffffu, w.mean, o),
                  __shfl_xor_sync(0xffffffffu, w.m2, o)};
    w = merge(w, other);
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = w;
  __syncthreads();
  if (threadIdx.x == 0) {
    Welford t = red[0];
    for (int i = 1; i < kStatThreads / 32; ++i) t = merge(t, red[i]);
    partial[static_cast<int64_t>(group) * chunks + chunk] = t;
  }
}

template <class T, int E, bool kSilu>
__global__ void group_apply_kernel(T* __restrict__ out, const T* __restrict__ x,
                                   const Welford* __restrict__ partial, int chunks, AnyPtr w,
                                   AnyPtr b, int64_t S, int C, int G, float eps) {
  __shared__ float stats[2];
  const int group = blockIdx.y;  // b * G + g
  if (threadIdx.x < 32) {
    // The first warp merges the group's partials: a strided share per lane, then shuffles.
    Welford t{0.0f, 0.0f, 0.0f};
    for (int i = threadIdx.x; i < chunks; i += 32)
      t = merge(t, partial[static_cast<int64_t>(group) * chunks + i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      Welford other{__shfl_xor_sync(0xffffffffu, t.n, o), __shfl_xor_sync(0xffffffffu, t.mean, o),
                    __shfl_xor_sync(0xffffffffu, t.m2, o)};
      t = merge(t, other);
    }
    if (threadIdx.x == 0) {
      stats[0] = t.mean;
      stats[1] = rsqrtf(t.m2 / t.n + eps);
    }
  }
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
    const float mul = (w.p ? w[c] : 1.0f) * rstd;
    const float add = (b.p ? b[c] : 0.0f) - mean * mul;
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
      if constexpr (kSilu) v[e] = apply_activation<ops::Activation::Silu>(v[e]);
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

Tensor group_norm_impl(const Tensor& x_in, int64_t groups, const Tensor& weight, const Tensor& bias,
                       float eps, bool silu, const char* op) {
  check_float_input(x_in, op, "x");
  SD3_CHECK(x_in.dim() >= 2, op, ": x ", x_in.str(), " must be [B, C, ...]");
  const int64_t B = x_in.size(0), C = x_in.size(1);
  SD3_CHECK(groups > 0 && C % groups == 0, op, ": ", C, " channels not divisible into ", groups,
            " groups");
  Tensor x = contiguous(x_in);
  const int64_t S = C ? x.numel() / (B * C) : 0;
  Tensor w = param_vector(weight, C, op, "weight");
  Tensor b = param_vector(bias, C, op, "bias");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  const int64_t group_elems = (C / groups) * S;
  const int64_t bg = B * groups;
  SD3_CHECK(bg < 65536 && C < (1LL << 31), op, ": ", x.str(), " has too many groups");
  const int chunks = static_cast<int>((group_elems + kChunk - 1) / kChunk);
  Scratch partial(x.device().index, sizeof(Welford) * chunks * bg);
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    auto* pp = static_cast<Welford*>(partial.get());
    constexpr int kV = Vec<T>::kVec;
    const bool vec = S % kV == 0 && aligned16(px) && aligned16(po);
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
          po, px, pp, chunks, any_ptr(w), any_ptr(b), S, static_cast<int>(C),
          static_cast<int>(groups), eps);
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

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps) {
  return group_norm_impl(x, groups, weight, bias, eps, false, "group_norm");
}

Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps) {
  return group_norm_impl(x, groups, weight, bias, eps, true, "groupnorm_silu");
}

}  // namespace sd3::cuda
