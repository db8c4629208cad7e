// Recognition of real layouts: every fixture checkpoint of $SD3_FIXTURES (arch, key prefix,
// config, counts as its manifest entry says), and every real schema of ../shared/schemas
// (header-only sparse files at the full released sizes, under each prefix the schema lists,
// and all together in one sd3_medium_incl_clips-like file).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/files.h"
#include "common/golden.h"
#include "common/schema.h"
#include "common/test_data.h"
#include "common/tiny_models.h"
#include "engine/error.h"
#include "models/checkpoint.h"
#include "models/random_weights.h"

namespace sd3::models {
namespace {

using test::positional;

using nlohmann::json;

// Every *.json schema with an `arch` and a `tensors` list.
std::vector<json> schemas() {
  std::vector<json> out;
  for (const auto& e : std::filesystem::directory_iterator(test::schemas_dir())) {
    if (e.path().extension() != ".json") continue;
    json s = test::read_json(e.path().string());
    if (s.contains("arch") && s.contains("tensors")) out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(),
            [](const json& a, const json& b) { return a["arch"] < b["arch"]; });
  SD3_CHECK(!out.empty(), "no schemas in ", test::schemas_dir());
  return out;
}

// Fields present in both configs agree (numbers to float precision); at least `min_common`.
void expect_config_matches(const json& ours, const json& want, const std::string& what,
                           size_t min_common = 5) {
  size_t common = 0;
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (!ours.contains(it.key())) continue;
    ++common;
    const json& got = ours[it.key()];
    if (it.value().is_number() && got.is_number()) {
      const double a = got.get<double>(), b = it.value().get<double>();
      EXPECT_NEAR(a, b, 1e-6 * std::abs(b)) << what << ": config " << it.key();
    } else {
      EXPECT_EQ(got, it.value()) << what << ": config " << it.key();
    }
  }
  EXPECT_GE(common, min_common) << what << ": too few config fields in common: " << ours.dump();
}

using test::schema_entries;
using test::schema_tensors;

std::set<std::string> schema_prefixes(const json& s) {
  std::set<std::string> out = {s.value("canonical_prefix", ""), ""};
  if (s.contains("prefix_variants"))
    for (const auto& v : s["prefix_variants"]) out.insert(v["prefix"].get<std::string>());
  return out;
}

int64_t numel_sum(const std::vector<SafetensorsWriter::Entry>& e) {
  int64_t n = 0;
  for (const auto& x : e) n += shape_numel(x.shape);
  return n;
}

TEST(CheckpointSchemas, EveryRealSchemaIsRecognisedUnderEveryPrefix) {
  const std::string dir = test::temp_dir();
  for (const json& s : schemas()) {
    const std::string arch = s["arch"];
    for (const std::string& prefix : schema_prefixes(s)) {
      bool has_optional = false;
      for (const auto& t : schema_tensors(s)) has_optional = has_optional || t.optional;
      for (bool with_optional : {false, true}) {
        if (with_optional && !has_optional) continue;
        const auto entries = schema_entries(s, prefix, with_optional);
        const std::string what =
            arch + " at prefix '" + prefix + "'" + (with_optional ? " with optional tensors" : "");
        const std::string path = dir + "/" + arch + ".safetensors";
        write_sparse_safetensors(path, entries);
        const CheckpointContents found = inspect_checkpoint(path);
        ASSERT_EQ(found.components.size(), 1u) << what;
        const Component& c = found.components.front();
        EXPECT_EQ(c.arch, arch) << what;
        EXPECT_EQ(c.prefix, prefix) << what;
        EXPECT_TRUE(c.problems.empty()) << what << ": " << c.problems.front();
        // The loader reads exactly the schema's tensors (optional ones when present).
        EXPECT_TRUE(c.extras.empty()) << what << ": " << c.extras.front();
        std::set<std::string> spec_keys, schema_keys;
        for (const auto& sp : c.specs) spec_keys.insert(prefix + sp.key);
        for (const auto& e : entries) schema_keys.insert(e.key);
        EXPECT_EQ(spec_keys, schema_keys) << what;
        EXPECT_EQ(c.tensor_count, static_cast<int64_t>(entries.size())) << what;
        EXPECT_EQ(c.param_count, numel_sum(entries)) << what;
        EXPECT_TRUE(found.unassigned.empty()) << what;
        EXPECT_EQ(c.dtypes, std::vector<std::string>{"F16"}) << what;
        expect_config_matches(config_to_json(c.config), s["config"], what);
        if (!with_optional) {
          EXPECT_EQ(c.tensor_count, s["tensor_count"].get<int64_t>()) << what;
        }
      }
    }
    std::filesystem::remove(dir + "/" + arch + ".safetensors");
  }
}

// t5xxl_fp8_e4m3fn.safetensors: the same keys stored as fp8 are recognised and accepted.
TEST(CheckpointSchemas, Fp8T5IsRecognisedAndAccepted) {
  for (const json& s : schemas()) {
    if (s["arch"] != kArchT5Xxl) continue;
    auto entries = schema_entries(s, "", false, StDType::F8_E4M3);
    for (auto& e : entries)
      if (e.shape.size() == 1) e.dtype = StDType::F16;
    const std::string path = test::temp_dir() + "/t5xxl_fp8_e4m3fn.safetensors";
    write_sparse_safetensors(path, entries);
    ModelPaths p;
    p.t5xxl = path;
    const ModelFiles mf = ModelFiles::open(p);
    const Component& c = mf.require(ComponentKind::T5);
    EXPECT_EQ(c.arch, kArchT5Xxl);
    EXPECT_EQ(c.dtypes, (std::vector<std::string>{"F16", "F8_E4M3"}));
    expect_config_matches(config_to_json(c.config), s["config"], "fp8 t5xxl");
    ASSERT_FALSE(mf.warnings().empty());
    EXPECT_NE(mf.warnings().front().find("F8_E4M3"), std::string::npos) << mf.warnings().front();
    std::filesystem::remove(path);
    return;
  }
  FAIL() << "no t5xxl schema in " << test::schemas_dir();
}

// The prefix a schema's component has inside the combined single files (sd3_medium*), else
// its canonical prefix.
std::string combined_prefix(const json& s) {
  std::string best = s.value("canonical_prefix", "");
  if (!s.contains("prefix_variants")) return best;
  for (const auto& v : s["prefix_variants"])
    for (const auto& f : v["files"])
      if (f.get<std::string>().rfind("sd3_medium", 0) == 0) return v["prefix"];
  return best;
}

// sd3_medium_incl_clips_t5xxlfp16.safetensors: MMDiT + VAE + CLIP-L + CLIP-G + T5 in one file.
TEST(CheckpointSchemas, CombinedSingleFileYieldsAllFiveComponents) {
  std::vector<SafetensorsWriter::Entry> entries;
  std::map<std::string, std::string> want_prefix;
  for (const json& s : schemas()) {
    const std::string arch = s["arch"];
    // One MMDiT per file: the one the combined releases hold.
    if (arch == kArchSd35LargeMMDiT || arch == kArchSd35MediumMMDiTX) continue;
    const std::string prefix = combined_prefix(s);
    want_prefix[arch] = prefix;
    const auto e = schema_entries(s, prefix, false);
    entries.insert(entries.end(), e.begin(), e.end());
  }
  ASSERT_EQ(want_prefix.size(), 5u);
  entries.push_back({"text_encoders.clip_l.logit_scale", StDType::F16, {}});
  const std::string path = test::temp_dir() + "/sd3_medium_incl_clips_t5xxlfp16.safetensors";
  write_sparse_safetensors(path, entries);
  const CheckpointContents found = inspect_checkpoint(path);
  ASSERT_EQ(found.components.size(), 5u);
  for (const Component& c : found.components) {
    ASSERT_TRUE(want_prefix.count(c.arch)) << c.arch;
    EXPECT_EQ(c.prefix, want_prefix[c.arch]) << c.arch;
    EXPECT_TRUE(c.problems.empty()) << c.describe() << ": " << c.problems.front();
  }
  EXPECT_TRUE(found.unassigned.empty()) << found.unassigned.front();
  const ModelFiles mf = ModelFiles::open(positional({path}));
  for (ComponentKind k : kAllComponentKinds)
    EXPECT_NE(mf.find(k), nullptr) << component_kind_name(k);
  EXPECT_EQ(mf.require(ComponentKind::MMDiT).arch, kArchSd3MediumMMDiT);
  std::filesystem::remove(path);
}

// sd3.5_large.safetensors: the MMDiT and the VAE in one file.
TEST(CheckpointSchemas, Sd35SingleFileHoldsMMDiTAndVae) {
  for (const std::string mmdit_arch : {kArchSd35LargeMMDiT, kArchSd35MediumMMDiTX}) {
    std::vector<SafetensorsWriter::Entry> entries;
    for (const json& s : schemas()) {
      if (s["arch"] != mmdit_arch && s["arch"] != kArchSd3Vae) continue;
      const auto e = schema_entries(s, s.value("canonical_prefix", ""), false);
      entries.insert(entries.end(), e.begin(), e.end());
    }
    const std::string path = test::temp_dir() + "/" + mmdit_arch + "_file.safetensors";
    write_sparse_safetensors(path, entries);
    const ModelFiles mf = ModelFiles::open(positional({path}));
    EXPECT_EQ(mf.require(ComponentKind::MMDiT).arch, mmdit_arch);
    EXPECT_EQ(mf.require(ComponentKind::Vae).prefix, "first_stage_model.");
    EXPECT_EQ(mf.find(ComponentKind::T5), nullptr);
    std::filesystem::remove(path);
  }
}

// ---- fixtures ---------------------------------------------------------------------------

void expect_matches_entry(const json& comp, const json& entry, const std::string& what) {
  EXPECT_EQ(comp["arch"], entry["arch"]) << what;
  EXPECT_EQ(comp["prefix"], entry["key_prefix"]) << what;
  EXPECT_EQ(comp["dtypes"], json::array({entry["dtype"]})) << what;
  EXPECT_EQ(comp["tensor_count"], entry["tensor_count"]) << what;
  EXPECT_EQ(comp["param_count"], entry["param_count"]) << what;
  EXPECT_TRUE(comp["problems"].empty()) << what << ": " << comp["problems"].dump();
  expect_config_matches(comp["config"], entry["config"], what);
}

json component_json(const Component& c) {
  return {{"arch", c.arch},
          {"prefix", c.prefix},
          {"dtypes", c.dtypes},
          {"tensor_count", c.tensor_count},
          {"param_count", c.param_count},
          {"problems", c.problems},
          {"config", config_to_json(c.config)}};
}

TEST(CheckpointFixtures, EveryFixtureCheckpointIsRecognised) {
  const json& cps = test::manifest().at("checkpoints");
  ASSERT_FALSE(cps.empty());
  std::string all_paths;
  std::vector<std::string> names;
  for (auto it = cps.begin(); it != cps.end(); ++it) {
    const std::string path = test::checkpoint_file(it.key());
    const CheckpointContents found = inspect_checkpoint(path);
    ASSERT_EQ(found.components.size(), 1u) << it.key();
    expect_matches_entry(component_json(found.components.front()), it.value(), it.key());
    all_paths += " '" + path + "'";
    names.push_back(it.key());
  }
  // The same through sd3-inspect --json: one JSON object per line, in argument order.
  const test::CommandResult r =
      test::run_command(test::bin_dir() + "/sd3-inspect --json" + all_paths + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    ASSERT_LT(i, names.size()) << line;
    const json j = json::parse(line);
    EXPECT_EQ(j["file"], test::checkpoint_file(names[i]));
    ASSERT_EQ(j["components"].size(), 1u) << names[i];
    expect_matches_entry(j["components"][0], cps.at(names[i]), "sd3-inspect " + names[i]);
    ++i;
  }
  EXPECT_EQ(i, names.size());
  // The text listing names every tensor.
  const test::CommandResult text =
      test::run_command(test::bin_dir() + "/sd3-inspect" + all_paths + " 2>&1");
  ASSERT_EQ(text.status, 0) << text.out;
  for (auto it = cps.begin(); it != cps.end(); ++it) {
    auto f = SafetensorsFile::open(test::checkpoint_file(it.key()));
    for (const auto& t : f->tensors()) EXPECT_NE(text.out.find(t.key), std::string::npos) << t.key;
    EXPECT_NE(text.out.find(it.value()["arch"].get<std::string>()), std::string::npos);
  }
}

// The stored MMDiT position tables are the reference's get_2d_sincos_pos_embed, which
// sd3-randckpt reproduces.
TEST(CheckpointFixtures, SinCosTableMatchesTheFixtures) {
  const json& cps = test::manifest().at("checkpoints");
  int checked = 0;
  for (auto it = cps.begin(); it != cps.end(); ++it) {
    const std::string arch = it.value()["arch"];
    if (arch.find("mmdit") == std::string::npos) continue;
    const CheckpointContents found = inspect_checkpoint(test::checkpoint_file(it.key()));
    const MMDiTConfig& cfg = found.components.at(0).mmdit();
    const auto stored = found.components[0].weights.get("pos_embed", DType::F32).to_floats();
    const auto ours = sincos_pos_embed_2d(cfg.hidden_size, cfg.pos_embed_max_size);
    ASSERT_EQ(stored.size(), ours.size()) << it.key();
    double worst = 0;
    for (size_t i = 0; i < ours.size(); ++i)
      worst = std::max(worst, std::abs(double(stored[i]) - ours[i]));
    EXPECT_LE(worst, 1.2e-7) << it.key();  // float rounding of the same float64 values
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// The e2e case's component files, given as plain -m files, are sorted into their roles by
// structure; given by flag, the same.
TEST(CheckpointFixtures, E2eFilesAreFoundByStructure) {
  for (const auto& c : test::cases_of_kind("e2e")) {
    ASSERT_TRUE(c.raw.contains("checkpoint_files")) << c.name;
    const json& files = c.raw["checkpoint_files"];
    const std::map<std::string, ComponentKind> roles = {{"mmdit", ComponentKind::MMDiT},
                                                        {"vae", ComponentKind::Vae},
                                                        {"clip_l", ComponentKind::ClipL},
                                                        {"clip_g", ComponentKind::ClipG},
                                                        {"t5", ComponentKind::T5}};
    ModelPaths positional, flags;
    for (auto it = files.begin(); it != files.end(); ++it) {
      const std::string path = test::fixture_path(it.value());
      positional.models.push_back(path);
      if (it.key() == "mmdit") flags.models.push_back(path);
      if (it.key() == "vae") flags.vae = path;
      if (it.key() == "clip_l") flags.clip_l = path;
      if (it.key() == "clip_g") flags.clip_g = path;
      if (it.key() == "t5") flags.t5xxl = path;
    }
    for (const ModelPaths& p : {positional, flags}) {
      const ModelFiles mf = ModelFiles::open(p);
      for (auto it = files.begin(); it != files.end(); ++it) {
        ASSERT_TRUE(roles.count(it.key())) << it.key();
        const Component& comp = mf.require(roles.at(it.key()));
        EXPECT_EQ(comp.weights.files().front()->path(), test::fixture_path(it.value())) << it.key();
      }
    }
  }
}

}  // namespace
}  // namespace sd3::models
