// gated_add, cfg_euler_step, timestep_embedding, patchify and unpatchify against float64
// references and their definitions in the SD3 reference code (Note [Op test tolerances]).
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

TEST(GatedAdd, BroadcastsTheGateOverTokens) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Shape& shape : {Shape{1, 1, 1}, Shape{2, 77, 13}, Shape{2, 154, 1536}}) {
    for (DType dt : {DType::F32, DType::BF16}) {
      const int64_t nb = shape[0], len = shape[1], c = shape[2];
      Tensor x = randn(rng, shape, dt), y = randn(rng, shape, DType::F32);
      Tensor mod = randn(rng, {nb, 6 * c});
      Tensor gate = mod.slice(1, 2 * c, 3 * c);  // a chunk of the modulation vector
      const std::vector<double> xv = values(x), yv = values(y), gv = values(gate);
      std::vector<double> ref, tol;
      for (int64_t i = 0; i < nb * len * c; ++i) {
        const double g = gv[(i / (len * c)) * c + i % c];
        ref.push_back(xv[i] + g * yv[i]);
        // product and sum, each rounded once; then the output rounding.
        tol.push_back(2 * kU32 * (std::fabs(xv[i]) + std::fabs(g * yv[i])) +
                      unit_roundoff(dt) * std::fabs(ref.back()));
      }
      auto [one, two] = run_1_and_2_threads(
          [&] { return ops::gated_add(noncontiguous(x, 1), gate, noncontiguous(y, 3)); });
      ASSERT_EQ(one.dtype(), dt);
      expect_close(one, ref, tol, "gated_add " + x.str());
      expect_equal(two, one, "gated_add 2 threads vs 1");
    }
  }
  Rng r2;
  Tensor x = randn(r2, {2, 3, 4});
  EXPECT_THROW(ops::gated_add(x, randn(r2, {2, 3}), x), Error);
  EXPECT_THROW(ops::gated_add(x, randn(r2, {2, 4}), randn(r2, {2, 3, 5})), Error);
}

TEST(CfgEulerStep, FusedAndUnfusedMatchFloat64) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const float s = 4.5f, sigma = 0.8f, sigma_next = 0.7f;
  for (DType dt : {DType::F32, DType::F16}) {
    Tensor x = randn(rng, {2, 16, 13, 11}, dt), vc = randn(rng, x.shape(), dt);
    Tensor vu = randn(rng, x.shape(), dt);
    const std::vector<double> xv = values(x), cv = values(vc), uv = values(vu);
    std::vector<double> ref, tol;
    const double dt_step = double(sigma_next) - double(sigma);
    for (size_t i = 0; i < xv.size(); ++i) {
      const double v = uv[i] + s * (cv[i] - uv[i]);
      ref.push_back(xv[i] + v * dt_step);
      // Each of the five operations rounds once (the unfused path stores v in the
      // activation dtype, counted by the second term); dt itself is rounded.
      const double mag =
          std::fabs(xv[i]) +
          std::fabs(dt_step) * (std::fabs(uv[i]) + s * (std::fabs(cv[i]) + std::fabs(uv[i])));
      tol.push_back(6 * kU32 * mag +
                    unit_roundoff(dt) * (std::fabs(ref.back()) + 3 * std::fabs(v * dt_step)));
    }
    for (bool fused : {true, false}) {
      Fusion saved = fusion();
      fusion().euler = fused;
      Tensor y = ops::cfg_euler_step(x, noncontiguous(vc, 2), vu, s, sigma, sigma_next);
      fusion() = saved;
      ASSERT_EQ(y.dtype(), dt);
      expect_close(y, ref, tol, "cfg_euler_step " + x.str() + " fused " + std::to_string(fused));
    }
  }
  Rng r2;
  EXPECT_THROW(ops::cfg_euler_step(randn(r2, {2, 3}), randn(r2, {2, 3}), randn(r2, {3, 2}), 1.0f,
                                   1.0f, 0.5f),
               Error);
}

