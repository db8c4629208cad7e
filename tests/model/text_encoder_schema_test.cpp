// The keys and shapes the CLIP-L, CLIP-G and T5-XXL loaders expect equal the real schemas in
// ../shared/schemas exactly, and the configs derived from those key/shape lists are the
// presets. Also: a misshapen or missing tensor is one error naming key and shapes, and extras
// are reported by unexpected().
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "common/schema.h"
#include "common/test_data.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/clip.h"
#include "models/t5.h"

namespace sd3 {
namespace {

using models::ClipConfig;
using models::T5Config;

struct SchemaEntry {
  Shape shape;
  bool optional = false;
};

std::map<std::string, SchemaEntry> schema_entries(const nlohmann::json& schema) {
  std::map<std::string, SchemaEntry> out;
  for (const auto& t : schema.at("tensors"))
    out[t.at("key").get<std::string>()] =
        SchemaEntry{t.at("shape").get<Shape>(), t.value("optional", false)};
  return out;
}

// Specs (with the canonical prefix) against the schema entries, both directions.
void expect_specs_equal(const std::vector<WeightSpec>& specs,
                        const std::map<std::string, SchemaEntry>& schema, bool with_optional,
                        const std::string& prefix, const std::string& what) {
  std::map<std::string, Shape> got;
  for (const WeightSpec& s : specs) {
    EXPECT_TRUE(got.emplace(prefix + s.key, s.shape).second) << what << ": duplicate " << s.key;
  }
  for (const auto& [key, e] : schema) {
    if (e.optional && !with_optional) {
      EXPECT_EQ(got.count(key), 0u) << what << ": optional " << key << " expected";
      continue;
    }
    auto it = got.find(key);
    if (it == got.end()) {
      ADD_FAILURE() << what << ": schema key " << key << " not expected by the loader";
    } else {
      EXPECT_EQ(it->second, e.shape) << what << ": " << key;
    }
  }
  for (const auto& [key, shape] : got)
    EXPECT_EQ(schema.count(key), 1u)
        << what << ": loader expects " << key << " " << shape_str(shape) << ", not in the schema";
}

// A sparse file (header only) with the schema's keys and shapes, F16, under its canonical
// prefix.
std::string write_sparse(const nlohmann::json& schema, bool with_optional,
                         const std::string& name) {
  return test::write_sparse(
      test::temp_dir() + "/" + name + ".safetensors",
      test::schema_entries(schema, schema.at("canonical_prefix").get<std::string>(),
                           with_optional));
}

void expect_clip_config_eq(const ClipConfig& a, const ClipConfig& b, const std::string& what) {
  EXPECT_EQ(a.variant, b.variant) << what;
  EXPECT_EQ(a.vocab_size, b.vocab_size) << what;
  EXPECT_EQ(a.max_positions, b.max_positions) << what;
  EXPECT_EQ(a.hidden_size, b.hidden_size) << what;
  EXPECT_EQ(a.intermediate_size, b.intermediate_size) << what;
  EXPECT_EQ(a.num_heads, b.num_heads) << what;
  EXPECT_EQ(a.num_layers, b.num_layers) << what;
  EXPECT_EQ(a.hidden_act, b.hidden_act) << what;
  EXPECT_EQ(a.layer_norm_eps, b.layer_norm_eps) << what;
  EXPECT_EQ(a.has_text_projection, b.has_text_projection) << what;
  EXPECT_EQ(a.projection_dim, b.projection_dim) << what;
  EXPECT_EQ(a.project_pooled, b.project_pooled) << what;
  EXPECT_EQ(a.hidden_layer, b.hidden_layer) << what;
}

void check_clip_schema(const std::string& arch, const ClipConfig& preset) {
  SCOPED_TRACE(arch);
  const nlohmann::json schema = test::read_schema(arch);
  const std::string prefix = schema.at("canonical_prefix").get<std::string>();
  const auto entries = schema_entries(schema);
  const auto& sc = schema.at("config");
  EXPECT_EQ(preset.hidden_size, sc.at("hidden_size").get<int64_t>());
  EXPECT_EQ(preset.num_heads, sc.at("num_attention_heads").get<int64_t>());
  EXPECT_EQ(preset.num_layers, sc.at("num_hidden_layers").get<int64_t>());
  EXPECT_EQ(preset.project_pooled, sc.at("pooled_projected").get<bool>());
  EXPECT_EQ(preset.hidden_layer, sc.at("sd3_hidden_layer").get<int64_t>());

  bool has_optional = false;
  for (const auto& [key, e] : entries) has_optional |= e.optional;
  // The preset reads exactly the required tensors; optional ones (CLIP-L's unused
  // text_projection) are read when a file has them.
  expect_specs_equal(models::clip_weight_specs(preset), entries, false, prefix, arch);
  ClipConfig with_all = preset;
  with_all.has_text_projection = true;
  expect_specs_equal(models::clip_weight_specs(with_all), entries, true, prefix,
                     arch + " with optional tensors");

  WeightStore w = WeightStore::open({write_sparse(schema, false, arch)}).with_prefix(prefix);
  expect_clip_config_eq(models::clip_config_from_weights(w), preset, arch + " from weights");
  if (has_optional) {
    WeightStore w2 =
        WeightStore::open({write_sparse(schema, true, arch + "_all")}).with_prefix(prefix);
    expect_clip_config_eq(models::clip_config_from_weights(w2), with_all,
                          arch + " from weights with optional tensors");
  }
}

TEST(TextEncoderSchema, ClipL) {
  check_clip_schema("clip_l", ClipConfig::clip_l());
}
TEST(TextEncoderSchema, ClipG) {
  check_clip_schema("clip_g", ClipConfig::clip_g());
}

TEST(TextEncoderSchema, T5Xxl) {
  const nlohmann::json schema = test::read_schema("t5xxl");
  const std::string prefix = schema.at("canonical_prefix").get<std::string>();
  const auto entries = schema_entries(schema);
  const T5Config preset = T5Config::xxl();
  const auto& sc = schema.at("config");
  EXPECT_EQ(preset.d_model, sc.at("d_model").get<int64_t>());
  EXPECT_EQ(preset.d_ff, sc.at("d_ff").get<int64_t>());
  EXPECT_EQ(preset.d_kv, sc.at("d_kv").get<int64_t>());
  EXPECT_EQ(preset.num_heads, sc.at("num_heads").get<int64_t>());
  EXPECT_EQ(preset.num_layers, sc.at("num_layers").get<int64_t>());
  EXPECT_EQ(preset.vocab_size, sc.at("vocab_size").get<int64_t>());
  EXPECT_EQ(preset.num_buckets, sc.at("relative_attention_num_buckets").get<int64_t>());
  EXPECT_EQ(preset.max_distance, sc.at("relative_attention_max_distance").get<int64_t>());
  expect_specs_equal(models::t5_weight_specs(preset), entries, true, prefix, "t5xxl");

  WeightStore w = WeightStore::open({write_sparse(schema, true, "t5xxl")}).with_prefix(prefix);
  const T5Config got = models::t5_config_from_weights(w);
  EXPECT_EQ(got.vocab_size, preset.vocab_size);
  EXPECT_EQ(got.d_model, preset.d_model);
  EXPECT_EQ(got.d_kv, preset.d_kv);
  EXPECT_EQ(got.d_ff, preset.d_ff);
  EXPECT_EQ(got.num_heads, preset.num_heads);
  EXPECT_EQ(got.num_layers, preset.num_layers);
  EXPECT_EQ(got.num_buckets, preset.num_buckets);
  EXPECT_EQ(got.max_distance, preset.max_distance);
  EXPECT_EQ(got.layer_norm_eps, preset.layer_norm_eps);
  EXPECT_EQ(got.has_encoder_embed_tokens, preset.has_encoder_embed_tokens);
  EXPECT_EQ(got.has_shared, preset.has_shared);
}

// ---- loader errors on a small random CLIP -------------------------------------------------

ClipConfig small_clip() {
  ClipConfig c = ClipConfig::clip_g();
  c.vocab_size = 64;
  c.max_positions = 8;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_heads = 2;
  c.num_layers = 2;
  c.projection_dim = 8;
  return c;
}

// Random tensors for `specs`, with `key` misshapen (one extra row) or left out, plus extras.
std::string write_clip(const std::string& name, const std::string& bad_key, bool drop,
                       const std::vector<std::pair<std::string, Shape>>& extras = {}) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  auto random = [&](const Shape& s) {
    std::vector<float> v(static_cast<size_t>(shape_numel(s)));
    for (float& x : v) x = normal(rng);
    return Tensor::from_floats(v, s);
  };
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const WeightSpec& s : models::clip_weight_specs(small_clip())) {
    Shape shape = s.shape;
    if (s.key == bad_key) {
      if (drop) continue;
      shape[0] += 1;
    }
    tensors.emplace_back(s.key, random(shape));
  }
  for (const auto& [key, shape] : extras) tensors.emplace_back(key, random(shape));
  const std::string path = test::temp_dir() + "/" + name + ".safetensors";
  write_safetensors(path, tensors, {{"num_attention_heads", "2"}, {"arch", "clip_g"}});
  return path;
}

