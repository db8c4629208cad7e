// The whole sampling loop against the reference (manifest cases of kind "sampler"): the tiny
// MM-DiT named by the case's `checkpoints`, guided sampling from the golden noise and
// conditioning, latent un-scaling and the tiny VAE decoder, checking the schedule, every
// step's latent and predictions, the final latent, the decoded image and its uint8 pixels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "common/golden.h"
#include "engine/ops.h"
#include "models/image.h"
#include "models/mmdit.h"
#include "models/sampler.h"
#include "models/vae.h"

namespace sd3::models {
namespace {

using test::GoldenCase;

std::string checkpoint_for(const GoldenCase& c, const std::string& role) {
  const auto& cps = c.raw.at("checkpoints");
  SD3_CHECK(cps.contains(role), "case '", c.name, "' names no '", role, "' checkpoint");
  return cps.at(role).get<std::string>();
}

// [steps] tensors of one shape -> [steps, ...shape] (the golden's stacking).
Tensor stack(const std::vector<Tensor>& ts) {
  std::vector<Tensor> rows;
  for (const Tensor& t : ts) rows.push_back(t.unsqueeze(0));
  return ops::concat(rows, 0);
}

void expect_matches(const Tensor& got, const GoldenCase& c, const std::string& name) {
  ::testing::AssertionResult r = test::matches_golden(got, c, name);
  EXPECT_TRUE(r);
  if (r) std::cout << "  " << r.message() << "\n";
}

// Everything a case's sampling run needs, built from the manifest.
struct SamplerRun {
  MMDiT mmdit;
  std::vector<float> sigmas;
  Tensor x0;
  GuidanceInputs cond;
  SamplerOptions opt;

  DiffusionModel model() const {
    return [this](const Tensor& x, const Tensor& t, const Tensor& context, const Tensor& y,
                  const std::vector<int>& skip) {
      MMDiTForwardOptions fo;
      fo.skip_layers.assign(skip.begin(), skip.end());
      return mmdit.forward(x, t, y, context, fo);
    };
  }
};

SamplerRun prepare(const GoldenCase& c) {
  SamplerRun run{MMDiT::load(test::checkpoint_store(checkpoint_for(c, "mmdit"))), {}, {}, {}, {}};
  const auto& p = c.params;
  const int steps = p.at("steps").get<int>();
  run.sigmas = FlowSchedule{p.at("shift").get<float>()}.sigmas(steps);
  const double denoise = p.value("denoise", 1.0);
  if (denoise < 1.0) run.sigmas = truncate_sigmas(run.sigmas, steps, denoise);
  // txt2img (sigma_0 = 1) ignores the starting latent; an img2img case would list it.
  Tensor latent;
  if (std::find(c.inputs.begin(), c.inputs.end(), "latent") != c.inputs.end())
    latent = test::golden_input(c, "latent");
  run.x0 = noise_scaling(run.sigmas[0], test::golden_input(c, "noise"), latent);
  run.cond.context_cond = test::golden_input(c, "context_cond");
  run.cond.context_uncond = test::golden_input(c, "context_uncond");
  run.cond.y_cond = test::golden_input(c, "y_cond");
  run.cond.y_uncond = test::golden_input(c, "y_uncond");
  run.opt.sampler = parse_sampler(p.at("sampler").get<std::string>());
  run.opt.cfg_scale = p.at("cfg_scale").get<float>();
  run.opt.total_steps = steps;
  // The reference always runs the unconditional half, so keep it even at cfg 1.
  run.opt.skip_uncond_at_cfg_one = false;
  if (p.value("skip_layer_cfg", false)) {
    run.opt.slg = defaults_for("sd35_medium_mmditx").slg;
  }
  return run;
}

// uint8 pixels [H, W, 3] as I32-comparable values, from the decoder output of batch 1.
std::vector<int64_t> pixels_of(const Tensor& decoded) {
  std::vector<Image> images = decoded_to_images(decoded);
  std::vector<int64_t> out;
  for (uint8_t v : images.at(0).pixels) out.push_back(v);
  return out;
}

TEST(SamplerGolden, MatchesReference) {
  for (const GoldenCase& c : test::cases_of_kind("sampler")) {
    SCOPED_TRACE(c.name);
    SamplerRun run = prepare(c);
    EXPECT_EQ(run.sigmas, test::golden_output(c, "sigmas").to_floats());
    expect_matches(run.x0, c, "noise_scaled");

    SamplerTrace trace;
    DiffusionModel model = run.model();
    Tensor final_latent = sample(model, run.x0, run.sigmas, run.cond, run.opt, {}, &trace);
    expect_matches(stack(trace.x), c, "x");
    expect_matches(stack(trace.denoised), c, "denoised");
    expect_matches(stack(trace.denoised_cond), c, "denoised_cond");
    expect_matches(stack(trace.denoised_uncond), c, "denoised_uncond");
    expect_matches(final_latent, c, "final_latent");

    Tensor vae_latent = sd3_latent_process_out(final_latent);
    expect_matches(vae_latent, c, "latent_process_out");
    VaeLoadOptions vo;
    vo.encoder = false;
    Vae vae = Vae::load(test::checkpoint_store(checkpoint_for(c, "vae")), Device::cpu(), vo);
    Tensor decoded = vae.decode(vae_latent);
    expect_matches(decoded, c, "decoded");

    // uint8(255 * clamp((x+1)/2, 0, 1)) truncates, so values next to an integer may land one
    // apart (the manifest counts such values for float32 vs float64 itself).
    std::vector<int64_t> got = pixels_of(decoded);
    std::vector<int64_t> want = test::golden_output(c, "image_u8").to_ints();
    ASSERT_EQ(got.size(), want.size());
    int64_t worst = 0, differing = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const int64_t d = std::llabs(got[i] - want[i]);
      worst = std::max(worst, d);
      differing += d != 0;
    }
    EXPECT_LE(worst, 1) << c.name << "/image_u8";
    std::cout << "  " << c.name << "/image_u8: max |diff| " << worst << ", " << differing << " of "
              << got.size() << " values differ (reference f32 vs f64: "
              << c.raw.value("image_u8_values_differing_f32_vs_f64", -1) << ")\n";
  }
}

// The production path (no trace: Euler takes the fused ops::cfg_euler_step) reaches the same
// final latent within the golden's tolerance.
TEST(SamplerGolden, UntracedPathMatchesReference) {
  for (const GoldenCase& c : test::cases_of_kind("sampler")) {
    SCOPED_TRACE(c.name);
    SamplerRun run = prepare(c);
    DiffusionModel model = run.model();
    expect_matches(sample(model, run.x0, run.sigmas, run.cond, run.opt), c, "final_latent");
  }
}

}  // namespace
}  // namespace sd3::models
