// MM-DiT against the reference goldens (manifest cases of kind "mmdit"): every listed output and
// intermediate, the configuration read from the weights, batch independence, and input errors.
#include "models/mmdit.h"

#include <gtest/gtest.h>

#include <iostream>

#include "common/golden.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace sd3::models {
namespace {

using test::GoldenCase;

MMDiTForwardOptions options_of(const GoldenCase& c) {
  MMDiTForwardOptions opt;
  if (c.params.contains("skip_layers"))
    opt.skip_layers = c.params["skip_layers"].get<std::vector<int64_t>>();
  return opt;
}

struct Inputs {
  Tensor x, t, y, context;
};

Inputs inputs_of(const GoldenCase& c) {
  return {test::golden_input(c, "x"), test::golden_input(c, "t"), test::golden_input(c, "y"),
          test::golden_input(c, "context")};
}

TEST(MMDiT, ConfigFromWeightsMatchesManifest) {
  for (const GoldenCase& c : test::cases_of_kind("mmdit")) {
    SCOPED_TRACE(c.name);
    const auto& want = test::checkpoint_entry(c.checkpoint).at("config");
    MMDiTConfig cfg = mmdit_config_from_weights(test::checkpoint_store(c.checkpoint));
    EXPECT_EQ(cfg.depth, want.at("depth").get<int64_t>());
    EXPECT_EQ(cfg.hidden_size, want.at("hidden_size").get<int64_t>());
    EXPECT_EQ(cfg.num_heads, want.at("num_heads").get<int64_t>());
    EXPECT_EQ(cfg.patch_size, want.at("patch_size").get<int64_t>());
    EXPECT_EQ(cfg.in_channels, want.at("in_channels").get<int64_t>());
    EXPECT_EQ(cfg.pos_embed_max_size, want.at("pos_embed_max_size").get<int64_t>());
    EXPECT_EQ(cfg.adm_in_channels, want.at("adm_in_channels").get<int64_t>());
    EXPECT_EQ(cfg.context_in_features, want.at("context_in_features").get<int64_t>());
    EXPECT_EQ(cfg.qk_norm, want.at("qk_norm").is_string());
    EXPECT_EQ(cfg.x_block_self_attn_layers,
              want.at("x_block_self_attn_layers").get<std::vector<int64_t>>());
  }
}

// Every listed output of every case, from one traced forward.
TEST(MMDiT, GoldensMatchReference) {
  for (const GoldenCase& c : test::cases_of_kind("mmdit")) {
    SCOPED_TRACE(c.name);
    MMDiT model = MMDiT::load(test::checkpoint_store(c.checkpoint));
    EXPECT_TRUE(model.unexpected_keys().empty());
    Inputs in = inputs_of(c);
    MMDiTTrace trace;
    MMDiTForwardOptions opt = options_of(c);
    opt.trace = &trace;
    Tensor out = model.forward(in.x, in.t, in.y, in.context, opt);
    EXPECT_TRUE(test::matches_golden(out, c, "out"));
    for (const std::string& name : c.outputs) {
      ASSERT_TRUE(trace.has(name)) << c.name << ": the forward records no '" << name << "'";
      ::testing::AssertionResult r = test::matches_golden(trace.at(name), c, name);
      EXPECT_TRUE(r);
      if (r) std::cout << "  " << r.message() << "\n";
    }
  }
}

// The production path (no trace) gives the same output, and each sample of the batch alone
// gives its slice of the batched output (the forward takes any B).
TEST(MMDiT, UntracedAndSingleSampleForwardsMatch) {
  for (const GoldenCase& c : test::cases_of_kind("mmdit")) {
    SCOPED_TRACE(c.name);
    MMDiT model = MMDiT::load(test::checkpoint_store(c.checkpoint));
    Inputs in = inputs_of(c);
    const MMDiTForwardOptions opt = options_of(c);
    Tensor out = model.forward(in.x, in.t, in.y, in.context, opt);
    EXPECT_TRUE(test::matches_golden(out, c, "out"));
    Tensor want = test::golden_output(c, "out");
    for (int64_t b = 0; b < in.x.size(0); ++b) {
      auto one = [b](const Tensor& t) { return t.slice(0, b, b + 1).contiguous(); };
      Tensor got = model.forward(one(in.x), one(in.t), one(in.y), one(in.context), opt);
      EXPECT_TRUE(test::all_close(got, one(want), test::tolerance(c, "out"),
                                  c.name + "/out sample " + std::to_string(b)));
    }
  }
}

TEST(MMDiT, BadInputsGiveClearErrors) {
  const GoldenCase c = test::cases_of_kind("mmdit").front();
  MMDiT model = MMDiT::load(test::checkpoint_store(c.checkpoint));
  const MMDiTConfig& cfg = model.config();
  Inputs in = inputs_of(c);
  const int64_t B = in.x.size(0);
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // A latent larger than the position table covers.
  const int64_t too_big = (cfg.pos_embed_max_size + 1) * cfg.patch_size;
  Tensor big = Tensor::zeros({B, cfg.in_channels, too_big, cfg.patch_size}, DType::F32);
  expect_error([&] { model.forward(big, in.t, in.y, in.context); }, "position table");
  // Odd latent size.
  Tensor odd = Tensor::zeros({B, cfg.in_channels, cfg.patch_size + 1, cfg.patch_size}, DType::F32);
  expect_error([&] { model.forward(odd, in.t, in.y, in.context); }, "patch size");
  // Wrong context width, wrong y, wrong t, bad skip layer.
  Tensor ctx = Tensor::zeros({B, 3, cfg.context_in_features + 1}, DType::F32);
  expect_error([&] { model.forward(in.x, in.t, in.y, ctx); }, "context");
  Tensor y = Tensor::zeros({B, cfg.adm_in_channels + 1}, DType::F32);
  expect_error([&] { model.forward(in.x, in.t, y, in.context); }, "pooled y");
  Tensor t = Tensor::zeros({B + 1}, DType::F32);
  expect_error([&] { model.forward(in.x, t, in.y, in.context); }, "timesteps");
  MMDiTForwardOptions opt;
  opt.skip_layers = {cfg.depth};
  expect_error([&] { model.forward(in.x, in.t, in.y, in.context, opt); }, "skip layer");
}

}  // namespace
}  // namespace sd3::models
