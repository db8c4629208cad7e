// Normalisations: layer_norm, rms_norm, adaln_modulate (LayerNorm without affine, then the
// DiT modulation), group_norm and groupnorm_silu.
//
// Note [Norm statistics]
// Means and variances are computed in two passes (mean, then the mean of squared deviations
// from it), never as E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std.
// Sums run in 8 f32 lanes over blocks of kSumBlock elements and the block sums are added in
// double, so the error stays near f32 rounding even for a group of millions of elements.
#include <cmath>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/vec.h"

namespace sd3::cpu {

namespace {

using vec::VF;
constexpr int64_t kSumBlock = 1024;

// sum(x - shift) or, with square, sum((x - shift)^2), over n elements.
template <bool kSquare>
SD3_INLINE double sum_shifted(const float* x, int64_t n, float shift) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < n; b0 += kSumBlock) {
    const int64_t b1 = std::min(n, b0 + kSumBlock);
    VF acc = vec::splat(0.0f);
    int64_t i = b0;
    for (; i + vec::kLanes <= b1; i += vec::kLanes) {
      VF d = vec::load(x + i) - shift;
      acc += kSquare ? d * d : d;
    }
    if (i < b1) {
      VF d = vec::load_partial(x + i, b1 - i, shift) - shift;  // padding lanes give 0
      acc += kSquare ? d * d : d;
    }
    total += vec::hsum(acc);
  }
  return total;
}

SD3_CPU_SIMD double row_sum(const float* x, int64_t n) {
  return sum_shifted<false>(x, n, 0.0f);
}
SD3_CPU_SIMD double row_sq_dev(const float* x, int64_t n, float mean) {
  return sum_shifted<true>(x, n, mean);
}

// y = ((x - mean) * rstd) [* w] [+ b] with per-element w, b (either may be null). The order
// of operations is that of the unfused composition (normalise, scale, shift).
SD3_CPU_SIMD void normalize_row(float* y, const float* x, int64_t n, float mean, float rstd,
                                const float* w, const float* b) {
  int64_t i = 0;
  for (; i + vec::kLanes <= n; i += vec::kLanes) {
    VF r = (vec::load(x + i) - mean) * rstd;
    if (w) r *= vec::load(w + i);
    if (b) r += vec::load(b + i);
    vec::store(y + i, r);
  }
  if (i < n) {
    const int64_t m = n - i;
    VF r = (vec::load_partial(x + i, m) - mean) * rstd;
    if (w) r *= vec::load_partial(w + i, m);
    if (b) r += vec::load_partial(b + i, m);
    vec::store_partial(y + i, r, m);
  }
}

// y = silu?(((x - mean) * rstd) * w + b) with one w, b for the whole row (a channel).
SD3_CPU_SIMD void normalize_channel(float* y, const float* x, int64_t n, float mean, float rstd,
                                    float w, float b, bool silu) {
  int64_t i = 0;
  for (; i + vec::kLanes <= n; i += vec::kLanes) {
    VF r = (vec::load(x + i) - mean) * rstd * w + b;
    vec::store(y + i, silu ? vec::x_sigmoid(r, 1.0f) : r);
  }
  if (i < n) {
    VF r = (vec::load_partial(x + i, n - i) - mean) * rstd * w + b;
    vec::store_partial(y + i, silu ? vec::x_sigmoid(r, 1.0f) : r, n - i);
  }
}

// y = x * rstd [* w].
SD3_CPU_SIMD void scale_row(float* y, const float* x, int64_t n, float rstd, const float* w) {
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * rstd * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * rstd;
  }
}

// LayerNorm of every row of x [..., C] into out; per_row_affine(r) gives the (w, b) pointers
// for row r (either may be null).
template <class Affine>
Tensor layer_norm_rows(const Tensor& x, float eps, Affine per_row_affine) {
  detail::OutF32 out(x.shape(), x.dtype());
  if (x.numel() == 0) return out.finish();
  const detail::RowsF32 in = detail::rows_f32(x);
  const int64_t c = in.cols;
  float* y = out.ptr();
#pragma omp parallel for schedule(static) if (x.numel() >= detail::kParallelGrain)
  for (int64_t r = 0; r < in.rows; ++r) {
    const float* xr = in.row(r);
    const float mean = static_cast<float>(row_sum(xr, c) / static_cast<double>(c));
    const double var = row_sq_dev(xr, c, mean) / static_cast<double>(c);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
    const auto [w, b] = per_row_affine(r);
    normalize_row(y + r * c, xr, c, mean, rstd, w, b);
  }
  return out.finish();
}

