// layer_norm, rms_norm, group_norm, groupnorm_silu and adaln_modulate against float64
// references (Note [Op test tolerances]).
//
// Note [Norm tolerances]
// The kernels sum in 8 f32 lanes over blocks of 1024 values (block sums in double), so a sum
// over m = min(n, 1024)-sized blocks is within (m/8 + 4) u sum|x|. Hence the mean is within
// d_mu = (m/8 + 5) u mean|x|, the variance (and rstd) within (m/8 + 6) u relative, and
//   |y - ref| <= |w| (d_mu rstd + |y_n| (m/16 + 6) u) + 2u (|y_n w| + |b|) + out_round,
// with y_n the normalised value. Note the d_mu term: for data with |mean| >> std it is the
// honest f32 limit, large but far below what E[x^2] - E[x]^2 would give.
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

struct NormRef {
  std::vector<double> ref, tol;
  // Magnitude of the intermediate values (|y_n|, |y_n w|, |b|, |z|): the unfused compositions
  // store each in the activation dtype, one extra rounding apiece.
  std::vector<double> inter;
  // tol plus those roundings, for an unfused path on f16/bf16 data.
  std::vector<double> unfused_tol(DType dt) const {
    std::vector<double> t = tol;
    for (size_t i = 0; i < t.size(); ++i) t[i] += kActSlope * unit_roundoff(dt) * inter[i];
    return t;
  }
};

// Normalises groups of `count` consecutive values (after contiguous()); channel(i) gives the
// affine index of flat element i. block = the length of the rows the kernel sums.
NormRef ref_norm(const Tensor& x, int64_t count, int64_t block, bool rms,
                 const std::function<double(int64_t)>& w, const std::function<double(int64_t)>& b,
                 float eps, ops::Activation act, DType out) {
  const std::vector<double> xv = values(x);
  NormRef r;
  r.ref.resize(xv.size());
  r.tol.resize(xv.size());
  r.inter.resize(xv.size());
  const double m = static_cast<double>(std::min<int64_t>(block, 1024));
  for (size_t g0 = 0; g0 < xv.size(); g0 += static_cast<size_t>(count)) {
    double mean = 0.0, mean_abs = 0.0, var = 0.0;
    for (int64_t i = 0; i < count; ++i) {
      mean += xv[g0 + i];
      mean_abs += std::fabs(xv[g0 + i]);
    }
    mean = rms ? 0.0 : mean / count;
    mean_abs /= count;
    for (int64_t i = 0; i < count; ++i) var += (xv[g0 + i] - mean) * (xv[g0 + i] - mean);
    var /= count;
    const double rstd = 1.0 / std::sqrt(var + eps);
    const double d_mu = rms ? 0.0 : (m / 8 + 5) * kU32 * mean_abs + kU32 * std::fabs(mean);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t idx = static_cast<int64_t>(g0) + i;
      const double yn = (xv[idx] - mean) * rstd;
      const double wi = w(idx), bi = b(idx);
      const double z = yn * wi + bi;
      const double y = ref_activation(z, act);
      const double zt = std::fabs(wi) * (d_mu * rstd + std::fabs(yn) * (m / 16 + 6) * kU32) +
                        2 * kU32 * (std::fabs(yn * wi) + std::fabs(bi));
      r.ref[idx] = y;
      r.inter[idx] = std::fabs(yn) * (1 + 2 * std::fabs(wi)) + std::fabs(bi) + std::fabs(z);
      r.tol[idx] = (act == ops::Activation::None ? 1.0 : kActSlope) * zt +
                   act_tolerance(z, y, act) + unit_roundoff(out) * std::fabs(y) + tiny(out);
    }
  }
  return r;
}

std::function<double(int64_t)> per_channel(const Tensor& t, int64_t period, int64_t repeat,
                                           double dflt) {
  if (!t.defined()) return [dflt](int64_t) { return dflt; };
  auto v = std::make_shared<std::vector<double>>(values(t));
  return [v, period, repeat](int64_t i) { return (*v)[(i / repeat) % period]; };
}

