// conv2d, upsample_nearest2x and pad2d against direct float64 loops
// (Note [Op test tolerances]: a conv output is a sum of Cin*kh*kw products, so the gamma_K
// bound applies with K = Cin*kh*kw).
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

struct ConvCase {
  int64_t nb, cin, h, w, cout, kh, kw, stride, pt, pb, pl, pr;
};

void ref_conv(const Tensor& x, const Tensor& wt, const Tensor& bias, const ConvCase& c, DType out,
              std::vector<double>& ref, std::vector<double>& tol) {
  const std::vector<double> xv = values(x), wv = values(wt);
  const std::vector<double> bv = bias.defined() ? values(bias) : std::vector<double>();
  const int64_t ho = (c.h + c.pt + c.pb - c.kh) / c.stride + 1;
  const int64_t wo = (c.w + c.pl + c.pr - c.kw) / c.stride + 1;
  const int64_t k = c.cin * c.kh * c.kw;
  ref.assign(static_cast<size_t>(c.nb * c.cout * ho * wo), 0.0);
  tol.assign(ref.size(), 0.0);
  for (int64_t b = 0; b < c.nb; ++b)
    for (int64_t co = 0; co < c.cout; ++co)
      for (int64_t oy = 0; oy < ho; ++oy)
        for (int64_t ox = 0; ox < wo; ++ox) {
          double s = bv.empty() ? 0.0 : bv[co], mag = std::fabs(s);
          for (int64_t ci = 0; ci < c.cin; ++ci)
            for (int64_t ky = 0; ky < c.kh; ++ky)
              for (int64_t kx = 0; kx < c.kw; ++kx) {
                const int64_t iy = oy * c.stride - c.pt + ky, ix = ox * c.stride - c.pl + kx;
                if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
                const double p = xv[((b * c.cin + ci) * c.h + iy) * c.w + ix] *
                                 wv[((co * c.cin + ci) * c.kh + ky) * c.kw + kx];
                s += p;
                mag += std::fabs(p);
              }
          const size_t idx = static_cast<size_t>(((b * c.cout + co) * ho + oy) * wo + ox);
          ref[idx] = s;
          tol[idx] = (k + 3) * kU32 * mag + unit_roundoff(out) * std::fabs(s);
        }
}

TEST(Conv2d, KernelsStridesPaddingsDtypes) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const ConvCase cases[] = {
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},      // everything 1
      {2, 5, 7, 9, 3, 3, 3, 1, 1, 1, 1, 1},      // 3x3 "same"
      {2, 7, 6, 5, 4, 1, 1, 1, 0, 0, 0, 0},      // 1x1: one sgemm per image
      {1, 16, 8, 10, 6, 2, 2, 2, 0, 0, 0, 0},    // patch embedding: kernel = stride = 2
      {1, 4, 9, 11, 5, 3, 3, 2, 0, 1, 0, 1},     // VAE downsample: asymmetric pad, stride 2
      {2, 3, 8, 7, 2, 5, 3, 3, 2, 1, 0, 2},      // odd kernel, stride 3, uneven pads
      {1, 2, 2, 3, 3, 4, 5, 1, 2, 1, 2, 1},      // kernel larger than the image
      {1, 3, 5, 5, 2, 1, 1, 2, 1, 0, 1, 0},      // 1x1 with stride and padding: im2col path
      {1, 64, 160, 96, 4, 3, 3, 1, 1, 1, 1, 1},  // several im2col bands
  };
  for (const ConvCase& c : cases) {
    const bool big = c.cin * c.h * c.w > 100000;
    for (DType xd : {DType::F32, DType::BF16}) {
      for (DType wd : {DType::F32, DType::F16}) {
        if (big && (xd != DType::F32 || wd != DType::F16)) continue;
        Tensor x = randn(rng, {c.nb, c.cin, c.h, c.w}, xd);
        Tensor wt = randn(rng, {c.cout, c.cin, c.kh, c.kw}, wd, 0.3);
        for (bool with_bias : {false, true}) {
          Tensor bias = with_bias ? randn(rng, {c.cout}, wd) : Tensor();
          ops::Conv2dOptions opt{c.stride, c.pt, c.pb, c.pl, c.pr};
          std::vector<double> ref, tol;
          ref_conv(x, wt, bias, c, xd, ref, tol);
          for (int layout = -1; layout < (big ? 0 : kLayouts); ++layout) {
            Tensor xv = layout < 0 ? x : noncontiguous(x, layout);
            Tensor wv = layout < 0 ? wt : noncontiguous(wt, (layout + 2) % kLayouts);
            auto [one, two] = run_1_and_2_threads([&] { return ops::conv2d(xv, wv, bias, opt); });
            ASSERT_EQ(one.dtype(), xd);
            const std::string what = "conv2d x " + x.str() + " w " + wt.str() + " stride " +
                                     std::to_string(c.stride) + " layout " +
                                     std::to_string(layout) + " bias " + std::to_string(with_bias);
            expect_close(one, ref, tol, what + " 1 thread");
            expect_close(two, ref, tol, what + " 2 threads");
          }
        }
      }
    }
  }
}