TEST(TimestepEmbedding, CosThenSinWithTheReferenceFrequencies) {
  // Exact math in double, against which the kernel differs only by the f32 roundings of the
  // reference: e = f32(-ln P) * i / half rounds three times (|de| <= 3 u |e|), exp(e) and
  // t * freq once each, so |d arg| <= (3 |e| + 3) u |arg|; then the result's rounding.
  const std::vector<float> ts = {0.0f, 1.0f, 17.25f, 500.0f, 999.0f};
  Tensor t = Tensor::from_floats(ts, {5});
  for (int64_t dim : {1, 2, 7, 256}) {
    for (float max_period : {10000.0f, 100.0f}) {
      Tensor y = ops::timestep_embedding(t, dim, max_period);
      ASSERT_EQ(y.shape(), Shape({5, dim}));
      ASSERT_EQ(y.dtype(), DType::F32);
      const int64_t half = dim / 2;
      std::vector<double> ref, tol;
      for (float tv : ts) {
        for (int64_t j = 0; j < dim; ++j) {
          if (j >= 2 * half) {  // odd dim: zero column
            ref.push_back(0.0);
            tol.push_back(0.0);
            continue;
          }
          const int64_t i = j % half;
          const double e = -std::log(double(max_period)) * double(i) / double(half);
          const double arg = double(tv) * std::exp(e);
          ref.push_back(j < half ? std::cos(arg) : std::sin(arg));
          tol.push_back((3 * std::fabs(e) + 3) * kU32 * std::fabs(arg) + kU32);
        }
      }
      expect_close(y, ref, tol, "timestep_embedding dim " + std::to_string(dim));
    }
  }
  // Any float dtype of t; the result is f32.
  Tensor th = Tensor::from_floats({250.0f}, {1}, DType::BF16);
  EXPECT_EQ(ops::timestep_embedding(th, 8).dtype(), DType::F32);
  EXPECT_THROW(ops::timestep_embedding(Tensor::from_floats({1.0f}, {1, 1}), 8), Error);
  EXPECT_THROW(ops::timestep_embedding(t, 0), Error);
  EXPECT_THROW(ops::timestep_embedding(t, 8, 0.0f), Error);
}

TEST(Patchify, FeaturesOrderedAsTheConvWeightAndLinearEqualsConv) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const int64_t nb = 2, c = 3, h = 6, w = 10, p = 2;
  Tensor x = randn(rng, {nb, c, h, w});
  Tensor tok = ops::patchify(noncontiguous(x, 1), p);
  ASSERT_EQ(tok.shape(), Shape({nb, (h / p) * (w / p), c * p * p}));
  const std::vector<double> xv = values(x);
  std::vector<double> ref;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t i = 0; i < h / p; ++i)
      for (int64_t j = 0; j < w / p; ++j)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t py = 0; py < p; ++py)
            for (int64_t px = 0; px < p; ++px)
              ref.push_back(xv[((b * c + ch) * h + i * p + py) * w + j * p + px]);
  expect_close(tok, ref, 0.0, "patchify order (c, py, px)");

  // patchify + linear == conv2d with kernel = stride = p, flattened to tokens.
  const int64_t cout = 5;
  Tensor wt = randn(rng, {cout, c, p, p}), bias = randn(rng, {cout});
  Tensor via_linear = ops::linear(tok, wt.view({cout, c * p * p}), bias);
  Tensor conv = ops::conv2d(x, wt, bias, ops::Conv2dOptions{p, 0, 0, 0, 0});
  Tensor conv_tokens = ops::permute(conv.view({nb, cout, (h / p) * (w / p)}), {0, 2, 1});
  // Both sides are within the gamma_K bound of the exact sums: 2 (K + 3) u sum|x||w| + |b|,
  // with the magnitudes from the same conv on absolute values.
  auto absolute = [](const Tensor& t) {
    std::vector<float> v = t.to_floats();
    for (float& e : v) e = std::fabs(e);
    return Tensor::from_floats(v, t.shape());
  };
  const std::vector<double> mag = values(ops::permute(
      ops::conv2d(absolute(x), absolute(wt), absolute(bias), ops::Conv2dOptions{p, 0, 0, 0, 0})
          .view({nb, cout, (h / p) * (w / p)}),
      {0, 2, 1}));
  std::vector<double> tol;
  const int64_t k = c * p * p;
  for (double m : mag) tol.push_back(2.0 * (k + 3) * kU32 * m * 1.01);
  expect_close(via_linear, values(conv_tokens), tol, "patchify + linear vs conv2d");
  EXPECT_THROW(ops::patchify(randn(rng, {1, 3, 5, 4}), 2), Error);
  EXPECT_THROW(ops::patchify(randn(rng, {3, 4, 4}), 2), Error);
}

TEST(Unpatchify, FeaturesOrderedPyPxC) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const int64_t nb = 2, hh = 3, ww = 5, p = 2, c = 4;
  for (DType dt : {DType::F32, DType::F16}) {
    Tensor x = randn(rng, {nb, hh * ww, p * p * c}, dt);
    Tensor img = ops::unpatchify(noncontiguous(x, 0), hh, ww, p, c);
    ASSERT_EQ(img.shape(), Shape({nb, c, hh * p, ww * p}));
    ASSERT_EQ(img.dtype(), dt);
    const std::vector<double> xv = values(x);
    std::vector<double> ref;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t y = 0; y < hh * p; ++y)
          for (int64_t xx = 0; xx < ww * p; ++xx) {
            const int64_t token = (y / p) * ww + xx / p;
            const int64_t feat = ((y % p) * p + xx % p) * c + ch;
            ref.push_back(xv[(b * hh * ww + token) * p * p * c + feat]);
          }
    expect_close(img, ref, 0.0, "unpatchify " + x.str());
  }
  EXPECT_THROW(ops::unpatchify(randn(rng, {1, 15, 16}), 3, 5, 2, 3), Error);
  EXPECT_THROW(ops::unpatchify(randn(rng, {1, 14, 16}), 3, 5, 2, 4), Error);
}

}  // namespace
}  // namespace sd3::test
