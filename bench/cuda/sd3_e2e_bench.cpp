// Full-size SD3-medium generation on the GPU with random weights made in memory: the MMDiT
// (24 joint blocks, hidden 1536) and the VAE decoder at 1024x1024 (or --size), bf16, one
// image with classifier-free guidance (the MMDiT runs cond + uncond as a batch of 2), random
// text conditioning (context [2, 154, 4096], pooled y [2, 2048]), the shifted flow-matching
// schedule and the fused CFG + Euler step. Reports seconds per sampling step, the VAE decode
// time and the peak GPU memory, as one JSON object on stdout and in --json FILE.
//
// Usage: sd3_e2e_bench [--size 1024] [--steps 4] [--unfused LIST] [--json FILE]
// tools/device_check.sh runs it (STEP E2E) until the runner's own benchmark exists.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "engine/device.h"
#include "engine/ops.h"
#include "models/mmdit.h"
#include "models/random_weights.h"
#include "models/sampler.h"
#include "models/vae.h"

namespace {

using sd3::Device;
using sd3::DType;
using sd3::Tensor;
namespace ops = sd3::ops;
namespace models = sd3::models;

Tensor randn(const sd3::Shape& shape, DType dt, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(sd3::shape_numel(shape)));
  for (float& x : v) x = d(rng);
  return Tensor::from_floats(v, shape, dt).to(Device::cuda(0));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int size = 1024, steps = 4;
  std::string json_path, unfused;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "sd3_e2e_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--size") {
      size = std::atoi(next().c_str());
    } else if (a == "--steps") {
      steps = std::atoi(next().c_str());
    } else if (a == "--json") {
      json_path = next();
    } else if (a == "--unfused") {
      unfused = next();
    } else if (a == "--backend") {
      next();  // always cuda; accepted for the runner's interface
    } else {
      std::fprintf(stderr,
                   "usage: sd3_e2e_bench [--size N] [--steps N] [--unfused LIST] [--json FILE]\n");
      return 2;
    }
  }
  if (!sd3::cuda_available()) {
    std::printf("sd3_e2e_bench: skipped, no usable CUDA GPU (%s)\n",
                sd3::cuda_unavailable_reason().c_str());
    return 0;
  }
  if (size % 16 != 0 || size < 64 || steps < 1) {
    std::fprintf(stderr, "sd3_e2e_bench: --size must be a multiple of 16 >= 64, --steps >= 1\n");
    return 2;
  }
  try {
    if (!unfused.empty()) sd3::fusion() = sd3::parse_unfused(unfused);
    const DType dt = DType::BF16;
    const Device dev = Device::cuda(0);
    auto t0 = std::chrono::steady_clock::now();
    const models::MMDiTConfig mcfg = models::MMDiTConfig::sd3_medium();
    const models::VaeConfig vcfg = models::VaeConfig::sd3();
    const models::MMDiT mmdit = models::MMDiT::from_tensors(
        mcfg, models::random_weights({"mmdit", "", models::mmdit_weight_specs(mcfg)}, dt, 1), dev);
    const models::Vae vae = models::Vae::from_tensors(
        vcfg, models::random_weights({"vae", "", models::vae_decoder_weight_specs(vcfg)}, dt, 2),
        dev);
    sd3::device_synchronize(dev);
    const double load_s = seconds_since(t0);

    const int64_t h = size / 8, w = size / 8;
    Tensor x = randn({1, 16, h, w}, dt, 3);
    const Tensor ctx = randn({2, 154, 4096}, dt, 4);
    const Tensor y = randn({2, 2048}, dt, 5);
    const std::vector<float> sigmas = models::FlowSchedule{}.sigmas(steps);
    sd3::reset_peak_memory(sd3::DeviceType::CUDA);
    std::vector<double> step_s;
    for (int i = 0; i < steps; ++i) {
      auto ts = std::chrono::steady_clock::now();
      const float sig = sigmas[i], sig_next = sigmas[i + 1];
      Tensor xx = ops::concat({x, x}, 0);
      const float tv = models::FlowSchedule::timestep(sig);
      Tensor t = Tensor::from_floats({tv, tv}, {2}).to(dev);
      Tensor v = mmdit.forward(xx, t, y, ctx);  // [2, 16, h, w]: cond, uncond
      x = ops::cfg_euler_step(x, v.slice(0, 0, 1), v.slice(0, 1, 2), 4.5f, sig, sig_next);
      sd3::device_synchronize(dev);
      step_s.push_back(seconds_since(ts));
    }
    auto tv0 = std::chrono::steady_clock::now();
    Tensor image = vae.decode(ops::add_scalar(ops::scale(x, 1.0f / 1.5305f), 0.0609f));
    sd3::device_synchronize(dev);
    const double vae_s = seconds_since(tv0);
    const sd3::MemoryStats mem = sd3::memory_stats(sd3::DeviceType::CUDA);
    // Steady-state steps: the first one includes cuBLASLt/cuDNN algorithm searches.
    double steady = 0.0;
    for (size_t i = steps > 1 ? 1 : 0; i < step_s.size(); ++i) steady += step_s[i];
    steady /= static_cast<double>(steps > 1 ? steps - 1 : 1);
    const std::vector<float> px =
        ops::contiguous(image.slice(2, 0, 1)).to(Device::cpu()).to_floats();
    bool finite = true;
    for (float p : px) finite = finite && std::isfinite(p);
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "{\"model\": \"sd3-medium (random weights, bf16)\", \"size\": %d, \"steps\": %d, "
                  "\"unfused\": \"%s\", \"load_s\": %.3f, \"first_step_s\": %.4f, "
                  "\"seconds_per_step\": %.4f, \"vae_decode_s\": %.4f, \"peak_gpu_bytes\": %zu, "
                  "\"reserved_gpu_bytes\": %zu, \"image_finite\": %s}",
                  size, steps, unfused.c_str(), load_s, step_s[0], steady, vae_s, mem.peak,
                  mem.reserved, finite ? "true" : "false");
    std::printf("%s\n", buf);
    if (!json_path.empty()) std::ofstream(json_path) << buf << "\n";
    return finite ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd3_e2e_bench: %s\n", e.what());
    return 1;
  }
}
