// Internal: the activation functions in f32, shared by activation.cu and fused epilogues
// (groupnorm_silu.cu). Full-precision erff/tanhf/expf, as the CPU reference computes them.
#pragma once

#include "engine/ops.h"

namespace sd3::cuda {

template <ops::Activation A>
__device__ __forceinline__ float apply_activation(float x) {
  if constexpr (A == ops::Activation::Gelu) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  } else if constexpr (A == ops::Activation::GeluTanh) {
    const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  } else if constexpr (A == ops::Activation::Silu) {
    return x / (1.0f + expf(-x));
  } else if constexpr (A == ops::Activation::QuickGelu) {
    return x / (1.0f + expf(-1.702f * x));
  } else {
    return x;
  }
}

}  // namespace sd3::cuda
