// Internal: the argument block shared by the attention kernels (joint_attention.cu, the flash
// kernel; joint_attention_wgmma.cu, its Hopper variant; attention_gemm.cu, the library-product
// path) and their host-side checks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/ops.h"

namespace sd3::cuda {

// q [B, Lq, H*D], k/v [B, Lk, H*D] viewed with element strides per batch and per token (the
// feature dimension must be contiguous); bias [B or 1, H, Lq, Lk] with its own strides.
struct AttnShape {
  int64_t B = 0, H = 0, D = 0, Lq = 0, Lk = 0;
  float scale = 1.0f;
  bool causal = false;
  // Bias strides in elements (batch stride 0 when the bias is [H, Lq, Lk]).
  int64_t bias_sb = 0, bias_sh = 0, bias_sq = 0;
};

// The operands of a flash kernel: q [B, Lq, H*D], k/v [B, Lk, H*D] and the output o
// [B, Lq, H*D] (contiguous), with q/k/v's element strides per batch (_sb) and per token (_sl).
struct AttnOperands {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  int64_t q_sb = 0, q_sl = 0, k_sb = 0, k_sl = 0, v_sb = 0, v_sl = 0;
};
inline void set_operands(AttnOperands& p, const Tensor& q, const Tensor& k, const Tensor& v,
                         Tensor& out) {
  p.q = q.raw_data();
  p.k = k.raw_data();
  p.v = v.raw_data();
  p.o = out.raw_data();
  p.q_sb = q.stride(0);
  p.q_sl = q.stride(1);
  p.k_sb = k.stride(0);
  p.k_sl = k.stride(1);
  p.v_sb = v.stride(0);
  p.v_sl = v.stride(1);
}

// Validates q/k/v/bias and fills the shape; returns q, k, v with contiguous features
// (gathering only when the feature dimension is strided) and the bias contiguous along Lk.
AttnShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v,
                          const ops::AttentionOptions& opt, Tensor* qo, Tensor* ko, Tensor* vo,
                          Tensor* bias);

// The Hopper warpgroup-MMA flash kernel (joint_attention_wgmma.cu). q/k/v as attention_shape
// returns them (rows 16-byte aligned), o contiguous [B, Lq, H*D].
struct WgmmaAttnParams : AttnOperands {
  int B = 0, H = 0, D = 0, Lq = 0, Lk = 0;  // Lk >= 1
  float scale_log2 = 0.0f;                  // scale * log2(e), > 0
};

// True when attention() runs the wgmma kernel for this problem on `device` (Note [Flash kernel
// selection] in joint_attention_wgmma.cu).
bool use_wgmma_attention(const AttnShape& s, DType dt, bool has_bias, int device);
// Launches the wgmma kernel (dt bf16 or f16, D 64 or 128) on st.
void wgmma_attention(const WgmmaAttnParams& p, DType dt, cudaStream_t st);

}  // namespace sd3::cuda
