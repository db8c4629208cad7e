// CPU kernels at SD3 shapes: linear (f32 and f16 weights), attention, the norms, groupnorm_silu,
// conv2d, an activation, softmax and the Euler step, fused and unfused where a fusion exists.
// FLOP counters give GFLOP/s for the compute-bound ops; bytes counters (bytes read + written
// once) give GB/s for the memory-bound ones.
//
//   bench_cpu_ops [--threads=N] [benchmark flags]   (N = 0: all cores, the default)
//
// Default shapes are those of a 512x512 image (1024 latent tokens + 154 context tokens, CFG
// batch 2); the /L4250 attention is the 1024x1024 case (one iteration, a few seconds).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/cpu_bench_main.h"
#include "engine/ops.h"

namespace {

using sd3::DType;
using sd3::Shape;
using sd3::Tensor;
namespace ops = sd3::ops;

Tensor random_tensor(const Shape& shape, DType dtype = DType::F32, float scale = 1.0f,
                     uint32_t seed = 1) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(sd3::shape_numel(shape)));
  for (float& x : v) x = dist(gen);
  return Tensor::from_floats(v, shape, dtype);
}

void set_flops(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void set_bytes(benchmark::State& state, double bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}

// Restores the fusion switches after a benchmark that changes them.
struct FusionGuard {
  sd3::Fusion saved = sd3::fusion();
  ~FusionGuard() { sd3::fusion() = saved; }
};

// ---- linear -------------------------------------------------------------------------------
// args: M, K, N, weight dtype (0 f32, 1 f16, 2 bf16), activation (0 none, 1 gelu_tanh)
void BM_Linear(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  const DType wd = state.range(3) == 0   ? DType::F32
                   : state.range(3) == 1 ? DType::F16
                                         : DType::BF16;
  const ops::Activation act = state.range(4) ? ops::Activation::GeluTanh : ops::Activation::None;
  Tensor x = random_tensor({m, k});
  Tensor w = random_tensor({n, k}, wd, 1.0f / std::sqrt(static_cast<float>(k)), 2);
  Tensor b = random_tensor({n}, DType::F32, 0.1f, 3);
  for (auto _ : state) {
    Tensor y = ops::linear(x, w, b, act);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_flops(state, 2.0 * m * k * n);
}

// ---- attention ----------------------------------------------------------------------------
// args: B, L, H, D, fused
void BM_Attention(benchmark::State& state) {
  const int64_t nb = state.range(0), l = state.range(1), h = state.range(2), d = state.range(3);
  FusionGuard guard;
  sd3::fusion().attn = state.range(4) != 0;
  Tensor q = random_tensor({nb, l, h * d}, DType::F32, 1.0f, 1);
  Tensor k = random_tensor({nb, l, h * d}, DType::F32, 1.0f, 2);
  Tensor v = random_tensor({nb, l, h * d}, DType::F32, 1.0f, 3);
  ops::AttentionOptions opt;
  opt.heads = h;
  for (auto _ : state) {
    Tensor o = ops::attention(q, k, v, opt);
    benchmark::DoNotOptimize(o.raw_data());
  }
  set_flops(state, 4.0 * nb * h * l * l * d);  // QK^T and PV
}

// ---- norms --------------------------------------------------------------------------------
// args: rows, C
void BM_LayerNorm(benchmark::State& state) {
  const int64_t rows = state.range(0), c = state.range(1);
  Tensor x = random_tensor({rows, c});
  Tensor w = random_tensor({c}), b = random_tensor({c});
  for (auto _ : state) {
    Tensor y = ops::layer_norm(x, w, b, 1e-6f);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_bytes(state, 2.0 * 4 * rows * c);
}

// args: B, L, C, fused
void BM_AdalnModulate(benchmark::State& state) {
  const int64_t nb = state.range(0), l = state.range(1), c = state.range(2);
  FusionGuard guard;
  sd3::fusion().adaln = state.range(3) != 0;
  Tensor x = random_tensor({nb, l, c});
  Tensor mod = random_tensor({nb, 6 * c}, DType::F32, 0.3f, 2);
  Tensor shift = mod.slice(1, 0, c), scale = mod.slice(1, c, 2 * c);
  for (auto _ : state) {
    Tensor y = ops::adaln_modulate(x, shift, scale, 1e-6f);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_bytes(state, 2.0 * 4 * nb * l * c);
}

// args: B, C, H, W, groups, fused
void BM_GroupNormSilu(benchmark::State& state) {
  const int64_t nb = state.range(0), c = state.range(1), h = state.range(2), w = state.range(3);
  FusionGuard guard;
  sd3::fusion().groupnorm = state.range(5) != 0;
  Tensor x = random_tensor({nb, c, h, w});
  Tensor g = random_tensor({c}), b = random_tensor({c});
  for (auto _ : state) {
    Tensor y = ops::groupnorm_silu(x, state.range(4), g, b, 1e-6f);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_bytes(state, 2.0 * 4 * nb * c * h * w);
}

// ---- convolution --------------------------------------------------------------------------
// args: B, Cin, H, W, Cout, k, stride
void BM_Conv2d(benchmark::State& state) {
  const int64_t nb = state.range(0), cin = state.range(1), h = state.range(2), w = state.range(3);
  const int64_t cout = state.range(4), k = state.range(5), s = state.range(6);
  const int64_t pad = s == 1 ? k / 2 : 0;
  Tensor x = random_tensor({nb, cin, h, w});
  Tensor wt = random_tensor({cout, cin, k, k}, DType::F32, 0.05f, 2);
  Tensor b = random_tensor({cout}, DType::F32, 0.1f, 3);
  const ops::Conv2dOptions opt = ops::Conv2dOptions::same(pad, s);
  const int64_t ho = (h + 2 * pad - k) / s + 1, wo = (w + 2 * pad - k) / s + 1;
  for (auto _ : state) {
    Tensor y = ops::conv2d(x, wt, b, opt);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_flops(state, 2.0 * nb * cout * ho * wo * cin * k * k);
}

// ---- elementwise --------------------------------------------------------------------------
// args: rows, C, activation (1 gelu_tanh, 2 gelu, 3 silu)
void BM_Activation(benchmark::State& state) {
  const int64_t rows = state.range(0), c = state.range(1);
  const ops::Activation act = state.range(2) == 1   ? ops::Activation::GeluTanh
                              : state.range(2) == 2 ? ops::Activation::Gelu
                                                    : ops::Activation::Silu;
  Tensor x = random_tensor({rows, c});
  for (auto _ : state) {
    Tensor y = ops::activation(x, act);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_bytes(state, 2.0 * 4 * rows * c);
  state.SetItemsProcessed(rows * c * state.iterations());
}

// args: rows, C
void BM_Softmax(benchmark::State& state) {
  const int64_t rows = state.range(0), c = state.range(1);
  Tensor x = random_tensor({rows, c}, DType::F32, 3.0f);
  for (auto _ : state) {
    Tensor y = ops::softmax(x);
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_bytes(state, 2.0 * 4 * rows * c);
  state.SetItemsProcessed(rows * c * state.iterations());
}

// args: B, L, C (gated_add of [B, L, C] with a [B, C] gate)
void BM_GatedAdd(benchmark::State& state) {
  const int64_t nb = state.range(0), l = state.range(1), c = state.range(2);
  Tensor x = random_tensor({nb, l, c}), y = random_tensor({nb, l, c}, DType::F32, 1.0f, 2);
  Tensor gate = random_tensor({nb, c}, DType::F32, 1.0f, 3);
  for (auto _ : state) {
    Tensor o = ops::gated_add(x, gate, y);
    benchmark::DoNotOptimize(o.raw_data());
  }
  set_bytes(state, 3.0 * 4 * nb * l * c);
}

// args: elements, fused
void BM_CfgEulerStep(benchmark::State& state) {
  const int64_t n = state.range(0);
  FusionGuard guard;
  sd3::fusion().euler = state.range(1) != 0;
  Tensor x = random_tensor({n}), vc = random_tensor({n}, DType::F32, 1.0f, 2);
  Tensor vu = random_tensor({n}, DType::F32, 1.0f, 3);
  for (auto _ : state) {
    Tensor o = ops::cfg_euler_step(x, vc, vu, 5.0f, 0.8f, 0.75f);
    benchmark::DoNotOptimize(o.raw_data());
  }
  set_bytes(state, 4.0 * 4 * n);
}

// A 512x512 image: 2 x (1024 + 154) tokens; 1024x1024: 4096 + 154.
constexpr int64_t kTokens512 = 2 * (1024 + 154);

void register_all() {
  auto ms = [](benchmark::internal::Benchmark* b) {
    return b->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  // MM-DiT projections of SD3-medium (hidden 1536): qkv, MLP up (with gelu_tanh), MLP down.
  ms(benchmark::RegisterBenchmark("Linear/qkv", BM_Linear))
      ->ArgNames({"M", "K", "N", "wdtype", "act"})
      ->Args({kTokens512, 1536, 4608, 0, 0})
      ->Args({kTokens512, 1536, 4608, 1, 0});
  ms(benchmark::RegisterBenchmark("Linear/mlp_up_gelu", BM_Linear))
      ->ArgNames({"M", "K", "N", "wdtype", "act"})
      ->Args({kTokens512, 1536, 6144, 0, 1})
      ->Args({kTokens512, 1536, 6144, 2, 1});
  ms(benchmark::RegisterBenchmark("Linear/mlp_down", BM_Linear))
      ->ArgNames({"M", "K", "N", "wdtype", "act"})
      ->Args({kTokens512, 6144, 1536, 0, 0});
  ms(benchmark::RegisterBenchmark("Linear/adaln_modulation", BM_Linear))
      ->ArgNames({"M", "K", "N", "wdtype", "act"})
      ->Args({2, 1536, 9216, 0, 0})
      ->Args({2, 1536, 9216, 1, 0});
  ms(benchmark::RegisterBenchmark("Attention", BM_Attention))
      ->ArgNames({"B", "L", "H", "D", "fused"})
      ->Args({2, 1024 + 154, 24, 64, 1})
      ->Args({2, 1024 + 154, 24, 64, 0});
  ms(benchmark::RegisterBenchmark("Attention", BM_Attention))
      ->ArgNames({"B", "L", "H", "D", "fused"})
      ->Args({2, 4096 + 154, 24, 64, 1})
      ->Iterations(1);
  ms(benchmark::RegisterBenchmark("LayerNorm", BM_LayerNorm))
      ->ArgNames({"rows", "C"})
      ->Args({kTokens512, 1536});
  ms(benchmark::RegisterBenchmark("AdalnModulate", BM_AdalnModulate))
      ->ArgNames({"B", "L", "C", "fused"})
      ->Args({2, 1024 + 154, 1536, 1})
      ->Args({2, 1024 + 154, 1536, 0});
  ms(benchmark::RegisterBenchmark("GatedAdd", BM_GatedAdd))
      ->ArgNames({"B", "L", "C"})
      ->Args({2, 1024 + 154, 1536});
  ms(benchmark::RegisterBenchmark("GroupNormSilu", BM_GroupNormSilu))
      ->ArgNames({"B", "C", "H", "W", "G", "fused"})
      ->Args({1, 512, 64, 64, 32, 1})
      ->Args({1, 512, 64, 64, 32, 0})
      ->Args({1, 128, 512, 512, 32, 1});
  ms(benchmark::RegisterBenchmark("Conv2d", BM_Conv2d))
      ->ArgNames({"B", "Cin", "H", "W", "Cout", "k", "stride"})
      ->Args({1, 512, 64, 64, 512, 3, 1})    // VAE decoder, 64x64 stage
      ->Args({1, 128, 256, 256, 128, 3, 1})  // VAE decoder, late stage (1/4 of 1024x1024)
      ->Args({1, 512, 64, 64, 512, 1, 1})    // 1x1 shortcut
      ->Args({2, 16, 64, 64, 1536, 2, 2});   // MM-DiT patch embedding
  ms(benchmark::RegisterBenchmark("Activation", BM_Activation))
      ->ArgNames({"rows", "C", "act"})
      ->Args({kTokens512, 6144, 1})
      ->Args({kTokens512, 6144, 2})
      ->Args({kTokens512, 6144, 3});
  ms(benchmark::RegisterBenchmark("Softmax", BM_Softmax))
      ->ArgNames({"rows", "C"})
      ->Args({2048, 4250});
  ms(benchmark::RegisterBenchmark("CfgEulerStep", BM_CfgEulerStep))
      ->ArgNames({"n", "fused"})
      ->Args({2 * 16 * 128 * 128, 1})
      ->Args({2 * 16 * 128 * 128, 0});
}

}  // namespace

int main(int argc, char** argv) {
  return sd3::bench::cpu_bench_main(argc, argv, register_all);
}
