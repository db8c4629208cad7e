// The SD3 VAE against the reference goldens (every listed intermediate of every vae_decode and
// vae_encode case of $SD3_FIXTURES/manifest.json), the key/shape list against the real schema
// (../shared/schemas or $SD3_SCHEMAS), and configuration / layout detection from weights.
#include "models/vae.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "common/golden.h"
#include "common/schema.h"
#include "common/test_data.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/image.h"

namespace sd3::models {
namespace {

using test::GoldenCase;

// ---- goldens --------------------------------------------------------------------------------

TEST(VaeGolden, Decode) {
  for (const GoldenCase& c : test::cases_of_kind("vae_decode")) {
    SCOPED_TRACE(c.name);
    const Vae vae = Vae::load(test::checkpoint_store(c.checkpoint));
    VaeTrace trace;
    const Tensor latent = test::golden_input(c, "latent");
    const Tensor decoded = vae.decode(latent, &trace);
    ASSERT_FALSE(c.outputs.empty());
    for (const std::string& name : c.outputs) {
      ASSERT_TRUE(trace.tensors.count(name)) << "decode does not produce '" << name << "'";
      EXPECT_TRUE(test::matches_golden(trace.at(name), c, name));
    }
    // The untraced (fused GroupNorm+SiLU) path gives the same image.
    const Tensor plain = vae.decode(latent);
    EXPECT_TRUE(test::all_close(plain, decoded, test::tolerance(c, "decoded"), "untraced decode"));
  }
}

TEST(VaeGolden, DecodeWithDecoderOnly) {
  for (const GoldenCase& c : test::cases_of_kind("vae_decode")) {
    SCOPED_TRACE(c.name);
    VaeLoadOptions opt;
    opt.encoder = false;
    const Vae vae = Vae::load(test::checkpoint_store(c.checkpoint), Device::cpu(), opt);
    EXPECT_FALSE(vae.has_encoder());
    EXPECT_TRUE(test::matches_golden(vae.decode(test::golden_input(c, "latent")), c, "decoded"));
    EXPECT_THROW(vae.encode_moments(Tensor::zeros({1, 3, 8, 8}, DType::F32)), Error);
  }
}

TEST(VaeGolden, Encode) {
  for (const GoldenCase& c : test::cases_of_kind("vae_encode")) {
    SCOPED_TRACE(c.name);
    const Vae vae = Vae::load(test::checkpoint_store(c.checkpoint));
    VaeTrace trace;
    const Tensor sample =
        vae.encode(test::golden_input(c, "image"), test::golden_input(c, "noise"), &trace);
    // SD3LatentFormat.process_in, which the pipeline applies after encoding.
    trace.record("mean_process_in", sd3_latent_process_in(trace.at("mean")));
    trace.record("sample_process_in", sd3_latent_process_in(sample));
    ASSERT_FALSE(c.outputs.empty());
    for (const std::string& name : c.outputs) {
      ASSERT_TRUE(trace.tensors.count(name)) << "encode does not produce '" << name << "'";
      EXPECT_TRUE(test::matches_golden(trace.at(name), c, name));
    }
  }
}

TEST(VaeGolden, LatentFormatRoundTrip) {
  const Tensor z = Tensor::from_floats({-2.0f, 0.0f, 0.0609f, 1.5f}, {1, 4, 1, 1});
  const std::vector<float> back = sd3_latent_process_out(sd3_latent_process_in(z)).to_floats();
  const std::vector<float> want = z.to_floats();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(back[i], want[i], 1e-6f);
  EXPECT_FLOAT_EQ(sd3_latent_process_in(z).to_floats()[2], 0.0f);
}

TEST(VaeConfigTest, FromTinyCheckpointMatchesManifest) {
  for (const char* kind : {"vae_decode", "vae_encode"}) {
    for (const GoldenCase& c : test::cases_of_kind(kind)) {
      SCOPED_TRACE(c.name);
      const nlohmann::json& want = test::checkpoint_entry(c.checkpoint).at("config");
      const VaeConfig cfg = vae_config_from_weights(test::checkpoint_store(c.checkpoint));
      EXPECT_EQ(cfg.ch, want.at("ch").get<int64_t>());
      EXPECT_EQ(cfg.ch_mult, want.at("ch_mult").get<std::vector<int64_t>>());
      EXPECT_EQ(cfg.num_res_blocks, want.at("num_res_blocks").get<int64_t>());
      EXPECT_EQ(cfg.z_channels, want.at("z_channels").get<int64_t>());
      EXPECT_EQ(cfg.in_channels, want.value("in_channels", int64_t{3}));
      EXPECT_EQ(cfg.out_channels, want.value("out_ch", int64_t{3}));
      EXPECT_TRUE(Vae::load(test::checkpoint_store(c.checkpoint)).unexpected_keys().empty());
    }
  }
}

TEST(VaeInputs, BadShapesGiveClearErrors) {
  const GoldenCase c = test::cases_of_kind("vae_encode").front();
  const Vae vae = Vae::load(test::checkpoint_store(c.checkpoint));
  const int64_t f = vae.config().downscale();
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message([&] {
              vae.encode_moments(Tensor::zeros({1, 4, 2 * f, 2 * f}, DType::F32));
            }).find("[B, 3, H, W]"),
            std::string::npos);
  if (f > 1) {
    EXPECT_NE(message([&] {
                vae.encode_moments(Tensor::zeros({1, 3, f + 1, f}, DType::F32));
              }).find("multiples of"),
              std::string::npos);
  }
  const Tensor image = Tensor::zeros({1, 3, f, f}, DType::F32);
  EXPECT_NE(message([&] {
              vae.encode(image, Tensor::zeros({1, 3, 1, 1}, DType::F32));
            }).find("noise must be"),
            std::string::npos);
  EXPECT_NE(message([&] {
              vae.decode(Tensor::zeros({1, 4, 2, 2}, DType::F32));
            }).find("latent"),
            std::string::npos);
}

// ---- the VAE inside the sampler / end-to-end cases -------------------------------------------

// Cases that end in a VAE decode and a uint8 image (their VAE is checkpoints.vae).
std::vector<GoldenCase> decoding_cases() {
  std::vector<GoldenCase> out;
  for (const char* kind : {"sampler", "e2e"})
    for (GoldenCase& c : test::cases_of_kind(kind)) out.push_back(std::move(c));
  return out;
}

WeightStore vae_store_of(const GoldenCase& c) {
  return test::checkpoint_store(c.raw.at("checkpoints").at("vae").get<std::string>());
}

TEST(VaePipeline, DecodesSampledLatents) {
  for (const GoldenCase& c : decoding_cases()) {
    SCOPED_TRACE(c.name);
    EXPECT_TRUE(test::matches_golden(sd3_latent_process_out(test::golden_output(c, "final_latent")),
                                     c, "latent_process_out"));
    VaeLoadOptions opt;
    opt.encoder = false;
    const Vae vae = Vae::load(vae_store_of(c), Device::cpu(), opt);
    const Tensor decoded = vae.decode(test::golden_output(c, "latent_process_out"));
    EXPECT_TRUE(test::matches_golden(decoded, c, "decoded"));

    // Our image may differ from the reference's by 1 only where 255 * image01 of the golden
    // lies within our decoded tolerance (scaled by 255/2) of an integer.
    const std::vector<uint8_t> ours = decoded_to_images(decoded).at(0).pixels;
    const std::vector<int64_t> want = test::golden_output(c, "image_u8").to_ints();  // [H, W, 3]
    const std::vector<float> ref = test::golden_output(c, "decoded").to_floats();    // [1, 3, H, W]
    ASSERT_EQ(ours.size(), want.size());
    const int64_t hw = static_cast<int64_t>(want.size() / 3);
    const double slack = 255.0 / 2.0 * test::tolerance(c, "decoded");
    int differing = 0;
    for (int64_t i = 0; i < hw; ++i) {
      for (int64_t ch = 0; ch < 3; ++ch) {
        const int64_t got = ours[static_cast<size_t>(i * 3 + ch)];
        const int64_t expect = want[static_cast<size_t>(i * 3 + ch)];
        if (got == expect) continue;
        ++differing;
        const double v =
            255.0 * std::clamp((ref[static_cast<size_t>(ch * hw + i)] + 1.0) / 2.0, 0.0, 1.0);
        const double to_integer = std::fabs(v - std::round(v));
        EXPECT_TRUE(std::abs(got - expect) == 1 && to_integer <= slack)
            << "pixel " << i << " channel " << ch << ": " << got << " vs " << expect
            << " (reference 255*image01 = " << v << ")";
      }
    }
    RecordProperty(c.name + "_image_u8_values_differing", differing);
  }
}

TEST(VaePipeline, ImageConversionIsTheReferences) {
  // The reference turns its float32 decoded image into uint8 with the formula decoded_to_images
  // implements; fed the golden decoded tensor, it must give image_u8 exactly.
  for (const GoldenCase& c : decoding_cases()) {
    SCOPED_TRACE(c.name);
    const Image img = decoded_to_images(test::golden_output(c, "decoded")).at(0);
    const Tensor want = test::golden_output(c, "image_u8");  // [H, W, 3]
    ASSERT_EQ(want.dim(), 3);
    EXPECT_EQ(img.height, want.size(0));
    EXPECT_EQ(img.width, want.size(1));
    const std::vector<int64_t> w = want.to_ints();
    EXPECT_EQ(std::vector<int64_t>(img.pixels.begin(), img.pixels.end()), w);
    // And the reference's PNG of it (written by PIL) reads back as the same pixels.
    if (c.raw.contains("image_file")) {
      const PngImage png = read_png(test::fixture_path(c.raw["image_file"].get<std::string>()));
      EXPECT_EQ(png.image.pixels, img.pixels);
    }
  }
}

// ---- schema ---------------------------------------------------------------------------------

using test::write_sparse;

void expect_config_eq(const VaeConfig& got, const VaeConfig& want) {
  EXPECT_EQ(got.ch, want.ch);
  EXPECT_EQ(got.ch_mult, want.ch_mult);
  EXPECT_EQ(got.num_res_blocks, want.num_res_blocks);
  EXPECT_EQ(got.z_channels, want.z_channels);
  EXPECT_EQ(got.in_channels, want.in_channels);
  EXPECT_EQ(got.out_channels, want.out_channels);
  EXPECT_EQ(got.groups, want.groups);
  EXPECT_EQ(got.eps, want.eps);
}

TEST(VaeSchema, WeightSpecsEqualRealSchema) {
  const nlohmann::json schema = test::read_schema("sd3_vae");
  const std::string prefix = schema.at("canonical_prefix").get<std::string>();
  const std::vector<WeightSpec> want = test::schema_specs(schema);
  const std::vector<WeightSpec> got = vae_weight_specs(VaeConfig::sd3());
  std::map<std::string, Shape> want_map, got_map;
  for (const WeightSpec& s : want) want_map[s.key] = s.shape;
  for (const WeightSpec& s : got) EXPECT_TRUE(got_map.emplace(s.key, s.shape).second) << s.key;
  for (const auto& [key, shape] : want_map) {
    auto it = got_map.find(key);
    if (it == got_map.end()) {
      ADD_FAILURE() << "schema key " << prefix << key << " is not in vae_weight_specs";
    } else {
      EXPECT_EQ(it->second, shape) << key;
    }
  }
  for (const auto& [key, shape] : got_map)
    EXPECT_TRUE(want_map.count(key)) << "spec " << prefix << key << " is not in the schema";
  // Same order as the reference's state_dict, too.
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].key, want[i].key) << "at " << i;
  EXPECT_EQ(static_cast<int64_t>(got.size()), schema.at("tensor_count").get<int64_t>());
  const auto& cfg = schema.at("config");
  EXPECT_EQ(VaeConfig::sd3().ch, cfg.at("ch").get<int64_t>());
  EXPECT_EQ(VaeConfig::sd3().ch_mult, cfg.at("ch_mult").get<std::vector<int64_t>>());
}

