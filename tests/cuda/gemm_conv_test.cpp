// Library-backed CUDA ops against the CPU reference: linear (cuBLASLt, bias and GELU
// epilogues, weights of another dtype), batched matmul, and conv2d (cuDNN) with the VAE's and
// the patch embedding's shapes, including asymmetric padding.
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"

namespace sd3::cudatest {
namespace {

class CudaGemm : public CudaTest {};

TEST_F(CudaGemm, LinearShapesBiasAndEpilogues) {
  using A = ops::Activation;
  struct Case {
    int64_t M, K, N;
  };
  for (DType dt : float_dtypes()) {
    for (Case c : {Case{1, 64, 1}, Case{77, 768, 96}, Case{410, 1536, 1536}, Case{3, 72, 40}}) {
      for (A act : {A::None, A::GeluTanh, A::Gelu, A::Silu}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(dname(dt) + " M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) +
                       " N=" + std::to_string(c.N) + " act=" +
                       std::to_string(static_cast<int>(act)) + (with_bias ? " bias" : ""));
          Tensor x = randn({c.M, c.K}, dt), w = randn({c.N, c.K}, dt, 0.05f);
          Tensor b = with_bias ? randn({c.N}, dt) : Tensor();
          Tensor ref = ops::linear(f32(x), f32(w), with_bias ? f32(b) : Tensor(), act);
          Tensor got = ops::linear(gpu(x), gpu(w), with_bias ? gpu(b) : Tensor(), act);
          // Activations other than GELU-tanh run after the product is stored: k = 1 there.
          const int k = (act == A::None || act == A::GeluTanh) ? 0 : 1;
          expect_close(got, ref, dt, {k, c.K, 0}, "linear");
        }
      }
    }
  }
}

TEST_F(CudaGemm, LinearCastsWeightsOfAnotherDtypeAndTakesBatchedInput) {
  Tensor x = randn({2, 154, 256}, DType::BF16), w = randn({320, 256}, DType::F16, 0.06f);
  Tensor b = randn({320}, DType::F32);
  // The weight is cast to bf16 on the device: the reference sees the same rounded values.
  Tensor ref = ops::linear(f32(x), f32(w.to(DType::BF16)), f32(b.to(DType::BF16)));
  expect_close(ops::linear(gpu(x), gpu(w), gpu(b)), ref, DType::BF16, {0, 256, 0},
               "linear with f16 weight");
}

TEST_F(CudaGemm, BatchedMatmul) {
  for (DType dt : float_dtypes()) {
    SCOPED_TRACE(dname(dt));
    Tensor a = randn({2, 3, 77, 64}, dt), b = randn({2, 3, 64, 33}, dt);
    expect_close(ops::matmul(gpu(a), gpu(b)), ops::matmul(f32(a), f32(b)), dt, {0, 64, 0},
                 "matmul");
    Tensor a2 = randn({1, 5}, dt), b2 = randn({5, 1}, dt);
    expect_close(ops::matmul(gpu(a2), gpu(b2)), ops::matmul(f32(a2), f32(b2)), dt, {0, 5, 0},
                 "matmul 1x5x1");
  }
}

class CudaConv : public CudaTest {};

TEST_F(CudaConv, VaeAndPatchShapes) {
  struct Case {
    Shape x;
    int64_t cout, kh, kw;
    ops::Conv2dOptions opt;
  };
  const std::vector<Case> cases = {
      {{1, 16, 33, 17}, 32, 3, 3, ops::Conv2dOptions::same(1)},        // VAE 3x3
      {{2, 64, 20, 20}, 48, 1, 1, ops::Conv2dOptions{}},               // 1x1 shortcut
      {{1, 16, 32, 32}, 24, 3, 3, ops::Conv2dOptions{2, 0, 1, 0, 1}},  // downsample (0,1,0,1)
      {{2, 16, 64, 64}, 64, 2, 2, ops::Conv2dOptions{2, 0, 0, 0, 0}},  // patch embedding p=2
      {{1, 3, 5, 7}, 5, 3, 3, ops::Conv2dOptions::same(1)},            // tiny, odd channels
  };
  for (DType dt : float_dtypes()) {
    for (const Case& c : cases) {
      SCOPED_TRACE(dname(dt) + " x=" + shape_str(c.x) + " k=" + std::to_string(c.kh));
      const int64_t cin = c.x[1];
      Tensor x = randn(c.x, dt), w = randn({c.cout, cin, c.kh, c.kw}, dt, 0.1f);
      Tensor b = randn({c.cout}, dt);
      const int64_t n = cin * c.kh * c.kw;
      // cuDNN may pick Winograd or FFT algorithms, whose f32 error reaches ~1e-5 relative
      // to the output's scale: extra = 1e-5.
      expect_close(ops::conv2d(gpu(x), gpu(w), gpu(b), c.opt),
                   ops::conv2d(f32(x), f32(w), f32(b), c.opt), dt, {1, n, 1e-5}, "conv2d");
    }
  }
}

}  // namespace
}  // namespace sd3::cudatest
