// Layer counts from key names (models/weight_keys.h) against hostile headers: an index far
// beyond the file's tensors, given straight to a model's loader or to the component finder,
// is one sd3::Error naming the key, in well under a second and without a big allocation
// (Note [Layer counts from key names]).
#include "models/weight_keys.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>

#include "common/files.h"
#include "common/schema.h"
#include "common/test_data.h"
#include "common/tiny_models.h"
#include "engine/error.h"
#include "models/checkpoint.h"

namespace sd3::models {
namespace {

// Indices a hostile header may carry: past int32, past int64 (20 digits), and the largest
// six-digit one (which the VAE's parse once accepted, asking for a million blocks).
const char* const kHostileIndices[] = {"2147483648", "99999999999999999999", "999999"};

// The process's address space now, in bytes (first field of /proc/self/statm, in pages).
rlim_t address_space_in_use() {
  std::ifstream statm("/proc/self/statm");
  unsigned long long pages = 0;
  statm >> pages;
  return static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE));
}

// The sd3::Error message of `f`, or "" when it returns; with the address space capped at
// 1 GiB above what is in use, and checked to take well under a second.
std::string error_of(const std::function<void()>& f) {
  const test::AddressSpaceLimit limit(address_space_in_use() + (rlim_t{1} << 30));
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    f();
  } catch (const Error& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 1.0) << msg;
  return msg;
}

// A sparse file: `specs` under `prefix`, plus the one (full) key `extra`, shaped [8].
std::string file_with(const std::string& name, const std::string& prefix,
                      const std::vector<WeightSpec>& specs, const std::string& extra) {
  std::vector<SafetensorsWriter::Entry> entries = test::entries_of(specs, prefix);
  entries.push_back({extra, StDType::F16, {8}});
  return test::write_sparse(test::temp_dir() + "/" + name + ".safetensors", entries);
}

TEST(WeightKeys, ParseIndex) {
  EXPECT_EQ(parse_index("0"), 0);
  EXPECT_EQ(parse_index("12"), 12);
  EXPECT_EQ(parse_index("007"), 7);
  EXPECT_EQ(parse_index("2147483648"), int64_t{2147483648});
  const int64_t max = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(parse_index("9223372036854775807"), max);
  EXPECT_EQ(parse_index("9223372036854775808"), max);
  EXPECT_EQ(parse_index("99999999999999999999999999999"), max);
  for (const char* not_index : {"", "a", "1a", "a1", "-1", "+1", " 1", "1 ", "1.0", "0x1"})
    EXPECT_EQ(parse_index(not_index), std::nullopt) << "'" << not_index << "'";
}

TEST(WeightKeys, CountLayers) {
  const std::string path = test::write_sparse(test::temp_dir() + "/layers.safetensors", "m.",
                                              {{"layers.0.w", {2}},
                                               {"layers.1.w", {2}},
                                               {"layers.2.w", {2}},
                                               {"layers.2.b", {2}},
                                               {"layers.norm.w", {2}},
                                               {"layers.3", {2}},
                                               {"layers..w", {2}},
                                               {"other.w", {2}}});
  const WeightStore w = WeightStore::open({path}).with_prefix("m.");
  // "layers.3" (no '.' after the index), "layers..w" and "layers.norm.w" are not layers.
  EXPECT_EQ(count_layers(w, "layers."), 3);
  EXPECT_EQ(count_layers(w, "other."), 0);
  EXPECT_EQ(count_layers(w, "absent."), 0);
  EXPECT_EQ(indexed_key("layers.", 2, "w"), "layers.2.w");
}

TEST(WeightKeys, IndexBeyondTheKeysIsRefusedNamingIt) {
  for (const char* index : kHostileIndices) {
    SCOPED_TRACE(index);
    const std::string key = std::string("m.layers.") + index + ".w";
    const std::string path =
        test::write_sparse(test::temp_dir() + "/hostile.safetensors",
                           {{"m.layers.0.w", StDType::F16, {2}}, {key, StDType::F16, {2}}});
    const WeightStore w = WeightStore::open({path}).with_prefix("m.");
    const std::string msg = error_of([&] { count_layers(w, "layers."); });
    EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    const std::string all = error_of([&] { check_key_indices(w); });
    EXPECT_NE(all.find("'" + key + "'"), std::string::npos) << all;
  }
}

