// SD3's discrete flow-matching sampling, as Stability's reference does it (sd3_impls.py,
// sd3_infer.py; ../shared/schemas/constants.md sections 1-3):
//
//   sigma(t)  = shift*s / (1 + (shift-1)*s), s = t/1000       (exactly s when shift == 1)
//   sigmas    = [sigma(ts_i) for ts = linspace(1000*sigma_max, 1000*sigma_min, steps)] + [0]
//   x_0       = sigma_0 * noise + (1 - sigma_0) * latent      (txt2img: sigma_0 = 1)
//   denoised  = x - v(x, 1000*sigma) * sigma                  (v: the MM-DiT's velocity)
//   guidance  = uncond + (cond - uncond) * cfg                (one batch-2 forward)
//
// then Euler, DPM++(2M) or Heun steps over the sigmas. The model is a callback, so this file
// knows nothing about the MM-DiT class; every tensor op goes through the op API, so the
// latent may live on any device.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/tensor.h"

namespace sd3::models {

// ---- schedule ----------------------------------------------------------------------------

// The reference's ModelSamplingDiscreteFlow: 1000 training timesteps, shifted.
struct FlowSchedule {
  double shift = 3.0;  // a Python float in the reference; rounded to float32 where it is used

  // sigma of a timestep t in [0, 1000], in float32 as the reference computes it.
  float sigma(float timestep) const;
  // The value fed to the MM-DiT for a sigma: 1000 * sigma (float32).
  static float timestep(float sigma) { return sigma * 1000.0f; }
  float sigma_min() const { return sigma(1.0f); }     // sigma of timestep 1
  float sigma_max() const { return sigma(1000.0f); }  // sigma of timestep 1000 (= 1)

  // steps + 1 sigmas, decreasing, the last 0 (the reference's get_sigmas, float32).
  std::vector<float> sigmas(int steps) const;
};

// torch.linspace(start, end, n) for float32 as PyTorch's CPU kernel evaluates it (the first
// half counted from start, the second half from end, in float32).
std::vector<float> linspace_f32(float start, float end, int n);

// img2img: the reference keeps sigmas[int(steps * (1 - denoise)):], so sampling starts at the
// sigma that matches the strength. denoise in (0, 1]; 1 keeps everything. Computed in double
// like Python, so the cut matches the reference exactly.
std::vector<float> truncate_sigmas(const std::vector<float>& sigmas, int steps, double denoise);

// x_0 = sigma * noise + (1 - sigma) * latent; an undefined latent counts as zeros.
Tensor noise_scaling(float sigma, const Tensor& noise, const Tensor& latent);

// ---- samplers and guidance ---------------------------------------------------------------

enum class SamplerKind { Euler, DpmPP2M, Heun };

// "euler", "dpmpp_2m", "heun" (the runner's --sampler spellings; "dpm++2m" also accepted).
SamplerKind parse_sampler(const std::string& name);
const char* sampler_name(SamplerKind kind);

// SD3.5-medium's skip-layer guidance (the reference's SkipLayerCFGDenoiser): on model calls
// k (0-based) with start*steps < k < end*steps, one more conditional forward skips `layers`,
// and (cond - cond_skipped) * scale is added to the guided prediction. Bounds are doubles so
// the comparison is Python's.
struct SkipLayerGuidance {
  float scale = 0.0f;  // 0 = off
  double start = 0.01;
  double end = 0.20;
  std::vector<int> layers;

  bool enabled() const { return scale > 0.0f && !layers.empty(); }
};

struct SamplerOptions {
  SamplerKind sampler = SamplerKind::Euler;
  float cfg_scale = 5.0f;
  SkipLayerGuidance slg;
  // The step count the schedule was made for (before any img2img truncation): skip-layer
  // guidance measures its window against it, as the reference does. 0 = sigmas.size() - 1.
  int total_steps = 0;
  // With cfg_scale == 1 the guided prediction equals the conditional one, so the
  // unconditional half of the batch is skipped (halves the work for SD3.5-large-turbo). The
  // reference still runs it; the results differ only by float rounding.
  bool skip_uncond_at_cfg_one = true;
};

// The denoiser network: x [B, 16, h, w], timestep [B] (= 1000 * sigma), context [B, L, D],
// y [B, 2048] (pooled), skip_layers (joint blocks not run) -> velocity v, shaped like x.
using DiffusionModel =
    std::function<Tensor(const Tensor& x, const Tensor& timestep, const Tensor& context,
                         const Tensor& y, const std::vector<int>& skip_layers)>;

// Called after each step has finished, with that step's index (0-based, so step + 1 steps are
// done), the number of steps and the sigma the step started from. Returning false cancels:
// no further model call is made and sample() throws SamplingCancelled (after the last step
// there is nothing left to cancel and the result is returned).
using StepCallback = std::function<bool(int step, int total, float sigma)>;

// Thrown when the step callback asks to stop.
class SamplingCancelled : public Error {
 public:
  SamplingCancelled(int step, int total);
  int step() const { return step_; }

 private:
  int step_;
};

// Positive and negative conditioning, each with batch 1 or the latent's batch.
struct GuidanceInputs {
  Tensor context_cond, y_cond;      // [B|1, L, D], [B|1, 2048]
  Tensor context_uncond, y_uncond;  // same shapes as the cond ones
};

// Per-step intermediates (tests, debugging): for each step i, the latent entering it and the
// guided denoised prediction at it, plus the two halves of the guidance batch (empty when the
// unconditional half was skipped). Heun records its first evaluation of each step.
struct SamplerTrace {
  std::vector<Tensor> x;
  std::vector<Tensor> denoised;
  std::vector<Tensor> denoised_cond;
  std::vector<Tensor> denoised_uncond;
};

// Runs the sampler from x0 (already noise_scaling'ed) over `sigmas` and returns the final
// latent (f32). With a trace, the Euler update goes through the unfused path so the
// intermediates exist; otherwise Euler uses ops::cfg_euler_step (equivalent up to rounding).
Tensor sample(const DiffusionModel& model, const Tensor& x0, const std::vector<float>& sigmas,
              const GuidanceInputs& cond, const SamplerOptions& opt,
              const StepCallback& on_step = {}, SamplerTrace* trace = nullptr);

// ---- defaults per model --------------------------------------------------------------------

struct SamplerDefaults {
  std::string preset;  // the preset these come from
  int steps = 50;
  float cfg_scale = 5.0f;
  float shift = 3.0f;
  SamplerKind sampler = SamplerKind::DpmPP2M;
  SkipLayerGuidance slg;  // the preset's skip-layer configuration (scale 0 where none)
};

// Presets: "sd3_medium", "sd35_medium", "sd35_large", "sd35_large_turbo" (dots and dashes
// accepted: "sd3.5_large-turbo"). `preset` wins when given (SD3.5-large-turbo has the keys of
// SD3.5-large, so only a preset can select it); otherwise the detected MMDiT architecture
// (the schema names "sd3_medium_mmdit", "sd35_large_mmdit", "sd35_medium_mmditx") picks one.
// An unknown architecture gets the reference's fallbacks (50 steps, cfg 5, dpmpp_2m, shift 3);
// an unknown preset name is an error.
SamplerDefaults defaults_for(const std::string& arch, const std::string& preset = "");
// The known preset names, for help texts.
std::vector<std::string> sampler_preset_names();

}  // namespace sd3::models
