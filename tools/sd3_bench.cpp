// sd3-bench: times the denoising loop (MM-DiT + CFG + Euler through models::sample) and the
// VAE decode at real shapes with random weights made in memory: no download, no file.
//
// What is timed, and how:
//  - setup: making the random weights (models::random_values, the values sd3-randckpt writes)
//    and putting them on the device, tensor by tensor;
//  - each sampling step, from the end of the previous one (the device synchronised at both
//    ends); the first step also pays one-time costs (cuBLASLt heuristics, cuDNN algorithm
//    search, the caching allocator's first requests) and is reported apart as the warm-up;
//  - the VAE decode of the final latent, synchronised; on CUDA it runs twice by default and
//    the second run is the number reported (the first is shown too).
// Peak device memory comes from the CUDA caching allocator's statistics (what the engine holds
// in live blocks, not what the driver reserved), peak host memory from getrusage.
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/op_profile.h"
#include "engine/ops.h"
#include "models/mmdit.h"
#include "models/noise.h"
#include "models/pipeline.h"
#include "models/random_weights.h"
#include "models/sampler.h"
#include "models/vae.h"
#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace {

using namespace sd3;
using namespace sd3::models;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: sd3-bench [options]

Benchmarks the SD3 denoising loop (MM-DiT with classifier-free guidance, Euler steps) and the
VAE decode with random weights at the real shapes, made in memory. Text conditioning is random
too: context [batch, context-tokens, 4096], pooled y [batch, 2048].

options:
  --arch NAME            sd3_medium (default), sd35_medium or sd35_large: the MM-DiT preset
  --depth N              run only the first N joint blocks at the preset's width (quick runs;
                         the per-block cost stays real). Default: the preset's depth
  -W, --width N          image width (default 1024; a multiple of 16)
  -H, --height N         image height (default 1024)
  --size N               width and height N
  --steps N              sampling steps (default 4, at least 2); the first is a warm-up
                         reported apart, the others give the median, min and max
  --backend cpu|cuda     default cpu
  --dtype f16|bf16|f32   weights (and on CUDA also activations). Default f16 on cuda (the
                         released SD3-medium's dtype), f32 on cpu (CPU activations are f32)
  --batch N              MM-DiT batch: 2 (default) = one image with CFG, 2k = k images with
                         CFG, 1 = one image without CFG (cfg scale 1)
  --context-tokens N     text tokens (default 154 = 77 CLIP + 77 T5)
  --no-vae               skip the VAE decode
  --vae-runs N           VAE decodes (default 2 on cuda, the first a warm-up; 1 on cpu)
  --unfused LIST         turn fusions off: adaln,attn,groupnorm,euler or all (as SD3_UNFUSED)
  --threads N            CPU threads (default all cores)
  --seed N               seed of the weights, noise and conditioning (default 0)
  --profile-ops          time every op of the last sampling step and of one extra VAE decode
                         (Note [Op profile]): a table per op, also in the JSON; both are left
                         out of the timings above, so --steps counts the profiled step (>= 3)
  --json                 print one JSON object on stdout (the table goes to stderr)
  -h, --help             this help
)";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "sd3-bench: %s (see sd3-bench --help)\n", msg.c_str());
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || !end || *end != '\0' || errno != 0 || x < min || x > max)
    usage_error(str_cat(flag, ": expected an integer in ", min, "..", max, ", got '", v, "'"));
  return x;
}