TEST(Conv2d, RejectsBadArguments) {
  Rng rng;
  Tensor x = randn(rng, {1, 3, 5, 5});
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 4, 3, 3}), Tensor(), {}), Error);  // Cin
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 3, 3}), Tensor(), {}), Error);
  EXPECT_THROW(ops::conv2d(randn(rng, {3, 5, 5}), randn(rng, {2, 3, 3, 3}), Tensor(), {}), Error);
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 3, 3, 3}), randn(rng, {3}), {}), Error);
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 3, 7, 3}), Tensor(), {}), Error);  // too tall
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 3, 3, 3}), Tensor(), ops::Conv2dOptions::same(1, 0)),
               Error);
  EXPECT_THROW(ops::conv2d(x, randn(rng, {2, 3, 3, 3}), Tensor(), {1, -1, 0, 0, 0}), Error);
}

TEST(Upsample, NearestTwiceIsExact) {
  Rng rng;
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I64}) {
    Tensor x = randn(rng, {2, 3, 5, 7}, dt, 100.0);
    for (int layout = -1; layout < 3; ++layout) {
      Tensor y = ops::upsample_nearest2x(layout < 0 ? x : noncontiguous(x, layout));
      ASSERT_EQ(y.shape(), Shape({2, 3, 10, 14}));
      ASSERT_EQ(y.dtype(), dt);
      const std::vector<double> xv = values(x);
      std::vector<double> ref;
      for (int64_t p = 0; p < 6; ++p)
        for (int64_t i = 0; i < 10; ++i)
          for (int64_t j = 0; j < 14; ++j) ref.push_back(xv[(p * 5 + i / 2) * 7 + j / 2]);
      expect_close(y, ref, 0.0, "upsample " + x.str() + " layout " + std::to_string(layout));
    }
  }
  EXPECT_THROW(ops::upsample_nearest2x(randn(rng, {4})), Error);
}

TEST(Pad2d, FillsBordersAndKeepsValues) {
  Rng rng;
  for (DType dt : {DType::F32, DType::F16}) {
    Tensor x = randn(rng, {2, 3, 4, 5}, dt);
    Tensor y = ops::pad2d(noncontiguous(x, 1), 1, 2, 0, 3, -1.5f);
    ASSERT_EQ(y.shape(), Shape({2, 3, 7, 8}));
    const std::vector<double> xv = values(x);
    std::vector<double> ref;
    for (int64_t p = 0; p < 6; ++p)
      for (int64_t i = 0; i < 7; ++i)
        for (int64_t j = 0; j < 8; ++j)
          ref.push_back(i < 4 && j >= 1 && j < 6 ? xv[(p * 4 + i) * 5 + j - 1] : -1.5);
    expect_close(y, ref, 0.0, "pad2d " + x.str());
  }
  EXPECT_THROW(ops::pad2d(randn(rng, {2, 3}), -1, 0, 0, 0), Error);
  EXPECT_THROW(ops::pad2d(randn(rng, {3}), 1, 0, 0, 0), Error);
}

}  // namespace
}  // namespace sd3::test
