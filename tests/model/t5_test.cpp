// T5 v1.1 encoder against the reference goldens (manifest kind t5: a 77-token batch and a
// sequence long enough to reach the clamped bucket).
#include "models/t5.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "common/golden.h"
#include "common/test_data.h"
#include "engine/ops.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "model/text_golden_util.h"

namespace sd3 {
namespace {

using models::T5Config;
using models::T5Encoder;
using models::T5Trace;

TEST(T5Golden, AllCases) {
  for (const auto& c : test::cases_of_kind("t5")) {
    SCOPED_TRACE(c.name);
    WeightStore w = WeightStore::open({test::checkpoint_file(c.checkpoint)});
    const T5Config cfg = models::t5_config_from_weights(w);
    const auto& want = test::checkpoint_entry(c.checkpoint).at("config");
    EXPECT_EQ(cfg.d_model, want.at("d_model").get<int64_t>());
    EXPECT_EQ(cfg.d_ff, want.at("d_ff").get<int64_t>());
    EXPECT_EQ(cfg.num_heads, want.at("num_heads").get<int64_t>());
    EXPECT_EQ(cfg.num_layers, want.at("num_layers").get<int64_t>());
    EXPECT_EQ(cfg.vocab_size, want.at("vocab_size").get<int64_t>());
    if (want.contains("d_kv")) {
      EXPECT_EQ(cfg.d_kv, want["d_kv"].get<int64_t>());
    }
    if (want.contains("relative_attention_num_buckets")) {
      EXPECT_EQ(cfg.num_buckets, want["relative_attention_num_buckets"].get<int64_t>());
    }
    if (want.contains("relative_attention_max_distance")) {
      EXPECT_EQ(cfg.max_distance, want["relative_attention_max_distance"].get<int64_t>());
    }

    const T5Encoder model = T5Encoder::load(w);
    EXPECT_TRUE(w.unexpected(models::t5_weight_specs(cfg)).empty());
    T5Trace trace;
    const Tensor out = model.forward(test::golden_input(c, "tokens"), {&trace});

    std::map<std::string, Tensor> produced;
    produced["embeddings"] = trace.embeddings;
    produced["relative_position_bucket"] = trace.relative_position_bucket;
    produced["position_bias"] = trace.position_bias;
    produced["position_bias_by_distance"] = trace.position_bias_by_distance;
    for (size_t i = 0; i < trace.blocks.size(); ++i)
      produced["block" + std::to_string(i)] = trace.blocks[i];
    produced["sd3_hidden"] = out;
    test::expect_all_outputs(c, produced);
  }
}

// constants.md section 7: with the float32 log, distances 16/32/64 land in buckets 10/12/14
// (+16 for keys after the query); below 8 the bucket is the distance; 128+ clamps to 15.
TEST(T5Buckets, BoundaryDistances) {
  auto bucket = [](int64_t d) { return models::t5_relative_position_bucket(d, 32, 128); };
  EXPECT_EQ(bucket(0), 0);
  EXPECT_EQ(bucket(-7), 7);
  EXPECT_EQ(bucket(7), 23);
  EXPECT_EQ(bucket(-16), 10);
  EXPECT_EQ(bucket(-32), 12);
  EXPECT_EQ(bucket(-64), 14);
  EXPECT_EQ(bucket(16), 26);
  EXPECT_EQ(bucket(32), 28);
  EXPECT_EQ(bucket(64), 30);
  EXPECT_EQ(bucket(-127), 15);
  EXPECT_EQ(bucket(-128), 15);
  EXPECT_EQ(bucket(1000), 31);
}

// Released files carry both shared.weight and encoder.embed_tokens.weight; either alone loads.
TEST(T5Model, EitherEmbeddingKey) {
  const auto cases = test::cases_of_kind("t5");
  const test::GoldenCase& c = cases[0];
  WeightStore full = WeightStore::open({test::checkpoint_file(c.checkpoint)});
  const T5Config cfg = models::t5_config_from_weights(full);
  const Tensor tokens = test::golden_input(c, "tokens");
  const Tensor ref = T5Encoder::load(full).forward(tokens);

  for (const std::string drop : {"shared.weight", "encoder.embed_tokens.weight"}) {
    SCOPED_TRACE(drop);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const WeightSpec& s : models::t5_weight_specs(cfg))
      if (s.key != drop) tensors.emplace_back(s.key, full.get(s.key));
    const std::string path = test::temp_dir() + "/t5_one_embedding.safetensors";
    write_safetensors(path, tensors);
    WeightStore w = WeightStore::open({path});
    const T5Config one = models::t5_config_from_weights(w);
    EXPECT_NE(one.has_shared, drop == "shared.weight");
    EXPECT_TRUE(w.unexpected(models::t5_weight_specs(one)).empty());
    EXPECT_TRUE(test::all_close(T5Encoder::load(w).forward(tokens), ref, 0.0, "t5 " + drop));
  }
}

// T5-XXL's residual stream exceeds the fp16 range; with f16 weights the activations must
// still be f32. Scaling the FF output weights (still representable in f16) pushes the tiny
// model's residual stream past 65504 and the output must stay finite.
TEST(T5Model, FiniteBeyondFp16Range) {
  const auto cases = test::cases_of_kind("t5");
  const test::GoldenCase& c = cases[0];
  WeightStore full = WeightStore::open({test::checkpoint_file(c.checkpoint)});
  const T5Config cfg = models::t5_config_from_weights(full);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const WeightSpec& s : models::t5_weight_specs(cfg)) {
    Tensor t = full.get(s.key, DType::F32);
    if (s.key.find("DenseReluDense.wo") != std::string::npos) t = ops::scale(t, 3.0e4f);
    tensors.emplace_back(s.key, t.to(DType::F16));
  }
  const std::string path = test::temp_dir() + "/t5_f16_large.safetensors";
  write_safetensors(path, tensors);
  WeightStore w = WeightStore::open({path});
  ASSERT_EQ(w.get("encoder.block.0.layer.1.DenseReluDense.wo.weight").dtype(), DType::F16);

  T5Trace trace;
  const Tensor out = T5Encoder::load(w).forward(test::golden_input(c, "tokens"), {&trace});
  EXPECT_EQ(out.dtype(), DType::F32);
  float residual_max = 0.0f;
  for (float v : trace.blocks.back().to_floats())
    residual_max = std::fmax(residual_max, std::fabs(v));
  EXPECT_GT(residual_max, 65504.0f) << "the test no longer exceeds the fp16 range";
  for (float v : out.to_floats()) ASSERT_TRUE(std::isfinite(v));
}

TEST(T5Model, NotT5) {
  const auto cases = test::cases_of_kind("clip_l");
  WeightStore w = WeightStore::open({test::checkpoint_file(cases[0].checkpoint)});
  try {
    models::t5_config_from_weights(w);
    FAIL() << "a CLIP file was taken for T5";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a T5 encoder"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sd3