struct Args {
  std::string arch = "sd3_medium";
  int64_t depth = 0;  // 0 = the preset's
  int64_t width = 1024, height = 1024;
  int steps = 4;
  std::string backend = "cpu";
  std::string dtype;  // empty = by backend
  int64_t batch = 2;
  int64_t context_tokens = 154;
  bool vae = true;
  int vae_runs = 0;  // 0 = by backend
  std::string unfused;
  bool unfused_given = false;  // else SD3_UNFUSED (or all fused) stays
  int threads = 0;
  uint64_t seed = 0;
  bool json = false;
  bool profile_ops = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (f.rfind("--", 0) == 0 && f.find('=') != std::string::npos) {
      inline_value = f.substr(f.find('=') + 1);
      f = f.substr(0, f.find('='));
      has_inline = true;
    }
    auto value = [&]() -> std::string {
      if (has_inline) return inline_value;
      if (i + 1 >= argc) usage_error(f + ": missing value");
      return argv[++i];
    };
    if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (f == "--arch") {
      a.arch = value();
      if (a.arch != "sd3_medium" && a.arch != "sd35_medium" && a.arch != "sd35_large")
        usage_error("--arch: '" + a.arch + "' is not sd3_medium, sd35_medium or sd35_large");
    } else if (f == "--depth") {
      a.depth = parse_int(f, value(), 1, 1000);
    } else if (f == "-W" || f == "--width") {
      a.width = parse_int(f, value(), 16, 16384);
    } else if (f == "-H" || f == "--height") {
      a.height = parse_int(f, value(), 16, 16384);
    } else if (f == "--size") {
      a.width = a.height = parse_int(f, value(), 16, 16384);
    } else if (f == "--steps") {
      a.steps = static_cast<int>(parse_int(f, value(), 2, 10000));
    } else if (f == "--backend") {
      a.backend = value();
      if (a.backend != "cpu" && a.backend != "cuda")
        usage_error("--backend: '" + a.backend + "' is not cpu or cuda");
    } else if (f == "--dtype") {
      a.dtype = value();
      if (a.dtype != "f16" && a.dtype != "bf16" && a.dtype != "f32")
        usage_error("--dtype: '" + a.dtype + "' is not f16, bf16 or f32");
    } else if (f == "--batch") {
      a.batch = parse_int(f, value(), 1, 1024);
      if (a.batch > 1 && a.batch % 2 != 0)
        usage_error(str_cat("--batch ", a.batch, ": 1 (no CFG) or even (CFG pairs)"));
    } else if (f == "--context-tokens") {
      a.context_tokens = parse_int(f, value(), 1, 100000);
    } else if (f == "--no-vae") {
      a.vae = false;
    } else if (f == "--vae-runs") {
      a.vae_runs = static_cast<int>(parse_int(f, value(), 1, 100));
    } else if (f == "--unfused") {
      a.unfused = value();
      a.unfused_given = true;
    } else if (f == "--threads") {
      a.threads = static_cast<int>(parse_int(f, value(), 0, 4096));
    } else if (f == "--seed") {
      a.seed = static_cast<uint64_t>(parse_int(f, value(), 0, INT64_MAX));
    } else if (f == "--json") {
      a.json = true;
    } else if (f == "--profile-ops") {
      a.profile_ops = true;
    } else {
      usage_error("unknown option '" + f + "'");
    }
  }
  if (a.profile_ops && a.steps < 3)
    usage_error(str_cat("--profile-ops needs --steps >= 3 (a warm-up, a timed step and the "
                        "profiled one), got ", a.steps));
  if (a.dtype.empty()) a.dtype = a.backend == "cuda" ? "f16" : "f32";
  if (a.vae_runs == 0) a.vae_runs = a.backend == "cuda" ? 2 : 1;
  return a;
}

DType parse_dtype(const std::string& s) {
  return s == "f16" ? DType::F16 : s == "bf16" ? DType::BF16 : DType::F32;
}

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;  // Linux reports kilobytes
}

// Random weights for `specs`, made tensor by tensor with the generator sd3-randckpt writes
// (models::random_values) and put on `device` at once, so the host never holds more than one
// tensor in f32 beside the weights it keeps (none on CUDA).
std::map<std::string, Tensor> make_weights(const std::string& component,
                                           const std::vector<WeightSpec>& specs, DType dtype,
                                           uint64_t seed, Device device, size_t* bytes) {
  constexpr int64_t kBlock = 1 << 16;  // a multiple of random_values' 4096-element chunks
  std::map<std::string, Tensor> out;
  std::vector<float> values;
  for (const WeightSpec& s : specs) {
    const int64_t n = shape_numel(s.shape);
    values.resize(static_cast<size_t>(n));
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      random_values(seed, component, s.key, s.shape, begin, std::min(kBlock, n - begin),
                    values.data() + begin);
    }
    Tensor t = Tensor::from_floats(values, s.shape, dtype).to(device);
    *bytes += t.nbytes();
    out[s.key] = std::move(t);
  }
  return out;
}

