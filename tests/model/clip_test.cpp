// CLIP-L / CLIP-G against the reference goldens (manifest kinds clip_l and clip_g, including
// the f16 and bf16 weight copies, which run the same code with weights kept in that dtype).
#include "models/clip.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "common/golden.h"
#include "engine/weights.h"
#include "model/text_golden_util.h"

namespace sd3 {
namespace {

using models::ClipConfig;
using models::ClipTextModel;
using models::ClipTrace;
using models::ClipVariant;

void check_clip_case(const test::GoldenCase& c, ClipVariant variant) {
  SCOPED_TRACE(c.name);
  WeightStore w = WeightStore::open({test::checkpoint_file(c.checkpoint)});
  ClipConfig cfg = models::clip_config_from_weights(w);
  EXPECT_EQ(cfg.variant, variant);
  if (c.params.contains("layer_idx")) cfg.hidden_layer = c.params["layer_idx"].get<int64_t>();

  // The manifest's config of the checkpoint is what the weights must yield.
  const auto& want = test::checkpoint_entry(c.checkpoint).at("config");
  EXPECT_EQ(cfg.hidden_size, want.at("hidden_size").get<int64_t>());
  EXPECT_EQ(cfg.intermediate_size, want.at("intermediate_size").get<int64_t>());
  EXPECT_EQ(cfg.num_heads, want.at("num_attention_heads").get<int64_t>());
  EXPECT_EQ(cfg.num_layers, want.at("num_hidden_layers").get<int64_t>());
  EXPECT_EQ(cfg.vocab_size, want.at("vocab_size").get<int64_t>());
  EXPECT_EQ(cfg.hidden_act,
            want.at("hidden_act") == "gelu" ? ops::Activation::Gelu : ops::Activation::QuickGelu);

  const ClipTextModel model = ClipTextModel::load(w, cfg);
  // Weights stay in their stored dtype.
  EXPECT_TRUE(w.unexpected(models::clip_weight_specs(cfg)).empty());

  ClipTrace trace;
  const Tensor tokens = test::golden_input(c, "tokens");
  const models::ClipOutput out = model.forward(tokens, {&trace});

  std::map<std::string, Tensor> produced;
  produced["embeddings"] = trace.embeddings;
  for (size_t i = 0; i < trace.layers.size(); ++i)
    produced["layer" + std::to_string(i)] = trace.layers[i];
  produced["penultimate"] = trace.layers.at(trace.layers.size() - 2);
  produced["final_layer_norm"] = trace.final_layer_norm;
  produced["pooled_index"] = trace.pooled_index;
  produced["pooled_unprojected"] = trace.pooled_unprojected;
  if (trace.pooled_projected.defined()) produced["pooled_projected"] = trace.pooled_projected;
  produced["sd3_hidden"] = out.hidden;
  produced["sd3_pooled"] = out.pooled;
  test::expect_all_outputs(c, produced);
}

TEST(ClipGolden, ClipL) {
  for (const auto& c : test::cases_of_kind("clip_l")) check_clip_case(c, ClipVariant::L);
}

TEST(ClipGolden, ClipG) {
  for (const auto& c : test::cases_of_kind("clip_g")) check_clip_case(c, ClipVariant::G);
}

TEST(ClipModel, WeightsKeepStoredDtype) {
  for (const auto& c : test::cases_of_kind("clip_l")) {
    WeightStore w = WeightStore::open({test::checkpoint_file(c.checkpoint)});
    const std::string key = "text_model.encoder.layers.0.mlp.fc1.weight";
    const DType stored = w.get(key).dtype();
    // A forward over a shorter sequence works too (positions are a prefix of the table) and
    // the activations come back in f32 on the CPU whatever the weight dtype.
    const ClipTextModel model = ClipTextModel::load(w);
    const Tensor tokens = test::golden_input(c, "tokens").slice(1, 0, 5).contiguous();
    const models::ClipOutput out = model.forward(tokens);
    EXPECT_EQ(out.hidden.dtype(), DType::F32) << c.name << " weights " << dtype_name(stored);
    EXPECT_EQ(out.hidden.shape(), (Shape{tokens.size(0), 5, model.config().hidden_size}));
  }
}

TEST(ClipModel, RejectsBadTokens) {
  const auto cases = test::cases_of_kind("clip_l");
  WeightStore w = WeightStore::open({test::checkpoint_file(cases[0].checkpoint)});
  const ClipTextModel model = ClipTextModel::load(w);
  const int64_t V = model.config().vocab_size, P = model.config().max_positions;
  EXPECT_THROW(model.forward(Tensor::from_ints({0, V}, {1, 2})), Error);
  EXPECT_THROW(model.forward(Tensor::from_ints(std::vector<int64_t>(P + 1, 0), {1, P + 1})), Error);
  EXPECT_THROW(model.forward(Tensor::from_floats({1.0f}, {1, 1})), Error);
}

}  // namespace
}  // namespace sd3
