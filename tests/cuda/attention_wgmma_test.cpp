// The Hopper warpgroup-MMA flash kernel (kernels/cuda/joint_attention_wgmma.cu) against the
// CPU reference: bf16 and f16, head dims 64 and 128, SD3's awkward token counts (1, 77,
// 154 + 256, 4250), cross-attention (Lq != Lk), batch 2 with several heads, strided q/k/v
// (slices of a fused qkv projection), outputs NaN-poisoned by the fixture. Selection: the
// kernel runs only where it is in scope; causal and biased attention must still take the
// mma.sync kernel when wgmma is selected. Skips unless the device is compute capability 9.0
// and the binary carries sm_90a code.
#include <gtest/gtest.h>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/runtime.h"
#endif

namespace sd3::cudatest {
namespace {

#ifdef SD3_HAVE_CUDA

class CudaAttentionWgmma : public AttentionTest {
 protected:
  void SetUp() override {
    AttentionTest::SetUp();
    if (IsSkipped()) return;
    if (!cuda::wgmma_attention_available(0))
      GTEST_SKIP() << "the wgmma attention kernel needs a compute capability 9.0 device and a "
                      "binary built for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a); device 0 is "
                   << cuda::device_name(0);
    cuda::set_flash_kernel(cuda::FlashKernel::kWgmma);
  }
  void TearDown() override {
    cuda::set_flash_kernel(cuda::FlashKernel::kDefault);
    AttentionTest::TearDown();
  }

  // As CudaAttention::check: P is rounded to the dtype before P V (k = 1), reductions over Lk
  // keys and D features.
  void check(int64_t B, int64_t H, int64_t D, int64_t Lq, int64_t Lk, DType dt,
             const ops::AttentionOptions& opt, cuda::FlashKernel expect, bool strided = false) {
    SCOPED_TRACE(AttentionCase::name(B, H, D, Lq, Lk, dt, opt, strided));
    if (strided) {
      ASSERT_EQ(Lq, Lk);
    }
    const AttentionCase c = make_case(B, H, D, Lq, Lk, dt, opt, strided);
    EXPECT_EQ(cuda::flash_kernel_for(c.gq, c.gpu_opt), expect);
    expect_close(ops::attention(c.gq, c.gk, c.gv, c.gpu_opt), c.ref, dt, {1, Lk + D, 0},
                 "attention");
  }
};

constexpr auto kWgmma = cuda::FlashKernel::kWgmma;
constexpr auto kMma = cuda::FlashKernel::kMma;

TEST_F(CudaAttentionWgmma, Sd3TokenCountsHeadDim64) {
  for (DType dt : {DType::BF16, DType::F16}) {
    for (int64_t L : {1, 77, 154 + 256}) check(2, 3, 64, L, L, dt, heads(3), kWgmma);
  }
  check(1, 2, 64, 4250, 4250, DType::BF16, heads(2), kWgmma);
}

TEST_F(CudaAttentionWgmma, HeadDim128) {
  for (DType dt : {DType::BF16, DType::F16}) {
    check(2, 2, 128, 77, 77, dt, heads(2), kWgmma);
    check(1, 3, 128, 154 + 256, 154 + 256, dt, heads(3), kWgmma);
  }
}

TEST_F(CudaAttentionWgmma, CrossAttentionAndPartialTiles) {
  for (DType dt : {DType::BF16, DType::F16}) {
    check(2, 2, 64, 33, 410, dt, heads(2), kWgmma);  // Lq < Lk, partial last key tile
    check(1, 3, 64, 300, 65, dt, heads(3), kWgmma);  // Lq > Lk, one key in the last tile
    check(2, 2, 64, 129, 64, dt, heads(2), kWgmma);  // one query in the second CTA
    check(1, 2, 128, 200, 1, dt, heads(2), kWgmma);  // a single key
  }
}

TEST_F(CudaAttentionWgmma, StridedQkvSlices) {
  check(2, 3, 64, 154, 154, DType::BF16, heads(3), kWgmma, /*strided=*/true);
  check(1, 2, 128, 77, 77, DType::F16, heads(2), kWgmma, /*strided=*/true);
}

TEST_F(CudaAttentionWgmma, LargeScoresStayFinite) {
  // Scores of +-100 in log2 units exercise the running-maximum rescale.
  ops::AttentionOptions opt = heads(2);
  opt.scale = 4.0f;
  check(1, 2, 64, 130, 300, DType::BF16, opt, kWgmma);
}

TEST_F(CudaAttentionWgmma, OutOfScopeCasesKeepTheMmaKernel) {
  ops::AttentionOptions causal = heads(2);
  causal.causal = true;
  check(1, 2, 64, 130, 130, DType::BF16, causal, kMma);
  ops::AttentionOptions bias = heads(2);
  bias.scale = 1.0f;
  bias.bias = randn({2, 77, 77}, DType::BF16, 2.0f);
  check(2, 2, 64, 77, 77, DType::BF16, bias, kMma);
  ops::AttentionOptions negative = heads(2);
  negative.scale = -0.125f;
  check(1, 2, 64, 77, 77, DType::F16, negative, kMma);
}

TEST_F(CudaAttentionWgmma, SelectionSwitch) {
  Tensor q = gpu(randn({1, 4, 128}, DType::BF16));
  cuda::set_flash_kernel(cuda::FlashKernel::kMma);
  EXPECT_EQ(cuda::flash_kernel_for(q, heads(2)), kMma);
  cuda::set_flash_kernel(cuda::FlashKernel::kWgmma);
  EXPECT_EQ(cuda::flash_kernel_for(q, heads(2)), kWgmma);
  // f32 and head dim 80 take the gemm path whatever the switch says.
  EXPECT_EQ(cuda::flash_kernel_for(gpu(randn({1, 4, 128}, DType::F32)), heads(2)),
            cuda::FlashKernel::kDefault);
  EXPECT_EQ(cuda::flash_kernel_for(gpu(randn({1, 4, 160}, DType::BF16)), heads(2)),
            cuda::FlashKernel::kDefault);
}

#else

TEST(CudaAttentionWgmma, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}

#endif  // SD3_HAVE_CUDA

}  // namespace
}  // namespace sd3::cudatest
