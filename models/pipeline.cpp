#include "models/pipeline.h"

#include <sys/resource.h>

#include <cctype>
#include <chrono>
#include <cmath>

#include "engine/ops.h"
#include "models/clip.h"
#include "models/conditioning.h"
#include "models/mmdit.h"
#include "models/noise.h"
#include "models/t5.h"
#include "models/vae.h"
#include "tokenizers/sd3_tokenizer.h"

namespace sd3::models {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Measures one stage and reports its start and end to the progress callback. Device work is
// queued asynchronously, so the device is synchronised before a stage's time is taken and
// before a step is reported done.
class StageTimer {
 public:
  StageTimer(const char* name, const ProgressFn& progress, std::vector<StageTiming>& timings,
             Device device)
      : name_(name), progress_(progress), timings_(timings), device_(device), t0_(Clock::now()) {
    report(0, 0);
  }
  ~StageTimer() {
    // A destructor must not throw: a failed synchronisation leaves the device's sticky error
    // for the next device call to report.
    try {
      device_synchronize(device_);
    } catch (...) {
    }
    timings_.push_back({name_, seconds_since(t0_)});
  }
  void report(int step, int total) {
    if (step > 0) device_synchronize(device_);
    if (progress_ && !progress_(Progress{name_, step, total, seconds_since(t0_)}))
      throw GenerationCancelled();
  }

 private:
  std::string name_;
  const ProgressFn& progress_;
  std::vector<StageTiming>& timings_;
  Device device_;
  Clock::time_point t0_;
};

}  // namespace

void check_image_size(int64_t value, const char* what) {
  SD3_CHECK(value > 0 && value % 16 == 0, what, " ", value,
            " is not a positive multiple of 16 (the VAE downsamples 8x and the MM-DiT patches 2x2)");
  SD3_CHECK(value <= 16384, what, " ", value, " is larger than 16384");
}

struct Pipeline::State {
  PipelineOptions options;
  ModelFiles files;
  SamplerDefaults defaults;
  std::string arch;
  std::vector<std::string> warnings;
  std::unique_ptr<tok::Sd3Tokenizer> tokenizer;

  // Loaded lazily and kept between generations unless freed.
  std::unique_ptr<ClipTextModel> clip_l, clip_g;
  std::unique_ptr<T5Encoder> t5;
  std::unique_ptr<MMDiT> mmdit;
  std::unique_ptr<Vae> vae;
  bool vae_has_encoder = false;
};

Pipeline::Pipeline(std::unique_ptr<State> state) : s_(std::move(state)) {}
Pipeline::~Pipeline() = default;

const ModelFiles& Pipeline::files() const { return s_->files; }
const SamplerDefaults& Pipeline::defaults() const { return s_->defaults; }
const std::string& Pipeline::mmdit_arch() const { return s_->arch; }
const std::vector<std::string>& Pipeline::warnings() const { return s_->warnings; }

