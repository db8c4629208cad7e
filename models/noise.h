// Seeded Gaussian noise that reproduces PyTorch's CPU generator bit for bit, so `--seed S`
// gives the same initial latent as the reference's `torch.manual_seed(S); torch.randn(shape)`.
// See Note [PyTorch CPU randn] in noise.cpp for the exact algorithm.
#pragma once

#include <cstdint>
#include <random>

#include "engine/tensor.h"

namespace sd3::models {

// The state of torch's default CPU generator after `torch.manual_seed(seed)`: an mt19937
// seeded with the low 32 bits of the seed, plus the cached second value of the scalar
// Box-Muller path. Successive calls continue the stream exactly as successive torch calls on
// the global generator do (e.g. the reference's VAE-encode sample after the initial noise).
class TorchGenerator {
 public:
  explicit TorchGenerator(uint64_t seed);

  // torch.randn(shape, dtype=float32, device="cpu") on this generator: a contiguous f32 CPU
  // tensor. An empty shape ([]) gives one value, as torch's 0-d tensors do.
  Tensor randn(const Shape& shape);

  // One raw 32-bit draw of the engine (torch's generator->random()).
  uint32_t random_u32() { return engine_(); }

 private:
  void fill_normal_vectorised(float* data, int64_t n);
  float next_scalar_normal();

  std::mt19937 engine_;
  bool has_cached_normal_ = false;
  double cached_normal_ = 0.0;
};

// torch.manual_seed(seed); torch.randn(shape) as float32 on the CPU.
Tensor torch_randn(uint64_t seed, const Shape& shape);

}  // namespace sd3::models
