// The tensor core: construction, views (view, reshape, slice, select, permute, transpose,
// unsqueeze, squeeze), copies (contiguous, clone, copy_from, to), fill and host access.
#include "engine/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numeric>

namespace sd3 {
namespace {

Tensor iota(const Shape& shape, DType dtype = DType::F32) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  std::iota(v.begin(), v.end(), 0.0f);
  return Tensor::from_floats(v, shape, dtype);
}

std::vector<float> floats(std::initializer_list<float> v) {
  return v;
}

TEST(Tensor, ConstructionShapesAndAlignment) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64}) {
    Tensor t = Tensor::empty({3, 5, 7}, dt);
    EXPECT_EQ(t.numel(), 105);
    EXPECT_EQ(t.nbytes(), 105 * dtype_size(dt));
    EXPECT_EQ(t.strides(), Shape({35, 7, 1}));
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u) << dtype_name(dt);
    EXPECT_EQ(Tensor::zeros({4}, dt).to_floats(), floats({0, 0, 0, 0}));
    EXPECT_EQ(Tensor::full({2}, 3.0f, dt).to_floats(), floats({3, 3}));
  }
  EXPECT_EQ(Tensor::full({2}, 0.1f, DType::F16).to_floats()[0],
            f16_bits_to_f32(f32_to_f16_bits(0.1f)));
  Tensor scalar = Tensor::from_floats({2.5f}, {});
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.item(), 2.5f);
  Tensor none = Tensor::empty({0, 4}, DType::F32);
  EXPECT_EQ(none.numel(), 0);
  EXPECT_TRUE(none.to_floats().empty());
  EXPECT_FALSE(Tensor().defined());
  EXPECT_THROW(Tensor::empty({2, -1}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_floats({1, 2, 3}, {2, 2}), Error);
  EXPECT_THROW(Tensor::from_ints({1}, {2}), Error);
  EXPECT_EQ(Tensor::from_ints({5, -6}, {2}, DType::I32).to_ints(), std::vector<int64_t>({5, -6}));
  EXPECT_EQ(iota({2, 3}).str(), "f32[2, 3] cpu");
}

TEST(Tensor, HostAccessChecksDtypeAndDefinedness) {
  Tensor t = iota({4});
  EXPECT_EQ(t.data<float>()[3], 3.0f);
  EXPECT_THROW(t.data<Half>(), Error);
  EXPECT_THROW(t.data<int32_t>(), Error);
  EXPECT_THROW(Tensor().raw_data(), Error);
  EXPECT_THROW(t.item(), Error);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_THROW(t.size(1), Error);
  EXPECT_THROW(t.size(-2), Error);
}

TEST(Tensor, ViewAndReshape) {
  Tensor t = iota({2, 3, 4});
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), Shape({6, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.view({-1, -1}), Error);
  EXPECT_THROW(t.view({2, 3, 5}), Error);
  Tensor p = t.permute({2, 0, 1});
  EXPECT_FALSE(p.is_contiguous());
  EXPECT_THROW(p.view({24}), Error);
  Tensor r = p.reshape({4, 6});  // copies
  EXPECT_NE(r.storage(), t.storage());
  std::vector<float> want;
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) want.push_back(static_cast<float>(i * 12 + j * 4 + k));
  EXPECT_EQ(r.to_floats(), want);
  EXPECT_EQ(t.reshape({24}).storage(), t.storage());
}

TEST(Tensor, SliceSelectAndTheirOffsets) {
  Tensor t = iota({4, 5});
  Tensor s = t.slice(1, 1, 4);
  EXPECT_EQ(s.shape(), Shape({4, 3}));
  EXPECT_EQ(s.offset(), 1);
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.to_floats(), floats({1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18}));
  Tensor rows = t.slice(0, 2, 4);
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(rows.to_floats()[0], 10.0f);
  EXPECT_EQ(t.slice(-1, 4, 5).to_floats(), floats({4, 9, 14, 19}));
  EXPECT_EQ(t.slice(0, 2, 2).numel(), 0);
  EXPECT_THROW(t.slice(1, 3, 6), Error);
  EXPECT_THROW(t.slice(1, 3, 2), Error);
  EXPECT_THROW(t.slice(2, 0, 1), Error);
  Tensor col = t.select(1, 2);
  EXPECT_EQ(col.shape(), Shape({4}));
  EXPECT_EQ(col.to_floats(), floats({2, 7, 12, 17}));
  EXPECT_THROW(t.select(0, 4), Error);
  // Views of views compose offsets.
  EXPECT_EQ(t.slice(0, 1, 3).slice(1, 2, 4).select(0, 1).to_floats(), floats({12, 13}));
}

