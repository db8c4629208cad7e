// Internal: the row-normalisation kernel behind layer_norm (layernorm.cu), rms_norm
// (rmsnorm.cu) and adaln_modulate (adaln_modulate.cu).
//
// Note [Row normalisation]
// Block per row (the default): one block per row of C elements; each thread holds K accesses of E elements (E = one
// 16-byte vector, or 1 when C or the pointers do not allow vectors) in registers, so the row
// is read from memory once. The mean and the variance are two block reductions over the
// registers (the variance from centred values, not E[x^2] - E[x]^2, which cancels badly
// when |mean| >> std). The epilogue is y = n * (m[c] + offset) + a[c] with n the normalised
// value and m, a optional per-channel vectors that may also vary per sample (a row stride
// per batch element): layer_norm (m = weight, a = bias), rms_norm (m = weight, not centred),
// adaln_modulate (m = scale, offset 1, a = shift, per sample).
//
// Note [Warp-per-row normalisation]
// The lab alternative for rows of at most 512 accesses (C <= 4096 in bf16): one warp per row,
// kWarpRows rows per block, K accesses per lane (6 for SD3-medium's C = 1536 in bf16, 12 for
// SD3.5-large's 2432), reductions by warp shuffles only. Each lane has K independent 16-byte
// loads in flight instead of one, and no block barrier separates a row's phases, which is
// what a memory-bound kernel wants; the cost is registers (K x 8 floats of the row per lane).
// Which of the two reaches more of the copy bandwidth at the MMDiT's shapes is for the GPU to
// say: kernels_bench times both (`adaln_modulate/fused_warp`); SD3_ROW_NORM=warp or
// set_row_norm_layout(2) selects it. Both share normalize_row, so the math is one piece.
#pragma once

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

struct NormParams {
  const void* mul = nullptr;  // P*, [batches, C] with row stride mul_stride (0: shared)
  const void* add = nullptr;  // P*
  int64_t mul_stride = 0, add_stride = 0;
  float mul_offset = 0.0f;
  int64_t rows_per_batch = 1;
  float eps = 1e-5f;
};

// Loads E consecutive values of P as floats, in 16-byte pieces where E allows.
template <class P, int E>
__device__ __forceinline__ void load_vals(const P* __restrict__ p, float* f) {
  constexpr int kBytes = E * static_cast<int>(sizeof(P));
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int j = 0; j < kBytes / 16; ++j) {
      Vec<P> v;
      v.load_nc(p + j * Vec<P>::kVec);
      v.to_float(f + j * Vec<P>::kVec);
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) f[e] = to_f32(p[e]);
  }
}

// One row, normalised by the nt threads that share it (this thread is t of them): access k
// of thread t covers elements [(t + k nt) E, + E). `sum` reduces a float over those threads
// and returns the total to all of them (a block or a warp reduction).
template <class T, class P, int E, int K, bool kCenter, class Sum>
__device__ __forceinline__ void normalize_row(T* __restrict__ orow, const T* __restrict__ xr,
                                              int C, int64_t b, const NormParams& prm, int t,
                                              int nt, Sum sum) {
  float v[K][E];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (t + k * nt) * E;
    if (c < C) {
      load_vals<T, E>(xr + c, v[k]);
#pragma unroll
      for (int e = 0; e < E; ++e) s += kCenter ? v[k][e] : v[k][e] * v[k][e];
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) v[k][e] = 0.0f;
    }
  }
  float mean = 0.0f, rstd;
  if constexpr (kCenter) {
    mean = sum(s) / C;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = (t + k * nt) * E;
      if (c < C) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float d = v[k][e] - mean;
          ss += d * d;
        }
      }
    }
    rstd = rsqrtf(sum(ss) / C + prm.eps);
  } else {
    rstd = rsqrtf(sum(s) / C + prm.eps);
  }
  const P* mul = prm.mul ? static_cast<const P*>(prm.mul) + b * prm.mul_stride : nullptr;
  const P* add = prm.add ? static_cast<const P*>(prm.add) + b * prm.add_stride : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (t + k * nt) * E;
    if (c >= C) continue;
    float m[E], a[E], y[E];
    if (mul) {
      load_vals<P, E>(mul + c, m);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) m[e] = 1.0f - prm.mul_offset;
    }
    if (add) {
      load_vals<P, E>(add + c, a);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) a[e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] = (v[k][e] - mean) * rstd * (m[e] + prm.mul_offset) + a[e];
    if constexpr (E == Vec<T>::kVec) {
      Vec<T> o;
      o.from_float(y);
      o.store(orow + c);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) orow[c + e] = from_f32<T>(y[e]);
    }
  }
}

// Block per row (Note [Row normalisation]).
template <class T, class P, int E, int K, bool kCenter>
__global__ void __launch_bounds__(1024)
    row_norm_kernel(T* __restrict__ out, const T* __restrict__ x, int C, NormParams prm) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  normalize_row<T, P, E, K, kCenter>(out + row * C, x + row * C, C, row / prm.rows_per_batch,
                                     prm, threadIdx.x, blockDim.x,
                                     [&](float v) { return block_sum(v, red); });
}

// Warp per row (Note [Warp-per-row normalisation]): kWarpRows rows per block.
constexpr int kWarpRows = 4;
template <class T, class P, int E, int K, bool kCenter>
__global__ void __launch_bounds__(32 * kWarpRows)
    row_norm_warp_kernel(T* __restrict__ out, const T* __restrict__ x, int C, int64_t rows,
                         NormParams prm) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpRows + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp: nothing below synchronises across warps
  normalize_row<T, P, E, K, kCenter>(out + row * C, x + row * C, C, row / prm.rows_per_batch,
                                     prm, threadIdx.x & 31, 32,
                                     [](float v) { return warp_sum(v); });
}