TEST(VaeSchema, ConfigFromSchemaShapedWeights) {
  const nlohmann::json schema = test::read_schema("sd3_vae");
  const std::vector<WeightSpec> specs = test::schema_specs(schema);
  const std::string dir = test::temp_dir();
  // Every prefix variant: inside a single-file release and as a separate bare-key file.
  for (const auto& variant : schema.at("prefix_variants")) {
    const std::string prefix = variant.at("prefix").get<std::string>();
    SCOPED_TRACE("prefix '" + prefix + "'");
    const std::string path =
        write_sparse(dir + "/vae" + std::to_string(prefix.size()) + ".safetensors", prefix, specs);
    const WeightStore w = WeightStore::open({path}).with_prefix(prefix);
    expect_config_eq(vae_config_from_weights(w), VaeConfig::sd3());
    EXPECT_TRUE(w.unexpected(vae_weight_specs(VaeConfig::sd3())).empty());
  }
  // Decoder alone gives the same configuration.
  std::vector<WeightSpec> dec = vae_decoder_weight_specs(VaeConfig::sd3());
  const std::string path = write_sparse(dir + "/dec.safetensors", "", dec);
  expect_config_eq(vae_config_from_weights(WeightStore::open({path})), VaeConfig::sd3());
}

TEST(VaeSchema, OtherLayoutsAreRefused) {
  const std::string dir = test::temp_dir();
  auto message_for = [&](const std::string& name, const std::vector<WeightSpec>& specs) {
    const std::string path = write_sparse(dir + "/" + name, "", specs);
    try {
      vae_config_from_weights(WeightStore::open({path}));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::string diffusers = message_for(
      "diffusers.safetensors", {{"encoder.conv_in.weight", {128, 3, 3, 3}},
                                {"encoder.down_blocks.0.resnets.0.norm1.weight", {128}}});
  EXPECT_NE(diffusers.find("diffusers layout"), std::string::npos) << diffusers;
  EXPECT_NE(diffusers.find("not supported"), std::string::npos) << diffusers;
  std::vector<WeightSpec> sdxl = vae_weight_specs(VaeConfig::sd3());
  sdxl.push_back({"quant_conv.weight", {8, 8, 1, 1}});
  const std::string quant = message_for("sdxl.safetensors", sdxl);
  EXPECT_NE(quant.find("quant_conv"), std::string::npos) << quant;
  const std::string none = message_for("other.safetensors", {{"model.weight", {4, 4}}});
  EXPECT_NE(none.find("no SD3 VAE"), std::string::npos) << none;
}

TEST(VaeSchema, ReducedConfigRoundTrips) {
  // Configs sd3-randckpt may write: the specs of any config read back as that config.
  VaeConfig cfg;
  cfg.ch = 64;
  cfg.ch_mult = {1, 2, 2};
  cfg.num_res_blocks = 1;
  cfg.z_channels = 8;
  const std::string path = write_sparse(test::temp_dir() + "/reduced.safetensors",
                                        "first_stage_model.", vae_weight_specs(cfg));
  expect_config_eq(
      vae_config_from_weights(WeightStore::open({path}).with_prefix("first_stage_model.")), cfg);
}

}  // namespace
}  // namespace sd3::models
