#include "models/sampler.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "engine/ops.h"

namespace sd3::models {

// ---- schedule ----------------------------------------------------------------------------

// The reference evaluates sigma(t) on float32 tensors with Python-float scalars: each
// operation rounds to float32, `shift` and `shift - 1` are rounded to float32 from their
// double values, and shift == 1 returns t/1000 unchanged.
float FlowSchedule::sigma(float timestep) const {
  const float s = timestep / 1000.0f;
  if (shift == 1.0) return s;
  const float numerator = static_cast<float>(shift) * s;
  const float scaled = static_cast<float>(shift - 1.0) * s;
  const float denominator = 1.0f + scaled;
  return numerator / denominator;
}

// Note [linspace in float32]
// torch.linspace(start, end, n) on the CPU computes step = (end - start) / (n - 1) in float32
// and returns start + step*i for i < n/2 and end - step*(n - 1 - i) for the rest, so both
// ends are exact. This is PyTorch's scalar loop, reproduced here bit for bit (the schedule
// golden checks it). PyTorch may evaluate runs of 2 x SIMD-width elements (16 or 32 on
// AVX2/AVX-512 builds) with a vector `arange` whose lanes are base + k*step instead; for
// step counts that reach such a run the reference's timesteps can differ from these in the
// last float32 bit (a relative 6e-8 in one sigma), far below anything visible.
std::vector<float> linspace_f32(float start, float end, int n) {
  SD3_CHECK(n >= 0, "linspace: negative count ", n);
  std::vector<float> out(static_cast<size_t>(n));
  if (n == 0) return out;
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  for (int i = 0; i < n; ++i) {
    if (i < halfway) {
      const float offset = step * static_cast<float>(i);
      out[i] = start + offset;
    } else {
      const float offset = step * static_cast<float>(n - i - 1);
      out[i] = end - offset;
    }
  }
  return out;
}

std::vector<float> FlowSchedule::sigmas(int steps) const {
  SD3_CHECK(steps >= 1, "sampling steps must be at least 1 (got ", steps, ")");
  SD3_CHECK(std::isfinite(shift) && shift > 0.0f, "shift must be a positive number (got ", shift,
            ")");
  const std::vector<float> ts = linspace_f32(timestep(sigma_max()), timestep(sigma_min()), steps);
  std::vector<float> out;
  out.reserve(ts.size() + 1);
  for (float t : ts) out.push_back(sigma(t));
  out.push_back(0.0f);
  return out;
}

std::vector<float> truncate_sigmas(const std::vector<float>& sigmas, int steps, double denoise) {
  SD3_CHECK(denoise > 0.0 && denoise <= 1.0, "denoising strength must be in (0, 1] (got ", denoise,
            ")");
  SD3_CHECK(steps >= 1 && static_cast<size_t>(steps) + 1 == sigmas.size(),
            "truncate_sigmas: ", sigmas.size(), " sigmas for ", steps, " steps");
  // Python: int(steps * (1 - denoise)), truncation toward zero of a double product.
  const size_t first = static_cast<size_t>(static_cast<double>(steps) * (1.0 - denoise));
  // denoise > 0 keeps at least the final step (sigmas[steps - 1], 0).
  const size_t start = std::min(first, static_cast<size_t>(steps - 1));
  return std::vector<float>(sigmas.begin() + static_cast<std::ptrdiff_t>(start), sigmas.end());
}

Tensor noise_scaling(float sigma, const Tensor& noise, const Tensor& latent) {
  Tensor n = ops::cast(noise, DType::F32);
  if (!latent.defined()) return ops::scale(n, sigma);
  SD3_CHECK(latent.shape() == noise.shape(), "noise_scaling: latent ", shape_str(latent.shape()),
            " and noise ", shape_str(noise.shape()), " differ in shape");
  return ops::axpby(n, sigma, ops::cast(latent, DType::F32), 1.0f - sigma);
}

// ---- samplers and guidance ---------------------------------------------------------------

SamplerKind parse_sampler(const std::string& name) {
  std::string n;
  for (char ch : name) n.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  if (n == "euler") return SamplerKind::Euler;
  if (n == "dpmpp_2m" || n == "dpm++2m" || n == "dpm++_2m" || n == "dpmpp2m")
    return SamplerKind::DpmPP2M;
  if (n == "heun") return SamplerKind::Heun;
  fail("unknown sampler '", name, "' (expected euler, dpmpp_2m or heun)");
}

const char* sampler_name(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::Euler: return "euler";
    case SamplerKind::DpmPP2M: return "dpmpp_2m";
    case SamplerKind::Heun: return "heun";
  }
  return "?";
}

