// Internal: the argument block shared by the attention kernels (joint_attention.cu, the flash
// kernel; attention_gemm.cu, the library-product path) and their host-side checks.
#pragma once

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

// Validates q/k/v/bias and fills the shape; returns q, k, v with contiguous features
// (gathering only when the feature dimension is strided) and the bias contiguous along Lk.
AttnShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v,
                          const ops::AttentionOptions& opt, Tensor* qo, Tensor* ko, Tensor* vo,
                          Tensor* bias);

}  // namespace sd3::cuda
