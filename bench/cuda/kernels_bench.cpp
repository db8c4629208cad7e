// CUDA kernel benchmarks at SD3-medium shapes (batch 2, hidden 1536, 24 heads x 64; 512x512
// = 1024 + 154 tokens, 1024x1024 = 4096 + 154): each hand-written fused kernel against its
// unfused composition (the same op with its sd3::fusion() switch off) and against a
// device-to-device copy moving the same number of bytes, measured in the same run; library
// ops (cuBLASLt linear, cuDNN conv) for the tensor-core reference.
//
// Timing, two numbers per benchmark, both from CUDA events on the backend's stream:
//
//   single (Google Benchmark's manual time, "real_time"; counters "GB/s", "TFLOP/s"): one
//     call per iteration with L2 flushed before it (a memset of twice the L2 size), so the
//     call reads its inputs from memory. The event pair also spans the host's dispatch of
//     the call (allocation, argument checks, launches): at small shapes that dominates, e.g.
//     euler_step at 512 moves 1 MB, about 0.3 us of DRAM time.
//   batched (counters "us_batched", "GB/s_batched", "TFLOP/s_batched"): after one L2 flush
//     the stream is held by a gate (a host function that waits for a flag), the call is
//     enqueued N times, then the gate opens and the N calls run back to back between one
//     event pair; the time is per call. Dispatch is excluded, so this is the GPU's time.
//     The L2 is flushed once only, so when an op's bytes fit in L2 (50 MB on an H100) the
//     later calls find their inputs there: that number is L2-warm, as is the copy reference
//     measured the same way beside it. N is 20, fewer for calls over 0.1 ms (there dispatch
//     is negligible and the two numbers agree).
//
// Which to report: "real_time"/"GB/s" for ops whose bytes are well above the L2 size (the
// 1024 shapes, the VAE activations); for smaller ones, "GB/s_batched" set against the copy's
// "GB/s_batched" of the same row, since "GB/s" there measures the host. tools/
// device_report.py reads the single numbers and turns the JSON output into the table of
// ratios in docs/kernels.md.
//
// Errors: an op that throws (an sd3::Error, or a CUDA failure from the timer, which throws
// too) marks its benchmark skipped with the message; the run goes on and the JSON output
// stays complete. A CUDA fault is sticky, so every later benchmark then reports the same
// error rather than a number.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/ops.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_ops.h"

namespace {

using sd3::DType;
using sd3::Shape;
using sd3::Tensor;
namespace ops = sd3::ops;

// Throws, so that the benchmark in progress is skipped with the message (see the top).
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("kernels_bench: ") + what + ": " + cudaGetErrorName(e) +
                             " (" + cudaGetErrorString(e) + ")");
}