// Which layout launch_row_norm uses for rows it can hold either way (lab switch, see
// set_row_norm_layout in cuda_ops.h): 1 block per row, 2 warp per row.
int row_norm_layout();

// Launches row_norm_kernel over `rows` contiguous rows of C elements of x (dtype of x = T),
// with mul/add vectors of dtype pdt (T's dtype or f32). `vec_ok` says whether every pointer
// and row stride allows 16-byte accesses.
template <bool kCenter>
void launch_row_norm(const Tensor& x, Tensor& out, int64_t rows, int64_t C, DType pdt,
                     const NormParams& prm, bool vec_ok, const char* op) {
  SD3_CHECK(C > 0 && C <= (1 << 30), op, ": row length ", C, " unsupported");
  SD3_CHECK(rows < (1LL << 31), op, ": ", rows, " rows exceed one launch");
  if (rows == 0) return;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](auto ptag) {
      using P = decltype(ptag);
      auto go = [&](auto e_const) {
        constexpr int E = decltype(e_const)::value;
        const int64_t acc = (C + E - 1) / E;
        T* po = static_cast<T*>(out.raw_data());
        const T* px = static_cast<const T*>(x.raw_data());
        const int iC = static_cast<int>(C);
        auto launch_warp = [&](auto k_const) {
          constexpr int K = decltype(k_const)::value;
          const unsigned blocks = static_cast<unsigned>((rows + kWarpRows - 1) / kWarpRows);
          row_norm_warp_kernel<T, P, E, K, kCenter>
              <<<blocks, 32 * kWarpRows, 0, st>>>(po, px, iC, rows, prm);
          SD3_LAUNCH_CHECK("row_norm_warp_kernel");
        };
        if (row_norm_layout() == 2 && acc <= 16 * 32) {
          using std::integral_constant;
          if (acc <= 32) {
            launch_warp(integral_constant<int, 1>{});
          } else if (acc <= 64) {
            launch_warp(integral_constant<int, 2>{});
          } else if (acc <= 128) {
            launch_warp(integral_constant<int, 4>{});
          } else if (acc <= 192) {
            launch_warp(integral_constant<int, 6>{});
          } else if (acc <= 256) {
            launch_warp(integral_constant<int, 8>{});
          } else if (acc <= 384) {
            launch_warp(integral_constant<int, 12>{});
          } else {
            launch_warp(integral_constant<int, 16>{});
          }
          return;
        }
        auto launch = [&](auto k_const) {
          constexpr int K = decltype(k_const)::value;
          int threads = static_cast<int>(std::min<int64_t>(1024, (acc + K - 1) / K));
          threads = (threads + 31) / 32 * 32;
          row_norm_kernel<T, P, E, K, kCenter>
              <<<static_cast<unsigned>(rows), threads, 0, st>>>(po, px, iC, prm);
          SD3_LAUNCH_CHECK("row_norm_kernel");
        };
        if (acc <= 512) {
          launch(std::integral_constant<int, 1>{});
        } else if (acc <= 1024) {
          launch(std::integral_constant<int, 2>{});
        } else if (acc <= 4096) {
          launch(std::integral_constant<int, 4>{});
        } else if (acc <= 8192) {
          launch(std::integral_constant<int, 8>{});
        } else {
          fail(op, ": row length ", C, " exceeds the ", 8192 * E, " this kernel holds on chip");
        }
      };
      if (vec_ok && C % Vec<T>::kVec == 0) {
        go(std::integral_constant<int, Vec<T>::kVec>{});
      } else {
        go(std::integral_constant<int, 1>{});
      }
    };
    if (pdt == DType::F32) {
      run(float{});
    } else {
      run(T{});
    }
  });
}

// Makes a [batches, C] parameter (or [C]) usable by row_norm_kernel: contiguous along C and
// of dtype `want` (the activation's dtype) or f32. Returns the tensor and its batch stride.
inline Tensor norm_param(const Tensor& t, DType want, const char* op, const char* arg,
                         int64_t* batch_stride) {
  *batch_stride = 0;
  if (!t.defined()) return t;
  check_float_input(t, op, arg);
  Tensor p = t;
  if (p.stride(-1) != 1 && p.numel() > 1) p = contiguous(p);
  if (p.dtype() != want && p.dtype() != DType::F32) p = cast(p, DType::F32);
  if (p.dim() >= 2) *batch_stride = p.size(0) > 1 ? p.stride(0) : 0;
  return p;
}

inline bool vec_aligned(const Tensor& t, int64_t batch_stride) {
  if (!t.defined()) return true;
  return aligned16(t.raw_data()) && (batch_stride * dtype_size(t.dtype())) % 16 == 0;
}

}  // namespace sd3::cuda

namespace sd3::cuda {

// Brings the (up to two) parameter tensors of a row norm to one element type: the
// activation's dtype when both already have it, else f32. Returns that dtype.
inline DType unify_norm_params(DType act, Tensor& a, Tensor& b) {
  const bool a_ok = !a.defined() || a.dtype() == act;
  const bool b_ok = !b.defined() || b.dtype() == act;
  if (a_ok && b_ok) return act;
  if (a.defined() && a.dtype() != DType::F32) a = cast(a, DType::F32);
  if (b.defined() && b.dtype() != DType::F32) b = cast(b, DType::F32);
  return DType::F32;
}

}  // namespace sd3::cuda