// A file passed straight to a loader never meets the component finder's checks.
TEST(WeightKeys, LoadersRefuseAHugeLayerIndex) {
  struct Case {
    std::string name;
    std::string prefix;
    std::vector<WeightSpec> specs;
    std::string hostile;  // the key with the index, {} for where it goes
    std::function<void(const WeightStore&)> load;
  };
  const Case cases[] = {
      {"clip", "", clip_weight_specs(test::tiny_clip(false)),
       "text_model.encoder.layers.{}.mlp.fc1.weight",
       [](const WeightStore& w) { ClipTextModel::load(w); }},
      {"t5", "", t5_weight_specs(test::tiny_t5()), "encoder.block.{}.layer.0.layer_norm.weight",
       [](const WeightStore& w) { T5Encoder::load(w); }},
      {"vae", "first_stage_model.", vae_weight_specs(test::tiny_vae()),
       "encoder.down.0.block.{}.norm1.weight", [](const WeightStore& w) { Vae::load(w); }},
      {"vae_levels", "first_stage_model.", vae_weight_specs(test::tiny_vae()),
       "encoder.down.{}.block.0.norm1.weight", [](const WeightStore& w) { Vae::load(w); }},
      {"vae_decoder", "", vae_decoder_weight_specs(test::tiny_vae()),
       "decoder.up.0.block.{}.norm1.weight", [](const WeightStore& w) { Vae::load(w); }},
  };
  for (const Case& c : cases) {
    for (const char* index : kHostileIndices) {
      SCOPED_TRACE(c.name + " index " + index);
      std::string key = c.prefix + c.hostile;
      key.replace(key.find("{}"), 2, index);
      const std::string path = file_with(c.name, c.prefix, c.specs, key);
      const WeightStore w = WeightStore::open({path}).with_prefix(c.prefix);
      const std::string msg = error_of([&] { c.load(w); });
      EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("implausible index"), std::string::npos) << msg;
      // The finder reports the same file as unreadable instead of throwing.
      CheckpointContents found;
      EXPECT_EQ(error_of([&] { found = inspect_checkpoint(path); }), "");
      EXPECT_TRUE(found.components.empty());
      ASSERT_EQ(found.unrecognised.size(), 1u);
      EXPECT_EQ(found.unrecognised[0].prefix, c.prefix);
      EXPECT_NE(found.unrecognised[0].reason.find("'" + key + "'"), std::string::npos)
          << found.unrecognised[0].reason;
    }
  }
}

// The MM-DiT's depth comes from a shape (x_embedder.proj.weight [64 * depth, ...]), not from a
// key index: a header claiming a huge depth, or no input channels, is refused against the
// joint blocks the file really holds, quickly and naming the tensor.
TEST(WeightKeys, MMDiTDepthMustMatchTheJointBlocks) {
  const MMDiTConfig cfg = test::tiny_mmdit(MMDiTConfig::sd3_medium(), 1);
  const std::string prefix = "model.diffusion_model.";
  // A zero-size tensor has no bytes, so its leading dimension can be anything.
  const Shape hostile[] = {
      {int64_t{64} << 34, 0, 2, 2}, {int64_t{64} << 20, 16, 2, 2}, {64 * 1000, 16, 2, 2}};
  for (const Shape& proj : hostile) {
    SCOPED_TRACE(shape_str(proj));
    std::vector<WeightSpec> specs = mmdit_weight_specs(cfg);
    for (WeightSpec& s : specs)
      if (s.key == "x_embedder.proj.weight") s.shape = proj;
    const std::string path = test::write_sparse(test::temp_dir() + "/depth.safetensors",
                                                test::entries_of(specs, prefix));
    const WeightStore w = WeightStore::open({path}).with_prefix(prefix);
    const std::string msg = error_of([&] { mmdit_config_from_weights(w); });
    EXPECT_NE(msg.find("x_embedder.proj.weight"), std::string::npos) << msg;
  }
}

// The finder also refuses an implausible index that no config derivation reads (here a
// nested one in an MMDiT, whose depth comes from a shape), so such a file is never loaded.
TEST(WeightKeys, FinderRefusesAnyImplausibleIndex) {
  const MMDiTConfig cfg = test::tiny_mmdit(MMDiTConfig::sd3_medium(), 1);
  const std::string prefix = "model.diffusion_model.";
  const std::string key = prefix + "joint_blocks.0.x_block.attn.4294967296.weight";
  const std::string path = file_with("mmdit", prefix, mmdit_weight_specs(cfg), key);
  CheckpointContents found;
  EXPECT_EQ(error_of([&] { found = inspect_checkpoint(path); }), "");
  EXPECT_TRUE(found.components.empty());
  ASSERT_EQ(found.unrecognised.size(), 1u);
  EXPECT_EQ(found.unrecognised[0].kind_guess, "mmdit");
  EXPECT_NE(found.unrecognised[0].reason.find("'" + key + "'"), std::string::npos)
      << found.unrecognised[0].reason;
}

}  // namespace
}  // namespace sd3::models