TEST(LayerNorm, AffineVariantsDtypesLayouts) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const Shape shapes[] = {{1, 1}, {7, 13}, {2, 77, 154}, {3, 1536}, {5, 2049}};
  for (const Shape& shape : shapes) {
    const int64_t c = shape.back();
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      // Large-offset data (mean 1000, std 1) only where f32 can represent it usefully.
      const double shift = dt == DType::F32 && c > 100 ? 1000.0 : 0.5;
      Tensor x = randn(rng, shape, dt, 2.0, shift);
      for (int affine = 0; affine < 3; ++affine) {
        Tensor w = affine >= 1 ? randn(rng, {c}, DType::F16) : Tensor();
        Tensor b = affine >= 2 ? randn(rng, {c}) : Tensor();
        const float eps = affine == 1 ? 1e-5f : 1e-6f;
        NormRef r = ref_norm(x, c, c, false, per_channel(w, c, 1, 1.0), per_channel(b, c, 1, 0.0),
                             eps, ops::Activation::None, dt);
        for (int layout = -1; layout < kLayouts; ++layout) {
          Tensor xv = layout < 0 ? x : noncontiguous(x, layout);
          auto [one, two] = run_1_and_2_threads([&] { return ops::layer_norm(xv, w, b, eps); });
          ASSERT_EQ(one.dtype(), dt);
          expect_close(one, r.ref, r.tol,
                       "layer_norm " + x.str() + " affine " + std::to_string(affine) + " layout " +
                           std::to_string(layout));
          expect_equal(two, one, "layer_norm 2 threads vs 1");
        }
      }
    }
  }
  Tensor x = randn(rng, {3, 5});
  EXPECT_THROW(ops::layer_norm(x, randn(rng, {4}), Tensor(), 1e-5f), Error);
  EXPECT_THROW(ops::layer_norm(x, Tensor(), randn(rng, {5, 1}), 1e-5f), Error);
  EXPECT_THROW(ops::layer_norm(Tensor::zeros({3, 5}, DType::I32), Tensor(), Tensor(), 1e-5f),
               Error);
}

TEST(RmsNorm, WithAndWithoutWeight) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Shape& shape : {Shape{1, 1}, Shape{2, 7, 64}, Shape{3, 4096}}) {
    const int64_t c = shape.back();
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor x = randn(rng, shape, dt, 3.0, 0.3);
      for (bool with_w : {false, true}) {
        Tensor w = with_w ? randn(rng, {c}) : Tensor();
        NormRef r = ref_norm(
            x, c, c, true, per_channel(w, c, 1, 1.0), [](int64_t) { return 0.0; }, 1e-6f,
            ops::Activation::None, dt);
        for (int layout = -1; layout < kLayouts; ++layout)
          expect_close(ops::rms_norm(layout < 0 ? x : noncontiguous(x, layout), w, 1e-6f), r.ref,
                       r.tol, "rms_norm " + x.str() + " layout " + std::to_string(layout));
      }
    }
  }
  Rng r2;
  EXPECT_THROW(ops::rms_norm(randn(r2, {3, 5}), randn(r2, {3}), 1e-6f), Error);
}

