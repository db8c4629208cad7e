// One small call of every hand-written kernel, for compute-sanitizer (memcheck, racecheck,
// synccheck) runs by tools/device_check.sh: shapes are tiny so the sanitizers finish in
// seconds, yet each hits its kernel's edge paths (partial tiles, scalar tails, several
// statistics chunks, masks, bias). Results are still checked against the CPU.
//
// Suite CudaSanitize holds only our own kernels and is meant for every sanitizer. Suite
// CudaSanitizeLib holds the calls that go through a library, for memcheck only: cuDNN's
// algorithm search runs every algorithm (slow under racecheck/synccheck), and racecheck
// reports hazards inside library kernels that are not ours to fix. Our kernels on that path
// (conv2d's bias add) are checked there by memcheck.
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cudatest {
namespace {

class CudaSanitize : public CudaTest {};

TEST_F(CudaSanitize, FlashAttentionSmall) {
  const DType dt = DType::BF16;
  for (int64_t D : {64, 128}) {
    ops::AttentionOptions opt;
    opt.heads = 2;
    opt.causal = D == 64;
    opt.bias = D == 64 ? randn({2, 70, 77}, dt) : Tensor();
    Tensor q = randn({1, 70, 2 * D}, dt), k = randn({1, 77, 2 * D}, dt),
           v = randn({1, 77, 2 * D}, dt);
    ops::AttentionOptions gopt = opt, ropt = opt;
    if (opt.bias.defined()) {
      gopt.bias = gpu(opt.bias);
      ropt.bias = f32(opt.bias);
    }
    expect_close(ops::attention(gpu(q), gpu(k), gpu(v), gopt),
                 ops::attention(f32(q), f32(k), f32(v), ropt), dt, {1, 77 + D, 0}, "attention");
  }
}

// Both row-norm layouts (block per row, warp per row) on 10 rows: the warp kernel's last
// block holds 2 rows of its 4.
TEST_F(CudaSanitize, RowNormsSmall) {
  for (int layout : {1, 2})
    for (DType dt : {DType::BF16, DType::F32}) {
      cuda::set_row_norm_layout(layout);
      for (int64_t C : {1536, 4097}) {
        Tensor x = randn({2, 5, C}, dt), mod = randn({2, 6 * C}, dt);
        Tensor gm = gpu(mod), fm = f32(mod);
        expect_close(ops::adaln_modulate(gpu(x), gm.slice(1, 0, C), gm.slice(1, C, 2 * C), 1e-6f),
                     ops::adaln_modulate(f32(x), fm.slice(1, 0, C), fm.slice(1, C, 2 * C), 1e-6f),
                     dt, {0, C, 0}, "adaln_modulate");
        Tensor w = randn({C}, dt);
        expect_close(ops::rms_norm(gpu(x), gpu(w), 1e-6f), ops::rms_norm(f32(x), f32(w), 1e-6f), dt,
                     {0, C, 0}, "rms_norm");
        expect_close(ops::softmax(gpu(x)), ops::softmax(f32(x)), dt, {0, C, 0}, "softmax");
        expect_close(ops::gated_add(gpu(x), gm.slice(1, 2 * C, 3 * C), gpu(x)),
                     ops::gated_add(f32(x), fm.slice(1, 2 * C, 3 * C), f32(x)), dt, {},
                     "gated_add");
      }
    }
  cuda::set_row_norm_layout(0);
}

// The one-pass kernel with 32 KB and with 64 KB chunks (tickets, cross-block publication,
// cp.async staging), with the fewest resident blocks the deadlock bound allows (each block
// then takes many tickets, reusing its shared memory), then the two-pass kernels. bf16 and
// f32: vectors of 8 and 4.
TEST_F(CudaSanitize, GroupNormSeveralChunks) {
  struct Variant {
    int passes, vecs, grid;
  };
  for (Variant v : {Variant{1, 8, 0}, Variant{1, 16, 0}, Variant{1, 0, 1}, Variant{2, 0, 0}}) {
    cuda::set_groupnorm_passes(v.passes);
    cuda::set_groupnorm_onepass_vecs(v.vecs);
    cuda::set_groupnorm_onepass_grid(v.grid);
    for (DType dt : {DType::BF16, DType::F32}) {
      SCOPED_TRACE(dname(dt) + " passes " + std::to_string(v.passes) + " vecs " +
                   std::to_string(v.vecs) + " grid " + std::to_string(v.grid));
      // 2 x 18496 per group (S a multiple of 8: the vector path): 3 chunks of 32 KB in bf16,
      // 5 in f32, 2 of 64 KB in bf16, partial last ones; 32 groups.
      Tensor x = randn({1, 64, 136, 136}, dt, 1.0f, 1.0f);
      Tensor w = randn({64}, dt), b = randn({64}, dt);
      Tensor xg = gpu(x);
      const uint64_t before = cuda::groupnorm_onepass_launches();
      Tensor out = ops::groupnorm_silu(xg, 32, gpu(w), gpu(b), 1e-6f);
      EXPECT_EQ(cuda::groupnorm_onepass_launches() - before, v.passes == 1 ? 1u : 0u)
          << "one-pass launches";
      expect_close(out, ops::groupnorm_silu(f32(x), 32, f32(w), f32(b), 1e-6f), dt,
                   {0, 36992, 0}, "groupnorm_silu");
      Tensor z = randn({1, 32, 130, 130}, dt, 1.0f, 1.0f);  // S = 16900: vectors only in f32
      Tensor wz = randn({32}, dt), bz = randn({32}, dt);
      expect_close(ops::groupnorm_silu(gpu(z), 32, gpu(wz), gpu(bz), 1e-6f),
                   ops::groupnorm_silu(f32(z), 32, f32(wz), f32(bz), 1e-6f), dt, {0, 16900, 0},
                   "groupnorm_silu S = 16900");
      Tensor y = randn({1, 64, 3, 5}, dt);  // scalar path (S = 15)
      Tensor w2 = randn({64}, dt), b2 = randn({64}, dt);
      expect_close(ops::group_norm(gpu(y), 32, gpu(w2), gpu(b2), 1e-6f),
                   ops::group_norm(f32(y), 32, f32(w2), f32(b2), 1e-6f), dt, {0, 30, 0},
                   "group_norm");
    }
  }
}

TEST_F(CudaSanitize, StepsAndLayoutsSmall) {
  const DType dt = DType::BF16;
  Tensor x = randn({1, 16, 6, 10}, dt), vc = randn({1, 16, 6, 10}, dt),
         vu = randn({1, 16, 6, 10}, dt);
  expect_close(ops::cfg_euler_step(gpu(x), gpu(vc), gpu(vu), 5.0f, 0.9f, 0.8f),
               ops::cfg_euler_step(f32(x), f32(vc), f32(vu), 5.0f, 0.9f, 0.8f), dt, {0, 4, 0},
               "cfg_euler_step");
  Tensor p = ops::patchify(gpu(x), 2);
  expect_close(ops::unpatchify(p, 3, 5, 2, 16),
               ops::unpatchify(ops::patchify(f32(x), 2), 3, 5, 2, 16), dt, {},
               "patchify+unpatchify");
}

class CudaSanitizeLib : public CudaTest {};

// cuDNN convolution with a bias, so that add_channel_bias_kernel runs (8 channels of 6 x 10:
// a grid-stride loop over 480 elements). Tolerance as in CudaConv.VaeAndPatchShapes.
TEST_F(CudaSanitizeLib, Conv2dSmall) {
  const DType dt = DType::BF16;
  Tensor x = randn({1, 16, 6, 10}, dt), w = randn({8, 16, 3, 3}, dt, 0.1f), b = randn({8}, dt);
  expect_close(ops::conv2d(gpu(x), gpu(w), gpu(b), ops::Conv2dOptions::same(1)),
               ops::conv2d(f32(x), f32(w), f32(b), ops::Conv2dOptions::same(1)), dt, {1, 144, 1e-5},
               "conv2d");
}

}  // namespace
}  // namespace sd3::cudatest