std::unique_ptr<Pipeline> Pipeline::open(const PipelineOptions& options) {
  auto s = std::make_unique<State>();
  s->options = options;
  s->files = ModelFiles::open(options.paths);
  s->warnings = s->files.warnings();
  const Component& mmdit = s->files.require(ComponentKind::MMDiT);
  s->files.require(ComponentKind::Vae);
  s->files.require(ComponentKind::ClipL);
  s->files.require(ComponentKind::ClipG);
  if (options.use_t5 && !s->files.find(ComponentKind::T5)) {
    s->options.use_t5 = false;
    s->warnings.push_back(
        "no T5-XXL found (give it with --t5xxl); running without T5 (zeros in its place), which "
        "lowers prompt adherence");
  }
  for (ComponentKind k : {ComponentKind::MMDiT, ComponentKind::Vae, ComponentKind::ClipL,
                          ComponentKind::ClipG, ComponentKind::T5}) {
    const Component* c = s->files.find(k);
    if (c && !c->problems.empty())
      fail("cannot use ", c->describe(), ": ", c->problems.front(),
           c->problems.size() > 1 ? str_cat(" (and ", c->problems.size() - 1, " more)") : "");
  }
  s->arch = mmdit.arch;
  // SD3.5-large-turbo has exactly the keys of SD3.5-large: without a preset, its file name
  // (sd3.5_large_turbo.safetensors) is the only thing that tells them apart.
  std::string preset = options.preset;
  if (preset.empty() && s->arch == kArchSd35LargeMMDiT) {
    for (const auto& f : mmdit.weights.files()) {
      std::string name = f->path().substr(f->path().find_last_of('/') + 1);
      for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (name.find("turbo") != std::string::npos) preset = "sd35_large_turbo";
    }
  }
  s->defaults = defaults_for(s->arch, preset);

  // Tokenizer files: the flags, else beside the MM-DiT's file (a Hugging Face layout).
  const std::string anchor = mmdit.weights.files().empty()
                                 ? std::string()
                                 : mmdit.weights.files().front()->path();
  // Without T5 the T5 tokenizer is not needed (nor loaded).
  const bool use_t5 = s->options.use_t5;
  tok::TokenizerFiles tf =
      tok::find_tokenizer_files(anchor, options.clip_vocab, options.t5_model, use_t5);
  s->tokenizer = std::make_unique<tok::Sd3Tokenizer>(
      tok::Sd3Tokenizer::load(tf.clip_vocab, use_t5 ? tf.t5_model : std::string()));
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(s)));
}

namespace {

// Peak resident memory of the process in bytes (Linux reports kilobytes).
size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;
}

}  // namespace

