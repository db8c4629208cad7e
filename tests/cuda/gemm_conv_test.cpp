// Library-backed CUDA ops against the CPU reference: linear (cuBLASLt, bias and GELU
// epilogues, weights of another dtype), batched matmul, and conv2d (cuDNN) with the VAE's and
// the patch embedding's shapes, including asymmetric padding.
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"

namespace sd3::cudatest {
namespace {

// Tol::scale for x W^T + b with x ~ N(0, sx), W ~ N(0, sw) and b ~ N(0, sb), reduction length
// K (Note [CUDA test tolerances]). The sum and every partial sum of the K products, plus the
// bias, is Gaussian with standard deviation at most sqrt(K sx^2 sw^2 + sb^2); by the reflection
// principle the largest partial sum exceeds 4 of them with probability about 1e-4. It also
// bounds the pre-activation, whose errors (its rounding when k = 1, the epilogue's tanh below)
// an activation that squashes it toward zero passes on. Outputs of many elements have
// max |ref| of this order anyway; for one-element outputs (M = N = 1) it keeps a cancelling
// dot product from being judged against its own tiny value.
double dot_scale(int64_t K, double sx, double sw, double sb = 0.0) {
  return 4.0 * std::sqrt(static_cast<double>(K) * sx * sx * sw * sw + sb * sb);
}

// The GELU(tanh) epilogue's accuracy is not documented by cuBLASLt; it may evaluate tanh with
// the hardware approximation (PTX tanh.approx.f32, relative error about 2^-11). GELU(x) =
// x/2 (1 + tanh(.)), so its absolute error is then at most |x| 2^-12 <= s 2^-12, since s
// bounds the pre-activation x (dot_scale): an allowance of 2^-10 s leaves a factor of 4.
// What the check still tells apart, with s between about 1.6 (K = 64) and 11 (K = 1536),
// so an allowance of 1.6e-3 to 1.1e-2: no activation (off by 0.16 at x = 1, by |x| for
// x < -2), ReLU (0.17 at x = 0.75) and SiLU (0.11 at |x| = 1, 0.19 near 2) by a factor of 10
// or more; quick GELU (0.02 near |x| = 2.3) by a factor of 2 or more. The erf form not: it
// differs from the tanh form by at most 4.7e-4 (at |x| = 2.7), below the approximate tanh's
// own error there (2.7 2^-12 = 6.6e-4), so no tolerance that admits the hardware tanh can
// separate them; the epilogue enum (CUBLASLT_EPILOGUE_GELU*) is what fixes the form.
constexpr double kGeluEpilogueExtra = 1.0 / 1024;

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
          const double extra = act == A::GeluTanh ? kGeluEpilogueExtra : 0.0;
          expect_close(got, ref, dt,
                       {k, c.K, extra, dot_scale(c.K, 1.0, 0.05, with_bias ? 1.0 : 0.0)}, "linear");
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
  expect_close(ops::linear(gpu(x), gpu(w), gpu(b)), ref, DType::BF16,
               {0, 256, 0, dot_scale(256, 1.0, 0.06, 1.0)}, "linear with f16 weight");
}

TEST_F(CudaGemm, BatchedMatmul) {
  for (DType dt : float_dtypes()) {
    SCOPED_TRACE(dname(dt));
    Tensor a = randn({2, 3, 77, 64}, dt), b = randn({2, 3, 64, 33}, dt);
    expect_close(ops::matmul(gpu(a), gpu(b)), ops::matmul(f32(a), f32(b)), dt,
                 {0, 64, 0, dot_scale(64, 1.0, 1.0)}, "matmul");
    Tensor a2 = randn({1, 5}, dt), b2 = randn({5, 1}, dt);
    expect_close(ops::matmul(gpu(a2), gpu(b2)), ops::matmul(f32(a2), f32(b2)), dt,
                 {0, 5, 0, dot_scale(5, 1.0, 1.0)}, "matmul 1x5x1");
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