// Random (never zero) inputs: a pool of 2^20 normal draws, cycled with an odd stride, so that
// the gigabyte-sized VAE inputs take no seconds to generate.
Tensor randn(const Shape& shape, DType dt, float sigma = 1.0f) {
  static const std::vector<float> pool = [] {
    std::mt19937_64 rng(12345);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> p(1u << 20);
    for (float& x : p) x = d(rng);
    return p;
  }();
  std::vector<float> v(static_cast<size_t>(sd3::shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = sigma * pool[(i * 7919u) & (pool.size() - 1)];
  return Tensor::from_floats(v, shape, dt).to(sd3::Device::cuda(0));
}

struct Timer {
  cudaEvent_t start{}, stop{};
  void* flush = nullptr;
  size_t flush_bytes = 0;
  cudaStream_t st{};
  Timer() {
    st = sd3::cuda::stream(0);
    check(cudaEventCreate(&start), "event");
    check(cudaEventCreate(&stop), "event");
    flush_bytes = 2 * static_cast<size_t>(sd3::cuda::device_props(0).l2CacheSize);
    check(cudaMalloc(&flush, flush_bytes), "L2 flush buffer");
  }
  // Runs fn once timed (after an L2 flush); returns milliseconds.
  float time(const std::function<void()>& fn) {
    check(cudaMemsetAsync(flush, 0, flush_bytes, st), "L2 flush");
    check(cudaEventRecord(start, st), "record");
    fn();
    check(cudaEventRecord(stop, st), "record");
    return elapsed_ms();
  }

  // Runs fn n times back to back behind a gate (after one L2 flush); returns milliseconds per
  // call, or a negative value when the gate had to open before all n calls were enqueued (the
  // host blocked in a call that waits for the stream, or the launch queue filled up), in
  // which case the time would include that wait.
  float time_batched(const std::function<void()>& fn, int n) {
    gate.open.store(false);
    gate.timed_out.store(false);
    check(cudaMemsetAsync(flush, 0, flush_bytes, st), "L2 flush");
    check(cudaLaunchHostFunc(st, &Gate::wait, &gate), "gate");
    check(cudaEventRecord(start, st), "record");
    try {
      for (int i = 0; i < n; ++i) fn();
      check(cudaEventRecord(stop, st), "record");
    } catch (...) {
      gate.open.store(true);  // the stream must not wait on a gate nobody opens
      cudaStreamSynchronize(st);
      throw;
    }
    gate.open.store(true);
    const float ms = elapsed_ms();  // synchronises: the host function has returned
    return gate.timed_out.load() ? -1.0f : ms / static_cast<float>(n);
  }

 private:
  // Holds the stream until `open` is set, or for at most kGateSeconds. The wait runs on the
  // CUDA runtime's callback thread and makes no CUDA call, as host functions must not. A
  // member, not a local: after a device fault the callback may outlive the call that queued
  // it (the Timer is never destroyed).
  struct Gate {
    static constexpr double kGateSeconds = 2.0;
    std::atomic<bool> open{false}, timed_out{false};
    static void CUDART_CB wait(void* p) {
      auto* g = static_cast<Gate*>(p);
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::duration<double>(kGateSeconds);
      while (!g->open.load()) {
        if (std::chrono::steady_clock::now() > deadline) {
          g->timed_out.store(true);
          return;
        }
        std::this_thread::yield();
      }
    }
  };

  Gate gate;

  float elapsed_ms() {
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    return ms;
  }
};

Timer& timer() {
  static Timer* t = new Timer();
  return *t;
}

constexpr int kBatch = 20;              // calls per batched measurement
constexpr double kBatchBudgetMs = 2.0;  // fewer calls (at least 2) when N calls exceed this

// The body of every benchmark: warm-up, the single timings (the benchmark's own iterations),
// then one batched timing. Counters as described at the top of the file.
void run_benchmark(benchmark::State& state, const std::string& name,
                   const std::function<void()>& fn, double bytes, double flops) {
  fn();  // warm-up: algorithm searches, first allocations
  fn();
  sd3::device_synchronize(sd3::Device::cuda(0));
  double total_ms = 0.0;
  for (auto _ : state) {
    const float ms = timer().time(fn);
    total_ms += ms;
    state.SetIterationTime(ms / 1e3);
  }
  const auto rate = benchmark::Counter::kIsIterationInvariantRate;
  if (bytes > 0) state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, rate);
  if (flops > 0) state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, rate);
  state.counters["bytes"] = bytes;

  const double single_ms =
      total_ms / std::max<double>(1.0, static_cast<double>(state.iterations()));
  const int n = std::clamp(static_cast<int>(kBatchBudgetMs / std::max(single_ms, 1e-6)), 2, kBatch);
  const float ms = timer().time_batched(fn, n);
  if (ms <= 0.0f) {
    std::fprintf(stderr, "kernels_bench: %s: batched timing not taken (gate timed out)\n",
                 name.c_str());
    return;
  }
  state.counters["us_batched"] = ms * 1e3;
  if (bytes > 0) state.counters["GB/s_batched"] = bytes / 1e9 / (ms / 1e3);
  if (flops > 0) state.counters["TFLOP/s_batched"] = flops / 1e12 / (ms / 1e3);
  state.counters["batch"] = n;
}

// Registers one benchmark: fn runs the op; bytes / flops give the counters. An exception
// skips this benchmark with its message instead of ending the run (see the top).
void add(const std::string& name, std::function<void()> fn, double bytes, double flops = 0.0) {
  benchmark::RegisterBenchmark(name.c_str(),
                               [name, fn, bytes, flops](benchmark::State& state) {
                                 try {
                                   run_benchmark(state, name, fn, bytes, flops);
                                 } catch (const std::exception& e) {
                                   // A variant that threw may have left its lab switch set.
                                   sd3::cuda::reset_lab_switches();
                                   state.SkipWithError(e.what());
                                 }
                               })
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond)
      ->MinTime(0.05);
}

// A device-to-device copy moving `bytes` in total (half read, half written).
void add_copy(const std::string& name, double bytes) {
  const size_t n = static_cast<size_t>(bytes / 2);
  const int64_t elems = static_cast<int64_t>((n + 3) / 4);
  auto bufs = std::make_shared<std::pair<Tensor, Tensor>>(
      Tensor::empty({elems}, DType::F32, sd3::Device::cuda(0)),
      Tensor::empty({elems}, DType::F32, sd3::Device::cuda(0)));
  add(
      name,
      [bufs, n] {
        check(cudaMemcpyAsync(bufs->second.raw_data(), bufs->first.raw_data(), n,
                              cudaMemcpyDeviceToDevice, timer().st),
              "copy");
      },
      bytes);
}

