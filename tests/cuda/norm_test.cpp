// Normalisation CUDA ops against the CPU reference: softmax, layer_norm, rms_norm,
// adaln_modulate (fused and unfused), group_norm and groupnorm_silu (fused and unfused).
// Widths cover one element, odd widths (scalar path), SD3's 1536 and widths past one
// register-resident pass; group norms run through both designs.
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cudatest {
namespace {

class CudaNorm : public CudaTest {};

TEST_F(CudaNorm, Softmax) {
  for (DType dt : float_dtypes()) {
    for (int64_t C : {1, 77, 410, 4250}) {
      SCOPED_TRACE(dname(dt) + " C=" + std::to_string(C));
      Tensor x = randn({3, 5, C}, dt, 4.0f);
      expect_close(ops::softmax(gpu(x)), ops::softmax(f32(x)), dt, {0, C, 0}, "softmax");
    }
  }
}

// Sets the row-norm layout (Note [Warp-per-row normalisation]) for its lifetime: 1 a block
// per row, 2 a warp per row (rows past 512 accesses stay block per row either way).
class RowNormLayoutScope {
 public:
  explicit RowNormLayoutScope(int layout) { cuda::set_row_norm_layout(layout); }
  ~RowNormLayoutScope() { cuda::set_row_norm_layout(0); }
};

TEST_F(CudaNorm, LayerNormAndRmsNorm) {
  for (int layout : {1, 2}) {
    RowNormLayoutScope scope(layout);
    for (DType dt : float_dtypes()) {
      // Widths for every warp-per-row bucket: K = 1 (64), 2 (320 in 16-bit), 4 (1000), 6 (1536),
      // 12 (2432), 16 (4096 in 16-bit; 500 with scalar accesses), and past it (4097, 12288).
      for (int64_t C : {1, 7, 64, 320, 500, 1000, 1536, 2432, 4096, 4097, 12288}) {
        SCOPED_TRACE(dname(dt) + " C=" + std::to_string(C) + " layout " + std::to_string(layout));
        // A large mean makes a one-pass E[x^2] - E[x]^2 variance fail.
        Tensor x = randn({3, 77, C}, dt, 1.5f, 3.0f);
        Tensor w = randn({C}, dt), b = randn({C}, DType::F32);
        const Tol tol{0, C, 0};
        expect_close(ops::layer_norm(gpu(x), Tensor(), Tensor(), 1e-6f),
                     ops::layer_norm(f32(x), Tensor(), Tensor(), 1e-6f), dt, tol, "layer_norm");
        expect_close(ops::layer_norm(gpu(x), gpu(w), gpu(b), 1e-5f),
                     ops::layer_norm(f32(x), f32(w), b, 1e-5f), dt, tol, "layer_norm affine");
        expect_close(ops::rms_norm(gpu(x), gpu(w), 1e-6f), ops::rms_norm(f32(x), f32(w), 1e-6f), dt,
                     tol, "rms_norm");
        expect_close(ops::rms_norm(gpu(x), Tensor(), 1e-6f), ops::rms_norm(f32(x), Tensor(), 1e-6f),
                     dt, tol, "rms_norm no weight");
      }
    }
  }
}

TEST_F(CudaNorm, AdaLnModulateFusedUnfusedAndCpu) {
  for (int layout : {1, 2}) {
    RowNormLayoutScope layout_scope(layout);
    for (DType dt : float_dtypes()) {
      for (int64_t L : {1, 77, 410}) {
        for (int64_t C : {64, 1536, 1000, 2432}) {
          SCOPED_TRACE(dname(dt) + " L=" + std::to_string(L) + " C=" + std::to_string(C) +
                       " layout " + std::to_string(layout));
          Tensor x = randn({2, L, C}, dt, 2.0f, 0.5f);
          Tensor mod = randn({2, 6 * C}, dt, 0.5f);
          // shift = chunk 0 and scale = chunk 1 of the modulation output: strided views.
          Tensor gm = gpu(mod), fm = f32(mod);
          Tensor ref = ops::adaln_modulate(f32(x), fm.slice(1, 0, C), fm.slice(1, C, 2 * C), 1e-6f);
          Tensor fused =
              ops::adaln_modulate(gpu(x), gm.slice(1, 0, C), gm.slice(1, C, 2 * C), 1e-6f);
          expect_close(fused, ref, dt, {0, C, 0}, "adaln_modulate fused");
          Fusion f;
          f.adaln = false;
          FusionScope scope(f);
          Tensor unfused =
              ops::adaln_modulate(gpu(x), gm.slice(1, 0, C), gm.slice(1, C, 2 * C), 1e-6f);
          // Unfused stores LN(x), 1 + scale and the product in the dtype: k = 3.
          expect_close(unfused, ref, dt, {3, C, 0}, "adaln_modulate unfused");
        }
      }
    }
  }
}

// Both group-norm designs (Note [One-pass group norm]): one pass where the shape allows, and
// the two-pass kernels. Shapes: one element per channel, odd spatial sizes (scalar path;
// 130 x 130 takes 16-byte vectors only in f32), groups of one chunk, of several chunks with a
// partial last one (136 x 136), batches of many small groups (more chunks than blocks
// resident: tickets recycled), and the VAE's 1024x1024 GroupNorm
// inputs at 128 and 256 channels (256 and 512 chunks of 32 KB per group in bf16: the second
// takes 64 KB chunks).
// The group-norm lab switches for one design (CudaTest's TearDown resets them too).
struct GroupNormVariant {
  int passes;  // 1: the one-pass kernel where the shape allows; 2: the two-pass kernels
  int vecs;    // the one-pass chunk: 8 or 16 vectors per thread (0: by shape)
  int grid;    // at most this many resident blocks (never below a group's chunks; 0: all)
  std::string str() const {
    return " passes " + std::to_string(passes) + " vecs " + std::to_string(vecs) + " grid " +
           std::to_string(grid);
  }
};
class GroupNormScope {
 public:
  explicit GroupNormScope(const GroupNormVariant& v) { set(v); }
  ~GroupNormScope() { set(GroupNormVariant{0, 0, 0}); }

 private:
  static void set(const GroupNormVariant& v) {
    cuda::set_groupnorm_passes(v.passes);
    cuda::set_groupnorm_onepass_vecs(v.vecs);
    cuda::set_groupnorm_onepass_grid(v.grid);
  }
};

// Runs f (one group-norm call on x) and checks that it took the one-pass kernel exactly when
// the variant asks for it and the shape allows it (16-byte vectors along S).
template <class F>
void expect_design(const GroupNormVariant& v, const Tensor& x, F&& f) {
  const uint64_t before = cuda::groupnorm_onepass_launches();
  f();
  const bool vectors = (x.numel() / (x.size(0) * x.size(1))) % (16 / dtype_size(x.dtype())) == 0;
  const uint64_t want = v.passes == 1 && vectors && cuda::groupnorm_onepass_possible(x, 32);
  EXPECT_EQ(cuda::groupnorm_onepass_launches() - before, want) << "one-pass launches";
}

TEST_F(CudaNorm, GroupNormAndGroupNormSilu) {
  // {8, 64, 136, 136}: 256 groups of 3-5 chunks, more tickets than blocks resident on any GPU
  // (each block takes several); the grid = 3 variant forces that on every shape.
  const std::vector<Shape> shapes = {
      Shape{2, 64, 1, 1},     Shape{1, 64, 7, 9},     Shape{2, 128, 64, 64}, Shape{1, 32, 256, 256},
      Shape{1, 32, 130, 130}, Shape{1, 64, 136, 136}, Shape{6, 96, 5, 8},    Shape{8, 64, 136, 136}};
  for (const GroupNormVariant& v :
       {GroupNormVariant{1, 8, 0}, GroupNormVariant{1, 16, 0}, GroupNormVariant{1, 0, 3},
        GroupNormVariant{2, 0, 0}}) {
    GroupNormScope gs(v);
    for (DType dt : float_dtypes()) {
      for (const Shape& s : shapes) {
        SCOPED_TRACE(dname(dt) + " " + shape_str(s) + v.str());
        const int64_t C = s[1];
        const int64_t n = (C / 32) * s[2] * s[3];
        Tensor x = randn(s, dt, 1.0f, 2.0f);
        Tensor w = randn({C}, dt), b = randn({C}, dt);
        Tensor xg = gpu(x), wg = gpu(w), bg = gpu(b);
        Tensor out;
        expect_design(v, xg, [&] { out = ops::group_norm(xg, 32, wg, bg, 1e-6f); });
        expect_close(out, ops::group_norm(f32(x), 32, f32(w), f32(b), 1e-6f), dt, {0, n, 0},
                     "group_norm");
        Tensor ref = ops::groupnorm_silu(f32(x), 32, f32(w), f32(b), 1e-6f);
        expect_design(v, xg, [&] { out = ops::groupnorm_silu(xg, 32, wg, bg, 1e-6f); });
        expect_close(out, ref, dt, {0, n, 0}, "groupnorm_silu fused");
        Fusion f;
        f.groupnorm = false;
        FusionScope scope(f);
        expect_close(ops::groupnorm_silu(xg, 32, wg, bg, 1e-6f), ref, dt, {1, n, 0},
                     "groupnorm_silu unfused");
      }
    }
  }
}

TEST_F(CudaNorm, GroupNormSiluVaeSizes) {
  // A GPU with fewer resident blocks than a group's chunks falls back to two passes; an H100
  // or H200 (114-132 SMs x 3 blocks) takes the VAE's 1024x1024 inputs in one pass.
  const cudaDeviceProp& props = cuda::device_props(0);
  if (props.major == 9 && props.multiProcessorCount >= 114) {
    for (const Shape& s : {Shape{1, 128, 1024, 1024}, Shape{1, 256, 1024, 1024}}) {
      Tensor e = Tensor::empty(s, DType::BF16, Device::cuda(0));
      EXPECT_TRUE(cuda::groupnorm_onepass_possible(e, 32))
          << shape_str(s) << ": one pass expected on this GPU";
    }
  }
  // 1M elements per group (64 chunks), checked whole.
  const DType dt = DType::BF16;
  const Shape s{1, 128, 512, 512};
  const int64_t n = 4 * 512 * 512;
  Tensor x = randn(s, dt, 1.0f, 2.0f);
  Tensor w = randn({128}, dt), b = randn({128}, dt);
  expect_close(ops::groupnorm_silu(gpu(x), 32, gpu(w), gpu(b), 1e-6f),
               ops::groupnorm_silu(f32(x), 32, f32(w), f32(b), 1e-6f), dt, {0, n, 0},
               "groupnorm_silu");
}

}  // namespace
}  // namespace sd3::cudatest
