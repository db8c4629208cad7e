// Attention on CUDA against the CPU reference: the flash kernel (bf16/f16, D 64 and 128) at
// SD3's awkward token counts (1, 77, 154 + 256, 4250), cross-attention (Lq != Lk), CLIP's
// causal mask, T5's additive bias ([H, Lq, Lk] and [B, H, Lq, Lk], scale 1), strided q/k/v
// (slices of a fused qkv projection), the gemm reference path (f32, head dim 80 and 512), the
// unfused composition, and the qk-norm entry point.
#include <gtest/gtest.h>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace sd3::cudatest {
namespace {

class CudaAttention : public AttentionTest {
 protected:
  // Flash attention rounds P to the dtype before P V (k = 1); the reduction runs over the
  // keys (n = Lk) and the head dim. The unfused path also stores S and P: k = 3, and S's
  // rounding error is relative to |q.k| before scaling, up to ~4 sqrt(D) standard
  // deviations: extra = 4 u sqrt(D) for it.
  void check(int64_t B, int64_t H, int64_t D, int64_t Lq, int64_t Lk, DType dt,
             const ops::AttentionOptions& opt, bool strided = false) {
    SCOPED_TRACE(AttentionCase::name(B, H, D, Lq, Lk, dt, opt, strided));
    if (strided) {
      ASSERT_EQ(Lq, Lk);
    }
    const AttentionCase c = make_case(B, H, D, Lq, Lk, dt, opt, strided);
    const Tensor& ref = c.ref;
    const double u = unit_roundoff(dt);
    expect_close(ops::attention(c.gq, c.gk, c.gv, c.gpu_opt), ref, dt, {1, Lk + D, 0}, "attention");
    // The unfused composition, on strided views too (Tensor::reshape gathers them with
    // ops::contiguous).
    Fusion f;
    f.attn = false;
    FusionScope scope(f);
    expect_close(ops::attention(c.gq, c.gk, c.gv, c.gpu_opt), ref, dt,
                 {3, Lk + D, dt == DType::F32 ? 0.0 : 4 * u * std::sqrt(double(D))},
                 "attention unfused");
  }
};

TEST_F(CudaAttention, FlashAtSd3TokenCounts) {
  for (DType dt : {DType::BF16, DType::F16}) {
    for (int64_t L : {1, 77, 410}) check(2, 3, 64, L, L, dt, heads(3));
  }
  check(1, 2, 64, 4250, 4250, DType::BF16, heads(2));
}

#ifdef SD3_HAVE_CUDA  // entry points beyond the op API exist only in CUDA builds
TEST_F(CudaAttention, FlashOneMTilePerWarpVariant) {
  cuda::set_flash_mtiles(1);
  check(2, 3, 64, 410, 410, DType::BF16, heads(3));
  ops::AttentionOptions opt = heads(2);
  opt.causal = true;
  check(1, 2, 64, 130, 130, DType::F16, opt);
  cuda::set_flash_mtiles(0);
}
#endif

TEST_F(CudaAttention, FlashHeadDim128AndCrossAttention) {
  for (DType dt : {DType::BF16, DType::F16}) {
    check(2, 2, 128, 77, 77, dt, heads(2));
    check(2, 2, 64, 33, 410, dt, heads(2));   // Lq < Lk
    check(1, 3, 128, 300, 65, dt, heads(3));  // Lq > Lk, one partial key tile
  }
}

TEST_F(CudaAttention, StridedQkvSlices) {
  check(2, 3, 64, 154, 154, DType::BF16, heads(3), /*strided=*/true);
}

TEST_F(CudaAttention, CausalForClip) {
  ops::AttentionOptions opt;
  opt.heads = 2;
  opt.causal = true;
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    check(2, 2, 64, 77, 77, dt, opt);
    check(1, 2, 64, 130, 130, dt, opt);
  }
}

TEST_F(CudaAttention, AdditiveBiasForT5) {
  for (DType dt : {DType::BF16, DType::F32}) {
    ops::AttentionOptions opt;
    opt.heads = 3;
    opt.scale = 1.0f;  // T5 folds the scale into its weights
    opt.bias = randn({3, 77, 77}, dt, 2.0f);
    check(2, 3, 64, 77, 77, dt, opt);
    opt.bias = randn({2, 3, 77, 77}, dt, 2.0f);
    check(2, 3, 64, 77, 77, dt, opt);
    opt.bias = randn({1, 3, 100, 77}, dt, 2.0f);
    check(2, 3, 64, 100, 77, dt, opt);
  }
}

TEST_F(CudaAttention, GemmPathForF32AndOtherHeadDims) {
  check(2, 3, 64, 77, 77, DType::F32, heads(3));
  check(1, 2, 80, 65, 65, DType::BF16, heads(2));
  check(1, 1, 512, 256, 256, DType::BF16, heads(1));  // the VAE's mid-block attention
#ifdef SD3_HAVE_CUDA
  EXPECT_FALSE(cuda::flash_attention_supported(gpu(randn({1, 4, 160}, DType::BF16)), heads(2)));
  EXPECT_TRUE(cuda::flash_attention_supported(gpu(randn({1, 4, 128}, DType::BF16)), heads(2)));
#endif
}

#ifdef SD3_HAVE_CUDA
TEST_F(CudaAttention, QkNormEntryPoint) {
  const int64_t B = 2, L = 77, H = 3, D = 64;
  Tensor q = randn({B, L, H * D}, DType::BF16), k = randn({B, L, H * D}, DType::BF16);
  Tensor v = randn({B, L, H * D}, DType::BF16);
  Tensor qw = randn({D}, DType::BF16), kw = randn({D}, DType::BF16);
  auto norm = [&](const Tensor& t, const Tensor& w) {
    return ops::rms_norm(f32(t).view({B, L, H, D}), f32(w), 1e-6f).view({B, L, H * D});
  };
  Tensor ref = ops::attention(norm(q, qw), norm(k, kw), f32(v), heads(H));
  Tensor got = cuda::attention_qk_norm(gpu(q), gpu(k), gpu(v), heads(H), gpu(qw), gpu(kw), 1e-6f);
  // The normalised q and k are stored in bf16 before the product: k = 3 in all.
  expect_close(got, ref, DType::BF16,
               {3, L + D, 4 * unit_roundoff(DType::BF16) * std::sqrt(double(D))},
               "attention_qk_norm");
}
#endif

}  // namespace
}  // namespace sd3::cudatest
