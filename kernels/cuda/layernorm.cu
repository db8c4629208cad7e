// LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * w + b, with mean and
// the biased variance over the C elements of a row, w and b optional [C] vectors.
//
// Bytes: one read and one write of the rows (2 N C sizeof(T)) plus the vectors once from L2.
// Design: Note [Row normalisation] in norm.cuh (one block per row, row held in registers).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/norm.cuh"

namespace sd3::cuda {

namespace {
// Note [Warp-per-row normalisation]: 1 block per row (default), 2 warp per row; -1 not yet
// read from SD3_ROW_NORM.
std::atomic<int> g_row_norm_layout{-1};
}  // namespace

int row_norm_layout() {
  int v = g_row_norm_layout.load();
  if (v < 0) {
    const char* e = std::getenv("SD3_ROW_NORM");
    v = e && std::strcmp(e, "warp") == 0 ? 2 : 1;
    g_row_norm_layout.store(v);
  }
  return v;
}

void set_row_norm_layout(int layout) {
  g_row_norm_layout.store(layout == 1 || layout == 2 ? layout : -1);
}

Tensor layer_norm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, float eps) {
  check_float_input(x_in, "layer_norm", "x");
  SD3_CHECK(x_in.dim() >= 1, "layer_norm of a scalar");
  Tensor x = contiguous(x_in);
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  int64_t ws = 0, bs = 0;
  Tensor w = norm_param(weight, x.dtype(), "layer_norm", "weight", &ws);
  Tensor b = norm_param(bias, x.dtype(), "layer_norm", "bias", &bs);
  SD3_CHECK(!w.defined() || w.numel() == C, "layer_norm: weight ", w.str(), " for width ", C);
  SD3_CHECK(!b.defined() || b.numel() == C, "layer_norm: bias ", b.str(), " for width ", C);
  const DType pdt = unify_norm_params(x.dtype(), w, b);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  NormParams prm;
  prm.mul = w.defined() ? w.raw_data() : nullptr;
  prm.add = b.defined() ? b.raw_data() : nullptr;
  prm.eps = eps;
  const bool vec = aligned16(x.raw_data()) && vec_aligned(w, 0) && vec_aligned(b, 0);
  launch_row_norm<true>(x, out, rows, C, pdt, prm, vec, "layer_norm");
  return out;
}

}  // namespace sd3::cuda
