// Elementwise ops, activations and softmax against float64 references
// (Note [Op test tolerances]).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "engine/ops.h"
#include "kernels/cpu/vec.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

using ops::Activation;

// Round a double to the nearest value of `dtype` through f32, as the kernels store results.
double round_to(double v, DType dtype) {
  return Tensor::from_floats({static_cast<float>(v)}, {1}, dtype).item();
}

// Expected result of a binary op with one f32 rounding, in the output dtype.
std::vector<double> ref_binary(const Tensor& a, const Tensor& b, const Shape& out, DType dtype,
                               double (*f)(double, double)) {
  // Broadcast by index arithmetic on the row-major values of a and b.
  const std::vector<double> av = values(a), bv = values(b);
  const int64_t r = static_cast<int64_t>(out.size());
  std::vector<double> ref(static_cast<size_t>(shape_numel(out)));
  auto index_in = [&](const Tensor& t, int64_t flat) {
    int64_t idx = 0, mult = 1, rem = flat;
    for (int64_t d = r - 1; d >= 0; --d) {
      const int64_t i = rem % out[d];
      rem /= out[d];
      const int64_t td = d - (r - t.dim());
      if (td < 0) continue;
      idx += (t.size(td) == 1 ? 0 : i) * mult;
      mult *= t.size(td);
    }
    return idx;
  };
  for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i)
    ref[i] = round_to(static_cast<float>(f(av[index_in(a, i)], bv[index_in(b, i)])), dtype);
  return ref;
}

TEST(Elementwise, BroadcastingAddSubMulAreCorrectlyRounded) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  struct Case {
    Shape a, b, out;
  };
  const Case cases[] = {
      {{7, 13}, {7, 13}, {7, 13}},
      {{7, 1, 13}, {5, 1}, {7, 5, 13}},
      {{2, 3, 4}, {4}, {2, 3, 4}},
      {{1}, {3, 5}, {3, 5}},
      {{}, {2, 2}, {2, 2}},
      {{2, 77, 154}, {2, 1, 154}, {2, 77, 154}},
      {{1, 9000}, {9000}, {1, 9000}},  // one row longer than a chunk
      {{3, 5, 1, 1}, {3, 5, 7, 11}, {3, 5, 7, 11}},
  };
  struct Op {
    const char* name;
    Tensor (*op)(const Tensor&, const Tensor&);
    double (*ref)(double, double);
  };
  const Op op_list[] = {
      {"add", ops::add, [](double x, double y) { return x + y; }},
      {"sub", ops::sub, [](double x, double y) { return x - y; }},
      {"mul", ops::mul, [](double x, double y) { return x * y; }},
  };
  for (const Case& c : cases) {
    for (DType ad : {DType::F32, DType::F16, DType::BF16}) {
      for (DType bd : {DType::F32, DType::BF16}) {
        Tensor a = randn(rng, c.a, ad), b = randn(rng, c.b, bd);
        for (const Op& op : op_list) {
          const std::vector<double> ref = ref_binary(a, b, c.out, ad, op.ref);
          for (int layout = -1; layout < kLayouts; ++layout) {
            Tensor av = layout < 0 ? a : noncontiguous(a, layout);
            Tensor bv = layout < 0 ? b : noncontiguous(b, (layout + 2) % kLayouts);
            Tensor y = op.op(av, bv);
            ASSERT_EQ(y.shape(), c.out);
            ASSERT_EQ(y.dtype(), ad);
            expect_close(y, ref, 0.0,
                         std::string(op.name) + " " + a.str() + ", " + b.str() + " layout " +
                             std::to_string(layout));
          }
        }
      }
    }
  }
}

TEST(Elementwise, ScalarOpsAxpbyAndThreads) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Shape& shape : {Shape{1}, Shape{13, 7}, Shape{3, 50001}}) {
    Tensor x = randn(rng, shape), y = randn(rng, shape);
    const std::vector<double> xv = values(x), yv = values(y);
    std::vector<double> rs, ra, rx, tol;
    for (size_t i = 0; i < xv.size(); ++i) {
      rs.push_back(static_cast<float>(xv[i] * 0.37f));
      ra.push_back(static_cast<float>(xv[i] + 2.5));
      rx.push_back(1.5 * xv[i] - 0.25 * yv[i]);
      // Two products and a sum, each rounded once.
      tol.push_back(2 * kU32 * (1.5 * std::fabs(xv[i]) + 0.25 * std::fabs(yv[i])));
    }
    auto [s1, s2] = run_1_and_2_threads([&] { return ops::scale(noncontiguous(x, 0), 0.37f); });
    expect_close(s1, rs, 0.0, "scale 1 thread " + x.str());
    expect_close(s2, rs, 0.0, "scale 2 threads " + x.str());
    expect_close(ops::add_scalar(x, 2.5f), ra, 0.0, "add_scalar " + x.str());
    auto [a1, a2] = run_1_and_2_threads([&] { return ops::axpby(x, 1.5f, y, -0.25f); });
    expect_close(a1, rx, tol, "axpby 1 thread " + x.str());
    expect_equal(a2, a1, "axpby 2 threads vs 1 " + x.str());
  }
  Rng r2;
  EXPECT_THROW(ops::axpby(randn(r2, {3, 4}), 1.0f, randn(r2, {4}), 1.0f), Error);
  EXPECT_THROW(ops::add(randn(r2, {3, 4}), randn(r2, {3})), Error);
  EXPECT_THROW(ops::mul(randn(r2, {2, 3}), randn(r2, {3, 2})), Error);
  EXPECT_THROW(ops::add(Tensor::zeros({3}, DType::I32), randn(r2, {3})), Error);
  EXPECT_THROW(ops::scale(Tensor::zeros({3}, DType::I64), 2.0f), Error);
}

