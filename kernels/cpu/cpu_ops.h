// CPU kernels: the readable reference for every op of engine/ops.h, and the backend CI runs.
// Signatures mirror sd3::ops; engine/ops.cpp dispatches here for CPU tensors. Inputs are
// CPU tensors of any float dtype and any strides; outputs are contiguous, of the activation
// input's dtype; math is f32.
#pragma once

#include "engine/ops.h"

namespace sd3::cpu {

using ops::Activation;
using ops::AttentionOptions;
using ops::Conv2dOptions;

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act);
Tensor matmul(const Tensor& a, const Tensor& b);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float s);
Tensor add_scalar(const Tensor& x, float s);
Tensor axpby(const Tensor& x, float a, const Tensor& y, float b);
Tensor cast(const Tensor& x, DType dtype);
Tensor contiguous(const Tensor& x);

Tensor activation(const Tensor& x, Activation act);
Tensor softmax(const Tensor& x);

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps);

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt);

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& opt);
Tensor upsample_nearest2x(const Tensor& x);
Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom,
             float value);

Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
Tensor embedding(const Tensor& ids, const Tensor& table);

Tensor adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps);
Tensor gated_add(const Tensor& x, const Tensor& gate, const Tensor& y);
Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps);
Tensor timestep_embedding(const Tensor& t, int64_t dim, float max_period);
Tensor patchify(const Tensor& x, int64_t p);
Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int64_t p, int64_t c);
Tensor cfg_euler_step(const Tensor& x, const Tensor& v_cond, const Tensor& v_uncond, float s,
                      float sigma, float sigma_next);

}  // namespace sd3::cpu
