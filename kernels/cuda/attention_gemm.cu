// attention_gemm: attention from library products, the reference path of the CUDA backend.
//
//   S = q_h k_h^T                        (cuBLASLt, batched over heads, f32 out)
//   P = softmax(S * scale + bias, causal mask)     (masked_softmax_kernel, P in q's dtype)
//   O_h = P v_h                          (cuBLASLt, written into its head's columns)
//
// It serves what the flash kernel does not: f32 inputs and head dims other than 64 and 128
// (the VAE's single 512-wide head). Queries are processed in chunks so that the f32 scores
// never exceed kScoreBytes. Bytes: the scores make it O(Lq Lk H) in memory traffic, which is
// the point of the flash kernel; FLOPs 4 B H Lq Lk D, as the flash kernel.
//
// cuBLASLt may have no f16/bf16 algorithm for a product whose leading dimensions or batch
// strides are not multiples of 8 elements (P v with lda = Lk = 65, say). Then the whole
// attention is recomputed on f32 copies of q, k, v and rounded once, as linear and matmul do;
// only when f32 has no algorithm either is it an error.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gemm.h"

namespace sd3::cuda {

namespace {

constexpr int64_t kScoreBytes = 256LL << 20;

// One block per score row (h, i): x = s * scale + bias (+ -inf above the diagonal when
// causal), P = softmax(x) in T. Row index i is local to the chunk starting at query q0.
template <class T>
__global__ void masked_softmax_kernel(T* __restrict__ p, const float* __restrict__ s, int Lc,
                                      int Lk, int64_t q0, float scale, bool causal, AnyPtr bias,
                                      int64_t bias_sh, int64_t bias_sq) {
  __shared__ float red[32];
  const int row = blockIdx.x;  // h * Lc + i
  const int h = row / Lc, i = row % Lc;
  const int64_t qi = q0 + i;
  const float* sr = s + static_cast<int64_t>(row) * Lk;
  T* pr = p + static_cast<int64_t>(row) * Lk;
  const int64_t boff = h * bias_sh + qi * bias_sq;
  const int kmax = causal ? static_cast<int>(qi + 1 < Lk ? qi + 1 : Lk) : Lk;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < kmax; j += blockDim.x) {
    const float x = sr[j] * scale + (bias.p ? bias[boff + j] : 0.0f);
    m = fmaxf(m, x);
  }
  m = block_max(m, red);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < kmax; j += blockDim.x) {
    const float x = sr[j] * scale + (bias.p ? bias[boff + j] : 0.0f);
    sum += m == -INFINITY ? 0.0f : expf(x - m);
  }
  sum = block_sum(sum, red);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int j = threadIdx.x; j < Lk; j += blockDim.x) {
    float v = 0.0f;
    if (j < kmax && m != -INFINITY)
      v = expf(sr[j] * scale + (bias.p ? bias[boff + j] : 0.0f) - m) * inv;
    pr[j] = from_f32<T>(v);
  }
}

}  // namespace

AttnShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v,
                          const ops::AttentionOptions& opt, Tensor* qo, Tensor* ko, Tensor* vo,
                          Tensor* bias) {
  check_float_input(q, "attention", "q");
  check_float_input(k, "attention", "k");
  check_float_input(v, "attention", "v");
  SD3_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention: q ", q.str(), ", k ", k.str(),
            ", v ", v.str(), " must be [B, L, H*D]");
  AttnShape s;
  s.B = q.size(0);
  s.Lq = q.size(1);
  s.Lk = k.size(1);
  s.H = opt.heads;
  SD3_CHECK(s.H > 0 && q.size(2) % s.H == 0, "attention: width ", q.size(2), " not divisible by ",
            s.H, " heads");
  s.D = q.size(2) / s.H;
  SD3_CHECK(k.shape() == v.shape() && k.size(0) == s.B && k.size(2) == q.size(2), "attention: k ",
            k.str(), " and v ", v.str(), " do not match q ", q.str());
  SD3_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), "attention: q, k, v dtypes differ (",
            dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ", dtype_name(v.dtype()), ")");
  s.scale = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(s.D));
  s.causal = opt.causal;
  *qo = q.stride(2) == 1 ? q : contiguous(q);
  *ko = k.stride(2) == 1 ? k : contiguous(k);
  *vo = v.stride(2) == 1 ? v : contiguous(v);
  *bias = Tensor();
  if (opt.bias.defined()) {
    const Tensor& b = opt.bias;
    check_float_input(b, "attention", "bias");
    const bool b3 = b.dim() == 3 && b.size(0) == s.H && b.size(1) == s.Lq && b.size(2) == s.Lk;
    const bool b4 = b.dim() == 4 && (b.size(0) == s.B || b.size(0) == 1) && b.size(1) == s.H &&
                    b.size(2) == s.Lq && b.size(3) == s.Lk;
    SD3_CHECK(b3 || b4, "attention: bias ", b.str(), " must be [", s.H, ", ", s.Lq, ", ", s.Lk,
              "] or [", s.B, ", ", s.H, ", ", s.Lq, ", ", s.Lk, "]");
    Tensor bc = b.stride(-1) == 1 ? b : contiguous(b);
    s.bias_sb = b4 && bc.size(0) > 1 ? bc.stride(0) : 0;
    s.bias_sh = bc.stride(b4 ? 1 : 0);
    s.bias_sq = bc.stride(b4 ? 2 : 1);
    *bias = bc;
  }
  return s;
}