// Matrix-product and attention FLOPs (2 per multiply-add) of one MM-DiT forward of batch B
// over T image tokens and Lc context tokens: per joint block each full stream of L tokens
// costs 24 L D^2 (qkv 6, proj 2, MLP 16), a pre_only context stream 6 Lc D^2, the joint
// attention 4 (Lc + T)^2 D, an MMDiT-X attn2 8 T D^2 + 4 T^2 D; plus the adaLN projections,
// the embedders and the final layer. Elementwise work and norms are not counted.
double mmdit_flops(const MMDiTConfig& c, int64_t B, int64_t T, int64_t Lc) {
  const double D = static_cast<double>(c.hidden_size), t = static_cast<double>(T),
               lc = static_cast<double>(Lc), n = t + lc;
  const double patch = static_cast<double>(c.in_channels * c.patch_size * c.patch_size);
  double f = 2 * t * patch * D + 2 * lc * c.context_in_features * D;  // x and context embedders
  f += 2 * (c.frequency_embedding_size * D + D * D);                  // t_embedder
  f += 2 * (c.adm_in_channels * D + D * D);                           // y_embedder
  for (int64_t i = 0; i < c.depth; ++i) {
    const bool pre_only = i == c.depth - 1;
    const bool attn2 = c.x_block_self_attn(i);
    f += 24 * t * D * D + (pre_only ? 6 : 24) * lc * D * D + 4 * n * n * D;
    if (attn2) f += 8 * t * D * D + 4 * t * t * D;
    f += 2 * D * D * ((attn2 ? 9 : 6) + (pre_only ? 2 : 6));  // adaLN modulations
  }
  f += 2 * D * 2 * D + 2 * t * D * patch;  // final adaLN and linear (p*p*out = patch here)
  return f * static_cast<double>(B);
}

bool all_finite(const Tensor& t) {
  for (float v : t.to_floats())
    if (!std::isfinite(v)) return false;
  return true;
}

std::string fusions_off(const Fusion& f) {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) s += std::string(s.empty() ? "" : ",") + name;
  };
  add(f.adaln, "adaln");
  add(f.attn, "attn");
  add(f.groupnorm, "groupnorm");
  add(f.euler, "euler");
  return s;
}

std::string gib(double bytes) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << bytes / (1024.0 * 1024.0 * 1024.0) << " GiB";
  return os.str();
}

std::string secs(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f s", s);
  return buf;
}

struct DeviceMemory {
  size_t weights = 0, peak_sampling = 0, peak_vae = 0, peak = 0;
};

