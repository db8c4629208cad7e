// Shared helpers of the CUDA op tests: skipping without a GPU, fresh random inputs, the CPU
// reference, and the tolerance rule.
//
// Note [CUDA test tolerances]
// The reference is the CPU op computed in f32 on exactly the values the GPU op sees (inputs
// are drawn, rounded to the test dtype, then upcast for the CPU). The GPU result differs from
// it by (a) its final rounding to the output dtype, at most u |ref| with u the unit roundoff
// (f32 2^-24, f16 2^-11, bf16 2^-8); (b) f32 summation order in reductions of length n,
// about sqrt(n) 2^-24 relative to the scale of the terms; (c) the k intermediates a GPU path
// stores in the low-precision dtype by design (flash attention's P, an unfused composition's
// scores), each up to u relative to its own magnitude. Every element must satisfy
//
//   |out - ref| <= (1 + k) u |ref| + (k u + (sqrt(n) + 4) 2^-23 + extra) s
//
// with s = max(max |ref|, scale) and `extra` an op-specific allowance stated where it is used
// (e.g. f32 special functions of a large argument). Taking the output's largest value judges
// elements that cancel toward zero on the scale of their terms, but it fails when the output
// is too small to show that scale: a dot product whose one output element cancels to 0.01
// while its partial sums reach 1 would be held to 2^-23 of 0.01. So a test whose output may
// have few elements passes `scale`, a bound on the terms' magnitude derived from the input
// distributions where it is used (for a dot product of length K of N(0, sx) and N(0, sw)
// values, the partial sums have standard deviation sx sw sqrt(K)). The default 0 leaves
// s = max |ref|. NaN or Inf where the reference is finite always fails. Outputs are
// poisoned: every device block the allocator hands out during a test is filled with NaN
// first (cuda::set_alloc_poison), so an element a kernel forgets to write fails the check.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/ops.h"
#include "engine/tensor.h"

namespace sd3::cudatest {

// GTEST_SKIPs the calling test (use from SetUp or the test body) when no GPU is usable.
#define SD3_REQUIRE_GPU()                                                         \
  do {                                                                            \
    if (!::sd3::cuda_available())                                                 \
      GTEST_SKIP() << "no usable CUDA GPU: " << ::sd3::cuda_unavailable_reason(); \
  } while (0)

// Fixture for every CUDA test: skips without a GPU, turns allocation poisoning on, seeds a
// fresh generator (SD3_TEST_SEED reproduces a run) and restores the fusion switches and the
// kernels' lab switches (cuda_ops.h) when it ends.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  void require_gpu();

  // Normal(mean, sigma) values rounded to dtype, as a CPU tensor of that dtype. Large draws
  // are filled in parallel blocks, each seeded from rng_: the values depend only on the seed.
  Tensor randn(const Shape& shape, DType dtype, float sigma = 1.0f, float mean = 0.0f);
  Tensor uniform(const Shape& shape, DType dtype, float lo, float hi);
  static Tensor gpu(const Tensor& t) { return t.to(Device::cuda(0)); }
  static Tensor f32(const Tensor& t) { return t.to(DType::F32); }

  std::mt19937_64 rng_;
  uint64_t seed_ = 0;
  Fusion saved_fusion_;
};

struct Tol {
  int k = 0;           // low-precision intermediates of the GPU path
  int64_t n = 1;       // reduction length
  double extra = 0.0;  // op-specific allowance, relative to s
  double scale = 0.0;  // lower bound on s: the magnitude of the terms (0: max |ref| only)
};

double unit_roundoff(DType dt);

// Checks out (any device) against ref (CPU, f32) under Note [CUDA test tolerances], for an
// output stored in `dt`. Reports the worst element and the count of violations.
void expect_close(const Tensor& out, const Tensor& ref, DType dt, const Tol& tol,
                  const std::string& what);

// Name of a dtype for test traces.
inline std::string dname(DType dt) {
  return dtype_name(dt);
}

// The float dtypes every op is tested in.
inline std::vector<DType> float_dtypes() {
  return {DType::F32, DType::F16, DType::BF16};
}

// Sets sd3::fusion() for its lifetime.
class FusionScope {
 public:
  explicit FusionScope(const Fusion& f) : saved_(fusion()) { fusion() = f; }
  ~FusionScope() { fusion() = saved_; }

 private:
  Fusion saved_;
};

}  // namespace sd3::cudatest