// Runs fn with the given fusion switches.
std::function<void()> with_fusion(sd3::Fusion f, std::function<void()> fn) {
  return [f, fn] {
    const sd3::Fusion saved = sd3::fusion();
    sd3::fusion() = f;
    fn();
    sd3::fusion() = saved;
  };
}

sd3::Fusion unfused_all() {
  return sd3::Fusion{false, false, false, false};
}

struct Res {
  const char* name;
  int64_t L;  // image tokens
};
const Res kRes[] = {{"512", 1024}, {"1024", 4096}};
constexpr int64_t kB = 2, kC = 1536, kHeads = 24, kCtx = 154;

void register_all() {
  const DType dt = DType::BF16;
  for (const Res& r : kRes) {
    const std::string tag = std::string("/") + r.name;
    // adaln_modulate on the image stream: x [2, L, 1536], shift/scale chunks of [2, 6C].
    {
      Tensor x = randn({kB, r.L, kC}, dt), mod = randn({kB, 6 * kC}, dt, 0.3f);
      Tensor sh = mod.slice(1, 0, kC), sc = mod.slice(1, kC, 2 * kC);
      const double bytes = 2.0 * kB * r.L * kC * 2;
      auto run = [=] { ops::adaln_modulate(x, sh, sc, 1e-6f); };
      add("adaln_modulate/fused" + tag, run, bytes);
      // Note [Warp-per-row normalisation]: the same op with a warp per row.
      add(
          "adaln_modulate/fused_warp" + tag,
          [=] {
            sd3::cuda::set_row_norm_layout(2);
            run();
            sd3::cuda::set_row_norm_layout(0);
          },
          bytes);
      add("adaln_modulate/unfused" + tag, with_fusion(unfused_all(), run), bytes);
      add_copy("adaln_modulate/copy" + tag, bytes);
    }
    // gated residual add: x + gate * y.
    {
      Tensor x = randn({kB, r.L, kC}, dt), y = randn({kB, r.L, kC}, dt);
      Tensor mod = randn({kB, 6 * kC}, dt, 0.3f);
      Tensor g = mod.slice(1, 2 * kC, 3 * kC);
      const double bytes = 3.0 * kB * r.L * kC * 2;
      add(
          "gated_add/fused" + tag, [=] { ops::gated_add(x, g, y); }, bytes);
      add(
          "gated_add/unfused" + tag, [=] { ops::add(x, ops::mul(g.unsqueeze(1), y)); }, bytes);
      add_copy("gated_add/copy" + tag, bytes);
    }
    // joint attention over [context; image] tokens: q, k, v [2, L + 154, 24 * 64].
    {
      const int64_t L = r.L + kCtx;
      Tensor q = randn({kB, L, kHeads * 64}, dt), k = randn({kB, L, kHeads * 64}, dt),
             v = randn({kB, L, kHeads * 64}, dt);
      const double flops = 4.0 * kB * kHeads * double(L) * L * 64;
      const double bytes = 4.0 * kB * L * kHeads * 64 * 2;
      ops::AttentionOptions opt;
      opt.heads = kHeads;
      auto run = [=] { ops::attention(q, k, v, opt); };
      add("joint_attention/fused" + tag, run, bytes, flops);
      add(
          "joint_attention/fused_mt1" + tag,
          [=] {
            sd3::cuda::set_flash_mtiles(1);
            ops::attention(q, k, v, opt);
            sd3::cuda::set_flash_mtiles(0);
          },
          bytes, flops);
      add("joint_attention/unfused" + tag, with_fusion(unfused_all(), run), bytes, flops);
      // The Hopper warpgroup-MMA kernel (joint_attention_wgmma.cu), where this device and
      // binary have it (compute capability 9.0, sm_90a code), and both kernels at head dim 128
      // (12 heads of 128: same width, FLOPs and bytes), the other head dim it serves.
      if (sd3::cuda::wgmma_attention_available(0)) {
        auto wgmma = [](std::function<void()> fn) {
          return [fn] {
            sd3::cuda::set_flash_kernel(sd3::cuda::FlashKernel::kWgmma);
            fn();
            sd3::cuda::set_flash_kernel(sd3::cuda::FlashKernel::kDefault);
          };
        };
        auto mma = [](std::function<void()> fn) {
          return [fn] {
            sd3::cuda::set_flash_kernel(sd3::cuda::FlashKernel::kMma);
            fn();
            sd3::cuda::set_flash_kernel(sd3::cuda::FlashKernel::kDefault);
          };
        };
        add("joint_attention/fused_wgmma" + tag, wgmma(run), bytes, flops);
        ops::AttentionOptions opt128;
        opt128.heads = kHeads / 2;
        auto run128 = [=] { ops::attention(q, k, v, opt128); };
        add("joint_attention/fused_d128" + tag, mma(run128), bytes, flops);
        add("joint_attention/fused_wgmma_d128" + tag, wgmma(run128), bytes, flops);
      }
    }
    // MMDiT linears: the MLP's fc1 with its GELU-tanh epilogue, and qkv.
    {
      const int64_t M = kB * (r.L + kCtx);
      Tensor x = randn({M, kC}, dt), w1 = randn({4 * kC, kC}, dt, 0.02f), b1 = randn({4 * kC}, dt);
      add(
          "linear_gelu/cublaslt" + tag, [=] { ops::linear(x, w1, b1, ops::Activation::GeluTanh); },
          2.0 * (M * kC + 4 * kC * kC + M * 4 * kC), 2.0 * M * kC * 4 * kC);
    }
  }
  // cfg + Euler step on the latent: [2, 16, h, w] (two images' worth, as the sampler's batch).
  for (const auto& [name, hw] : {std::pair<const char*, int64_t>{"512", 64}, {"1024", 128}}) {
    const std::string tag = std::string("/") + name;
    for (DType d : {DType::BF16, DType::F32}) {
      const std::string dtag = tag + (d == DType::F32 ? "_f32" : "");
      Tensor x = randn({kB, 16, hw, hw}, d), vc = randn({kB, 16, hw, hw}, d),
             vu = randn({kB, 16, hw, hw}, d);
      const double bytes = 4.0 * x.numel() * sd3::dtype_size(d);
      auto run = [=] { ops::cfg_euler_step(x, vc, vu, 4.5f, 0.8f, 0.7f); };
      add("euler_step/fused" + dtag, run, bytes);
      add("euler_step/unfused" + dtag, with_fusion(unfused_all(), run), bytes);
      add_copy("euler_step/copy" + dtag, bytes);
    }
  }
  // VAE decoder GroupNorm(32) + SiLU at its largest activations for each resolution.
  for (const auto& [name, shape] : {std::pair<const char*, Shape>{"512_c512", {kB, 512, 64, 64}},
                                    {"512_c128", {kB, 128, 512, 512}},
                                    {"1024_c512", {kB, 512, 128, 128}},
                                    {"1024_c128", {kB, 128, 1024, 1024}}}) {
    const std::string tag = std::string("/") + name;
    Tensor x = randn(shape, dt), w = randn({shape[1]}, dt), b = randn({shape[1]}, dt);
    const double bytes = 2.0 * x.numel() * 2;
    auto run = [=] { ops::groupnorm_silu(x, 32, w, b, 1e-6f); };
    add("groupnorm_silu/fused" + tag, run, bytes);
    // The designs of Note [One-pass group norm] side by side: one pass with 64 KB chunks, and
    // the two-pass kernels (x read twice).
    auto variant = [=](int passes, int vecs) {
      return [=] {
        sd3::cuda::set_groupnorm_passes(passes);
        sd3::cuda::set_groupnorm_onepass_vecs(vecs);
        ops::groupnorm_silu(x, 32, w, b, 1e-6f);
        sd3::cuda::set_groupnorm_passes(0);
        sd3::cuda::set_groupnorm_onepass_vecs(0);
      };
    };
    add("groupnorm_silu/fused_64k" + tag, variant(1, 16), bytes);
    add("groupnorm_silu/fused_2pass" + tag, variant(2, 0), bytes);
    add("groupnorm_silu/unfused" + tag, with_fusion(unfused_all(), run), bytes);
    add_copy("groupnorm_silu/copy" + tag, bytes);
  }
  // VAE 3x3 convolution (cuDNN) at 1024x1024's 128x128 mid resolution.
  {
    Tensor x = randn({1, 512, 128, 128}, dt), w = randn({512, 512, 3, 3}, dt, 0.02f),
           b = randn({512}, dt);
    add(
        "conv3x3/cudnn/1024_c512", [=] { ops::conv2d(x, w, b, ops::Conv2dOptions::same(1)); },
        2.0 * (2 * x.numel() + w.numel()), 2.0 * 512 * 128 * 128 * 512 * 9);
  }
  // The bandwidth reference on its own: a 1 GiB device-to-device copy.
  add_copy("copy/1GiB", 2.0 * (1u << 30));
}

}  // namespace

int main(int argc, char** argv) {
  if (!sd3::cuda_available()) {
    std::printf("kernels_bench: skipped, no usable CUDA GPU (%s)\n",
                sd3::cuda_unavailable_reason().c_str());
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  try {
    register_all();  // draws the inputs on the device: may fail before any benchmark runs
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernels_bench: setting up the inputs failed: %s\n", e.what());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