namespace {

// Fills out chunk by chunk; false (out partly written) when cuBLASLt has no algorithm for one
// of the products.
bool attention_chunks(const AttnShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                      const Tensor& bias, Tensor& out) {
  const DType dt = q.dtype();
  const int dev = q.device().index;
  const int64_t Lc = std::max<int64_t>(1, std::min(s.Lq, kScoreBytes / 4 / (s.H * s.Lk)));
  SD3_CHECK(s.H * Lc < (1LL << 31) && s.Lk < (1LL << 31), "attention: ", s.H, " heads x ", s.Lk,
            " keys too large");
  Scratch scores(dev, sizeof(float) * s.H * Lc * s.Lk);
  Scratch probs(dev, dtype_size(dt) * s.H * Lc * s.Lk);
  const size_t es = dtype_size(dt);
  cudaStream_t st = stream(dev);
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t q0 = 0; q0 < s.Lq; q0 += Lc) {
      const int64_t n = std::min(Lc, s.Lq - q0);
      GemmDesc g;
      g.device = dev;
      g.M = n;
      g.N = s.Lk;
      g.K = s.D;
      g.batch = s.H;
      g.a = static_cast<const char*>(q.raw_data()) + (b * q.stride(0) + q0 * q.stride(1)) * es;
      g.lda = q.stride(1);
      g.stride_a = s.D;
      g.b = static_cast<const char*>(k.raw_data()) + b * k.stride(0) * es;
      g.ldb = k.stride(1);
      g.stride_b = s.D;
      g.b_is_nk = true;
      g.c = scores.get();
      g.ldc = s.Lk;
      g.stride_c = n * s.Lk;
      g.ab = dt;
      g.cd = DType::F32;
      if (!try_gemm(g)) return false;
      AnyPtr bp = any_ptr(bias);
      if (bp.p) {
        bp.p = static_cast<const char*>(bp.p) + b * s.bias_sb * dtype_size(bias.dtype());
      }
      dispatch_float(dt, "attention", [&](auto tag) {
        using T = decltype(tag);
        masked_softmax_kernel<T><<<static_cast<unsigned>(s.H * n), 256, 0, st>>>(
            static_cast<T*>(probs.get()), static_cast<const float*>(scores.get()),
            static_cast<int>(n), static_cast<int>(s.Lk), q0, s.scale, s.causal, bp, s.bias_sh,
            s.bias_sq);
        SD3_LAUNCH_CHECK("masked_softmax_kernel");
      });
      GemmDesc o;
      o.device = dev;
      o.M = n;
      o.N = s.D;
      o.K = s.Lk;
      o.batch = s.H;
      o.a = probs.get();
      o.lda = s.Lk;
      o.stride_a = n * s.Lk;
      o.b = static_cast<const char*>(v.raw_data()) + b * v.stride(0) * es;
      o.ldb = v.stride(1);
      o.stride_b = s.D;
      o.b_is_nk = false;
      o.c = static_cast<char*>(out.raw_data()) + (b * s.Lq + q0) * s.H * s.D * es;
      o.ldc = s.H * s.D;
      o.stride_c = s.D;
      o.ab = o.cd = dt;
      if (!try_gemm(o)) return false;
    }
  }
  return true;
}

}  // namespace

Tensor attention_gemm(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                      const AttentionOptions& opt) {
  Tensor q, k, v, bias;
  const AttnShape s = attention_shape(q_in, k_in, v_in, opt, &q, &k, &v, &bias);
  const DType dt = q.dtype();
  Tensor out = Tensor::empty({s.B, s.Lq, s.H * s.D}, dt, q.device());
  if (out.numel() == 0) return out;
  if (s.Lk == 0) {
    out.fill(0.0f);
    return out;
  }
  if (attention_chunks(s, q, k, v, bias, out)) return out;
  SD3_CHECK(dt != DType::F32, "attention: cuBLASLt has no f32 algorithm for q ", q.str(), ", k ",
            k.str(), " with ", s.H, " heads of ", s.D);
  // No half-precision algorithm for one of the products: compute in f32, round once. The bias
  // is read in its own dtype by the softmax kernel either way.
  return cast(attention_gemm(cast(q, DType::F32), cast(k, DType::F32), cast(v, DType::F32), opt),
              dt);
}

}  // namespace sd3::cuda
