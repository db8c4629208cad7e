// CUDA kernels: the GPU backend of every op of engine/ops.h. Signatures mirror
// kernels/cpu/cpu_ops.h exactly; engine/ops.cpp dispatches here for CUDA tensors.
//
// Inputs are CUDA tensors of f32, f16 or bf16 (ids: i32/i64), any strides unless an op says
// otherwise (non-contiguous inputs are gathered first where a kernel needs rows); outputs are
// contiguous, of the activation input's dtype; weights of another float dtype are cast on the
// device per use; all math (sums, norms, softmax) is f32. Every kernel runs on the device's one
// stream (runtime.h); nothing here synchronises the host.
#pragma once

#include "engine/ops.h"

namespace sd3::cuda {

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

// ---- entry points beyond the op API (benchmarks, tests, SD3.5 models) --------------------

// The fused attention kernel with RMSNorm applied to q and k per head first (SD3.5's
// qk-norm): q_h <- rms_norm(q_h, q_weight, eps), likewise k; weights [D] (any float dtype).
Tensor attention_qk_norm(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionOptions& opt, const Tensor& q_weight,
                         const Tensor& k_weight, float eps);
// The reference path of attention (batched cuBLAS products, a masked softmax kernel, chunked
// over queries so no more than ~256 MiB of scores exist at once). It serves f32 inputs and
// head dims the flash kernel does not take (e.g. the VAE's single 512-wide head).
Tensor attention_gemm(const Tensor& q, const Tensor& k, const Tensor& v,
                      const AttentionOptions& opt);
// True when attention() takes the flash kernel for these inputs (else attention_gemm).
bool flash_attention_supported(const Tensor& q, const AttentionOptions& opt);
// Lab switch: query m-tiles of 16 rows per warp in the D = 64 flash kernel (1 or 2; anything
// else restores the default, 2, or SD3_FLASH_MTILES).
void set_flash_mtiles(int mtiles);
// Lab switch: which flash kernel attention() runs where both serve the problem (bf16/f16, head
// dim 64 or 128, no causal mask, no bias, scale > 0): kMma, the mma.sync kernel
// (joint_attention.cu); kWgmma, the Hopper warpgroup-MMA kernel (joint_attention_wgmma.cu),
// taken only where wgmma_attention_available(), else kMma; kDefault, the environment variable
// SD3_FLASH_KERNEL=mma|wgmma, else mma (not yet measured on a GPU: a GPU session that finds the
// wgmma kernel correct and faster flips this default).
enum class FlashKernel { kDefault, kMma, kWgmma };
void set_flash_kernel(FlashKernel kernel);
// True when `device` can run the wgmma kernel: compute capability 9.0 and device code built for
// sm_90a (CMAKE_CUDA_ARCHITECTURES containing 90a). The first call per device reads a flag from
// the device (one synchronous 4-byte copy).
bool wgmma_attention_available(int device = 0);
// The flash kernel attention() runs for q and opt (kMma or kWgmma), kDefault when it takes the
// gemm path (attention_gemm) instead.
FlashKernel flash_kernel_for(const Tensor& q, const AttentionOptions& opt);
// Lab switch for group_norm / groupnorm_silu: 1 = the one-pass kernel where the shape allows
// (the default), 2 = always the two-pass kernels; anything else restores the default or
// SD3_GROUPNORM_PASSES (Note [One-pass group norm]).
void set_groupnorm_passes(int passes);
// Lab switch for layer_norm / rms_norm / adaln_modulate rows of up to 512 accesses: 1 = a
// block per row (the default), 2 = a warp per row (Note [Warp-per-row normalisation]);
// anything else restores the default or SD3_ROW_NORM=block|warp.
void set_row_norm_layout(int layout);
// Lab/test switch for the one-pass kernel's chunk: 8 or 16 16-byte vectors per thread (32 or
// 64 KB); anything else restores the default (8 where a group's chunks fit, else 16).
void set_groupnorm_onepass_vecs(int vecs);
// Lab/test switch: run the one-pass kernel with at most `blocks` resident blocks (never fewer
// than a group's chunks), so each block takes many tickets; 0 restores the device's capacity.
void set_groupnorm_onepass_grid(int blocks);
// How many times the one-pass group-norm kernel has been launched in this process.
uint64_t groupnorm_onepass_launches();

// Every lab switch above back to its default (tests' teardown, benchmarks after a failure).
inline void reset_lab_switches() {
  set_flash_mtiles(0);
  set_flash_kernel(FlashKernel::kDefault);
  set_groupnorm_passes(0);
  set_groupnorm_onepass_vecs(0);
  set_groupnorm_onepass_grid(0);
  set_row_norm_layout(0);
}
// True when group_norm on x (contiguous, 16-byte aligned) takes the one-pass kernel on this
// device with the default setting.
bool groupnorm_onepass_possible(const Tensor& x, int64_t groups);

}  // namespace sd3::cuda