SamplingCancelled::SamplingCancelled(int step, int total)
    : Error(str_cat("sampling cancelled after step ", step + 1, " of ", total)), step_(step) {}

namespace {

// Repeats a batch-1 conditioning tensor to `batch` rows (or checks it already has them) and
// moves it to `device`.
Tensor batch_rows(const Tensor& t, int64_t batch, Device device, const char* what) {
  SD3_CHECK(t.defined(), "sampler: ", what, " is missing");
  SD3_CHECK(t.dim() >= 2, "sampler: ", what, " ", shape_str(t.shape()), " has no batch dimension");
  Tensor out = ops::cast(t.to(device), DType::F32);
  if (out.size(0) == batch) return out;
  SD3_CHECK(out.size(0) == 1, "sampler: ", what, " has batch ", out.size(0),
            " but the latent has batch ", batch);
  return ops::concat(std::vector<Tensor>(static_cast<size_t>(batch), out), 0);
}

// One guided evaluation's results.
struct Prediction {
  Tensor denoised;          // guided
  Tensor denoised_cond;     // x - v_cond * sigma
  Tensor denoised_uncond;   // x - v_uncond * sigma; undefined when skipped
  Tensor v_cond, v_uncond;  // raw velocities (for the fused Euler step)
  bool slg_applied = false;
};

// The reference's CFGDenoiser / SkipLayerCFGDenoiser around BaseModel.apply_model.
class GuidedDenoiser {
 public:
  GuidedDenoiser(const DiffusionModel& model, const GuidanceInputs& in, const SamplerOptions& opt,
                 const Tensor& x0, int total_steps)
      : model_(model), opt_(opt), total_steps_(total_steps) {
    SD3_CHECK(model_, "sampler: no diffusion model given");
    SD3_CHECK(std::isfinite(opt.cfg_scale), "cfg scale must be finite (got ", opt.cfg_scale, ")");
    batch_ = x0.size(0);
    const Device dev = x0.device();
    ctx_cond_ = batch_rows(in.context_cond, batch_, dev, "positive context");
    y_cond_ = batch_rows(in.y_cond, batch_, dev, "positive pooled vector");
    use_uncond_ = !(opt.skip_uncond_at_cfg_one && opt.cfg_scale == 1.0f);
    if (!use_uncond_) return;
    ctx_uncond_ = batch_rows(in.context_uncond, batch_, dev, "negative context");
    y_uncond_ = batch_rows(in.y_uncond, batch_, dev, "negative pooled vector");
    SD3_CHECK(y_uncond_.shape() == y_cond_.shape(),
              "sampler: pooled vectors differ in shape: ", shape_str(y_cond_.shape()),
              " (positive) vs ", shape_str(y_uncond_.shape()), " (negative)");
    // Contexts of different lengths (a long T5 prompt vs a short negative one) cannot share a
    // batch; they then take two forwards, which is the same computation.
    batched_ = ctx_cond_.shape() == ctx_uncond_.shape();
    if (batched_) {
      ctx_pair_ = ops::concat({ctx_cond_, ctx_uncond_}, 0);  // [2B, L, D]
      y_pair_ = ops::concat({y_cond_, y_uncond_}, 0);        // [2B, 2048]
    }
  }

  bool uses_uncond() const { return use_uncond_; }