TEST(Elementwise, CastAndContiguousCopyExactly) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  Tensor x = randn(rng, {3, 17, 5}, DType::F32, 100.0);
  for (DType to : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64}) {
    for (int layout = -1; layout < kLayouts; ++layout) {
      Tensor src = layout < 0 ? x : noncontiguous(x, layout);
      Tensor y = ops::cast(src, to);
      ASSERT_EQ(y.dtype(), to);
      // A cast to the same dtype may return its input as is.
      if (to != DType::F32) {
        ASSERT_TRUE(y.is_contiguous());
      }
      // Reference: element by element through the scalar conversions of engine/dtype.h.
      const std::vector<float> xv = x.to_floats();
      std::vector<double> ref;
      for (float v : xv) {
        float o = v;
        if (to == DType::F16) o = f16_bits_to_f32(f32_to_f16_bits(v));
        if (to == DType::BF16) o = bf16_bits_to_f32(f32_to_bf16_bits(v));
        ref.push_back(to == DType::I32 || to == DType::I64 ? std::trunc(double(v)) : double(o));
      }
      expect_close(y, ref, 0.0, "cast to " + std::string(dtype_name(to)));
    }
  }
  // Integer tensors cast back to float and permuted copies of every dtype.
  Tensor ids = Tensor::from_ints({1, -2, 3, 40000, 5, 6}, {2, 3}, DType::I64);
  expect_close(ops::cast(ids.transpose(0, 1), DType::F32), {1, 40000, -2, 5, 3, 6}, 0.0,
               "cast i64 -> f32");
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64}) {
    Tensor t = x.to(dt);
    Tensor p = ops::permute(t, {2, 0, 1});
    ASSERT_TRUE(p.is_contiguous());
    expect_equal(p, t.permute({2, 0, 1}).contiguous(), "permute of " + t.str());
  }
}

TEST(Elementwise, VectorisedConversionsMatchTheScalarOnes) {
  // The kernels convert rows with F16C / vector code; engine/dtype.h's scalar conversions
  // are the reference (tested exhaustively in dtype_test.cpp). Every f16 and bf16 pattern,
  // and every f32 halfway point between adjacent halves with its neighbours.
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  for (DType dt : {DType::F16, DType::BF16}) {
    Tensor bits = Tensor::empty({65536}, dt);
    std::memcpy(bits.raw_data(), all.data(), all.size() * 2);
    const Tensor f = ops::cast(bits, DType::F32);
    const float* fp = f.data<float>();
    for (uint32_t i = 0; i < 65536; ++i) {
      const float want = dt == DType::F16 ? f16_bits_to_f32(all[i]) : bf16_bits_to_f32(all[i]);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(fp[i])) << dtype_name(dt) << " 0x" << std::hex << i;
      } else {
        ASSERT_EQ(float_bits(fp[i]), float_bits(want)) << dtype_name(dt) << " 0x" << std::hex << i;
      }
    }
  }
  std::vector<float> probes;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = f16_bits_to_f32(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : f16_bits_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    for (float v : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)}) {
      probes.push_back(v);
      probes.push_back(-v);
    }
  }
  for (uint32_t i = 0; i < 200000; ++i) probes.push_back(bits_float(i * 21473u + 7u));
  probes.push_back(NAN);
  probes.push_back(INFINITY);
  const Tensor src = Tensor::from_floats(probes, {static_cast<int64_t>(probes.size())});
  for (DType dt : {DType::F16, DType::BF16}) {
    const Tensor h = ops::cast(src, dt);
    const uint16_t* hp = static_cast<const uint16_t*>(h.raw_data());
    for (size_t i = 0; i < probes.size(); ++i) {
      const uint16_t want =
          dt == DType::F16 ? f32_to_f16_bits(probes[i]) : f32_to_bf16_bits(probes[i]);
      const bool nan = std::isnan(probes[i]);
      if (nan) {
        ASSERT_TRUE(
            std::isnan(dt == DType::F16 ? f16_bits_to_f32(hp[i]) : bf16_bits_to_f32(hp[i])));
      } else {
        ASSERT_EQ(hp[i], want) << dtype_name(dt) << " of " << probes[i];
      }
    }
  }
}

