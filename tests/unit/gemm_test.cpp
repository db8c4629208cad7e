// linear and matmul against float64 references (Note [Op test tolerances]).
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

using ops::Activation;

const Activation kActs[] = {Activation::None, Activation::Gelu, Activation::GeluTanh,
                            Activation::Silu, Activation::QuickGelu};

// y = act(x W^T + b) in float64 and its tolerance: the gamma_K bound of the f32 product,
// scaled by the activation's slope, plus the activation's own error and the output rounding.
void ref_linear(const Tensor& x, const Tensor& w, const Tensor& b, Activation act, DType out,
                std::vector<double>& ref, std::vector<double>& tol) {
  const std::vector<double> xv = values(x), wv = values(w);
  const std::vector<double> bv = b.defined() ? values(b) : std::vector<double>();
  const int64_t k = w.size(1), n = w.size(0),
                m = k ? x.numel() / k : x.numel() / std::max<int64_t>(x.size(-1), 1);
  const int64_t rows = x.size(-1) ? x.numel() / x.size(-1) : m;
  ref.assign(static_cast<size_t>(rows * n), 0.0);
  tol.assign(ref.size(), 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double z = 0.0, mag = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        z += xv[i * k + p] * wv[j * k + p];
        mag += std::fabs(xv[i * k + p] * wv[j * k + p]);
      }
      if (!bv.empty()) {
        z += bv[j];
        mag += std::fabs(bv[j]);
      }
      const double y = ref_activation(z, act);
      ref[i * n + j] = y;
      tol[i * n + j] = kActSlope * (k + 2) * kU32 * mag + act_tolerance(z, y, act) +
                       unit_roundoff(out) * std::fabs(y);
    }
  }
}

TEST(Linear, MatchesFloat64AcrossShapesDtypesActivations) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  struct Case {
    Shape x;
    int64_t n;
  };
  const Case cases[] = {
      {{1, 1}, 1}, {{7, 13}, 5}, {{2, 7, 33}, 17}, {{77, 154}, 9}, {{3, 1, 257}, 130}};
  for (const Case& c : cases) {
    for (DType xd : {DType::F32, DType::F16, DType::BF16}) {
      for (DType wd : {DType::F32, DType::F16, DType::BF16}) {
        for (Activation act : kActs) {
          for (bool with_bias : {false, true}) {
            Tensor x = randn(rng, c.x, xd);
            Tensor w = randn(rng, {c.n, c.x.back()}, wd, 1.0 / std::sqrt(double(c.x.back())));
            Tensor b = with_bias ? randn(rng, {c.n}, wd) : Tensor();
            Tensor y = ops::linear(x, w, b, act);
            Shape want = c.x;
            want.back() = c.n;
            ASSERT_EQ(y.shape(), want);
            ASSERT_EQ(y.dtype(), xd);
            std::vector<double> ref, tol;
            ref_linear(x, w, b, act, xd, ref, tol);
            expect_close(y, ref, tol,
                         "linear x " + x.str() + " w " + w.str() + " act " +
                             std::to_string(int(act)) + " bias " + std::to_string(with_bias));
          }
        }
      }
    }
  }
}

TEST(Linear, IntegerInputsAreExact) {
  // Small integers: every product and partial sum is an integer below 2^24, so any summation
  // order gives the exact result.
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (DType wd : {DType::F32, DType::F16, DType::BF16}) {
    Tensor x = randint_float(rng, {2, 39, 154}, -8, 8);
    Tensor w = randint_float(rng, {61, 154}, -8, 8, wd);
    Tensor b = randint_float(rng, {61}, -100, 100, wd);
    std::vector<double> ref, tol;
    ref_linear(x, w, b, Activation::None, DType::F32, ref, tol);
    expect_close(ops::linear(x, w, b), ref, 0.0, "integer linear, weight " + w.str());
  }
}