  // velocities_only: the caller folds the guided velocity into a fused update itself
  // (Stepper::euler), so with CFG and no skip-layer guidance the denoised tensors, which it
  // would not read, are not computed (7 latent-sized ops per step).
  Prediction operator()(const Tensor& x, float sigma, bool velocities_only = false) {
    Prediction p;
    const float t = FlowSchedule::timestep(sigma);
    const std::vector<int> no_skip;
    if (!use_uncond_) {
      p.v_cond = run(x, t, ctx_cond_, y_cond_, no_skip);
    } else if (batched_) {
      Tensor x_pair = ops::concat({x, x}, 0);                  // [2B, C, h, w]
      Tensor v = run(x_pair, t, ctx_pair_, y_pair_, no_skip);  // [2B, C, h, w]
      p.v_cond = v.slice(0, 0, batch_);
      p.v_uncond = v.slice(0, batch_, 2 * batch_);
    } else {
      p.v_cond = run(x, t, ctx_cond_, y_cond_, no_skip);
      p.v_uncond = run(x, t, ctx_uncond_, y_uncond_, no_skip);
    }
    if (velocities_only && use_uncond_ && !slg_window()) {
      ++calls_;
      return p;
    }
    p.denoised_cond = denoise(x, p.v_cond, sigma);
    if (use_uncond_) {
      p.denoised_uncond = denoise(x, p.v_uncond, sigma);
      // uncond + (cond - uncond) * cfg, in the reference's operation order
      p.denoised =
          ops::add(p.denoised_uncond,
                   ops::scale(ops::sub(p.denoised_cond, p.denoised_uncond), opt_.cfg_scale));
    } else {
      p.denoised = p.denoised_cond;
    }
    if (slg_window()) {
      std::vector<int> layers = opt_.slg.layers;
      Tensor v_skip = run(x, t, ctx_cond_, y_cond_, layers);
      Tensor denoised_skip = denoise(x, v_skip, sigma);
      p.denoised = ops::add(p.denoised,
                            ops::scale(ops::sub(p.denoised_cond, denoised_skip), opt_.slg.scale));
      p.slg_applied = true;
    }
    ++calls_;
    return p;
  }

 private:
  Tensor run(const Tensor& x, float t, const Tensor& ctx, const Tensor& y,
             const std::vector<int>& skip) const {
    Tensor timestep = Tensor::full({x.size(0)}, t, DType::F32, x.device());  // [B]
    Tensor v = model_(x, timestep, ctx, y, skip);
    SD3_CHECK(v.defined() && v.shape() == x.shape(), "sampler: the model returned ",
              v.defined() ? shape_str(v.shape()) : std::string("nothing"), " for a latent of ",
              shape_str(x.shape()));
    return ops::cast(v, DType::F32);  // the reference's .float() of the model output
  }

  // BaseModel.apply_model's x - v * sigma.
  static Tensor denoise(const Tensor& x, const Tensor& v, float sigma) {
    return ops::sub(x, ops::scale(v, sigma));
  }

  // SkipLayerCFGDenoiser: step > start*steps and step < end*steps (Python doubles), with the
  // step counting model calls from 0.
  bool slg_window() const {
    if (!opt_.slg.enabled()) return false;
    const double k = calls_;
    return k > opt_.slg.start * total_steps_ && k < opt_.slg.end * total_steps_;
  }

  const DiffusionModel& model_;
  const SamplerOptions& opt_;
  int total_steps_;
  int calls_ = 0;
  int64_t batch_ = 1;
  bool use_uncond_ = true;
  bool batched_ = true;
  Tensor ctx_cond_, y_cond_, ctx_uncond_, y_uncond_, ctx_pair_, y_pair_;
};

void record(SamplerTrace* trace, const Tensor& x, const Prediction& p) {
  if (!trace) return;
  trace->x.push_back(x);
  trace->denoised.push_back(p.denoised);
  trace->denoised_cond.push_back(p.denoised_cond);
  if (p.denoised_uncond.defined()) trace->denoised_uncond.push_back(p.denoised_uncond);
}

// d = (x - denoised) / sigma: the ODE's derivative dx/dsigma (k-diffusion's to_d).
Tensor derivative(const Tensor& x, const Tensor& denoised, float sigma) {
  return ops::scale(ops::sub(x, denoised), 1.0f / sigma);
}

// x + d * dt
Tensor step_along(const Tensor& x, const Tensor& d, float dt) {
  return ops::axpby(x, 1.0f, d, dt);
}

// The step loop shared by all samplers: guided evaluation, trace, update, progress.
class Stepper {
 public:
  Stepper(const DiffusionModel& model, const GuidanceInputs& cond, const SamplerOptions& opt,
          const Tensor& x0, const std::vector<float>& sigmas, const StepCallback& on_step,
          SamplerTrace* trace)
      : sigmas_(sigmas),
        opt_(opt),
        on_step_(on_step),
        trace_(trace),
        steps_(static_cast<int>(sigmas.size()) - 1),
        denoiser_(model, cond, opt, x0,
                  opt.total_steps > 0 ? opt.total_steps : static_cast<int>(sigmas.size()) - 1) {}