int run(const Args& a) {
  const Device dev = a.backend == "cuda" ? Device::cuda(0) : Device::cpu();
  if (dev.is_cuda() && !cuda_available())
    fail("--backend cuda: no usable CUDA GPU (", cuda_unavailable_reason(), ")");
  set_num_threads(a.threads);
  if (a.unfused_given) fusion() = parse_unfused(a.unfused);
  const DType wdt = parse_dtype(a.dtype);
  const DType act = dev.is_cuda() ? wdt : DType::F32;  // CPU activations are always f32

  MMDiTConfig cfg = a.arch == "sd35_large"    ? MMDiTConfig::sd35_large()
                    : a.arch == "sd35_medium" ? MMDiTConfig::sd35_medium()
                                              : MMDiTConfig::sd3_medium();
  const int64_t full_depth = cfg.depth;
  if (a.depth) {
    SD3_CHECK(a.depth <= full_depth, "--depth ", a.depth, " exceeds ", a.arch, "'s ", full_depth,
              " joint blocks");
    cfg.depth = a.depth;
    std::vector<int64_t> kept;
    for (int64_t l : cfg.x_block_self_attn_layers)
      if (l < cfg.depth) kept.push_back(l);
    cfg.x_block_self_attn_layers = kept;
  }
  check_image_size(a.width, "--width");
  check_image_size(a.height, "--height");
  const VaeConfig vcfg = VaeConfig::sd3();
  const int64_t f = vcfg.downscale();
  const int64_t h = a.height / f, w = a.width / f;  // latent
  const int64_t grid = cfg.pos_embed_max_size * cfg.patch_size;
  SD3_CHECK(h <= grid && w <= grid, "size ", a.width, "x", a.height, " exceeds ", a.arch,
            "'s position table (at most ", grid * f, " pixels a side)");
  const int64_t images = a.batch == 1 ? 1 : a.batch / 2;
  const bool cfg_on = a.batch > 1;
  const int64_t T = (h / cfg.patch_size) * (w / cfg.patch_size);
  std::string card = dev.is_cuda() ? "cuda" : "cpu";
#ifdef SD3_HAVE_CUDA
  if (dev.is_cuda()) card = cuda::device_name(dev.index);
#endif

  std::fprintf(stderr, "sd3-bench: %s, depth %lld of %lld, %lldx%lld, %s %s; making weights...\n",
               a.arch.c_str(), static_cast<long long>(cfg.depth),
               static_cast<long long>(full_depth), static_cast<long long>(a.width),
               static_cast<long long>(a.height), card.c_str(), a.dtype.c_str());

  // ---- setup: weights and inputs ---------------------------------------------------------
  DeviceMemory mem;
  size_t weight_bytes = 0;
  const auto t_setup = Clock::now();
  const MMDiT mmdit = MMDiT::from_tensors(
      cfg, make_weights("mmdit", mmdit_weight_specs(cfg), wdt, a.seed, dev, &weight_bytes), dev);
  Vae vae;
  if (a.vae)
    vae = Vae::from_tensors(
        vcfg, make_weights("vae", vae_decoder_weight_specs(vcfg), wdt, a.seed, dev, &weight_bytes),
        dev);
  // Random conditioning in place of the text encoders (their cost is not part of the loop).
  GuidanceInputs gi;
  gi.context_cond = torch_randn(a.seed + 1, {1, a.context_tokens, cfg.context_in_features}).to(dev);
  gi.context_uncond =
      torch_randn(a.seed + 2, {1, a.context_tokens, cfg.context_in_features}).to(dev);
  gi.y_cond = torch_randn(a.seed + 3, {1, cfg.adm_in_channels}).to(dev);
  gi.y_uncond = torch_randn(a.seed + 4, {1, cfg.adm_in_channels}).to(dev);
  const std::vector<float> sigmas = FlowSchedule{3.0}.sigmas(a.steps);
  const Tensor x0 = noise_scaling(
      sigmas[0], torch_randn(a.seed, {images, cfg.in_channels, h, w}).to(dev), Tensor());
  device_synchronize(dev);
  const double setup_s = seconds(t_setup, Clock::now());
  if (dev.is_cuda()) mem.weights = memory_stats(DeviceType::CUDA).current;

  // ---- the denoising loop ------------------------------------------------------------------
  DiffusionModel model = [&](const Tensor& x, const Tensor& ts, const Tensor& ctx, const Tensor& y,
                             const std::vector<int>&) {
    return mmdit.forward(ops::cast(x, act), ts, ops::cast(y, act), ops::cast(ctx, act));
  };
  SamplerOptions so;
  so.sampler = SamplerKind::Euler;
  so.cfg_scale = cfg_on ? 5.0f : 1.0f;
  so.total_steps = a.steps;
  std::vector<double> step_s;
  std::vector<OpStat> step_profile, vae_profile;
  double profiled_step_s = 0.0;
  if (dev.is_cuda()) reset_peak_memory(DeviceType::CUDA);
  auto t_prev = Clock::now();
  StepCallback on_step = [&](int step, int total, float) {
    device_synchronize(dev);
    const auto now = Clock::now();
    const double dt = seconds(t_prev, now);
    const bool profiled = a.profile_ops && step == total - 1;
    if (profiled) {
      set_op_profile(false);
      step_profile = read_op_profile();
      profiled_step_s = dt;
    } else {
      step_s.push_back(dt);
    }
    std::fprintf(stderr, "  step %d/%d: %.3f s%s\n", step + 1, total, dt,
                 step == 0 ? " (warm-up)" : profiled ? " (op profile)" : "");
    if (a.profile_ops && step == total - 2) {  // the last step is the profiled one
      reset_op_profile();
      set_op_profile(true);
    }
    t_prev = Clock::now();
    return true;
  };
  const Tensor latent = sample(model, x0, sigmas, gi, so, on_step);
  if (dev.is_cuda()) mem.peak_sampling = memory_stats(DeviceType::CUDA).peak;

  // ---- VAE decode --------------------------------------------------------------------------
  bool finite = all_finite(latent);  // outside the timings: a copy to the host
  std::vector<double> vae_s;
  if (a.vae) {
    if (dev.is_cuda()) reset_peak_memory(DeviceType::CUDA);
    const Tensor z = ops::cast(sd3_latent_process_out(latent), act);
    for (int r = 0; r < a.vae_runs; ++r) {
      device_synchronize(dev);
      const auto t0 = Clock::now();
      Tensor image = vae.decode(z);  // [images, 3, H, W]
      device_synchronize(dev);
      vae_s.push_back(seconds(t0, Clock::now()));
      std::fprintf(stderr, "  VAE decode %d/%d: %.3f s\n", r + 1, a.vae_runs, vae_s.back());
      if (r == a.vae_runs - 1) finite = finite && all_finite(image);
    }
    if (a.profile_ops) {  // one more decode, profiled, outside the timings
      device_synchronize(dev);
      reset_op_profile();
      set_op_profile(true);
      vae.decode(z);
      set_op_profile(false);
      vae_profile = read_op_profile();
    }
    if (dev.is_cuda()) mem.peak_vae = memory_stats(DeviceType::CUDA).peak;
  }
  mem.peak = std::max(mem.peak_sampling, mem.peak_vae);

  // ---- report ------------------------------------------------------------------------------
  std::vector<double> timed(step_s.begin() + 1, step_s.end());
  std::sort(timed.begin(), timed.end());
  const size_t m = timed.size();
  const double median = m % 2 ? timed[m / 2] : 0.5 * (timed[m / 2 - 1] + timed[m / 2]);
  const double flops = mmdit_flops(cfg, a.batch, T, a.context_tokens);
  const size_t rss = peak_rss_bytes();
  const std::string off = fusions_off(fusion());
  const std::string preset_name = a.arch == "sd35_large"    ? "SD3.5-large MMDiT"
                                  : a.arch == "sd35_medium" ? "SD3.5-medium MMDiT-X"
                                                            : "SD3-medium MMDiT";

  std::ostringstream tab;
  tab << "sd3-bench: " << preset_name << " (depth " << cfg.depth << " of " << full_depth
      << ", hidden " << cfg.hidden_size << ", heads " << cfg.num_heads << ")"
      << (a.vae ? " + VAE decoder" : "") << ", random weights\n";
  tab << "  device        " << card;
  if (dev.is_cpu()) tab << " (" << num_threads() << " threads)";
  tab << "\n  dtype         weights " << a.dtype << ", activations " << dtype_name(act) << "\n";
  tab << "  image         " << a.width << "x" << a.height << " (latent " << w << "x" << h << "), "
      << T << " image + " << a.context_tokens << " context tokens, batch " << a.batch
      << (cfg_on ? " (CFG)" : " (no CFG)") << "\n";
  tab << "  fusions off   " << (off.empty() ? "none" : off) << "\n";
  tab << "  setup         " << secs(setup_s) << " (" << gib(static_cast<double>(weight_bytes))
      << " of weights made" << (dev.is_cuda() ? " and uploaded" : "") << ")\n";
  tab << "  warm-up step  " << secs(step_s.front()) << "\n";
  char line[256];
  std::snprintf(
      line, sizeof line,
      "  step          median %.3f s, min %.3f s, max %.3f s over %zu step%s (%.3f it/s)\n", median,
      timed.front(), timed.back(), m, m == 1 ? "" : "s", 1.0 / median);
  tab << line;
  std::snprintf(line, sizeof line, "  model math    %.3g TFLOP per step, %.3g TFLOP/s\n",
                flops * 1e-12, flops * 1e-12 / median);
  tab << line;
  if (a.vae) {
    tab << "  VAE decode    " << secs(vae_s.back());
    if (vae_s.size() > 1) tab << " (first run " << secs(vae_s.front()) << ")";
    tab << ", " << images << " image" << (images > 1 ? "s" : "") << "\n";
  }
  tab << "  peak memory   host RSS " << gib(static_cast<double>(rss));
  if (dev.is_cuda()) {
    tab << "; device " << gib(static_cast<double>(mem.peak)) << " (weights "
        << gib(static_cast<double>(mem.weights)) << ", sampling "
        << gib(static_cast<double>(mem.peak_sampling));
    if (a.vae) tab << ", VAE " << gib(static_cast<double>(mem.peak_vae));
    tab << ")";
  }
  tab << "\n";
  if (!finite)
    tab << "  WARNING       the output has NaN or Inf values: these timings are not valid\n";
  if (a.profile_ops) {
    const std::string title =
        str_cat("op profile: one sampling step (", secs(profiled_step_s), " with the profile on)");
    tab << "\n" << op_profile_table(step_profile, title);
    if (a.vae) tab << "\n" << op_profile_table(vae_profile, "op profile: one VAE decode");
  }

  if (a.json) {
    std::cerr << tab.str();
    nlohmann::json j;
    j["tool"] = "sd3-bench";
    j["arch"] = a.arch;
    j["depth"] = cfg.depth;
    j["full_depth"] = full_depth;
    j["hidden"] = cfg.hidden_size;
    j["heads"] = cfg.num_heads;
    j["width"] = a.width;
    j["height"] = a.height;
    j["image_tokens"] = T;
    j["context_tokens"] = a.context_tokens;
    j["batch"] = a.batch;
    j["cfg"] = cfg_on;
    j["backend"] = a.backend;
    j["device"] = card;
    j["threads"] = dev.is_cpu() ? nlohmann::json(num_threads()) : nlohmann::json(nullptr);
    j["dtype"] = a.dtype;
    j["activation_dtype"] = dtype_name(act);
    j["unfused"] = off;
    j["seed"] = a.seed;
    j["steps"] = a.steps;
    j["setup_s"] = setup_s;
    j["weights_bytes"] = weight_bytes;
    j["warmup_step_s"] = step_s.front();
    j["step_s"] = std::vector<double>(step_s.begin() + 1, step_s.end());
    j["step_s_median"] = median;
    j["step_s_min"] = timed.front();
    j["step_s_max"] = timed.back();
    j["it_per_s"] = 1.0 / median;
    j["tflop_per_step"] = flops * 1e-12;
    j["tflops"] = flops * 1e-12 / median;
    j["vae"] = a.vae;
    j["vae_decode_s"] = a.vae ? nlohmann::json(vae_s.back()) : nlohmann::json(nullptr);
    j["vae_decode_first_s"] = a.vae ? nlohmann::json(vae_s.front()) : nlohmann::json(nullptr);
    j["output_finite"] = finite;
    j["peak_host_rss_bytes"] = rss;
    const auto dev_bytes = [&](size_t v) {
      return dev.is_cuda() ? nlohmann::json(v) : nlohmann::json(nullptr);
    };
    j["device_weights_bytes"] = dev_bytes(mem.weights);
    j["peak_device_bytes"] = dev_bytes(mem.peak);
    j["peak_device_sampling_bytes"] = dev_bytes(mem.peak_sampling);
    j["peak_device_vae_bytes"] = dev_bytes(a.vae ? mem.peak_vae : 0);
    if (a.profile_ops) {
      const auto ops_json = [](const std::vector<OpStat>& v) {
        nlohmann::json arr = nlohmann::json::array();
        for (const OpStat& o : v) arr.push_back({{"op", o.op}, {"calls", o.calls}, {"ms", o.ms}});
        return arr;
      };
      j["profiled_step_s"] = profiled_step_s;
      j["op_profile_step"] = ops_json(step_profile);
      if (a.vae) j["op_profile_vae"] = ops_json(vae_profile);
    }
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << tab.str();
  }
  if (!finite) fail("the ", a.vae ? "decoded image" : "final latent", " has NaN or Inf values");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd3-bench: error: %s\n", e.what());
    return 1;
  }
}
