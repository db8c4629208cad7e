// Random weights at the real shapes, for benchmarks, demos and tests that need no download.
//
// Values follow the fixture generator's conventions (../shared/fixtures/README.md): weights of
// rank >= 2 N(0, 1/fan_in), embeddings N(0, 1), biases N(0, 0.05^2), norm gains
// 1 + N(0, 0.1^2), and the MMDiT's pos_embed the real 2-D sin-cos table, so a random model
// still produces activations of a sensible scale. Every value is a function of (seed, the
// component's name, the key relative to its prefix, the element index) only: the same seed
// gives the same bytes whatever the thread count, and a component has the same weights in a
// combined file as in its own file.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "engine/weights.h"

namespace sd3::models {

// xoshiro256** seeded through splitmix64, with Box-Muller normals. Small and portable, so the
// same seed gives the same weights on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1), 53 random bits
  double normal();   // standard normal

 private:
  uint64_t s_[4];
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// splitmix64 finaliser: a well-mixed 64-bit hash of x.
uint64_t mix64(uint64_t x);
// FNV-1a of a string, for seeding per key.
uint64_t hash_string(const std::string& s);

// The reference's get_2d_sincos_pos_embed(dim, grid) as a row-major [grid * grid, dim] table:
// for the patch at row i, column j, the first dim/2 values encode j and the last dim/2
// encode i, each half as [sin(p * w_k), cos(p * w_k)] with w_k = 10000^(-k / (dim/4)),
// k < dim/4, computed in double and rounded to float.
std::vector<float> sincos_pos_embed_2d(int64_t dim, int64_t grid);

// How a tensor is initialised, decided from its key and shape.
enum class InitKind { FanIn, Embedding, Bias, NormGain, PosEmbed };
InitKind init_kind(const std::string& key, const Shape& shape);

// Elements [begin, begin + count) of the random tensor `key` (relative to its component's
// prefix) of component `component` ("mmdit", "clip_l", ...), as float.
void random_values(uint64_t seed, const std::string& component, const std::string& key,
                   const Shape& shape, int64_t begin, int64_t count, float* out);

// One component of a file to write: the tensors of `specs` stored under `prefix`.
struct RandomComponent {
  std::string name;  // seeds the values: "mmdit", "vae", "clip_l", "clip_g", "t5xxl"
  std::string prefix;
  std::vector<WeightSpec> specs;
};

// Header entries (full keys, in file order) for the components stored as `dtype`.
std::vector<SafetensorsWriter::Entry> random_checkpoint_entries(
    const std::vector<RandomComponent>& components, StDType dtype);

// Writes a checkpoint of random weights tensor by tensor (never more than a few MB in memory,
// whatever the model size), atomically. dtype: F32, F16 or BF16.
void write_random_checkpoint(const std::string& path,
                             const std::vector<RandomComponent>& components, StDType dtype,
                             uint64_t seed, const std::map<std::string, std::string>& metadata);

// The same weights in memory (keys relative to the component), e.g. for a benchmark.
std::map<std::string, Tensor> random_weights(const RandomComponent& component, DType dtype,
                                             uint64_t seed);

// A safetensors file with a real header and no written data: the file is extended to its
// full size with ftruncate, so it costs no disk (a sparse file) and reads as zeros. For tests
// and for checking how a header is recognised before writing the data.
void write_sparse_safetensors(const std::string& path,
                              const std::vector<SafetensorsWriter::Entry>& entries,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace sd3::models
