// Component detection by structure (models/checkpoint.h) and the random-weight generator
// (models/random_weights.h), on header-only sparse files built from the models' own weight
// specs at reduced sizes: no fixtures needed.
#include "models/checkpoint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "common/files.h"
#include "common/schema.h"
#include "common/test_data.h"
#include "common/tiny_models.h"
#include "engine/error.h"
#include "models/random_weights.h"

namespace sd3::models {
namespace {

using Entries = std::vector<SafetensorsWriter::Entry>;

using test::entries_of;

Entries operator+(Entries a, const Entries& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string sparse(const std::string& name, const Entries& entries,
                   const std::map<std::string, std::string>& metadata = {}) {
  return test::write_sparse(test::temp_dir() + "/" + name + ".safetensors", entries, metadata);
}

using test::positional;
using test::tiny_clip;
using test::tiny_mmdit;
using test::tiny_t5;
using test::tiny_vae;

Component only(const CheckpointContents& c) {
  EXPECT_EQ(c.components.size(), 1u);
  EXPECT_TRUE(c.unrecognised.empty()) << (c.unrecognised.empty() ? "" : c.unrecognised[0].reason);
  if (c.components.empty()) throw Error("no component");
  return c.components.front();
}

void expect_clean(const Component& c) {
  EXPECT_TRUE(c.problems.empty()) << c.describe() << ": " << c.problems.front();
  EXPECT_TRUE(c.extras.empty()) << c.describe() << ": " << c.extras.front();
}

TEST(Checkpoint, MMDiTFamilyFollowsStructure) {
  struct Case {
    MMDiTConfig cfg;
    const char* arch;
  };
  const Case cases[] = {{tiny_mmdit(MMDiTConfig::sd3_medium(), 2), kArchSd3MediumMMDiT},
                        {tiny_mmdit(MMDiTConfig::sd35_large(), 3), kArchSd35LargeMMDiT},
                        {tiny_mmdit(MMDiTConfig::sd35_medium(), 2), kArchSd35MediumMMDiTX}};
  for (const auto& c : cases) {
    for (const std::string prefix : {"model.diffusion_model.", ""}) {
      const auto found =
          inspect_checkpoint(sparse(std::string(c.arch) + "_p" + std::to_string(prefix.size()),
                                    entries_of(mmdit_weight_specs(c.cfg), prefix)));
      const Component& comp = only(found);
      EXPECT_EQ(comp.arch, c.arch);
      EXPECT_EQ(comp.kind, ComponentKind::MMDiT);
      EXPECT_EQ(comp.prefix, prefix);
      EXPECT_EQ(comp.mmdit(), c.cfg) << to_string(comp.mmdit()) << " vs " << to_string(c.cfg);
      EXPECT_EQ(comp.dtypes, std::vector<std::string>{"F16"});
      expect_clean(comp);
    }
  }
}

TEST(Checkpoint, EncodersAndVaeAreRecognised) {
  const ClipConfig l = tiny_clip(false), g = tiny_clip(true);
  const T5Config t5 = tiny_t5();
  const VaeConfig vae = tiny_vae();
  const std::map<std::string, std::string> heads = {{"num_attention_heads", "2"}};
  {
    const Component& c =
        only(inspect_checkpoint(sparse("clip_l", entries_of(clip_weight_specs(l), ""), heads)));
    EXPECT_EQ(c.arch, kArchClipL);
    EXPECT_EQ(c.clip().num_heads, 2);
    EXPECT_EQ(config_to_json(c.config), config_to_json(l));
    expect_clean(c);
  }
  {
    const Component& c = only(inspect_checkpoint(
        sparse("clip_g", entries_of(clip_weight_specs(g), "", StDType::BF16), heads)));
    EXPECT_EQ(c.arch, kArchClipG);
    EXPECT_EQ(config_to_json(c.config), config_to_json(g));
    EXPECT_EQ(c.dtypes, std::vector<std::string>{"BF16"});
    expect_clean(c);
  }
  {
    const Component& c =
        only(inspect_checkpoint(sparse("t5", entries_of(t5_weight_specs(t5), "", StDType::F32))));
    EXPECT_EQ(c.arch, kArchT5Xxl);
    EXPECT_EQ(config_to_json(c.config), config_to_json(t5));
    expect_clean(c);
  }
  for (const std::string prefix : {"first_stage_model.", ""}) {
    const Component& c = only(inspect_checkpoint(
        sparse("vae" + std::to_string(prefix.size()), entries_of(vae_weight_specs(vae), prefix))));
    EXPECT_EQ(c.arch, kArchSd3Vae);
    EXPECT_EQ(c.prefix, prefix);
    EXPECT_EQ(config_to_json(c.config), config_to_json(vae));
    expect_clean(c);
  }
  {  // a decoder-only VAE is a VAE too
    const Component& c =
        only(inspect_checkpoint(sparse("vae_dec", entries_of(vae_decoder_weight_specs(vae), ""))));
    EXPECT_EQ(c.arch, kArchSd3Vae);
    expect_clean(c);
  }
}

// A file laid out like sd3_medium_incl_clips_t5xxlfp16.safetensors, with the extra keys real
// files carry.
std::string combined_file(const std::string& name) {
  const MMDiTConfig m = tiny_mmdit(MMDiTConfig::sd3_medium(), 2);
  Entries e = entries_of(mmdit_weight_specs(m), "model.diffusion_model.") +
              entries_of(vae_weight_specs(tiny_vae()), "first_stage_model.") +
              entries_of(clip_weight_specs(tiny_clip(false)), "text_encoders.clip_l.transformer.") +
              entries_of(clip_weight_specs(tiny_clip(true)), "text_encoders.clip_g.transformer.") +
              entries_of(t5_weight_specs(tiny_t5()), "text_encoders.t5xxl.transformer.");
  e.push_back({"text_encoders.clip_l.logit_scale", StDType::F32, {}});
  e.push_back({"text_encoders.clip_l.transformer.text_model.embeddings.position_ids",
               StDType::I64,
               {1, 77}});
  e.push_back({"unrelated.thing", StDType::F32, {3}});
  return sparse(name, e, {{"num_attention_heads", "2"}});
}

TEST(Checkpoint, CombinedFileYieldsAllFive) {
  const auto found = inspect_checkpoint(combined_file("combined"));
  ASSERT_EQ(found.components.size(), 5u);
  std::map<std::string, const Component*> by_arch;
  for (const auto& c : found.components) by_arch[c.arch] = &c;
  EXPECT_EQ(by_arch.at(kArchSd3MediumMMDiT)->prefix, "model.diffusion_model.");
  EXPECT_EQ(by_arch.at(kArchSd3Vae)->prefix, "first_stage_model.");
  EXPECT_EQ(by_arch.at(kArchClipL)->prefix, "text_encoders.clip_l.transformer.");
  EXPECT_EQ(by_arch.at(kArchClipG)->prefix, "text_encoders.clip_g.transformer.");
  EXPECT_EQ(by_arch.at(kArchT5Xxl)->prefix, "text_encoders.t5xxl.transformer.");
  for (const auto& c : found.components) EXPECT_TRUE(c.problems.empty()) << c.describe();
  // logit_scale sits beside the transformer: it is CLIP-L's, like position_ids.
  EXPECT_EQ(by_arch.at(kArchClipL)->extras,
            (std::vector<std::string>{
                "text_encoders.clip_l.logit_scale",
                "text_encoders.clip_l.transformer.text_model.embeddings.position_ids"}));
  EXPECT_EQ(found.unassigned, std::vector<std::string>{"unrelated.thing"});
  int64_t tensors = 0;
  for (const auto& c : found.components) tensors += c.tensor_count;
  EXPECT_EQ(tensors + 1, static_cast<int64_t>(found.store.files().front()->tensors().size()));
}

TEST(Checkpoint, ParamCountCoversEveryAttributedTensor) {
  const T5Config t5 = tiny_t5();
  const auto specs = t5_weight_specs(t5);
  int64_t params = 0;
  for (const auto& s : specs) params += shape_numel(s.shape);
  const Component& c = only(inspect_checkpoint(sparse("t5count", entries_of(specs, ""))));
  EXPECT_EQ(c.param_count, params);
  EXPECT_EQ(c.tensor_count, static_cast<int64_t>(specs.size()));
}

TEST(Checkpoint, BrokenComponentIsReportedNotThrown) {
  auto specs = mmdit_weight_specs(tiny_mmdit(MMDiTConfig::sd3_medium(), 2));
  // One misshapen and one missing tensor.
  for (auto& s : specs)
    if (s.key == "joint_blocks.0.x_block.mlp.fc1.weight") s.shape[0] += 1;
  specs.erase(std::remove_if(specs.begin(), specs.end(),
                             [](const WeightSpec& s) {
                               return s.key == "joint_blocks.1.x_block.attn.qkv.bias";
                             }),
              specs.end());
  const std::string path = sparse("broken_mmdit", entries_of(specs, "model.diffusion_model."));
  const Component& c = only(inspect_checkpoint(path));
  ASSERT_EQ(c.problems.size(), 2u);
  const std::string all = c.problems[0] + "\n" + c.problems[1];
  EXPECT_NE(all.find("model.diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("[513, 128]"), std::string::npos) << all;  // found shape
  EXPECT_NE(all.find("[512, 128]"), std::string::npos) << all;  // expected shape
  EXPECT_NE(all.find("missing tensor 'model.diffusion_model.joint_blocks.1.x_block.attn.qkv.bias'"),
            std::string::npos)
      << all;
  // The runner refuses it with one line naming the first problem.
  try {
    ModelFiles::open(positional({path}));
    ADD_FAILURE() << "a broken MMDiT was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("and 1 more"), std::string::npos) << msg;
  }
}

// sd3-inspect lists a file whose component cannot be loaded, then exits 1 with one line per
// such component naming the first problem.
TEST(Inspect, BrokenComponentExitsNonZero) {
  auto specs = mmdit_weight_specs(tiny_mmdit(MMDiTConfig::sd35_large(), 2));
  specs.pop_back();
  const std::string path = sparse("inspect_broken", entries_of(specs, "model.diffusion_model."));
  const std::string inspect = test::bin_dir() + "/sd3-inspect";
  const test::CommandResult err = test::run_command(inspect + " '" + path + "' 2>&1 >/dev/null");
  EXPECT_EQ(err.status, 1) << err.out;
  EXPECT_EQ(err.out.rfind("sd3-inspect: error: sd35_large_mmdit at prefix", 0), 0u) << err.out;
  EXPECT_NE(err.out.find("missing tensor 'model.diffusion_model."), std::string::npos) << err.out;
  EXPECT_EQ(err.out.find('\n'), err.out.size() - 1) << err.out;
  const test::CommandResult out = test::run_command(inspect + " --json '" + path + "' 2>/dev/null");
  EXPECT_NE(out.out.find("\"problems\":[\"missing tensor"), std::string::npos) << out.out;
  EXPECT_EQ(test::run_command(inspect + " --help >/dev/null").status, 0);
  EXPECT_EQ(test::run_command(inspect + " --bogus '" + path + "' 2>/dev/null").status, 2);
  EXPECT_EQ(test::run_command(inspect + " 2>/dev/null").status, 2);
}

// ---- ModelFiles ------------------------------------------------------------------------------

// The error message of `f`, or "" when it does not throw sd3::Error.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string tiny_file(const std::string& name, const std::string& what, StDType dt = StDType::F16,
                      const std::string& prefix = "") {
  const std::map<std::string, std::string> heads = {{"num_attention_heads", "2"}};
  if (what == "mmdit")
    return sparse(name, entries_of(mmdit_weight_specs(tiny_mmdit(MMDiTConfig::sd3_medium(), 2)),
                                   prefix.empty() ? "model.diffusion_model." : prefix, dt));
  if (what == "mmdit_large")
    return sparse(name, entries_of(mmdit_weight_specs(tiny_mmdit(MMDiTConfig::sd35_large(), 2)),
                                   "model.diffusion_model.", dt));
  if (what == "vae") return sparse(name, entries_of(vae_weight_specs(tiny_vae()), prefix, dt));
  if (what == "clip_l")
    return sparse(name, entries_of(clip_weight_specs(tiny_clip(false)), prefix, dt), heads);
  if (what == "clip_g")
    return sparse(name, entries_of(clip_weight_specs(tiny_clip(true)), prefix, dt), heads);
  return sparse(name, entries_of(t5_weight_specs(tiny_t5()), prefix, dt));
}

TEST(ModelFiles, CombinedFileGivesEveryComponent) {
  const std::string path = combined_file("mf_combined");
  const ModelFiles mf = ModelFiles::open(positional({path}));
  for (ComponentKind k : kAllComponentKinds) {
    const Component& c = mf.require(k);
    EXPECT_EQ(c.kind, k);
    EXPECT_EQ(c.weights.files().front()->path(), path);
  }
  EXPECT_EQ(mf.require(ComponentKind::ClipL).weights.prefix(), "text_encoders.clip_l.transformer.");
  // The extras and the unassigned key are warnings, not errors.
  std::string warnings;
  for (const auto& w : mf.warnings()) warnings += w + "\n";
  EXPECT_NE(warnings.find("logit_scale"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("unrelated.thing"), std::string::npos) << warnings;
}

TEST(ModelFiles, SeparateFilesAndOverrides) {
  const std::string mmdit = tiny_file("sep_mmdit", "mmdit");
  const std::string vae = tiny_file("sep_vae", "vae", StDType::F16, "first_stage_model.");
  const std::string clip_l = tiny_file("sep_clip_l", "clip_l");
  const std::string clip_g = tiny_file("sep_clip_g", "clip_g");
  const std::string t5 = tiny_file("sep_t5", "t5");
  {  // every file positional: found by structure, not by flag or name
    const ModelFiles mf = ModelFiles::open(positional({t5, clip_g, vae, clip_l, mmdit}));
    EXPECT_EQ(mf.require(ComponentKind::ClipG).weights.files().front()->path(), clip_g);
    EXPECT_EQ(mf.require(ComponentKind::T5).weights.files().front()->path(), t5);
    EXPECT_EQ(mf.files().size(), 5u);
  }
  {  // explicit flags
    ModelPaths p;
    p.models = {mmdit};
    p.clip_l = clip_l;
    p.clip_g = clip_g;
    p.t5xxl = t5;
    p.vae = vae;
    const ModelFiles mf = ModelFiles::open(p);
    EXPECT_EQ(mf.require(ComponentKind::Vae).weights.files().front()->path(), vae);
    EXPECT_TRUE(mf.warnings().empty()) << mf.warnings().front();
  }
  {  // an override replaces the same kind inside a combined file, with a warning
    const std::string combined = combined_file("mf_override");
    ModelPaths p;
    p.models = {combined};
    p.clip_l = clip_l;
    const ModelFiles mf = ModelFiles::open(p);
    EXPECT_EQ(mf.require(ComponentKind::ClipL).weights.files().front()->path(), clip_l);
    EXPECT_EQ(mf.require(ComponentKind::ClipG).weights.files().front()->path(), combined);
    std::string warnings;
    for (const auto& w : mf.warnings()) warnings += w + "\n";
    EXPECT_NE(warnings.find("--clip-l"), std::string::npos) << warnings;
  }
  {  // the same file named twice is opened once and is no conflict
    ModelPaths p;
    p.models = {mmdit, vae, mmdit};
    p.vae = vae;
    const ModelFiles mf = ModelFiles::open(p);
    EXPECT_EQ(mf.files().size(), 2u);
    EXPECT_TRUE(mf.warnings().empty()) << mf.warnings().front();
  }
}

TEST(ModelFiles, ConflictsAndMissingComponentsAreClearErrors) {
  const std::string mmdit = tiny_file("cf_mmdit", "mmdit");
  const std::string large = tiny_file("cf_large", "mmdit_large");
  const std::string clip_l = tiny_file("cf_clip_l", "clip_l");
  const std::string clip_l2 = tiny_file("cf_clip_l2", "clip_l", StDType::BF16);
  const std::string clip_g = tiny_file("cf_clip_g", "clip_g");

  std::string e = error_of([&] { ModelFiles::open(positional({mmdit, large})); });
  EXPECT_NE(e.find("two diffusion models"), std::string::npos) << e;
  EXPECT_NE(e.find(mmdit), std::string::npos) << e;
  EXPECT_NE(e.find(large), std::string::npos) << e;

  e = error_of([&] { ModelFiles::open(positional({mmdit, clip_l, clip_l2})); });
  EXPECT_NE(e.find("two CLIP-L"), std::string::npos) << e;
  EXPECT_NE(e.find("--clip-l"), std::string::npos) << e;
  {  // ... which --clip-l resolves
    ModelPaths p;
    p.models = {mmdit, clip_l, clip_l2};
    p.clip_l = clip_l2;
    EXPECT_EQ(ModelFiles::open(p).require(ComponentKind::ClipL).dtypes,
              std::vector<std::string>{"BF16"});
  }

  const ModelFiles only_mmdit = ModelFiles::open(positional({mmdit}));
  e = error_of([&] { only_mmdit.require(ComponentKind::Vae); });
  EXPECT_NE(e.find("no VAE"), std::string::npos) << e;
  EXPECT_NE(e.find("--vae"), std::string::npos) << e;
  EXPECT_NE(e.find(mmdit), std::string::npos) << e;
  e = error_of([&] { only_mmdit.require(ComponentKind::T5); });
  EXPECT_NE(e.find("T5-XXL"), std::string::npos) << e;
  EXPECT_NE(e.find("--t5xxl"), std::string::npos) << e;
  EXPECT_EQ(only_mmdit.find(ComponentKind::ClipG), nullptr);
  e = error_of([&] { ModelFiles::open(positional({clip_l})).require(ComponentKind::MMDiT); });
  EXPECT_NE(e.find("-m/--model"), std::string::npos) << e;

  {  // an override file without the component it was given for
    ModelPaths p;
    p.models = {mmdit};
    p.clip_g = clip_l;
    e = error_of([&] { ModelFiles::open(p); });
    EXPECT_NE(e.find("--clip-g"), std::string::npos) << e;
    EXPECT_NE(e.find("holds no CLIP-G"), std::string::npos) << e;
    EXPECT_NE(e.find("clip_l"), std::string::npos) << e;  // says what it found instead
  }
  {  // a valid safetensors file holding nothing known
    const std::string other = sparse("cf_other", {{"foo.weight", StDType::F32, {3, 3}}});
    e = error_of([&] { ModelFiles::open(positional({mmdit, other})); });
    EXPECT_NE(e.find("holds no SD3 component"), std::string::npos) << e;
    EXPECT_NE(e.find(other), std::string::npos) << e;
  }
  {  // not a safetensors file at all
    e = error_of([&] {
      ModelFiles::open(positional({mmdit, test::temp_dir() + "/missing.safetensors"}));
    });
    EXPECT_NE(e.find("missing.safetensors"), std::string::npos) << e;
  }
  {  // marker present but the rest is not an MMDiT
    const std::string half =
        sparse("cf_half", {{"x_embedder.proj.weight", StDType::F16, {128, 16, 2, 2}}});
    e = error_of([&] { ModelFiles::open(positional({half})); });
    EXPECT_NE(e.find("cannot be read"), std::string::npos) << e;
    EXPECT_NE(e.find(half), std::string::npos) << e;
  }
}

// t5xxl_fp8_e4m3fn.safetensors: fp8 weights load upcast to f16; scale tensors are extras.
TEST(ModelFiles, Fp8T5IsAcceptedWithAWarning) {
  Entries e = entries_of(t5_weight_specs(tiny_t5()), "", StDType::F8_E4M3);
  for (auto& x : e)
    if (x.shape.size() == 1) x.dtype = StDType::F16;  // norms stay 16-bit, as in the release
  e.push_back({"encoder.block.0.layer.0.SelfAttention.q.scale_weight", StDType::F32, {1}});
  const std::string path = sparse("t5_fp8", e);
  ModelPaths p;
  p.t5xxl = path;
  const ModelFiles mf = ModelFiles::open(p);
  const Component& t5 = mf.require(ComponentKind::T5);
  EXPECT_EQ(t5.dtypes, (std::vector<std::string>{"F16", "F32", "F8_E4M3"}));
  std::string warnings;
  for (const auto& w : mf.warnings()) warnings += w + "\n";
  EXPECT_NE(warnings.find("F8_E4M3"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("scale_weight"), std::string::npos) << warnings;
  const Tensor q = t5.weights.get("encoder.block.0.layer.0.SelfAttention.q.weight");
  EXPECT_EQ(q.dtype(), DType::F16);
}

// ---- random weights ----------------------------------------------------------------------

TEST(RandomWeights, SinCosTableMatchesTheFormula) {
  const int64_t dim = 8, grid = 3;
  const std::vector<float> t = sincos_pos_embed_2d(dim, grid);
  ASSERT_EQ(t.size(), static_cast<size_t>(grid * grid * dim));
  // Patch (row 1, column 2): the first half encodes the column, the second the row;
  // frequencies 1 and 1/100 (10000^(-k/2)), sines then cosines.
  const float* row = &t[(1 * grid + 2) * dim];
  const double col = 2, r = 1;
  const double want[8] = {std::sin(col), std::sin(col / 100), std::cos(col), std::cos(col / 100),
                          std::sin(r),   std::sin(r / 100),   std::cos(r),   std::cos(r / 100)};
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(row[i], static_cast<float>(want[i])) << i;
}

TEST(RandomWeights, DeterministicAndIndependentOfChunking) {
  const Shape shape = {300, 50};
  std::vector<float> whole(15000), part(9000);
  random_values(7, "mmdit", "a.weight", shape, 0, 15000, whole.data());
  random_values(7, "mmdit", "a.weight", shape, 5000, 9000, part.data());
  for (int i = 0; i < 9000; ++i) ASSERT_EQ(part[i], whole[5000 + i]) << i;
  std::vector<float> other(15000);
  random_values(8, "mmdit", "a.weight", shape, 0, 15000, other.data());
  EXPECT_NE(other, whole);
  // N(0, 1/fan_in): fan_in 50.
  double sum = 0, sq = 0;
  for (float v : whole) {
    sum += v;
    sq += double(v) * v;
  }
  const double mean = sum / whole.size(), var = sq / whole.size() - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(var * 50, 1.0, 0.05);
  // T5's shared.weight holds the same matrix as encoder.embed_tokens.weight.
  std::vector<float> a(64), b(64);
  random_values(1, "t5xxl", "shared.weight", {8, 8}, 0, 64, a.data());
  random_values(1, "t5xxl", "encoder.embed_tokens.weight", {8, 8}, 0, 64, b.data());
  EXPECT_EQ(a, b);
}

TEST(RandomWeights, InitKinds) {
  EXPECT_EQ(init_kind("pos_embed", {1, 64, 128}), InitKind::PosEmbed);
  EXPECT_EQ(init_kind("joint_blocks.0.x_block.attn.qkv.bias", {384}), InitKind::Bias);
  EXPECT_EQ(init_kind("joint_blocks.0.x_block.attn.ln_q.weight", {64}), InitKind::NormGain);
  EXPECT_EQ(init_kind("text_model.embeddings.token_embedding.weight", {10, 4}),
            InitKind::Embedding);
  EXPECT_EQ(
      init_kind("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 4}),
      InitKind::Embedding);
  EXPECT_EQ(init_kind("decoder.conv_in.weight", {32, 16, 3, 3}), InitKind::FanIn);
}

}  // namespace
}  // namespace sd3::models
