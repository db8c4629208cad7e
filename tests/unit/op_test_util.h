// Helpers for the op tests: seeded random tensors, non-contiguous layouts of the same values,
// float64 reference values, and comparison against per-element tolerances.
//
// Note [Op test tolerances]
// Tolerances are derived from the precision of the computation, never tuned to pass:
//   u = 2^-24, the unit roundoff of f32 (all math is f32); u16 = 2^-11 and ub16 = 2^-8 for
//   results stored as f16 / bf16.
//   A sum of n products computed in f32 in any order is within (n + 2) u sum|a_i b_i| of the
//   exact value (the classic gamma_n bound); the tests use that bound per element, so they
//   hold for any blocking or thread split BLAS chooses.
//   Elementwise results computed with one rounding are compared exactly (the expected value
//   is the f32 rounding of the float64 result).
//   Approximated functions (exp, erf) carry their documented error (kernels/cpu/vec.h).
// A result stored in f16/bf16 adds one rounding: u16 |ref| or ub16 |ref|.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"

namespace sd3::test {

constexpr double kU32 = 5.9604644775390625e-08;  // 2^-24
constexpr double kU16 = 4.8828125e-04;           // 2^-11
constexpr double kUBF16 = 3.90625e-03;           // 2^-8

// Unit roundoff of results stored in `dtype`.
inline double unit_roundoff(DType dtype) {
  return dtype == DType::F16 ? kU16 : dtype == DType::BF16 ? kUBF16 : kU32;
}

// Absolute error allowed for results near zero stored in `dtype`: half the smallest f16
// subnormal; for f32 and bf16 1e-36, since vec::exp flushes results below 2^-125 to zero and
// overflows to +Inf above FLT_MAX, so x / (1 + e^-x) may give 0 where |x e^x| < 1e-36.
inline double tiny(DType dtype) {
  return dtype == DType::F16 ? 2.98023223876953125e-08 : 1e-36;
}

// Every test draws from its own generator, seeded from SD3_TEST_SEED when set, else from
// std::random_device: inputs are fresh on every run and a failure prints the seed.
class Rng {
 public:
  Rng();
  uint64_t seed() const { return seed_; }
  double normal() { return normal_(gen_); }
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(gen_);
  }
  int64_t integer(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  uint64_t seed_;
  std::mt19937_64 gen_;
  std::normal_distribution<double> normal_;
};

// Random normal values * scale + shift, stored in `dtype` (values are exactly what the
// tensor holds: read them back with values()).
Tensor randn(Rng& rng, const Shape& shape, DType dtype = DType::F32, double scale = 1.0,
             double shift = 0.0);
// Random integers in [lo, hi] stored as floats of `dtype`.
Tensor randint_float(Rng& rng, const Shape& shape, int64_t lo, int64_t hi,
                     DType dtype = DType::F32);

// The tensor's values as doubles, in row-major order of its shape.
std::vector<double> values(const Tensor& t);

// The same values as t, in a non-contiguous layout:
//   kind 0: a slice of a wider buffer (padding after the last dimension),
//   kind 1: a transposed view of storage holding the last two dimensions swapped,
//   kind 2: a view with every dimension's stride doubled (every other element),
//   kind 3: a select() from a buffer with an extra dimension of 2 after the first one, so
//           the last dimension has unit stride but the leading ones do not collapse into one
//           row stride (like one head of a [B, L, 3, H, D] qkv view).
Tensor noncontiguous(const Tensor& t, int kind);
constexpr int kLayouts = 4;

// Expects |got[i] - ref[i]| <= tol[i] for every i (NaN must match NaN, infinities must be
// equal); on failure reports the number of violations and the worst one, with its index.
void expect_close(const Tensor& got, const std::vector<double>& ref, const std::vector<double>& tol,
                  const std::string& what);
// Same with one tolerance for all elements.
void expect_close(const Tensor& got, const std::vector<double>& ref, double tol,
                  const std::string& what);
// Expects bit-for-bit equal values (after conversion to double) and equal shapes.
void expect_equal(const Tensor& got, const Tensor& want, const std::string& what);

// Sets the CPU thread count for the guard's lifetime.
class ThreadCount {
 public:
  explicit ThreadCount(int n);
  ~ThreadCount();

 private:
  int saved_;
};

// Runs f with 1 thread and with 2 threads and returns both results.
std::pair<Tensor, Tensor> run_1_and_2_threads(const std::function<Tensor()>& f);

// Activation functions in float64.
double ref_activation(double x, ops::Activation act);
// Error bound of the CPU activation act at input z with exact result y (kernels/cpu/vec.h):
// the sigmoid forms x / (1 + e^(-kz)) lose about (10 + |kz|) u relative (exp is within 2 ulp,
// the rounding of -kz is magnified by |kz|); gelu_tanh likewise with its tanh argument; the
// erf form carries the 1.5e-7 absolute error of the erf approximation.
double act_tolerance(double z, double y, ops::Activation act);
// Largest |act'(z)|, which scales an error in the input of the activation.
constexpr double kActSlope = 1.2;

}  // namespace sd3::test
