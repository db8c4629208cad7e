// Elementwise CUDA ops against the CPU reference: broadcasting arithmetic, scalars, axpby,
// casts, strided gathers, activations, the gated residual add and the CFG + Euler step.
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"

namespace sd3::cudatest {
namespace {

class CudaElementwise : public CudaTest {};

TEST_F(CudaElementwise, BinaryOpsWithBroadcasting) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{1}, {1}},
      {{1000003}, {1000003}},       // odd length: vector body + scalar tail
      {{3, 77, 33}, {33}},          // row broadcast
      {{2, 7, 1}, {2, 1, 5}},       // both sides broadcast
      {{2, 4250, 64}, {2, 1, 64}},  // adaLN-like [B, 1, C]
  };
  for (DType dt : float_dtypes()) {
    for (const auto& [sa, sb] : cases) {
      SCOPED_TRACE(dname(dt) + " " + shape_str(sa) + " op " + shape_str(sb));
      Tensor a = randn(sa, dt), b = randn(sb, dt);
      Tensor ga = gpu(a), gb = gpu(b), fa = f32(a), fb = f32(b);
      expect_close(ops::add(ga, gb), ops::add(fa, fb), dt, {}, "add");
      expect_close(ops::sub(ga, gb), ops::sub(fa, fb), dt, {}, "sub");
      expect_close(ops::mul(ga, gb), ops::mul(fa, fb), dt, {}, "mul");
    }
  }
}

TEST_F(CudaElementwise, MixedDtypesAndStridedInputs) {
  Tensor a = randn({5, 6, 7}, DType::BF16), b = randn({7, 6}, DType::F32);
  Tensor ga = gpu(a), gb = gpu(b);
  // b^T is a strided [6, 7] view; the output keeps a's dtype.
  expect_close(ops::add(ga, gb.transpose(0, 1)), ops::add(f32(a), b.transpose(0, 1)), DType::BF16,
               {}, "add(bf16, strided f32)");
  Tensor sl = ga.slice(2, 1, 6);  // non-contiguous slice
  expect_close(ops::scale(sl, -1.75f), ops::scale(f32(a).slice(2, 1, 6), -1.75f), DType::BF16, {},
               "scale of a slice");
}

TEST_F(CudaElementwise, ScalarsAndAxpby) {
  for (DType dt : float_dtypes()) {
    SCOPED_TRACE(dname(dt));
    Tensor x = randn({3, 1001}, dt), y = randn({3, 1001}, dt);
    expect_close(ops::scale(gpu(x), 0.3f), ops::scale(f32(x), 0.3f), dt, {}, "scale");
    expect_close(ops::add_scalar(gpu(x), 1.0f), ops::add_scalar(f32(x), 1.0f), dt, {},
                 "add_scalar");
    expect_close(ops::axpby(gpu(x), 0.7f, gpu(y), -2.5f), ops::axpby(f32(x), 0.7f, f32(y), -2.5f),
                 dt, {}, "axpby");
  }
}

TEST_F(CudaElementwise, CastsBetweenAllDtypes) {
  const std::vector<DType> all = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64};
  Tensor base = uniform({2, 333}, DType::F32, -300.0f, 300.0f);
  for (DType from : all) {
    for (DType to : all) {
      SCOPED_TRACE(dname(from) + " -> " + dname(to));
      Tensor src = base.to(from);  // CPU conversion: the reference for both steps
      Tensor got = ops::cast(gpu(src), to);
      Tensor want = src.to(to);
      ASSERT_EQ(got.dtype(), to);
      EXPECT_EQ(got.to(Device::cpu()).to_floats(), want.to_floats());
    }
  }
}

TEST_F(CudaElementwise, ContiguousGathersPermutedViews) {
  for (DType dt : {DType::F32, DType::BF16, DType::I64}) {
    SCOPED_TRACE(dname(dt));
    Tensor x = uniform({2, 3, 77, 5}, DType::F32, -50, 50).to(dt);
    Tensor v = gpu(x).permute({2, 0, 3, 1}).slice(0, 3, 70);
    Tensor got = ops::contiguous(v);
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_EQ(got.to(Device::cpu()).to_floats(),
              x.permute({2, 0, 3, 1}).slice(0, 3, 70).contiguous().to_floats());
  }
}

TEST_F(CudaElementwise, Activations) {
  using A = ops::Activation;
  for (DType dt : float_dtypes()) {
    for (A act : {A::Gelu, A::GeluTanh, A::Silu, A::QuickGelu}) {
      SCOPED_TRACE(dname(dt) + " activation " + std::to_string(static_cast<int>(act)));
      Tensor x = randn({77, 131}, dt, 3.0f);
      // CUDA's erff/tanhf/expf are within 2 ulp of the correctly rounded values: n = 4.
      expect_close(ops::activation(gpu(x), act), ops::activation(f32(x), act), dt, {0, 4, 0},
                   "activation");
    }
  }
}

TEST_F(CudaElementwise, GatedAddWithStridedGate) {
  for (DType dt : float_dtypes()) {
    for (int64_t C : {64, 1536, 7}) {
      SCOPED_TRACE(dname(dt) + " C=" + std::to_string(C));
      Tensor x = randn({2, 77, C}, dt), y = randn({2, 77, C}, dt);
      Tensor mod = randn({2, 6 * C}, dt);  // the adaLN linear's output; gate = chunk 2
      Tensor gate = gpu(mod).slice(1, 2 * C, 3 * C);
      expect_close(ops::gated_add(gpu(x), gate, gpu(y)),
                   ops::gated_add(f32(x), f32(mod).slice(1, 2 * C, 3 * C), f32(y)), dt, {},
                   "gated_add");
    }
  }
}

TEST_F(CudaElementwise, CfgEulerStepFusedUnfusedAndCpu) {
  for (DType dt : float_dtypes()) {
    for (const Shape& s : {Shape{2, 16, 64, 64}, Shape{1, 16, 3, 5}}) {
      SCOPED_TRACE(dname(dt) + " " + shape_str(s));
      Tensor x = randn(s, dt), vc = randn(s, dt), vu = randn(s, dt);
      const float cfg = 4.5f, sig = 0.83f, sig_next = 0.71f;
      Tensor ref = ops::cfg_euler_step(f32(x), f32(vc), f32(vu), cfg, sig, sig_next);
      Tensor fused = ops::cfg_euler_step(gpu(x), gpu(vc), gpu(vu), cfg, sig, sig_next);
      expect_close(fused, ref, dt, {0, 4, 0}, "cfg_euler_step fused");
      Fusion f;
      f.euler = false;
      FusionScope scope(f);
      Tensor unfused = ops::cfg_euler_step(gpu(x), gpu(vc), gpu(vu), cfg, sig, sig_next);
      expect_close(unfused, ref, dt, {1, 1, 0}, "cfg_euler_step unfused (v rounded once)");
    }
  }
}

}  // namespace
}  // namespace sd3::cudatest