Tensor group_norm_impl(const char* op, const Tensor& x, int64_t groups, const Tensor& weight,
                       const Tensor& bias, float eps, bool silu) {
  detail::check_float(x, op, "x");
  SD3_CHECK(x.dim() >= 2, op, ": x must be [B, C, ...], got ", x.str());
  const int64_t nb = x.size(0), c = x.size(1);
  SD3_CHECK(groups > 0 && c % groups == 0, op, ": ", c, " channels of ", x.str(),
            " not divisible into ", groups, " groups");
  detail::check_vector(weight, c, op, "weight");
  detail::check_vector(bias, c, op, "bias");
  detail::OutF32 out(x.shape(), x.dtype());
  const int64_t spatial = c == 0 || nb == 0 ? 0 : x.numel() / (nb * c);
  if (x.numel() == 0) return out.finish();
  const Tensor xf = detail::as_f32(x);
  const float* xp = xf.data<float>();
  float* y = out.ptr();
  const std::vector<float> w = detail::vector_f32(weight), b = detail::vector_f32(bias);
  const int64_t cg = c / groups;
  const int64_t rows = nb * c;  // one row = one channel of one batch item: `spatial` values
  const bool parallel = x.numel() >= detail::kParallelGrain;
  const double count = static_cast<double>(cg * spatial);

  // Note [Norm statistics]: per-channel partial sums, then per-group mean; same for the
  // squared deviations from that mean.
  std::vector<double> partial(static_cast<size_t>(rows));
  std::vector<float> mean(static_cast<size_t>(nb * groups)), rstd(mean.size());
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) partial[r] = row_sum(xp + r * spatial, spatial);
  for (int64_t g = 0; g < nb * groups; ++g) {
    double s = 0.0;
    for (int64_t j = 0; j < cg; ++j) s += partial[g * cg + j];
    mean[g] = static_cast<float>(s / count);
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r)
    partial[r] = row_sq_dev(xp + r * spatial, spatial, mean[r / cg]);
  for (int64_t g = 0; g < nb * groups; ++g) {
    double s = 0.0;
    for (int64_t j = 0; j < cg; ++j) s += partial[g * cg + j];
    rstd[g] = static_cast<float>(1.0 / std::sqrt(s / count + static_cast<double>(eps)));
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ch = r % c, g = r / cg;
    const float wc = w.empty() ? 1.0f : w[ch], bc = b.empty() ? 0.0f : b[ch];
    normalize_channel(y + r * spatial, xp + r * spatial, spatial, mean[g], rstd[g], wc, bc, silu);
  }
  return out.finish();
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  detail::check_float(x, "layer_norm", "x");
  SD3_CHECK(x.dim() >= 1, "layer_norm of a scalar ", x.str());
  const int64_t c = x.size(-1);
  detail::check_vector(weight, c, "layer_norm", "weight");
  detail::check_vector(bias, c, "layer_norm", "bias");
  const std::vector<float> w = detail::vector_f32(weight), b = detail::vector_f32(bias);
  const float* wp = w.empty() ? nullptr : w.data();
  const float* bp = b.empty() ? nullptr : b.data();
  return layer_norm_rows(x, eps, [&](int64_t) { return std::pair{wp, bp}; });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  detail::check_float(x, "rms_norm", "x");
  SD3_CHECK(x.dim() >= 1, "rms_norm of a scalar ", x.str());
  const int64_t c = x.size(-1);
  detail::check_vector(weight, c, "rms_norm", "weight");
  const std::vector<float> w = detail::vector_f32(weight);
  const float* wp = w.empty() ? nullptr : w.data();
  detail::OutF32 out(x.shape(), x.dtype());
  if (x.numel() == 0) return out.finish();
  const detail::RowsF32 in = detail::rows_f32(x);
  float* y = out.ptr();
#pragma omp parallel for schedule(static) if (x.numel() >= detail::kParallelGrain)
  for (int64_t r = 0; r < in.rows; ++r) {
    const float* xr = in.row(r);
    const double ms = row_sq_dev(xr, c, 0.0f) / static_cast<double>(c);
    const float rstd = static_cast<float>(1.0 / std::sqrt(ms + static_cast<double>(eps)));
    scale_row(y + r * c, xr, c, rstd, wp);
  }
  return out.finish();
}

Tensor adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps) {
  detail::check_float(x, "adaln_modulate", "x");
  detail::check_float(shift, "adaln_modulate", "shift");
  detail::check_float(scale, "adaln_modulate", "scale");
  SD3_CHECK(x.dim() == 3, "adaln_modulate: x must be [B, L, C], got ", x.str());
  const int64_t nb = x.size(0), len = x.size(1), c = x.size(2);
  SD3_CHECK(shift.shape() == Shape({nb, c}) && scale.shape() == Shape({nb, c}),
            "adaln_modulate: shift ", shift.str(), " and scale ", scale.str(), " must be [", nb,
            ", ", c, "] for x ", x.str());
  // (1 + scale) rounded to f32 once per batch item, as the unfused add_scalar does.
  const std::vector<float> sc = scale.to_floats(), sh = shift.to_floats();
  std::vector<float> w1(sc.size());
  for (size_t i = 0; i < sc.size(); ++i) w1[i] = sc[i] + 1.0f;
  return layer_norm_rows(x, eps, [&](int64_t r) {
    const int64_t b = len == 0 ? 0 : r / len;
    return std::pair{w1.data() + b * c, sh.data() + b * c};
  });
}

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps) {
  return group_norm_impl("group_norm", x, groups, weight, bias, eps, false);
}

Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps) {
  return group_norm_impl("groupnorm_silu", x, groups, weight, bias, eps, true);
}

}  // namespace sd3::cpu
