// PyTorch-compatible noise against the reference's exact torch.randn bit patterns (manifest
// cases of kind "torch_randn"), and the initial noise of every sampler case.
#include "models/noise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/golden.h"
#include "engine/dtype.h"
#include "engine/safetensors.h"

namespace sd3::models {
namespace {

using test::GoldenCase;

// Bit-for-bit comparison; reports the number of differing values and the first one.
::testing::AssertionResult bit_equal(const Tensor& got, const Tensor& want,
                                     const std::string& what) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_str(got.shape())
                                         << ", expected " << shape_str(want.shape());
  std::vector<float> a = got.to_floats(), b = want.to_floats();
  int64_t differing = 0, first = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    if (float_bits(a[i]) != float_bits(b[i])) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++differing;
    }
  }
  if (differing == 0)
    return ::testing::AssertionSuccess() << what << ": all " << a.size() << " values bit-exact";
  return ::testing::AssertionFailure() << what << ": " << differing << " of " << a.size()
                                       << " values differ; first at flat index " << first
                                       << " (got " << a[first] << ", expected " << b[first] << ")";
}

Shape shape_of(const nlohmann::json& j) {
  return j.get<Shape>();
}

TEST(TorchRandn, MatchesGoldenBitForBit) {
  for (const GoldenCase& c : test::cases_of_kind("torch_randn")) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(c.params.is_array() && !c.params.empty()) << c.name << ": params lists no tensors";
    for (const auto& p : c.params) {
      const std::string name = p.at("tensor").get<std::string>();
      const uint64_t seed = p.at("seed").get<uint64_t>();
      const Shape shape = shape_of(p.at("shape"));
      // The noise golden holds bare names (noise0, ...), not input./output. ones.
      Tensor want = SafetensorsFile::open(c.golden_file)->load(name);
      EXPECT_TRUE(bit_equal(
          torch_randn(seed, shape), want,
          c.name + "/" + name + " seed " + std::to_string(seed) + " " + shape_str(shape)));
    }
  }
}

// The sampler goldens start from get_noise(seed): the same generator.
TEST(TorchRandn, MatchesSamplerInitialNoise) {
  for (const GoldenCase& c : test::cases_of_kind("sampler")) {
    SCOPED_TRACE(c.name);
    const uint64_t seed = c.params.at("seed").get<uint64_t>();
    const Shape shape = shape_of(c.params.at("latent_shape"));
    EXPECT_TRUE(bit_equal(torch_randn(seed, shape), test::golden_input(c, "noise"),
                          c.name + "/input.noise"));
  }
}

// The end-to-end golden's noise, when the fixture directory has that case.
TEST(TorchRandn, MatchesEndToEndNoise) {
  for (const auto& raw : test::manifest().at("cases")) {
    if (raw.value("kind", "") != "e2e") continue;
    for (const GoldenCase& c : test::cases_of_kind("e2e")) {
      if (!test::has_golden(c, "output.noise")) continue;
      const uint64_t seed = c.params.at("seed").get<uint64_t>();
      const Shape shape = shape_of(c.params.at("latent_shape"));
      EXPECT_TRUE(bit_equal(torch_randn(seed, shape), test::golden_output(c, "noise"),
                            c.name + "/output.noise"));
    }
    break;
  }
}

// torch keeps the second Box-Muller value of its scalar path in the generator, so two small
// draws continue one stream; the vectorised path (>= 16 values) consumes whole uniforms.
TEST(TorchRandn, GeneratorContinuesTheStream) {
  std::vector<float> whole = torch_randn(7, {7}).to_floats();
  TorchGenerator g(7);
  std::vector<float> a = g.randn({3}).to_floats();
  std::vector<float> b = g.randn({4}).to_floats();
  a.insert(a.end(), b.begin(), b.end());
  EXPECT_EQ(a, whole);

  // 32 values = 32 uniforms: the next draw starts right after them.
  TorchGenerator h(11);
  h.randn({32});
  std::mt19937 ref(11);
  ref.discard(32);
  EXPECT_EQ(h.random_u32(), ref());
  // 20 values = 20 + 16 uniforms (the tail window is redrawn).
  TorchGenerator k(11);
  k.randn({20});
  std::mt19937 ref2(11);
  ref2.discard(36);
  EXPECT_EQ(k.random_u32(), ref2());
}

TEST(TorchRandn, SeedUsesLow32BitsAndIsDeterministic) {
  EXPECT_EQ(torch_randn(5, {40}).to_floats(), torch_randn(5, {40}).to_floats());
  EXPECT_EQ(torch_randn(5 + (uint64_t{1} << 32), {40}).to_floats(),
            torch_randn(5, {40}).to_floats());
  EXPECT_NE(torch_randn(5, {40}).to_floats(), torch_randn(6, {40}).to_floats());
  EXPECT_EQ(torch_randn(3, {}).numel(), 1);
  EXPECT_EQ(torch_randn(3, {0, 4}).numel(), 0);
  EXPECT_THROW(torch_randn(3, {-1, 4}), Error);
}

// Standard normal statistics over a latent-sized draw (both paths): mean 0, variance 1 within
// 5 standard errors, all finite.
TEST(TorchRandn, IsStandardNormal) {
  for (const Shape& shape : {Shape{1, 16, 64, 64}, Shape{15}}) {
    double sum = 0.0, sum2 = 0.0;
    int64_t n = 0;
    for (uint64_t seed = 0; seed < (shape[0] == 15 ? 2000u : 1u); ++seed) {
      for (float v : torch_randn(seed, shape).to_floats()) {
        ASSERT_TRUE(std::isfinite(v));
        sum += v;
        sum2 += static_cast<double>(v) * v;
        ++n;
      }
    }
    const double mean = sum / n, var = sum2 / n - mean * mean;
    EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(static_cast<double>(n))) << shape_str(shape);
    EXPECT_LT(std::fabs(var - 1.0), 5.0 * std::sqrt(2.0 / n)) << shape_str(shape);
  }
}

}  // namespace
}  // namespace sd3::models
