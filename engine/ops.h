// The op API: everything models call. Each op dispatches on the device of its inputs to the
// CPU kernel (kernels/cpu, the reference) or the CUDA kernel (kernels/cuda).
//
// Conventions (docs/architecture.md):
//  - token streams are [B, L, C]; images and latents are [B, C, H, W];
//  - linear(x, W) computes x W^T with W stored as the checkpoint stores it, [out, in];
//  - float inputs may be f32, f16 or bf16; the result has the dtype of the activation input
//    (x, or the first operand); weights of another float dtype are cast per use; all math
//    (sums, norms, softmax) is done in f32;
//  - inputs may be non-contiguous views unless an op says otherwise; outputs are contiguous.
//
// Ops marked "fused" have an unfused composition of primitive ops selected by Fusion
// (SD3_UNFUSED / --unfused), so what each fusion buys can be measured end to end.
#pragma once

#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sd3 {

// ---- fusion switches ----------------------------------------------------------------------

struct Fusion {
  bool adaln = true;      // adaln_modulate as one kernel
  bool attn = true;       // attention as one flash-style kernel (else QK^T, softmax, PV)
  bool groupnorm = true;  // groupnorm_silu as one kernel
  bool euler = true;      // cfg_euler_step as one kernel
};
// Parses "adaln,attn,groupnorm,euler" / "all" / "none" / "" into the set of fusions to turn off.
Fusion parse_unfused(const std::string& list);
// The process-wide setting; initialised from the environment variable SD3_UNFUSED.
Fusion& fusion();

// Threads used by CPU kernels (OpenMP and BLAS). 0 = all cores.
void set_num_threads(int n);
int num_threads();

namespace ops {

enum class Activation { None, Gelu, GeluTanh, Silu, QuickGelu };

// ---- matrix products ----------------------------------------------------------------------
// x [..., in], w [out, in], bias [out] or undefined -> [..., out]; act applied after the bias.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias = {},
              Activation act = Activation::None);
// a [..., M, K] @ b [..., K, N] -> [..., M, N]; leading dimensions must be equal.
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- elementwise (numpy broadcasting) -----------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, float s);           // x * s
Tensor add_scalar(const Tensor& x, float s);      // x + s
Tensor axpby(const Tensor& x, float a, const Tensor& y, float b);  // a*x + b*y, same shapes
Tensor cast(const Tensor& x, DType dtype);
Tensor contiguous(const Tensor& x);

// ---- activations --------------------------------------------------------------------------
Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);       // exact, erf
Tensor gelu_tanh(const Tensor& x);  // tanh approximation
Tensor quick_gelu(const Tensor& x); // x * sigmoid(1.702 x)
Tensor activation(const Tensor& x, Activation act);
Tensor softmax(const Tensor& x);    // over the last dimension

// ---- normalisation ------------------------------------------------------------------------
// Over the last dimension; weight/bias [C] or undefined (no affine).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps);
// x / sqrt(mean(x^2) + eps) * weight over the last dimension; weight undefined = no gain.
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps);
// x [B, C, H, W] (or [B, C, ...]), `groups` groups of C/groups channels; weight/bias [C].
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps);

// ---- attention ----------------------------------------------------------------------------
struct AttentionOptions {
  int64_t heads = 1;
  bool causal = false;  // query i sees keys j <= i
  Tensor bias;          // additive, [H, Lq, Lk] or [B, H, Lq, Lk]; undefined = none
  float scale = 0.0f;   // 0 = 1/sqrt(head_dim); T5 uses 1
};
// q [B, Lq, H*D], k and v [B, Lk, H*D] -> [B, Lq, H*D]: softmax(q k^T * scale + bias) v per head.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt);

// ---- convolution and resampling (images [B, C, H, W]) ------------------------------------
struct Conv2dOptions {
  int64_t stride = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;  // zero padding
  static Conv2dOptions same(int64_t pad, int64_t stride = 1) {
    return Conv2dOptions{stride, pad, pad, pad, pad};
  }
};
// w [Cout, Cin, kh, kw], bias [Cout] or undefined.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& opt);
Tensor upsample_nearest2x(const Tensor& x);
Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom,
             float value = 0.0f);

// ---- shape ops ----------------------------------------------------------------------------
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// Views of consecutive pieces of the given sizes along dim (sizes must sum to size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// n equal views along dim.
std::vector<Tensor> chunk(const Tensor& x, int64_t n, int64_t dim);
Tensor permute(const Tensor& x, const std::vector<int64_t>& order);  // contiguous result
// ids [B, L] (i32 or i64), table [V, C] -> [B, L, C] in the table's float dtype (f32 on CPU).
Tensor embedding(const Tensor& ids, const Tensor& table);

// ---- diffusion-specific (some fused) ------------------------------------------------------
// Fused: layer_norm(x, no affine, eps) * (1 + scale) + shift; x [B, L, C], shift/scale [B, C].
Tensor adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps);
// x + gate * y; x, y [B, L, C], gate [B, C].
Tensor gated_add(const Tensor& x, const Tensor& gate, const Tensor& y);
// Fused: silu(group_norm(x, groups, weight, bias, eps)).
Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps);
// Sinusoidal timestep embedding: t [B] -> [B, dim] f32, [cos(t f_i), sin(t f_i)] with
// f_i = exp(-ln(max_period) i / (dim/2)) (the reference's order: cos first).
Tensor timestep_embedding(const Tensor& t, int64_t dim, float max_period = 10000.0f);
// x [B, C, H, W] -> [B, (H/p)(W/p), p*p*C] with features ordered (c, py, px) as a conv with
// kernel = stride = p flattens its weight, so patchify + linear == that conv.
Tensor patchify(const Tensor& x, int64_t p);
// x [B, h*w, p*p*C] with features ordered (py, px, c) -> [B, C, h*p, w*p] (the MMDiT's order).
Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int64_t p, int64_t c);
// Classifier-free guidance combine: uncond + s * (cond - uncond).
Tensor cfg_combine(const Tensor& cond, const Tensor& uncond, float s);
// Euler step of the flow-matching ODE: x + (x - denoised) / sigma * (sigma_next - sigma).
Tensor euler_step(const Tensor& x, const Tensor& denoised, float sigma, float sigma_next);
// Fused: with v = cfg_combine(v_cond, v_uncond, s) (model outputs, denoised = x - v sigma),
// returns x + v * (sigma_next - sigma), the Euler update in one pass.
Tensor cfg_euler_step(const Tensor& x, const Tensor& v_cond, const Tensor& v_uncond, float s,
                      float sigma, float sigma_next);

}  // namespace ops
}  // namespace sd3