TEST(GroupNorm, ShapesGroupsAndFusedSilu) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  struct Case {
    Shape shape;
    int64_t groups;
  };
  const Case cases[] = {{{2, 6, 5, 7}, 3},    {{1, 32, 9, 11}, 32},  {{3, 4}, 2},
                        {{2, 8, 3, 4, 5}, 4}, {{1, 64, 40, 40}, 32}, {{1, 3, 1, 1}, 1}};
  for (const Case& c : cases) {
    const int64_t ch = c.shape[1];
    const int64_t spatial = shape_numel(c.shape) / (c.shape[0] * ch);
    const int64_t count = ch / c.groups * spatial;
    for (DType dt : {DType::F32, DType::F16}) {
      Tensor x = randn(rng, c.shape, dt, 1.5, 0.7);
      Tensor w = randn(rng, {ch}, DType::BF16), b = randn(rng, {ch});
      for (bool silu : {false, true}) {
        const ops::Activation act = silu ? ops::Activation::Silu : ops::Activation::None;
        NormRef r = ref_norm(x, count, spatial, false, per_channel(w, ch, spatial, 1.0),
                             per_channel(b, ch, spatial, 0.0), 1e-5f, act, dt);
        for (int layout = -1; layout < kLayouts; ++layout) {
          Tensor xv = layout < 0 ? x : noncontiguous(x, layout);
          for (bool fused : {true, false}) {
            Fusion saved = fusion();
            fusion().groupnorm = fused;
            auto [one, two] = run_1_and_2_threads([&] {
              return silu ? ops::groupnorm_silu(xv, c.groups, w, b, 1e-5f)
                          : ops::group_norm(xv, c.groups, w, b, 1e-5f);
            });
            fusion() = saved;
            const std::string what = std::string(silu ? "groupnorm_silu " : "group_norm ") +
                                     x.str() + " groups " + std::to_string(c.groups) + " layout " +
                                     std::to_string(layout) + " fused " + std::to_string(fused);
            expect_close(one, r.ref, fused ? r.tol : r.unfused_tol(dt), what);
            expect_equal(two, one, what + " 2 threads vs 1");
          }
        }
      }
    }
  }
  // No affine.
  Tensor x = randn(rng, {2, 4, 3, 3});
  NormRef r = ref_norm(
      x, 18, 9, false, [](int64_t) { return 1.0; }, [](int64_t) { return 0.0; }, 1e-6f,
      ops::Activation::None, DType::F32);
  expect_close(ops::group_norm(x, 2, Tensor(), Tensor(), 1e-6f), r.ref, r.tol,
               "group_norm without affine");
  EXPECT_THROW(ops::group_norm(x, 3, Tensor(), Tensor(), 1e-6f), Error);  // 4 % 3
  EXPECT_THROW(ops::group_norm(x, 0, Tensor(), Tensor(), 1e-6f), Error);
  EXPECT_THROW(ops::group_norm(randn(rng, {4}), 2, Tensor(), Tensor(), 1e-6f), Error);
  EXPECT_THROW(ops::groupnorm_silu(x, 2, randn(rng, {3}), Tensor(), 1e-6f), Error);
}

TEST(AdalnModulate, FusedUnfusedAndReference) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Shape& shape : {Shape{1, 1, 1}, Shape{2, 77, 64}, Shape{2, 13, 1536}}) {
    const int64_t nb = shape[0], len = shape[1], c = shape[2];
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor x = randn(rng, shape, dt);
      // shift and scale are chunks of one [B, 6C] modulation vector: strided rows.
      Tensor mod = randn(rng, {nb, 6 * c}, DType::F32, 0.5);
      Tensor shift = mod.slice(1, 0, c), scale = mod.slice(1, c, 2 * c);
      const std::vector<double> sh = values(shift), sc = values(scale);
      NormRef r = ref_norm(
          x, c, c, false, [&](int64_t i) { return 1.0 + sc[(i / (len * c)) * c + i % c]; },
          [&](int64_t i) { return sh[(i / (len * c)) * c + i % c]; }, 1e-6f, ops::Activation::None,
          dt);
      // (1 + scale) is rounded to f32 once more than the reference assumes.
      for (size_t i = 0; i < r.tol.size(); ++i) r.tol[i] += 2 * kU32 * std::fabs(r.ref[i]);
      for (bool fused : {true, false}) {
        for (int layout : {0, 3}) {
          Fusion saved = fusion();
          fusion().adaln = fused;
          auto [one, two] = run_1_and_2_threads(
              [&] { return ops::adaln_modulate(noncontiguous(x, layout), shift, scale, 1e-6f); });
          fusion() = saved;
          ASSERT_EQ(one.dtype(), dt);
          expect_close(one, r.ref, fused ? r.tol : r.unfused_tol(dt),
                       "adaln_modulate " + x.str() + " fused " + std::to_string(fused) +
                           " layout " + std::to_string(layout));
          expect_equal(two, one, "adaln_modulate 2 threads vs 1");
        }
      }
    }
  }
  Tensor x = randn(rng, {2, 3, 4});
  EXPECT_THROW(ops::adaln_modulate(x, randn(rng, {2, 3}), randn(rng, {2, 4}), 1e-6f), Error);
  EXPECT_THROW(
      ops::adaln_modulate(randn(rng, {3, 4}), randn(rng, {3, 4}), randn(rng, {3, 4}), 1e-6f),
      Error);
}

}  // namespace
}  // namespace sd3::test