  Tensor run(Tensor x) {
    for (int i = 0; i < steps_; ++i) {
      switch (opt_.sampler) {
        case SamplerKind::Euler: x = euler(x, i); break;
        case SamplerKind::DpmPP2M: x = dpmpp_2m(x, i); break;
        case SamplerKind::Heun: x = heun(x, i); break;
      }
      if (on_step_ && !on_step_(i, steps_, sigmas_[i]) && i + 1 < steps_)
        throw SamplingCancelled(i, steps_);
    }
    return x;
  }

 private:
  // sample_euler: x += (x - denoised)/sigma * (sigma_next - sigma). Without a trace the
  // guided velocity is folded into one fused pass (ops::cfg_euler_step): with
  // denoised = x - v*sigma the update is x + v*(sigma_next - sigma), the same value up to
  // rounding.
  Tensor euler(const Tensor& x, int i) {
    const float s = sigmas_[i], s_next = sigmas_[i + 1];
    Prediction p = denoiser_(x, s, /*velocities_only=*/!trace_);
    record(trace_, x, p);
    if (!trace_ && !p.slg_applied && p.v_uncond.defined())
      return ops::cfg_euler_step(x, p.v_cond, p.v_uncond, opt_.cfg_scale, s, s_next);
    const float dt = s_next - s;
    return step_along(x, derivative(x, p.denoised, s), dt);
  }

  // sample_dpmpp_2m with t = -log(sigma), h = t_next - t: first order on the first step and
  // on the step to sigma = 0, otherwise the second-order multistep correction
  // D = (1 + 1/(2r)) denoised - 1/(2r) old_denoised, r = h_last / h. The scalar coefficients
  // are float32 like the reference's 0-d tensors.
  Tensor dpmpp_2m(const Tensor& x, int i) {
    const float s = sigmas_[i], s_next = sigmas_[i + 1];
    Prediction p = denoiser_(x, s);
    record(trace_, x, p);
    Tensor out;
    if (s_next == 0.0f) {
      // exp(-inf)/sigma = 0 and expm1(-inf) = -1: x becomes denoised exactly.
      out = p.denoised;
    } else {
      const float t = -std::log(s);
      const float t_next = -std::log(s_next);
      const float h = t_next - t;
      const float ratio = std::exp(-t_next) / std::exp(-t);
      const float em1 = std::expm1(-h);
      Tensor d = p.denoised;
      if (old_denoised_.defined()) {
        const float h_last = t - (-std::log(sigmas_[i - 1]));
        const float r = h_last / h;
        const float a = 1.0f / (2.0f * r);
        d = ops::axpby(p.denoised, 1.0f + a, old_denoised_, -a);
      }
      out = ops::axpby(x, ratio, d, -em1);
    }
    old_denoised_ = p.denoised;
    return out;
  }

  // k-diffusion's sample_heun without churn: Euler predictor, then the trapezoidal corrector
  // with a second evaluation at sigma_next; the last step (to sigma = 0) is plain Euler.
  Tensor heun(const Tensor& x, int i) {
    const float s = sigmas_[i], s_next = sigmas_[i + 1];
    Prediction p = denoiser_(x, s);
    record(trace_, x, p);
    const float dt = s_next - s;
    Tensor d = derivative(x, p.denoised, s);
    Tensor x_euler = step_along(x, d, dt);
    if (s_next == 0.0f) return x_euler;
    Prediction p2 = denoiser_(x_euler, s_next);
    Tensor d2 = derivative(x_euler, p2.denoised, s_next);
    return ops::axpby(x, 1.0f, ops::add(d, d2), 0.5f * dt);  // x + (d + d2)/2 * dt
  }

  const std::vector<float>& sigmas_;
  const SamplerOptions& opt_;
  const StepCallback& on_step_;
  SamplerTrace* trace_;
  int steps_;
  GuidedDenoiser denoiser_;
  Tensor old_denoised_;
};

}  // namespace

