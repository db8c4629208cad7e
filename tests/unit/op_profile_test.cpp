// The op profile (engine/op_profile.h, Note [Op profile]) on the CPU: off records nothing;
// on, each outermost op call counts once under its own name, an op composed of others (an
// unfused adaln_modulate) as itself only, an op outside DISPATCH (concat) too; a call that
// throws is counted; reset forgets; the table totals.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "engine/op_profile.h"
#include "engine/ops.h"

namespace sd3 {
namespace {

std::map<std::string, OpStat> by_name(const std::vector<OpStat>& v) {
  std::map<std::string, OpStat> m;
  for (const OpStat& s : v) m[s.op] = s;
  return m;
}

class OpProfile : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = fusion();
    reset_op_profile();
  }
  void TearDown() override {
    set_op_profile(false);
    reset_op_profile();
    fusion() = saved_;
  }
  Fusion saved_;
};

TEST_F(OpProfile, OffRecordsNothing) {
  set_op_profile(false);
  Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2});
  ops::add(a, a);
  EXPECT_TRUE(read_op_profile().empty());
}

TEST_F(OpProfile, CountsOutermostCallsByName) {
  set_op_profile(true);
  Tensor x = Tensor::from_floats(std::vector<float>(2 * 3 * 8, 0.5f), {2, 3, 8});
  Tensor mod = Tensor::from_floats(std::vector<float>(2 * 16, 0.1f), {2, 16});
  ops::add(x, x);
  ops::add(x, x);
  fusion().adaln = false;  // the unfused composition: layer_norm, add_scalar, mul, add inside
  ops::adaln_modulate(x, mod.slice(1, 0, 8), mod.slice(1, 8, 16), 1e-6f);
  ops::concat({x, x}, 1);
  const auto m = by_name(read_op_profile());
  ASSERT_EQ(m.count("add"), 1u);
  EXPECT_EQ(m.at("add").calls, 2);
  ASSERT_EQ(m.count("adaln_modulate"), 1u);
  EXPECT_EQ(m.at("adaln_modulate").calls, 1);
  EXPECT_EQ(m.count("layer_norm"), 0u) << "a part of the composition was counted apart";
  EXPECT_EQ(m.count("mul"), 0u) << "a part of the composition was counted apart";
  EXPECT_EQ(m.at("concat").calls, 1);
  for (const auto& [name, s] : m) EXPECT_GE(s.ms, 0.0) << name;
}

TEST_F(OpProfile, TimesTheCallAndResets) {
  set_op_profile(true);
  {
    OpScope outer("sleepy_op", Device::cpu());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto v = read_op_profile();
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].op, "sleepy_op");
  EXPECT_GE(v[0].ms, 19.0);
  const std::string table = op_profile_table(v, "profile");
  EXPECT_NE(table.find("sleepy_op"), std::string::npos) << table;
  EXPECT_NE(table.find("total"), std::string::npos) << table;
  reset_op_profile();
  EXPECT_TRUE(read_op_profile().empty());
}

TEST_F(OpProfile, AnOpThatThrowsLeavesTheDepthBalanced) {
  set_op_profile(true);
  Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_floats({1, 2, 3}, {3});
  EXPECT_ANY_THROW(ops::add(a, b));  // shapes do not broadcast: counted, it ran
  ops::add(a, a);                    // must be counted as an outermost call again
  const auto m = by_name(read_op_profile());
  ASSERT_EQ(m.count("add"), 1u);
  EXPECT_EQ(m.at("add").calls, 2);
}

// A start mark that throws (a CUDA scope without a usable GPU here; nothing throws in a
// CPU-only build) must leave nothing counted, so later ops are still outermost.
TEST_F(OpProfile, AStartMarkThatThrowsLeavesTheDepthBalanced) {
  set_op_profile(true);
  try {
    OpScope s("on_cuda", Device::cuda(0));
  } catch (const std::exception&) {
  }
  Tensor a = Tensor::from_floats({1, 2, 3, 4}, {2, 2});
  ops::add(a, a);
  EXPECT_EQ(by_name(read_op_profile()).count("add"), 1u);
}

}  // namespace
}  // namespace sd3