std::string load_error(const std::string& path) {
  try {
    models::ClipTextModel::load(WeightStore::open({path}));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TextEncoderLoad, MisshapenTensorNamesKeyAndShapes) {
  const std::string key = "text_model.encoder.layers.1.mlp.fc2.weight";
  const std::string msg = load_error(write_clip("misshapen", key, false));
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  EXPECT_NE(msg.find("[9, 16]"), std::string::npos) << msg;  // found
  EXPECT_NE(msg.find("[8, 16]"), std::string::npos) << msg;  // expected
}

TEST(TextEncoderLoad, MissingTensorNamesKeyAndShape) {
  const std::string key = "text_model.encoder.layers.0.self_attn.v_proj.bias";
  const std::string msg = load_error(write_clip("missing", key, true));
  EXPECT_NE(msg.find(key), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8]"), std::string::npos) << msg;
}

TEST(TextEncoderLoad, ExtrasAreReportedNotFatal) {
  const std::string path = write_clip(
      "extras", "", false, {{"text_model.embeddings.position_ids", {1, 8}}, {"logit_scale", {1}}});
  WeightStore w = WeightStore::open({path});
  const ClipConfig cfg = models::clip_config_from_weights(w);
  EXPECT_EQ(cfg.num_layers, 2);
  EXPECT_EQ(cfg.num_heads, 2);
  EXPECT_EQ(w.unexpected(models::clip_weight_specs(cfg)),
            (std::vector<std::string>{"logit_scale", "text_model.embeddings.position_ids"}));
  const models::ClipTextModel m = models::ClipTextModel::load(w);
  const models::ClipOutput out = m.forward(Tensor::from_ints({1, 5, 63, 0}, {1, 4}));
  EXPECT_EQ(out.pooled.shape(), (Shape{1, 8}));
  EXPECT_EQ(out.hidden.shape(), (Shape{1, 4, 8}));
}

TEST(TextEncoderLoad, NotClip) {
  const std::string path = test::temp_dir() + "/not_clip.safetensors";
  write_safetensors(path, {{"foo.weight", Tensor::zeros({2, 2}, DType::F32)}});
  const std::string msg = [&] {
    try {
      models::clip_config_from_weights(WeightStore::open({path}));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  EXPECT_NE(msg.find("not a CLIP text model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token_embedding"), std::string::npos) << msg;
}

}  // namespace
}  // namespace sd3