TEST(Activations, MatchFloat64WithinTheirErrorBounds) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  // A dense sweep of [-30, 30], random values, and the far tails.
  std::vector<float> v;
  for (int i = -30000; i <= 30000; ++i) v.push_back(i * 1e-3f);
  for (int i = 0; i < 5000; ++i) v.push_back(static_cast<float>(rng.normal() * 4));
  for (float e : {-1e30f, -1000.0f, -90.0f, -88.5f, -87.0f, 87.0f, 88.5f, 90.0f, 1000.0f, 1e30f})
    v.push_back(e);
  Tensor x = Tensor::from_floats(v, {static_cast<int64_t>(v.size())});
  for (Activation act :
       {Activation::Silu, Activation::Gelu, Activation::GeluTanh, Activation::QuickGelu}) {
    std::vector<double> ref, tol;
    for (float z : v) {
      const double y = ref_activation(z, act);
      ref.push_back(y);
      tol.push_back(act_tolerance(z, y, act) + tiny(DType::F32));
    }
    auto [one, two] = run_1_and_2_threads([&] { return ops::activation(x, act); });
    expect_close(one, ref, tol, "activation " + std::to_string(int(act)));
    expect_equal(two, one, "activation 2 threads vs 1");
    // f16 in, f16 out: one more rounding.
    Tensor xh = randn(rng, {7, 33}, DType::F16, 3.0);
    std::vector<double> rh, th;
    for (double z : values(xh)) {
      const double y = ref_activation(z, act);
      rh.push_back(y);
      th.push_back(act_tolerance(z, y, act) + kU16 * std::fabs(y) + tiny(DType::F16));
    }
    expect_close(ops::activation(noncontiguous(xh, 1), act), rh, th, "f16 activation");
  }
  EXPECT_EQ(ops::activation(x, Activation::None).storage(), x.storage());
  EXPECT_TRUE(std::isnan(ops::silu(Tensor::from_floats({NAN}, {1})).item()));
}

// The vector exp itself, through a function compiled like the kernels (both clones).
SD3_CPU_SIMD void exp_array(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i + cpu::vec::kLanes <= n; i += cpu::vec::kLanes)
    cpu::vec::store(y + i, cpu::vec::exp(cpu::vec::load(x + i)));
}

TEST(Activations, VectorExpIsWithinTwoUlp) {
  std::vector<float> x;
  for (float v = -86.6f; v < 88.72f; v += 0.0007f) x.push_back(v);
  x.resize(x.size() / 8 * 8);
  std::vector<float> y(x.size());
  exp_array(x.data(), y.data(), static_cast<int64_t>(x.size()));
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp(static_cast<double>(x[i]));
    worst = std::max(worst, std::fabs(y[i] - ref) / ref);
  }
  EXPECT_LT(worst, 2 * 2 * kU32) << "relative error of vec::exp";  // 2 ulp = 4u at worst
  float edge[8] = {-INFINITY, -100.0f, -87.5f, 0.0f, 88.0f, 1.0f, NAN, -0.0f}, out[8];
  exp_array(edge, out, 8);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], 0.0f);  // below 2^-125: flushed
  EXPECT_EQ(out[3], 1.0f);
  EXPECT_NEAR(out[4], std::exp(88.0), std::exp(88.0) * 4 * kU32);
  EXPECT_TRUE(std::isnan(out[6]));
  EXPECT_EQ(out[7], 1.0f);
}

TEST(Softmax, RowsOfAwkwardLengths) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int64_t n : {1, 7, 8, 9, 154, 4250}) {
    for (DType dt : {DType::F32, DType::F16}) {
      Tensor x = randn(rng, {3, n}, dt, 10.0);
      // A masked entry in every row but the first.
      std::vector<float> xv = x.to_floats();
      for (int64_t r = 1; r < 3; ++r) xv[r * n + (r * 5) % n] = -INFINITY;
      if (n == 1) xv[2] = 0.0f;  // a row of one -inf would be all masked
      x = Tensor::from_floats(xv, {3, n}, dt);
      std::vector<double> ref(xv.size()), tol(xv.size());
      for (int64_t r = 0; r < 3; ++r) {
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, double(xv[r * n + j]));
        for (int64_t j = 0; j < n; ++j) sum += std::exp(xv[r * n + j] - mx);
        for (int64_t j = 0; j < n; ++j) {
          const double d = xv[r * n + j] - mx;
          const double p = std::exp(d) / sum;
          ref[r * n + j] = p;
          // exp within 2 ulp of a rounded difference (|d| u), the f32 sum of n terms, the
          // division, and the output rounding.
          tol[r * n + j] =
              p * ((std::isinf(d) ? 0 : std::fabs(d)) * kU32 + (n + 8) * kU32 + unit_roundoff(dt)) +
              tiny(dt);
        }
      }
      for (int layout : {1, 3}) {
        auto [one, two] =
            run_1_and_2_threads([&] { return ops::softmax(noncontiguous(x, layout)); });
        expect_close(one, ref, tol, "softmax " + x.str() + " layout " + std::to_string(layout));
        expect_equal(two, one, "softmax 2 threads vs 1");
      }
    }
  }
  EXPECT_THROW(ops::softmax(Tensor::zeros({3}, DType::I32)), Error);
}

}  // namespace
}  // namespace sd3::test
