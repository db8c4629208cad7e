// Diffusion-specific ops: gated residual add, timestep embedding, patchify / unpatchify and
// the fused CFG + Euler update. (adaln_modulate lives with the norms in norm.cpp.)
#include <cmath>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/vec.h"

namespace sd3::cpu {

namespace {

SD3_CPU_SIMD void gated_add_row(float* out, const float* x, const float* g, const float* y,
                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + g[i] * y[i];
}

// x + (vu + s (vc - vu)) dt: the guided velocity, then the Euler step.
SD3_CPU_SIMD void cfg_euler_row(float* out, const float* x, const float* vc, const float* vu,
                                float s, float dt, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + (vu[i] + s * (vc[i] - vu[i])) * dt;
}

}  // namespace

Tensor gated_add(const Tensor& x, const Tensor& gate, const Tensor& y) {
  detail::check_float(x, "gated_add", "x");
  detail::check_float(gate, "gated_add", "gate");
  detail::check_float(y, "gated_add", "y");
  SD3_CHECK(x.dim() == 3 && y.shape() == x.shape() && gate.shape() == Shape({x.size(0), x.size(2)}),
            "gated_add: x ", x.str(), ", gate ", gate.str(), ", y ", y.str(),
            " (expected x and y [B, L, C], gate [B, C])");
  const Tensor g = gate.unsqueeze(1);  // [B, 1, C], broadcast over L
  return detail::map_f32(x.shape(), x.dtype(), {&x, &g, &y},
                         [](float* out, const float* const* in, int64_t n) {
                           gated_add_row(out, in[0], in[1], in[2], n);
                         });
}

Tensor cfg_euler_step(const Tensor& x, const Tensor& v_cond, const Tensor& v_uncond, float s,
                      float sigma, float sigma_next) {
  detail::check_float(x, "cfg_euler_step", "x");
  detail::check_float(v_cond, "cfg_euler_step", "v_cond");
  detail::check_float(v_uncond, "cfg_euler_step", "v_uncond");
  SD3_CHECK(v_cond.shape() == x.shape() && v_uncond.shape() == x.shape(), "cfg_euler_step: x ",
            x.str(), ", v_cond ", v_cond.str(), ", v_uncond ", v_uncond.str(),
            " must have one shape");
  const float dt = sigma_next - sigma;
  return detail::map_f32(x.shape(), x.dtype(), {&x, &v_cond, &v_uncond},
                         [s, dt](float* out, const float* const* in, int64_t n) {
                           cfg_euler_row(out, in[0], in[1], in[2], s, dt, n);
                         });
}

Tensor timestep_embedding(const Tensor& t, int64_t dim, float max_period) {
  SD3_CHECK(t.defined() && t.dim() == 1, "timestep_embedding: t must be [B], got ", t.str());
  SD3_CHECK(dim >= 1, "timestep_embedding: dim ", dim, " must be positive");
  SD3_CHECK(max_period > 0.0f, "timestep_embedding: max_period ", max_period, " must be positive");
  const int64_t nb = t.size(0), half = dim / 2;
  const std::vector<float> tv = t.to_floats();
  // The reference (torch, float32) rounds at each step: f32(-ln P) * i, / half, exp, then
  // t * freq. We repeat those roundings so the argument matches the reference bit for bit;
  // exp, cos and sin themselves are evaluated in double and rounded once.
  std::vector<float> freqs(static_cast<size_t>(half));
  const float neg_log_period = static_cast<float>(-std::log(static_cast<double>(max_period)));
  for (int64_t i = 0; i < half; ++i) {
    const float e = neg_log_period * static_cast<float>(i) / static_cast<float>(half);
    freqs[i] = static_cast<float>(std::exp(static_cast<double>(e)));
  }
  Tensor out = Tensor::zeros({nb, dim}, DType::F32);  // an odd dim leaves a zero last column
  float* y = out.data<float>();
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t i = 0; i < half; ++i) {
      const double arg = static_cast<double>(tv[b] * freqs[i]);
      y[b * dim + i] = static_cast<float>(std::cos(arg));
      y[b * dim + half + i] = static_cast<float>(std::sin(arg));
    }
  }
  return out;
}

Tensor patchify(const Tensor& x, int64_t p) {
  SD3_CHECK(x.defined() && x.dim() == 4, "patchify: x must be [B, C, H, W], got ", x.str());
  SD3_CHECK(p >= 1 && x.size(2) % p == 0 && x.size(3) % p == 0, "patchify: ", x.str(),
            " is not divisible into ", p, "x", p, " patches");
  const int64_t nb = x.size(0), c = x.size(1), h = x.size(2) / p, w = x.size(3) / p;
  Tensor out = Tensor::empty({nb, h * w, c * p * p}, x.dtype());
  // [B, C, h, py, w, px] -> [B, h, w, C, py, px]: token (i, j), features (c, py, px).
  const Tensor src = x.contiguous().view({nb, c, h, p, w, p}).permute({0, 2, 4, 1, 3, 5});
  detail::copy_strided(src, out.view({nb, h, w, c, p, p}));
  return out;
}

Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int64_t p, int64_t c) {
  SD3_CHECK(h >= 0 && w >= 0 && p >= 1 && c >= 0, "unpatchify: bad grid ", h, "x", w, ", patch ", p,
            ", channels ", c);
  SD3_CHECK(x.defined() && x.dim() == 3 && x.size(1) == h * w && x.size(2) == p * p * c,
            "unpatchify: x ", x.str(), " must be [B, ", h * w, ", ", p * p * c, "] for a ", h, "x",
            w, " grid of ", p, "x", p, " patches of ", c, " channels");
  const int64_t nb = x.size(0);
  Tensor out = Tensor::empty({nb, c, h * p, w * p}, x.dtype());
  // [B, h, w, py, px, C] -> [B, C, h, py, w, px].
  const Tensor src = x.contiguous().view({nb, h, w, p, p, c}).permute({0, 5, 1, 3, 2, 4});
  detail::copy_strided(src, out.view({nb, c, h, p, w, p}));
  return out;
}

}  // namespace sd3::cpu