TEST(Tensor, PermuteTransposeUnsqueezeSqueeze) {
  Tensor t = iota({2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_EQ(tt.shape(), Shape({3, 2}));
  EXPECT_EQ(tt.strides(), Shape({1, 3}));
  EXPECT_EQ(tt.to_floats(), floats({0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(t.permute({1, 0}).to_floats(), tt.to_floats());
  EXPECT_THROW(t.permute({0, 0}), Error);
  EXPECT_THROW(t.permute({0}), Error);
  EXPECT_THROW(t.permute({0, 2}), Error);
  Tensor u = t.unsqueeze(1);
  EXPECT_EQ(u.shape(), Shape({2, 1, 3}));
  EXPECT_TRUE(u.is_contiguous());
  EXPECT_EQ(t.unsqueeze(-1).shape(), Shape({2, 3, 1}));
  EXPECT_EQ(u.squeeze(1).shape(), Shape({2, 3}));
  EXPECT_THROW(t.squeeze(0), Error);
  // A size-1 dimension with any stride does not break contiguity.
  EXPECT_TRUE(tt.unsqueeze(0).transpose(0, 1).contiguous().is_contiguous());
  EXPECT_TRUE(iota({3, 1, 4}).permute({1, 0, 2}).is_contiguous());
}

TEST(Tensor, ContiguousCloneAndCopyFrom) {
  Tensor t = iota({3, 4, 5});
  Tensor p = t.permute({2, 0, 1});
  Tensor c = p.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_floats(), p.to_floats());
  EXPECT_EQ(t.contiguous().storage(), t.storage());
  Tensor cl = t.clone();
  EXPECT_NE(cl.storage(), t.storage());
  cl.data<float>()[0] = 99.0f;
  EXPECT_EQ(t.data<float>()[0], 0.0f);

  // copy_from into a strided window of a bigger tensor: sentinels around it stay untouched,
  // with a dtype conversion on the way.
  Tensor big = Tensor::full({5, 6, 7}, -1.0f, DType::F16);
  Tensor window = big.slice(0, 1, 4).slice(2, 2, 7).transpose(1, 2);  // [3, 5, 6]
  Tensor src = iota({3, 5, 6});
  window.copy_from(src);
  EXPECT_EQ(window.to_floats(), src.to_floats());
  // window[a][b][c] = big[1 + a][c][2 + b] = src[a][b][c] = 30a + 6b + c; the rest is -1.
  const std::vector<float> all = big.to_floats();
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 6; ++j)
      for (int k = 0; k < 7; ++k) {
        const bool inside = i >= 1 && i < 4 && k >= 2;
        const float want = inside ? static_cast<float>(30 * (i - 1) + 6 * (k - 2) + j) : -1.0f;
        ASSERT_EQ(all[(i * 6 + j) * 7 + k], want) << i << "," << j << "," << k;
      }
  EXPECT_THROW(window.copy_from(iota({3, 6, 5})), Error);
  // Copy from a strided source of another dtype into a contiguous tensor.
  Tensor dst = Tensor::empty({4, 3}, DType::BF16);
  dst.copy_from(iota({3, 4}).transpose(0, 1));
  EXPECT_EQ(dst.to_floats(), floats({0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
}

TEST(Tensor, ToDtypeAndFill) {
  Tensor t = Tensor::from_floats({0.1f, -3.7f, 70000.0f}, {3});
  Tensor h = t.to(DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  EXPECT_EQ(h.to_floats()[0], f16_bits_to_f32(f32_to_f16_bits(0.1f)));
  EXPECT_TRUE(std::isinf(h.to_floats()[2]));
  EXPECT_EQ(t.to(DType::F32).storage(), t.storage());
  EXPECT_EQ(t.to(DType::I32).to_ints(), std::vector<int64_t>({0, -3, 70000}));
  Tensor strided = iota({3, 4}).transpose(0, 1).to(DType::BF16);
  EXPECT_TRUE(strided.is_contiguous());
  EXPECT_EQ(strided.to_floats(), iota({3, 4}).transpose(0, 1).to_floats());
  // fill of a strided view writes only the view.
  Tensor m = Tensor::zeros({3, 4}, DType::F32);
  m.slice(1, 1, 3).fill(5.0f);
  EXPECT_EQ(m.to_floats(), floats({0, 5, 5, 0, 0, 5, 5, 0, 0, 5, 5, 0}));
  Tensor ints = Tensor::zeros({2}, DType::I64);
  ints.fill(7.9f);
  EXPECT_EQ(ints.to_ints(), std::vector<int64_t>({7, 7}));
}

TEST(Tensor, FromBlobBorrowsMemory) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4, 5, 6});
  Tensor t = Tensor::from_blob(owner->data(), {2, 3}, DType::F32, Device::cpu(), owner);
  EXPECT_EQ(t.to_floats(), floats({1, 2, 3, 4, 5, 6}));
  (*owner)[4] = 50.0f;
  EXPECT_EQ(t.slice(0, 1, 2).to_floats(), floats({4, 50, 6}));
}

TEST(Tensor, WrapDim) {
  EXPECT_EQ(wrap_dim(-1, 3), 2);
  EXPECT_EQ(wrap_dim(0, 3), 0);
  EXPECT_THROW(wrap_dim(3, 3), Error);
  EXPECT_THROW(wrap_dim(-4, 3), Error);
}

}  // namespace
}  // namespace sd3
