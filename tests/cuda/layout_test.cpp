// Data-movement CUDA ops against the CPU reference (exact: no arithmetic), plus the timestep
// embedding: patchify / unpatchify, nearest 2x upsampling, padding, concat, embedding.
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"

namespace sd3::cudatest {
namespace {

class CudaLayout : public CudaTest {
 protected:
  static void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) {
    ASSERT_EQ(shape_str(got.shape()), shape_str(want.shape())) << what;
    EXPECT_EQ(got.dtype(), want.dtype()) << what;
    const std::vector<float> g = got.to(Device::cpu()).to_floats(), w = want.to_floats();
    size_t bad = 0;
    for (size_t i = 0; i < g.size(); ++i) bad += !(g[i] == w[i]);
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << g.size() << " elements differ";
  }
};

TEST_F(CudaLayout, PatchifyAndUnpatchify) {
  for (DType dt : float_dtypes()) {
    for (const Shape& s : {Shape{2, 16, 128, 128}, Shape{1, 3, 6, 10}, Shape{1, 16, 2, 2}}) {
      SCOPED_TRACE(dname(dt) + " " + shape_str(s));
      Tensor x = randn(s, dt);
      expect_equal(ops::patchify(gpu(x), 2), ops::patchify(x, 2), "patchify");
      const int64_t h = s[2] / 2, w = s[3] / 2, c = s[1];
      Tensor t = randn({s[0], h * w, 4 * c}, dt);
      expect_equal(ops::unpatchify(gpu(t), h, w, 2, c), ops::unpatchify(t, h, w, 2, c),
                   "unpatchify");
    }
  }
}

TEST_F(CudaLayout, UpsampleAndPad) {
  for (DType dt : float_dtypes()) {
    SCOPED_TRACE(dname(dt));
    Tensor x = randn({2, 5, 7, 9}, dt);
    expect_equal(ops::upsample_nearest2x(gpu(x)), ops::upsample_nearest2x(x), "upsample");
    expect_equal(ops::pad2d(gpu(x), 0, 1, 0, 1, 0.0f), ops::pad2d(x, 0, 1, 0, 1, 0.0f),
                 "pad2d (0,1,0,1)");
    expect_equal(ops::pad2d(gpu(x), 3, 2, 1, 4, -1.5f), ops::pad2d(x, 3, 2, 1, 4, -1.5f),
                 "pad2d value");
  }
  EXPECT_THROW(ops::pad2d(gpu(randn({1, 1, 3, 3}, DType::F32)), -1, 0, 0, 0, 0.0f), Error);
}

TEST_F(CudaLayout, ConcatAlongEveryDimension) {
  for (DType dt : float_dtypes()) {
    SCOPED_TRACE(dname(dt));
    Tensor a = randn({2, 154, 64}, dt), b = randn({2, 256, 64}, dt);
    expect_equal(ops::concat({gpu(a), gpu(b)}, 1), ops::concat({a, b}, 1), "concat tokens");
    Tensor c = randn({2, 154, 3}, dt);
    expect_equal(ops::concat({gpu(a), gpu(c), gpu(a)}, -1), ops::concat({a, c, a}, -1),
                 "concat features");
    expect_equal(ops::concat({gpu(a), gpu(a)}, 0), ops::concat({a, a}, 0), "concat batch");
    // A strided input (a transposed view) is gathered first.
    Tensor at = randn({64, 154, 2}, dt);
    expect_equal(ops::concat({gpu(at).permute({2, 1, 0}), gpu(a)}, 1),
                 ops::concat({at.permute({2, 1, 0}), a}, 1), "concat strided");
  }
}

TEST_F(CudaLayout, EmbeddingGathersRowsAndRejectsBadIds) {
  for (DType idt : {DType::I32, DType::I64}) {
    Tensor table = randn({49408, 96}, DType::BF16);
    std::vector<int64_t> ids(2 * 77);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 7919) % 49408);
    Tensor t = Tensor::from_ints(ids, {2, 77}, idt);
    // The CPU op returns f32 rows; the CUDA op keeps the table's dtype (exact either way).
    expect_equal(ops::embedding(gpu(t), gpu(table)), ops::embedding(t, table).to(DType::BF16),
                 "embedding");
    Tensor bad = Tensor::from_ints({0, 49408}, {1, 2}, idt);
    EXPECT_THROW(ops::embedding(gpu(bad), gpu(table)), Error);
  }
}

TEST_F(CudaLayout, TimestepEmbedding) {
  Tensor t = Tensor::from_floats({0.0f, 1.0f, 437.25f, 999.0f}, {4});
  for (int64_t dim : {256, 7, 1}) {
    SCOPED_TRACE("dim=" + std::to_string(dim));
    // Both follow the reference's f32 roundings; CUDA's expf may differ from the correctly
    // rounded exp by 2 ulp, which moves the argument t f (t <= 999) by up to ~4 2^-24 999,
    // hence an absolute allowance of 1e3 * 2^-22 (relative to max |ref| = 1).
    expect_close(ops::timestep_embedding(gpu(t), dim, 10000.0f),
                 ops::timestep_embedding(t, dim, 10000.0f), DType::F32,
                 {0, 1, 1000.0 * std::ldexp(1.0, -22)}, "timestep_embedding");
  }
}

}  // namespace
}  // namespace sd3::cudatest