Tensor sample(const DiffusionModel& model, const Tensor& x0, const std::vector<float>& sigmas,
              const GuidanceInputs& cond, const SamplerOptions& opt, const StepCallback& on_step,
              SamplerTrace* trace) {
  SD3_CHECK(sigmas.size() >= 2, "sampler: need at least two sigmas (got ", sigmas.size(), ")");
  for (size_t i = 0; i < sigmas.size(); ++i) {
    SD3_CHECK(std::isfinite(sigmas[i]) && sigmas[i] >= 0.0f, "sampler: sigma ", i, " is ",
              sigmas[i]);
    if (i + 1 < sigmas.size())
      SD3_CHECK(sigmas[i] > 0.0f && sigmas[i + 1] < sigmas[i],
                "sampler: sigmas must decrease and only the last may be 0 (sigma ", i, " = ",
                sigmas[i], ", sigma ", i + 1, " = ", sigmas[i + 1], ")");
  }
  SD3_CHECK(x0.defined() && x0.dim() == 4, "sampler: latent must be [B, C, h, w], got ",
            x0.defined() ? shape_str(x0.shape()) : std::string("nothing"));
  Tensor x = ops::cast(x0, DType::F32);
  Stepper stepper(model, cond, opt, x, sigmas, on_step, trace);
  return stepper.run(x);
}

// ---- defaults per model --------------------------------------------------------------------

namespace {

std::string normalise_preset(const std::string& name) {
  std::string n;
  for (char ch : name) {
    if (ch == '.') continue;
    n.push_back(ch == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  }
  if (n == "sd3") n = "sd3_medium";
  return n;
}

// The reference's CONFIGS (sd3_infer.py) and its fallbacks, constants.md section 2.
SamplerDefaults preset_defaults(const std::string& preset) {
  SamplerDefaults d;
  d.preset = preset;
  if (preset == "sd3_medium") {
    // The reference's CONFIGS["sd3_medium"] says shift 1.0, but the same file states that the
    // released models use 3.0 (its SHIFT constant), and ComfyUI and diffusers' SD3-medium
    // scheduler config both sample SD3-medium with 3.0. We follow the released models' 3.0;
    // `--shift 1` reproduces the reference's sd3_medium preset.
    d.steps = 50;
    d.cfg_scale = 5.0f;
    d.shift = 3.0f;
    d.sampler = SamplerKind::DpmPP2M;
  } else if (preset == "sd35_medium") {
    d.steps = 50;
    d.cfg_scale = 5.0f;
    d.shift = 3.0f;
    d.sampler = SamplerKind::DpmPP2M;
    // The reference's skip-layer configuration for SD3.5-medium, applied only when asked for
    // (its --skip_layer_cfg); kept here with scale so the runner can switch it on. The
    // configuration's "cfg: 4.0" is never used by the reference, so cfg stays 5.0.
    d.slg.scale = 2.5f;
    d.slg.start = 0.01;
    d.slg.end = 0.20;
    d.slg.layers = {7, 8, 9};
  } else if (preset == "sd35_large") {
    d.steps = 40;
    d.cfg_scale = 4.5f;
    d.shift = 3.0f;
    d.sampler = SamplerKind::DpmPP2M;
  } else if (preset == "sd35_large_turbo") {
    d.steps = 4;
    d.cfg_scale = 1.0f;
    d.shift = 3.0f;
    d.sampler = SamplerKind::Euler;
  } else {
    // main()'s fallbacks for a model not in CONFIGS.
    d.preset = "default";
    d.steps = 50;
    d.cfg_scale = 5.0f;
    d.shift = 3.0f;
    d.sampler = SamplerKind::DpmPP2M;
  }
  return d;
}

}  // namespace

std::vector<std::string> sampler_preset_names() {
  return {"sd3_medium", "sd35_medium", "sd35_large", "sd35_large_turbo"};
}

SamplerDefaults defaults_for(const std::string& arch, const std::string& preset) {
  if (!preset.empty()) {
    const std::string p = normalise_preset(preset);
    const auto names = sampler_preset_names();
    SD3_CHECK(std::find(names.begin(), names.end(), p) != names.end(), "unknown preset '", preset,
              "' (expected sd3_medium, sd35_medium, sd35_large or sd35_large_turbo)");
    return preset_defaults(p);
  }
  if (arch == "sd3_medium_mmdit") return preset_defaults("sd3_medium");
  if (arch == "sd35_large_mmdit") return preset_defaults("sd35_large");
  if (arch == "sd35_medium_mmditx") return preset_defaults("sd35_medium");
  return preset_defaults("");
}

}  // namespace sd3::models
