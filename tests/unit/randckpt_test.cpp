// sd3-randckpt writes files that sd3-inspect recognises as the requested architecture and
// size, byte-identical per seed, in the requested dtype.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/test_data.h"
#include "engine/safetensors.h"
#include "models/random_weights.h"

namespace sd3 {
namespace {

// Runs sd3-randckpt with `args` writing `path`; fails the test on a non-zero exit. One thread
// by default: tiny files gain nothing from more, and a busy CI machine makes them cost.
void randckpt(const std::string& args, const std::string& path, int threads = 1) {
  const test::CommandResult r =
      test::run_command("OMP_NUM_THREADS=" + std::to_string(threads) + " " + test::bin_dir() +
                        "/sd3-randckpt " + args + " -o '" + path + "' 2>&1");
  ASSERT_EQ(r.status, 0) << "sd3-randckpt " << args << " (is it built?): " << r.out;
}

// sd3-inspect --json on one file: its JSON object.
nlohmann::json inspect_json(const std::string& path) {
  const test::CommandResult r =
      test::run_command(test::bin_dir() + "/sd3-inspect --json '" + path + "' 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "sd3-inspect --json printed no JSON: " << r.out;
    return nlohmann::json::object();
  }
}

struct ArchCase {
  std::string args;
  std::string arch;
  std::string prefix;
  nlohmann::json config;  // fields that must match
};

TEST(Randckpt, EveryArchAtReducedSizeIsRecognised) {
  const ArchCase cases[] = {
      {"sd3_medium --depth 2 --pos-embed-max-size 8",
       "sd3_medium_mmdit",
       "model.diffusion_model.",
       {{"depth", 2},
        {"hidden_size", 128},
        {"num_heads", 2},
        {"pos_embed_max_size", 8},
        {"qk_norm", nullptr},
        {"x_block_self_attn_layers", nlohmann::json::array()}}},
      {"sd35_large --depth 3 --pos-embed-max-size 6 --adm 40 --context-dim 48",
       "sd35_large_mmdit",
       "model.diffusion_model.",
       {{"depth", 3},
        {"hidden_size", 192},
        {"qk_norm", "rms"},
        {"adm_in_channels", 40},
        {"context_in_features", 48}}},
      {"sd35_medium --hidden 128 --pos-embed-max-size 8",
       "sd35_medium_mmditx",
       "model.diffusion_model.",
       {{"depth", 2}, {"qk_norm", "rms"}, {"x_block_self_attn_layers", {0, 1}}}},
      {"sd35_medium --depth 3 --x-attn-layers 1 --pos-embed-max-size 8",
       "sd35_medium_mmditx",
       "model.diffusion_model.",
       {{"depth", 3}, {"x_block_self_attn_layers", {1}}}},
      {"vae --ch 32 --ch-mult 1,2,2 --res-blocks 1",
       "sd3_vae",
       "first_stage_model.",
       {{"ch", 32}, {"ch_mult", {1, 2, 2}}, {"num_res_blocks", 1}, {"z_channels", 16}}},
      {"vae --bare --ch 32 --ch-mult 1,1", "sd3_vae", "", {{"ch", 32}, {"num_res_blocks", 2}}},
      {"clip_l --layers 2 --width 24 --heads 2 --vocab 1000",
       "clip_l",
       "",
       {{"num_hidden_layers", 2},
        {"hidden_size", 24},
        {"num_attention_heads", 2},
        {"vocab_size", 1000},
        {"hidden_act", "quick_gelu"},
        {"text_projection", false}}},
      {"clip_g --layers 3 --width 64 --ff 100 --vocab 1000",
       "clip_g",
       "",
       {{"num_hidden_layers", 3},
        {"hidden_size", 64},
        {"num_attention_heads", 1},
        {"intermediate_size", 100},
        {"hidden_act", "gelu"},
        {"text_projection", true}}},
      {"t5xxl --layers 2 --width 64 --heads 4 --vocab 1000 --prefix te.",
       "t5xxl",
       "te.",
       {{"num_layers", 2}, {"d_model", 64}, {"num_heads", 4}, {"d_kv", 16}, {"d_ff", 160}}},
  };
  const std::string dir = test::temp_dir();
  int i = 0;
  for (const ArchCase& c : cases) {
    const std::string path = dir + "/arch" + std::to_string(i++) + ".safetensors";
    randckpt(c.args, path);
    const nlohmann::json j = inspect_json(path);
    ASSERT_EQ(j["components"].size(), 1u) << c.args << ": " << j.dump();
    const nlohmann::json& comp = j["components"][0];
    EXPECT_EQ(comp["arch"], c.arch) << c.args;
    EXPECT_EQ(comp["prefix"], c.prefix) << c.args;
    EXPECT_EQ(comp["dtypes"], nlohmann::json({"F16"})) << c.args;
    EXPECT_TRUE(comp["problems"].empty()) << c.args << ": " << comp["problems"].dump();
    EXPECT_TRUE(comp["extras"].empty()) << c.args << ": " << comp["extras"].dump();
    EXPECT_TRUE(j["unassigned"].empty()) << c.args;
    for (auto it = c.config.begin(); it != c.config.end(); ++it)
      EXPECT_EQ(comp["config"][it.key()], it.value()) << c.args << ": " << it.key();
    EXPECT_EQ(j["metadata"]["arch"], c.arch) << c.args;
    EXPECT_EQ(j["metadata"]["seed"], "0") << c.args;
  }
}

TEST(Randckpt, CombinedFileHasEveryComponentUnderTheRealPrefixes) {
  const std::string path = test::temp_dir() + "/combined.safetensors";
  randckpt(
      "sd3_medium_incl_clips_t5xxl --mmdit-depth 2 --pos-embed-max-size 8 --ch 32 "
      "--ch-mult 1,2 --layers 2 --clip-l-width 64 --clip-g-width 128 --clip-g-heads 2 "
      "--t5-width 256 --vocab 500 --dtype bf16",
      path);
  const nlohmann::json j = inspect_json(path);
  ASSERT_EQ(j["components"].size(), 5u) << j.dump();
  std::map<std::string, nlohmann::json> by_arch;
  for (const auto& c : j["components"]) by_arch[c["arch"]] = c;
  EXPECT_EQ(by_arch["sd3_medium_mmdit"]["prefix"], "model.diffusion_model.");
  EXPECT_EQ(by_arch["sd3_vae"]["prefix"], "first_stage_model.");
  EXPECT_EQ(by_arch["clip_l"]["prefix"], "text_encoders.clip_l.transformer.");
  EXPECT_EQ(by_arch["clip_g"]["prefix"], "text_encoders.clip_g.transformer.");
  EXPECT_EQ(by_arch["t5xxl"]["prefix"], "text_encoders.t5xxl.transformer.");
  // The MMDiT's inputs follow the encoders: pooled = CLIP-L + CLIP-G widths, context = T5's.
  EXPECT_EQ(by_arch["sd3_medium_mmdit"]["config"]["adm_in_channels"], 64 + 128);
  EXPECT_EQ(by_arch["sd3_medium_mmdit"]["config"]["context_in_features"], 256);
  EXPECT_EQ(by_arch["clip_l"]["config"]["num_attention_heads"], 1);
  EXPECT_EQ(by_arch["clip_g"]["config"]["num_attention_heads"], 2);
  EXPECT_EQ(by_arch["t5xxl"]["config"]["num_layers"], 2);
  for (const auto& c : j["components"]) {
    EXPECT_EQ(c["dtypes"], nlohmann::json({"BF16"})) << c["arch"];
    EXPECT_TRUE(c["problems"].empty()) << c["arch"];
  }
}

TEST(Randckpt, DeterministicPerSeedAndDtypeHonoured) {
  const std::string dir = test::temp_dir();
  const std::string args = "clip_l --layers 2 --width 16 --heads 2 --vocab 300";
  randckpt(args + " --seed 5", dir + "/a.safetensors");
  randckpt(args + " --seed 5", dir + "/b.safetensors", 2);  // thread count does not matter
  randckpt(args + " --seed 6", dir + "/c.safetensors");
  const std::string a = test::read_file(dir + "/a.safetensors");
  EXPECT_FALSE(a.empty());
  EXPECT_EQ(a, test::read_file(dir + "/b.safetensors"));
  EXPECT_NE(a, test::read_file(dir + "/c.safetensors"));
  for (const char* dt : {"f32", "f16", "bf16"}) {
    const std::string path = dir + "/dt_" + dt + ".safetensors";
    randckpt(args + " --dtype " + dt, path);
    auto f = SafetensorsFile::open(path);
    const char* want = std::string(dt) == "f32" ? "F32" : std::string(dt) == "f16" ? "F16" : "BF16";
    for (const auto& t : f->tensors()) ASSERT_STREQ(st_dtype_name(t.dtype), want) << t.key;
  }
  // The same weights in every dtype, up to the dtype's rounding.
  auto f32 = SafetensorsFile::open(dir + "/dt_f32.safetensors");
  auto f16 = SafetensorsFile::open(dir + "/dt_f16.safetensors");
  const auto x = f32->load("text_model.encoder.layers.0.mlp.fc1.weight").to_floats();
  const auto y = f16->load("text_model.encoder.layers.0.mlp.fc1.weight").to_floats();
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-3 * std::abs(x[i]) + 1e-7);
}

TEST(Randckpt, ValuesFollowTheInitialisation) {
  const std::string path = test::temp_dir() + "/values.safetensors";
  randckpt("sd35_large --depth 2 --pos-embed-max-size 6 --dtype f32 --seed 3", path);
  auto f = SafetensorsFile::open(path);
  // pos_embed is the real sin-cos table.
  const auto pos = f->load("model.diffusion_model.pos_embed").to_floats();
  EXPECT_EQ(pos, models::sincos_pos_embed_2d(128, 6));
  // Norm gains ~ 1, biases ~ 0, weights ~ N(0, 1/fan_in).
  auto stats = [&](const std::string& key) {
    const auto v = f->load("model.diffusion_model." + key).to_floats();
    double s = 0, q = 0;
    for (float x : v) {
      s += x;
      q += double(x) * x;
    }
    const double mean = s / v.size();
    return std::make_pair(mean, std::sqrt(q / v.size() - mean * mean));
  };
  auto [gain_mean, gain_std] = stats("joint_blocks.0.x_block.attn.ln_q.weight");
  EXPECT_NEAR(gain_mean, 1.0, 0.05);
  EXPECT_NEAR(gain_std, 0.1, 0.05);
  auto [w_mean, w_std] = stats("joint_blocks.0.x_block.mlp.fc1.weight");  // [512, 128]
  EXPECT_NEAR(w_mean, 0.0, 0.01);
  EXPECT_NEAR(w_std, 1.0 / std::sqrt(128.0), 0.005);
  auto [b_mean, b_std] = stats("joint_blocks.0.x_block.mlp.fc1.bias");
  EXPECT_NEAR(b_std, 0.05, 0.01);
}

TEST(Randckpt, BadArgumentsGiveOneLineAndNoFile) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/bad.safetensors";
  const char* bad[] = {
      "nonsense_arch",
      "clip_l --depth 2",                  // no CLIP setting called depth
      "sd3_medium --depth 2 --hidden 64",  // disagree
      "sd3_medium --depth 0",
      "vae --ch 20",         // not divisible by 32 groups
      "clip_l --width 100",  // heads cannot be 64 wide
      "clip_l --dtype f64",
      "sd3_medium_incl_clips --bare",
      "t5xxl --layers x",
  };
  for (const char* args : bad) {
    const test::CommandResult r = test::run_command(test::bin_dir() + "/sd3-randckpt " + args +
                                                    " -o '" + out + "' 2>&1 >/dev/null");
    EXPECT_EQ(r.status, 1) << args << ": " << r.out;
    EXPECT_EQ(r.out.rfind("sd3-randckpt: error: ", 0), 0u) << args << ": " << r.out;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << args << ": " << r.out;
    EXPECT_FALSE(std::filesystem::exists(out)) << args;
  }
  for (const auto& e : std::filesystem::directory_iterator(dir))
    ADD_FAILURE() << "left behind: " << e.path();
}

}  // namespace
}  // namespace sd3