GenerateResult Pipeline::generate(const GenerateParams& params, const ProgressFn& progress) {
  State& s = *s_;
  const Device dev = s.options.device;
  GenerateResult result;
  ResolvedParams& rp = result.params;
  if (dev.is_cuda()) reset_peak_memory(DeviceType::CUDA);  // this generation's peak

  // ---- resolve parameters ----------------------------------------------------------------
  rp.prompt = params.prompt;
  rp.negative_prompt = params.negative_prompt;
  rp.width = params.width ? params.width : 1024;
  rp.height = params.height ? params.height : 1024;
  check_image_size(rp.width, "width");
  check_image_size(rp.height, "height");
  rp.steps = params.steps.value_or(s.defaults.steps);
  SD3_CHECK(rp.steps >= 1 && rp.steps <= 10000, "steps ", rp.steps, " is not in 1..10000");
  rp.cfg_scale = params.cfg_scale.value_or(s.defaults.cfg_scale);
  SD3_CHECK(std::isfinite(rp.cfg_scale), "cfg scale is not a finite number");
  rp.shift = params.shift.value_or(s.defaults.shift);
  SD3_CHECK(std::isfinite(rp.shift) && rp.shift > 0, "shift ", rp.shift, " must be positive");
  rp.sampler = params.sampler.value_or(s.defaults.sampler);
  rp.seed = params.seed;
  // Skip-layer guidance is off unless asked for, as in the reference (--skip_layer_cfg);
  // asking with a scale alone takes the preset's layers and window.
  rp.slg = s.defaults.slg;
  rp.slg.scale = params.slg_scale.value_or(0.0f);
  if (params.skip_layers) rp.slg.layers = *params.skip_layers;
  if (params.slg_start) rp.slg.start = *params.slg_start;
  if (params.slg_end) rp.slg.end = *params.slg_end;
  rp.img2img = params.init_image.has_value();
  rp.strength = rp.img2img ? params.strength : 1.0;
  if (rp.img2img) {
    SD3_CHECK(params.strength > 0.0 && params.strength <= 1.0, "strength ", params.strength,
              " is not in (0, 1]");
    SD3_CHECK(params.init_image->width == rp.width && params.init_image->height == rp.height,
              "init image is ", params.init_image->width, "x", params.init_image->height,
              " but the output size is ", rp.width, "x", rp.height,
              " (give -W/-H equal to the image size)");
  }
  rp.mmdit_arch = s.arch;
  rp.preset = s.defaults.preset;
  const MMDiTConfig& mcfg = s.files.require(ComponentKind::MMDiT).mmdit();
  // The latent is the image downscaled by the VAE (8x for the released VAE, 2^(levels-1)).
  const int64_t f = s.files.require(ComponentKind::Vae).vae().downscale();
  SD3_CHECK(rp.width % (f * mcfg.patch_size) == 0 && rp.height % (f * mcfg.patch_size) == 0,
            "size ", rp.width, "x", rp.height, " is not a multiple of ", f * mcfg.patch_size,
            " (the VAE's ", f, "x downscale times the MM-DiT's patch size ", mcfg.patch_size, ")");
  const int64_t h = rp.height / f, w = rp.width / f;
  const int64_t max_latent = mcfg.pos_embed_max_size * mcfg.patch_size;
  SD3_CHECK(h <= max_latent && w <= max_latent, "size ", rp.width, "x", rp.height,
            " needs a ", w / mcfg.patch_size, "x", h / mcfg.patch_size,
            " patch grid but this model's position table covers ", mcfg.pos_embed_max_size, "x",
            mcfg.pos_embed_max_size, " (at most ", max_latent * f, " pixels a side)");
  if (rp.slg.enabled()) {
    for (int layer : rp.slg.layers)
      SD3_CHECK(layer >= 0 && layer < mcfg.depth, "skip layer ", layer,
                " is not a joint block of this model (0..", mcfg.depth - 1, ")");
  }

  // ---- text conditioning -----------------------------------------------------------------
  Sd3Conditioning cond, uncond;
  {
    StageTimer t("load_text", progress, result.timings, dev);
    if (!s.clip_l)
      s.clip_l = std::make_unique<ClipTextModel>(
          ClipTextModel::load(s.files.require(ComponentKind::ClipL).weights, dev));
    if (!s.clip_g)
      s.clip_g = std::make_unique<ClipTextModel>(
          ClipTextModel::load(s.files.require(ComponentKind::ClipG).weights, dev));
    if (s.options.use_t5 && !s.t5)
      s.t5 = std::make_unique<T5Encoder>(
          T5Encoder::load(s.files.require(ComponentKind::T5).weights, dev));
  }
  {
    StageTimer t("encode", progress, result.timings, dev);
    Sd3TextEncoders enc{s.clip_l.get(), s.clip_g.get(), s.t5.get()};
    Sd3ConditioningOptions copt;
    copt.context_width = mcfg.context_in_features;
    auto encode = [&](const std::string& text) {
      tok::Sd3Tokens tk = s.tokenizer->tokenize(text);
      Sd3PromptTokens pt;
      pt.clip_l = tk.clip_l;
      pt.clip_g = tk.clip_g;
      if (s.options.use_t5) pt.t5 = tk.t5;
      return sd3_conditioning(pt, enc, copt);
    };
    cond = encode(rp.prompt);
    uncond = encode(rp.negative_prompt);
  }
  if (s.options.free_encoders) {
    s.clip_l.reset();
    s.clip_g.reset();
    s.t5.reset();
  }

  // ---- initial latent --------------------------------------------------------------------
  TorchGenerator gen(rp.seed);
  FlowSchedule schedule{rp.shift};
  std::vector<float> sigmas = schedule.sigmas(rp.steps);
  // The sampling noise is torch.manual_seed(seed); torch.randn(...) as in the reference.
  Tensor noise = gen.randn({1, mcfg.in_channels, h, w}).to(dev);
  Tensor latent;  // img2img start latent (process_in'ed), undefined for txt2img
  if (rp.img2img) {
    StageTimer t("encode_image", progress, result.timings, dev);
    if (!s.vae || !s.vae_has_encoder) {
      s.vae = std::make_unique<Vae>(Vae::load(s.files.require(ComponentKind::Vae).weights, dev));
      s.vae_has_encoder = true;
    }
    Tensor image = images_to_tensor({*params.init_image}, dev);
    const int64_t z = s.vae->config().z_channels;
    // The reference draws the VAE's reparameterisation noise from torch's global generator in
    // whatever state it is in (not reproducible); here it continues the seeded stream after
    // the sampling noise, so a seed fixes the whole img2img result.
    Tensor vae_noise = gen.randn({1, z, h, w}).to(dev);
    latent = sd3_latent_process_in(s.vae->encode(image, vae_noise));
    sigmas = truncate_sigmas(sigmas, rp.steps, rp.strength);
    SD3_CHECK(sigmas.size() >= 2, "strength ", rp.strength, " leaves no sampling step of ",
              rp.steps, " (raise --strength or --steps)");
  }
  Tensor x0 = noise_scaling(sigmas[0], noise, latent);

  // ---- sampling --------------------------------------------------------------------------
  {
    StageTimer t("load_mmdit", progress, result.timings, dev);
    if (!s.mmdit)
      s.mmdit = std::make_unique<MMDiT>(
          MMDiT::load(s.files.require(ComponentKind::MMDiT).weights, dev));
  }
  Tensor final_latent;
  {
    StageTimer t("sample", progress, result.timings, dev);
    const MMDiT& model = *s.mmdit;
    // On the GPU the MM-DiT computes in its weights' dtype (f16/bf16 on tensor cores), as the
    // reference's apply_model casts x, context and y to the model's dtype; the sampler casts
    // the velocity back to f32. The CPU keeps f32 activations and casts weights per use.
    const DType act = dev.is_cuda() ? s.files.require(ComponentKind::MMDiT)
                                          .weights.get("joint_blocks.0.x_block.attn.qkv.weight")
                                          .dtype()
                                    : DType::F32;
    DiffusionModel fn = [&model, act](const Tensor& x, const Tensor& ts, const Tensor& ctx,
                                      const Tensor& y, const std::vector<int>& skip) {
      MMDiTForwardOptions fo;
      fo.skip_layers.assign(skip.begin(), skip.end());
      return model.forward(ops::cast(x, act), ts, ops::cast(y, act), ops::cast(ctx, act), fo);
    };
    GuidanceInputs gi;
    gi.context_cond = cond.context.to(dev);
    gi.y_cond = cond.pooled.to(dev);
    gi.context_uncond = uncond.context.to(dev);
    gi.y_uncond = uncond.pooled.to(dev);
    SamplerOptions so;
    so.sampler = rp.sampler;
    so.cfg_scale = rp.cfg_scale;
    so.slg = rp.slg;
    so.total_steps = rp.steps;
    const int total = static_cast<int>(sigmas.size()) - 1;
    // Called after each step: step + 1 of total are done.
    StepCallback on_step = [&](int step, int, float) {
      t.report(step + 1, total);
      return true;
    };
    final_latent = sample(fn, x0, sigmas, gi, so, on_step);
  }

  // ---- decode ----------------------------------------------------------------------------
  {
    StageTimer t("load_vae", progress, result.timings, dev);
    if (!s.vae) {
      VaeLoadOptions vo;
      vo.encoder = false;
      s.vae = std::make_unique<Vae>(
          Vae::load(s.files.require(ComponentKind::Vae).weights, dev, vo));
      s.vae_has_encoder = false;
    }
  }
  {
    StageTimer t("decode", progress, result.timings, dev);
    Tensor decoded = s.vae->decode(sd3_latent_process_out(final_latent));
    result.image = decoded_to_images(decoded).at(0);
  }
  result.peak_host_bytes = peak_rss_bytes();
  if (dev.is_cuda()) result.peak_device_bytes = memory_stats(DeviceType::CUDA).peak;
  return result;
}

}  // namespace sd3::models