TEST(Linear, NonContiguousInputsAndWeights) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  Tensor x = randn(rng, {3, 11, 29});
  for (DType wd : {DType::F32, DType::F16}) {
    Tensor w = randn(rng, {19, 29}, wd, 0.2);
    Tensor b = randn(rng, {19});
    std::vector<double> ref, tol;
    ref_linear(x, w, b, Activation::GeluTanh, DType::F32, ref, tol);
    for (int xk = 0; xk < kLayouts; ++xk)
      for (int wk = 0; wk < kLayouts; ++wk)
        expect_close(ops::linear(noncontiguous(x, xk), noncontiguous(w, wk), noncontiguous(b, 2),
                                 Activation::GeluTanh),
                     ref, tol,
                     "x layout " + std::to_string(xk) + ", w layout " + std::to_string(wk) +
                         ", w " + w.str());
  }
}

TEST(Linear, HalfWeightsConvertedInSeveralBlocks) {
  // Small M and K = 16384 make the weight blocks 128 rows on one thread: its single band of
  // 300 rows takes three blocks; on two threads, 5 bands of 64 rows (Note [Weights of another
  // dtype in linear]).
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  Tensor x = randn(rng, {3, 16384});
  Tensor w = randn(rng, {300, 16384}, DType::BF16, 0.01);
  Tensor b = randn(rng, {300}, DType::F16);
  std::vector<double> ref, tol;
  ref_linear(x, w, b, Activation::Silu, DType::F32, ref, tol);
  auto [one, two] = run_1_and_2_threads([&] { return ops::linear(x, w, b, Activation::Silu); });
  expect_close(one, ref, tol, "blocked bf16 linear, 1 thread");
  expect_close(two, ref, tol, "blocked bf16 linear, 2 threads");
}

TEST(Linear, EmptyAndZeroInnerDimension) {
  Rng rng;
  Tensor b = randn(rng, {4});
  // K = 0: the product is empty, the result is the bias (then the activation).
  Tensor y = ops::linear(Tensor::zeros({3, 0}, DType::F32), Tensor::zeros({4, 0}, DType::F32), b,
                         Activation::Silu);
  std::vector<double> ref;
  for (int i = 0; i < 3; ++i)
    for (double v : values(b)) ref.push_back(ref_activation(v, Activation::Silu));
  expect_close(y, ref, 20 * kU32 * 4, "linear with K = 0");
  EXPECT_EQ(ops::linear(Tensor::zeros({0, 5}, DType::F32), randn(rng, {4, 5})).shape(),
            Shape({0, 4}));
}

TEST(Linear, RejectsBadArguments) {
  Rng rng;
  Tensor x = randn(rng, {2, 5});
  EXPECT_THROW(ops::linear(x, randn(rng, {3, 4})), Error);                   // in mismatch
  EXPECT_THROW(ops::linear(x, randn(rng, {3, 5, 1})), Error);                // weight not 2-D
  EXPECT_THROW(ops::linear(x, randn(rng, {3, 5}), randn(rng, {4})), Error);  // bias size
  EXPECT_THROW(ops::linear(x, randn(rng, {3, 5}), randn(rng, {3, 1})), Error);
  EXPECT_THROW(ops::linear(Tensor::zeros({2, 5}, DType::I32), randn(rng, {3, 5})), Error);
  EXPECT_THROW(ops::linear(x, Tensor::zeros({3, 5}, DType::I64)), Error);
  try {
    ops::linear(x, randn(rng, {3, 4}));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 4]"), std::string::npos) << e.what();
  }
}

// C = A B in float64 with broadcast batch dimensions, and the gamma_K tolerance.
void ref_matmul(const Tensor& a, const Tensor& b, const Shape& out_shape, DType out,
                std::vector<double>& ref, std::vector<double>& tol) {
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  const std::vector<double> av = values(ac), bv = values(bc);
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t r = static_cast<int64_t>(out_shape.size()) - 2;
  const int64_t batch = shape_numel(Shape(out_shape.begin(), out_shape.end() - 2));
  ref.assign(static_cast<size_t>(batch * m * n), 0.0);
  tol.assign(ref.size(), 0.0);
  auto matrix_index = [&](const Tensor& t, int64_t bi) {
    // Index of t's matrix for output batch bi (broadcast dims of size 1 stay at 0).
    int64_t rem = bi, idx = 0, mult = 1;
    for (int64_t d = r - 1; d >= 0; --d) {
      const int64_t i = rem % out_shape[d];
      rem /= out_shape[d];
      const int64_t td = d - (r - (t.dim() - 2));
      if (td < 0) continue;
      idx += (t.size(td) == 1 ? 0 : i) * mult;
      mult *= t.size(td);
    }
    return idx;
  };
  for (int64_t bi = 0; bi < batch; ++bi) {
    const double* ap = av.data() + matrix_index(a, bi) * m * k;
    const double* bp = bv.data() + matrix_index(b, bi) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0, mag = 0.0;
        for (int64_t p = 0; p < k; ++p) {
          s += ap[i * k + p] * bp[p * n + j];
          mag += std::fabs(ap[i * k + p] * bp[p * n + j]);
        }
        ref[(bi * m + i) * n + j] = s;
        tol[(bi * m + i) * n + j] = (k + 2) * kU32 * mag + unit_roundoff(out) * std::fabs(s);
      }
  }
}

