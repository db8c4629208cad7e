// One SD3-medium-shaped MM-DiT forward on the CPU backend: depth 24, hidden 1536, batch 2 (a CFG
// pair), 32 x 32 latent (256 image tokens), 154 context tokens of width 4096, pooled 2048; f32
// weights at the real shapes, random, built in memory (no file). Compare with
// tools/bench_mmdit_torch.py at the same thread count.
//
//   bench_mmdit_cpu [--threads=N] [benchmark flags]     (N = 0: all cores, the default)
//
// Memory: the f32 weights take 8.3 GB.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/cpu_bench_main.h"
#include "engine/ops.h"
#include "models/mmdit.h"

namespace {

using sd3::DType;
using sd3::Shape;
using sd3::Tensor;
using sd3::models::MMDiT;
using sd3::models::MMDiTConfig;

constexpr int64_t kBatch = 2;
constexpr int64_t kLatent = 32;
constexpr int64_t kContextTokens = 154;

// splitmix64: a small, fast, deterministic generator.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Approximately N(0, std^2): the sum of four 16-bit uniforms (Irwin-Hall), centred and scaled to
// unit variance. Exact normality does not matter for timing; no denormals, no zeros.
Tensor random_tensor(const Shape& shape, float std, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  // Var(U[0,1)) = 1/12, so the sum of four has variance 1/3.
  const float k = std * std::sqrt(3.0f) / 65536.0f;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < (n + 4095) / 4096; ++block) {
    Rng rng{seed * 0x100000001b3ull + static_cast<uint64_t>(block)};
    const int64_t end = std::min(n, (block + 1) * 4096);
    for (int64_t i = block * 4096; i < end; ++i) {
      const uint64_t r = rng.next();
      const float sum = static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) +
                                           ((r >> 32) & 0xffff) + (r >> 48));
      p[i] = (sum - 2.0f * 65535.0f) * k;
    }
  }
  return t;
}

// Random weights with the checkpoint's conventions: matrices N(0, 1/fan_in), vectors (biases,
// norm gains) N(0, 0.05^2), the position table N(0, 1) at its real size.
std::map<std::string, Tensor> random_weights(const MMDiTConfig& cfg) {
  std::map<std::string, Tensor> w;
  uint64_t seed = 1;
  for (const sd3::WeightSpec& s : sd3::models::mmdit_weight_specs(cfg)) {
    float std = 0.05f;
    if (s.key == "pos_embed") {
      std = 1.0f;
    } else if (s.shape.size() >= 2) {
      std = 1.0f / std::sqrt(static_cast<float>(sd3::shape_numel(s.shape) / s.shape[0]));
    }
    w[s.key] = random_tensor(s.shape, std, seed++);
  }
  return w;
}

// Multiply-adds x 2 of one forward (matrix products and attention; norms and elementwise work
// are below 0.1% and not counted).
double forward_flops(const MMDiTConfig& c, int64_t B, int64_t T, int64_t Lc) {
  const double h = static_cast<double>(c.hidden_size), m = static_cast<double>(c.mlp_hidden());
  const double p2 = static_cast<double>(c.patch_size * c.patch_size);
  double per_sample = 0.0;
  per_sample += T * (c.in_channels * p2) * h;            // x_embedder
  per_sample += c.frequency_embedding_size * h + h * h;  // t_embedder
  per_sample += c.adm_in_channels * h + h * h;           // y_embedder
  per_sample += Lc * c.context_in_features * h;          // context_embedder
  const double L = static_cast<double>(Lc + T);
  for (int64_t i = 0; i < c.depth; ++i) {
    const bool last = i == c.depth - 1, attn2 = c.x_block_self_attn(i);
    per_sample += h * h * ((last ? 2 : 6) + (attn2 ? 9 : 6));       // adaLN
    per_sample += Lc * (last ? 3 * h * h : 4 * h * h + 2 * h * m);  // context stream
    per_sample += T * (4 * h * h + 2 * h * m);                      // x stream
    per_sample += 2 * L * L * h;                                    // QK^T and PV
    if (attn2) per_sample += T * 4 * h * h + 2.0 * T * T * h;       // MMDiT-X attn2
  }
  per_sample += 2 * h * h + T * h * p2 * c.out_channels;  // final layer
  return 2.0 * per_sample * static_cast<double>(B);
}

struct Setup {
  MMDiTConfig cfg = MMDiTConfig::sd3_medium();
  std::unique_ptr<MMDiT> model;
  Tensor x, t, y, context;
};

Setup& setup() {
  static Setup s = [] {
    Setup r;
    r.model = std::make_unique<MMDiT>(MMDiT::from_tensors(r.cfg, random_weights(r.cfg)));
    r.x = random_tensor({kBatch, r.cfg.in_channels, kLatent, kLatent}, 1.0f, 1001);
    r.t = Tensor::from_floats({750.0f, 750.0f}, {kBatch});
    r.y = random_tensor({kBatch, r.cfg.adm_in_channels}, 1.0f, 1002);
    r.context = random_tensor({kBatch, kContextTokens, r.cfg.context_in_features}, 1.0f, 1003);
    // Warm-up: first touch of activation memory and BLAS buffers.
    r.model->forward(r.x, r.t, r.y, r.context);
    return r;
  }();
  return s;
}

void BM_MMDiTForward(benchmark::State& state) {
  Setup& s = setup();
  for (auto _ : state) {
    Tensor out = s.model->forward(s.x, s.t, s.y, s.context);
    benchmark::DoNotOptimize(out.raw_data());
  }
  const int64_t T = (kLatent / s.cfg.patch_size) * (kLatent / s.cfg.patch_size);
  const double flops = forward_flops(s.cfg, kBatch, T, kContextTokens);
  state.counters["GFLOP"] = flops * 1e-9;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = sd3::num_threads();
}

}  // namespace

int main(int argc, char** argv) {
  return sd3::bench::cpu_bench_main(argc, argv, [] {
    benchmark::RegisterBenchmark("MMDiT_SD3Medium_Forward/B2_32x32_ctx154", BM_MMDiTForward)
        ->UseRealTime()
        ->Unit(benchmark::kSecond)
        ->Iterations(1)
        ->Repetitions(3);
  });
}
