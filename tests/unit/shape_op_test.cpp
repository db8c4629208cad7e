// concat, split, chunk, permute and embedding: data movement, compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

// Value of t at a multi-index, read from its row-major values.
double at(const std::vector<double>& v, const Shape& shape, const Shape& idx) {
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + idx[d];
  return v[static_cast<size_t>(flat)];
}

// Calls f(idx) for every multi-index of shape, in row-major order.
void for_each_index(const Shape& shape, const std::function<void(const Shape&)>& f) {
  const int64_t n = shape_numel(shape);
  Shape idx(shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    f(idx);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

TEST(Concat, AlongEveryDimensionWithMixedLayoutsAndDtypes) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int64_t dim = -1; dim < 3; ++dim) {
    const int64_t d = dim < 0 ? 2 : dim;
    Shape s0 = {2, 3, 4}, s1 = s0, s2 = s0;
    s1[d] = 1;
    s2[d] = 5;
    Tensor a = randn(rng, s0), b = randn(rng, s1, DType::F16), c = randn(rng, s2);
    Tensor y = ops::concat({a, noncontiguous(b, 1), noncontiguous(c, 2)}, dim);
    Shape want = s0;
    want[d] = s0[d] + 1 + 5;
    ASSERT_EQ(y.shape(), want);
    ASSERT_EQ(y.dtype(), DType::F32);
    const std::vector<double> av = values(a), bv = values(b), cv = values(c);
    std::vector<double> ref;
    for_each_index(want, [&](const Shape& idx) {
      Shape i = idx;
      if (i[d] < s0[d]) return ref.push_back(at(av, s0, i));
      i[d] -= s0[d];
      if (i[d] < 1) return ref.push_back(at(bv, s1, i));
      i[d] -= 1;
      ref.push_back(at(cv, s2, i));
    });
    expect_close(y, ref, 0.0, "concat along " + std::to_string(dim));
  }
  // Integer tensors (token ids), and a zero-size piece.
  Tensor i1 = Tensor::from_ints({1, 2, 3}, {1, 3}), i2 = Tensor::from_ints({}, {0, 3});
  Tensor i3 = Tensor::from_ints({7, 8, 9}, {1, 3});
  Tensor iy = ops::concat({i1, i2, i3}, 0);
  EXPECT_EQ(iy.dtype(), DType::I64);
  EXPECT_EQ(iy.to_ints(), std::vector<int64_t>({1, 2, 3, 7, 8, 9}));
  EXPECT_THROW(ops::concat({}, 0), Error);
  EXPECT_THROW(ops::concat({randn(rng, {2, 3}), randn(rng, {3, 3})}, 1), Error);
  EXPECT_THROW(ops::concat({randn(rng, {2, 3}), randn(rng, {2, 3, 1})}, 0), Error);
  EXPECT_THROW(ops::concat({randn(rng, {2, 3})}, 2), Error);
  EXPECT_THROW(ops::concat({randn(rng, {2, 3}), i1}, 0), Error);  // float with int
}

TEST(SplitChunk, ViewsCoverTheInput) {
  Rng rng;
  Tensor x = randn(rng, {3, 10, 4});
  std::vector<Tensor> parts = ops::split(x, {2, 0, 7, 1}, 1);
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[2].shape(), Shape({3, 7, 4}));
  EXPECT_EQ(parts[0].storage(), x.storage());  // views, no copies
  expect_equal(ops::concat(parts, 1), x, "concat(split(x)) == x");
  std::vector<Tensor> chunks = ops::chunk(x, 2, -1);
  ASSERT_EQ(chunks.size(), 2u);
  expect_equal(ops::concat(chunks, 2), x, "concat(chunk(x)) == x");
  EXPECT_THROW(ops::split(x, {2, 3}, 1), Error);
  EXPECT_THROW(ops::chunk(x, 3, 1), Error);
}

TEST(Permute, RandomOrdersOfEveryDtypeAreExact) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const Shape shape = {2, 3, 5, 7, 4};
  std::vector<int64_t> order(shape.size());
  for (int trial = 0; trial < 12; ++trial) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng.gen());
    for (DType dt : {DType::F32, DType::F16, DType::I64}) {
      Tensor x = dt == DType::I64 ? randint_float(rng, shape, -1000, 1000).to(DType::I64)
                                  : randn(rng, shape, dt);
      Tensor y = ops::permute(noncontiguous(x, trial % kLayouts), order);
      ASSERT_TRUE(y.is_contiguous());
      Shape want(shape.size());
      for (size_t i = 0; i < order.size(); ++i) want[i] = shape[order[i]];
      ASSERT_EQ(y.shape(), want);
      const std::vector<double> xv = values(x);
      std::vector<double> ref;
      for_each_index(want, [&](const Shape& idx) {
        Shape src(shape.size());
        for (size_t i = 0; i < order.size(); ++i) src[order[i]] = idx[i];
        ref.push_back(at(xv, shape, src));
      });
      expect_close(y, ref, 0.0, "permute of " + x.str());
    }
  }
  // A large transpose, which goes through the strided copy in parallel.
  Tensor big = randn(rng, {300, 257});
  auto [one, two] = run_1_and_2_threads([&] { return ops::permute(big, {1, 0}); });
  expect_equal(one, big.transpose(0, 1).contiguous(), "large transpose");
  expect_equal(two, one, "large transpose 2 threads");
}

TEST(Embedding, GathersRowsAndNamesBadIds) {
  Rng rng;
  for (DType table_dt : {DType::F32, DType::F16, DType::BF16}) {
    for (DType id_dt : {DType::I32, DType::I64}) {
      Tensor table = randn(rng, {11, 6}, table_dt);
      Tensor ids = Tensor::from_ints({3, 0, 10, 3, 7, 1}, {2, 3}, id_dt);
      for (int layout = -1; layout < kLayouts; ++layout) {
        Tensor y = ops::embedding(ids, layout < 0 ? table : noncontiguous(table, layout));
        ASSERT_EQ(y.shape(), Shape({2, 3, 6}));
        ASSERT_EQ(y.dtype(), DType::F32);  // CPU activations are f32
        const std::vector<double> tv = values(table);
        std::vector<double> ref;
        for (int64_t id : {3, 0, 10, 3, 7, 1})
          for (int64_t c = 0; c < 6; ++c) ref.push_back(tv[id * 6 + c]);
        expect_close(y, ref, 0.0, "embedding from " + table.str());
      }
    }
  }
  Tensor table = randn(rng, {11, 6});
  try {
    ops::embedding(Tensor::from_ints({1, 11}, {1, 2}), table);
    ADD_FAILURE() << "id 11 of a table of 11 rows accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("id 11"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::embedding(Tensor::from_ints({-1}, {1, 1}), table), Error);
  EXPECT_THROW(ops::embedding(randn(rng, {1, 2}), table), Error);  // float ids
  EXPECT_THROW(ops::embedding(Tensor::from_ints({1}, {1, 1}), randn(rng, {11})), Error);
}

}  // namespace
}  // namespace sd3::test