TEST(Matmul, BatchedBroadcastNonContiguousAndHalf) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  struct Case {
    Shape a, b, out;
  };
  const Case cases[] = {
      {{1, 1}, {1, 1}, {1, 1}},
      {{5, 7}, {7, 3}, {5, 3}},
      {{2, 3, 13, 17}, {2, 3, 17, 11}, {2, 3, 13, 11}},
      {{13, 17}, {4, 17, 5}, {4, 13, 5}},
      {{4, 1, 13, 17}, {3, 17, 5}, {4, 3, 13, 5}},
      {{9, 33, 20}, {9, 20, 7}, {9, 33, 7}},  // batch >= 2 threads: parallel over the batch
  };
  for (const Case& c : cases) {
    for (DType ad : {DType::F32, DType::F16}) {
      for (DType bd : {DType::F32, DType::BF16}) {
        Tensor a = randn(rng, c.a, ad), b = randn(rng, c.b, bd);
        std::vector<double> ref, tol;
        ref_matmul(a, b, c.out, ad, ref, tol);
        for (int ak = -1; ak < kLayouts; ++ak) {
          for (int bk = -1; bk < kLayouts; ++bk) {
            Tensor av = ak < 0 ? a : noncontiguous(a, ak), bv = bk < 0 ? b : noncontiguous(b, bk);
            Tensor y = ops::matmul(av, bv);
            ASSERT_EQ(y.shape(), c.out);
            ASSERT_EQ(y.dtype(), ad);
            expect_close(y, ref, tol,
                         "matmul " + a.str() + " @ " + b.str() + " layouts " + std::to_string(ak) +
                             "," + std::to_string(bk));
          }
        }
      }
    }
  }
}

TEST(Matmul, OneAndTwoThreadsAgree) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Shape& sa : {Shape{6, 41, 64}, Shape{1, 300, 129}}) {
    Shape sb = sa;
    std::swap(sb[1], sb[2]);
    Tensor a = randn(rng, sa), b = randn(rng, sb);
    auto [one, two] = run_1_and_2_threads([&] { return ops::matmul(a, b); });
    std::vector<double> ref, tol;
    ref_matmul(a, b, {sa[0], sa[1], sa[1]}, DType::F32, ref, tol);
    expect_close(one, ref, tol, "matmul 1 thread " + a.str());
    expect_close(two, ref, tol, "matmul 2 threads " + a.str());
  }
}

TEST(Matmul, ZeroInnerDimensionGivesZeros) {
  Tensor y =
      ops::matmul(Tensor::zeros({2, 3, 0}, DType::F32), Tensor::zeros({2, 0, 4}, DType::F32));
  expect_close(y, std::vector<double>(24, 0.0), 0.0, "matmul K = 0");
}

TEST(Matmul, RejectsBadArguments) {
  Rng rng;
  EXPECT_THROW(ops::matmul(randn(rng, {3, 4}), randn(rng, {5, 2})), Error);
  EXPECT_THROW(ops::matmul(randn(rng, {4}), randn(rng, {4, 2})), Error);
  EXPECT_THROW(ops::matmul(randn(rng, {2, 3, 4}), randn(rng, {3, 4, 2})), Error);
  EXPECT_THROW(ops::matmul(Tensor::zeros({3, 4}, DType::I32), randn(rng, {4, 2})), Error);
}

}  // namespace
}  // namespace sd3::test
