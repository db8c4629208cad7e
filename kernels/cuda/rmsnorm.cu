// RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w, w an optional [C]
// vector (T5 layers, SD3.5's qk-norm).
//
// Bytes: one read and one write of the rows (2 N C sizeof(T)) plus w once from L2.
// Design: Note [Row normalisation] in norm.cuh, without the centring reduction.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/norm.cuh"

namespace sd3::cuda {

Tensor rms_norm(const Tensor& x_in, const Tensor& weight, float eps) {
  check_float_input(x_in, "rms_norm", "x");
  SD3_CHECK(x_in.dim() >= 1, "rms_norm of a scalar");
  Tensor x = contiguous(x_in);
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  int64_t ws = 0;
  Tensor w = norm_param(weight, x.dtype(), "rms_norm", "weight", &ws);
  SD3_CHECK(!w.defined() || w.numel() == C, "rms_norm: weight ", w.str(), " for width ", C);
  Tensor none;
  const DType pdt = unify_norm_params(x.dtype(), w, none);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  NormParams prm;
  prm.mul = w.defined() ? w.raw_data() : nullptr;
  prm.eps = eps;
  const bool vec = aligned16(x.raw_data()) && vec_aligned(w, 0);
  launch_row_norm<false>(x, out, rows, C, pdt, prm, vec, "rms_norm");
  return out;
}

}  // namespace sd3::cuda
