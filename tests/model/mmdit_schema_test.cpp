// MM-DiT key/shape lists against the real schemas (../shared/schemas, or $SD3_SCHEMAS), and the
// configuration read back from weights at the schema's shapes. The schema "files" are sparse:
// a real safetensors header and a data section that is only ftruncate'd, so a 16 GB SD3.5-large
// costs no disk and no time.
#include <gtest/gtest.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/schema.h"
#include "common/test_data.h"
#include "engine/error.h"
#include "engine/weights.h"
#include "models/mmdit.h"

namespace sd3::models {
namespace {

using test::write_sparse;

struct RealSchema {
  const char* file;
  MMDiTConfig (*preset)();
};
const RealSchema kSchemas[] = {{"sd3_medium_mmdit", &MMDiTConfig::sd3_medium},
                               {"sd35_large_mmdit", &MMDiTConfig::sd35_large},
                               {"sd35_medium_mmditx", &MMDiTConfig::sd35_medium}};

TEST(MMDiTSchema, WeightSpecsEqualRealSchemas) {
  for (const RealSchema& r : kSchemas) {
    SCOPED_TRACE(r.file);
    nlohmann::json schema = test::read_schema(r.file);
    const std::string prefix = schema.at("canonical_prefix").get<std::string>();
    std::map<std::string, Shape> want;
    for (const auto& t : schema.at("tensors"))
      want[t.at("key").get<std::string>()] = t.at("shape").get<Shape>();
    std::map<std::string, Shape> got;
    for (const WeightSpec& s : mmdit_weight_specs(r.preset())) {
      EXPECT_TRUE(got.emplace(prefix + s.key, s.shape).second) << "duplicate spec " << s.key;
    }
    for (const auto& [key, shape] : want) {
      auto it = got.find(key);
      if (it == got.end()) {
        ADD_FAILURE() << "schema key " << key << " not in the specs";
      } else {
        EXPECT_EQ(it->second, shape) << key;
      }
    }
    for (const auto& [key, shape] : got)
      EXPECT_TRUE(want.count(key))
          << "spec " << key << " " << shape_str(shape) << " not in the schema";
    EXPECT_EQ(got.size(), schema.at("tensor_count").get<size_t>());
  }
}

TEST(MMDiTSchema, PresetsAgreeWithSchemaConfigs) {
  for (const RealSchema& r : kSchemas) {
    SCOPED_TRACE(r.file);
    const nlohmann::json cfg = test::read_schema(r.file).at("config");
    const MMDiTConfig p = r.preset();
    EXPECT_EQ(p.depth, cfg.at("depth").get<int64_t>());
    EXPECT_EQ(p.hidden_size, cfg.at("hidden_size").get<int64_t>());
    EXPECT_EQ(p.num_heads, cfg.at("num_heads").get<int64_t>());
    EXPECT_EQ(p.head_dim(), cfg.at("head_dim").get<int64_t>());
    EXPECT_EQ(p.patch_size, cfg.at("patch_size").get<int64_t>());
    EXPECT_EQ(p.in_channels, cfg.at("in_channels").get<int64_t>());
    EXPECT_EQ(p.out_channels, cfg.at("out_channels").get<int64_t>());
    EXPECT_EQ(p.adm_in_channels, cfg.at("adm_in_channels").get<int64_t>());
    EXPECT_EQ(p.context_in_features, cfg.at("context_in_features").get<int64_t>());
    EXPECT_EQ(p.pos_embed_max_size, cfg.at("pos_embed_max_size").get<int64_t>());
    EXPECT_EQ(p.qk_norm, cfg.at("qk_norm").is_string());
    EXPECT_EQ(p.x_block_self_attn_layers,
              cfg.at("x_block_self_attn_layers").get<std::vector<int64_t>>());
    EXPECT_EQ(p.register_length, cfg.at("register_length").get<int64_t>());
    EXPECT_EQ(p.frequency_embedding_size, cfg.at("frequency_embedding_size").get<int64_t>());
    EXPECT_DOUBLE_EQ(static_cast<double>(p.mlp_ratio), cfg.at("mlp_ratio").get<double>());
  }
}

// The configuration read from a (sparse) file with exactly the schema's keys and shapes.
TEST(MMDiTSchema, ConfigFromSchemaWeightsIsThePreset) {
  const std::string dir = test::temp_dir();
  for (const RealSchema& r : kSchemas) {
    SCOPED_TRACE(r.file);
    nlohmann::json schema = test::read_schema(r.file);
    const std::string prefix = schema.at("canonical_prefix").get<std::string>();
    std::vector<WeightSpec> specs;
    for (const auto& t : schema.at("tensors")) {
      std::string key = t.at("key").get<std::string>();
      ASSERT_EQ(key.rfind(prefix, 0), 0u) << key;
      specs.push_back({key.substr(prefix.size()), t.at("shape").get<Shape>()});
    }
    const std::string path = write_sparse(dir + "/" + r.file + ".safetensors", prefix, specs);
    WeightStore w = WeightStore::open({path}).with_prefix(prefix);
    MMDiTConfig cfg = mmdit_config_from_weights(w);
    EXPECT_EQ(cfg, r.preset()) << "read: " << to_string(cfg)
                               << "\npreset: " << to_string(r.preset());
    EXPECT_TRUE(w.unexpected(mmdit_weight_specs(cfg)).empty());
    ::unlink(path.c_str());
  }
}

// Reduced configurations (what sd3-randckpt writes) read back as themselves.
TEST(MMDiTSchema, ReducedConfigsRoundTrip) {
  const std::string dir = test::temp_dir();
  std::vector<MMDiTConfig> configs;
  MMDiTConfig a = MMDiTConfig::sd3_medium();
  a.depth = a.num_heads = 2;
  a.hidden_size = 128;
  a.pos_embed_max_size = 12;
  a.adm_in_channels = 28;
  a.context_in_features = 32;
  configs.push_back(a);
  MMDiTConfig b = MMDiTConfig::sd35_medium();
  b.depth = b.num_heads = 3;
  b.hidden_size = 192;
  b.x_block_self_attn_layers = {0, 2};
  b.pos_embed_max_size = 7;
  b.register_length = 4;
  configs.push_back(b);
  MMDiTConfig no_y = a;
  no_y.adm_in_channels = 0;
  no_y.qk_norm = true;
  configs.push_back(no_y);
  int n = 0;
  for (const MMDiTConfig& cfg : configs) {
    SCOPED_TRACE(to_string(cfg));
    const std::string path = write_sparse(dir + "/reduced" + std::to_string(n++) + ".safetensors",
                                          "", mmdit_weight_specs(cfg));
    EXPECT_EQ(mmdit_config_from_weights(WeightStore::open({path})), cfg);
  }
}

TEST(MMDiTSchema, NonMMDiTStoreIsRejectedClearly) {
  const std::string dir = test::temp_dir();
  const std::string path = write_sparse(dir + "/clip.safetensors", "",
                                        {{"text_model.embeddings.position_ids", {1, 77}}});
  try {
    mmdit_config_from_weights(WeightStore::open({path}).with_prefix("model.diffusion_model."));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x_embedder.proj.weight"), std::string::npos) << e.what();
  }
}

// A misshapen tensor fails loading with one message naming key and both shapes.
TEST(MMDiTSchema, MisshapenTensorIsNamed) {
  const std::string dir = test::temp_dir();
  MMDiTConfig cfg = MMDiTConfig::sd3_medium();
  cfg.depth = cfg.num_heads = 1;
  cfg.hidden_size = 64;
  cfg.pos_embed_max_size = 4;
  cfg.adm_in_channels = 8;
  cfg.context_in_features = 8;
  std::vector<WeightSpec> specs = mmdit_weight_specs(cfg);
  for (WeightSpec& s : specs)
    if (s.key == "joint_blocks.0.x_block.mlp.fc1.weight") s.shape = {255, 64};
  const std::string path = write_sparse(dir + "/bad.safetensors", "", specs);
  try {
    MMDiT::load(WeightStore::open({path}));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("joint_blocks.0.x_block.mlp.fc1.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("255"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace sd3::models
