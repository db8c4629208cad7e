#include "models/random_weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace sd3::models {

namespace {

// Values are generated in chunks of this many elements, each chunk from its own generator
// seeded by (tensor seed, chunk index): any range can be produced on its own, in parallel,
// with the same result.
constexpr int64_t kChunk = 4096;
// Elements generated and written per step of the streaming writer (16 MB of f32).
constexpr int64_t kBlock = kChunk * 1024;

constexpr double kPi = 3.14159265358979323846;
constexpr double kBiasStd = 0.05;
constexpr double kNormGainStd = 0.1;

bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

// The key whose values a tensor shares: T5's shared.weight is the same matrix as
// encoder.embed_tokens.weight in the released files.
std::string value_key(const std::string& key) {
  if (key == "shared.weight") return "encoder.embed_tokens.weight";
  return key;
}

// One element of the 2-D sin-cos table [grid * grid, dim] (see sincos_pos_embed_2d).
float sincos_element(int64_t dim, int64_t grid, int64_t index) {
  const int64_t p = index / dim, d = index % dim;
  const int64_t half = dim / 2, quarter = dim / 4;
  // numpy's meshgrid(grid_w, grid_h): the first half encodes the column, the second the row.
  const double pos = static_cast<double>(d < half ? p % grid : p / grid);
  const int64_t k = d % half;
  const double omega = 1.0 / std::pow(10000.0, static_cast<double>(k % quarter) / quarter);
  return static_cast<float>(k < quarter ? std::sin(pos * omega) : std::cos(pos * omega));
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    SD3_CHECK(w > 0, "cannot write '", path, "': ", std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t hash_string(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) {
    x += 0x9e3779b97f4a7c15ull;
    s = mix64(x);
  }
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

// Box-Muller: two uniforms give two independent normals; the second is kept for the next call.
double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double a = 2.0 * kPi * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return r * std::cos(a);
}

std::vector<float> sincos_pos_embed_2d(int64_t dim, int64_t grid) {
  SD3_CHECK(dim > 0 && dim % 4 == 0 && grid > 0, "sin-cos position table: width ", dim,
            " must be a positive multiple of 4 and the grid ", grid, " positive");
  std::vector<float> out(static_cast<size_t>(grid * grid * dim));
  for (int64_t i = 0; i < grid * grid * dim; ++i) out[i] = sincos_element(dim, grid, i);
  return out;
}

InitKind init_kind(const std::string& key, const Shape& shape) {
  if (key == "pos_embed" || ends_with(key, ".pos_embed")) return InitKind::PosEmbed;
  if (ends_with(key, "bias") && key.find("relative_attention_bias") == std::string::npos)
    return InitKind::Bias;
  if (shape.size() == 1 && ends_with(key, "weight")) return InitKind::NormGain;
  if (key.find("embedding") != std::string::npos || key.find("embed_tokens") != std::string::npos ||
      key == "shared.weight" || key.find("relative_attention_bias") != std::string::npos ||
      key == "register" || shape.size() < 2)
    return InitKind::Embedding;
  return InitKind::FanIn;
}

void random_values(uint64_t seed, const std::string& component, const std::string& key,
                   const Shape& shape, int64_t begin, int64_t count, float* out) {
  const InitKind kind = init_kind(key, shape);
  if (kind == InitKind::PosEmbed) {
    // [1, M * M, dim]: the real table, no randomness.
    SD3_CHECK(shape.size() == 3 && shape[0] == 1, "pos_embed shape ", shape_str(shape),
              " is not [1, M*M, hidden]");
    const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(double(shape[1]))));
    SD3_CHECK(grid * grid == shape[1], "pos_embed shape ", shape_str(shape), ": ", shape[1],
              " positions is not a square grid");
    for (int64_t i = 0; i < count; ++i) out[i] = sincos_element(shape[2], grid, begin + i);
    return;
  }
  double mean = 0.0, std = 1.0;
  switch (kind) {
    case InitKind::FanIn: {
      const int64_t fan_in = shape.empty() || shape[0] == 0 ? 1 : shape_numel(shape) / shape[0];
      std = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
      break;
    }
    case InitKind::Bias: std = kBiasStd; break;
    case InitKind::NormGain:
      mean = 1.0;
      std = kNormGainStd;
      break;
    default: break;
  }
  const uint64_t tensor_seed =
      mix64(seed ^ mix64(hash_string(component) ^ mix64(hash_string(value_key(key)))));
  int64_t i = begin;
  const int64_t end = begin + count;
  while (i < end) {
    const int64_t chunk = i / kChunk;
    const int64_t chunk_end = std::min(end, (chunk + 1) * kChunk);
    Rng rng(mix64(tensor_seed + static_cast<uint64_t>(chunk)));
    for (int64_t skip = chunk * kChunk; skip < i; ++skip) rng.normal();
    for (; i < chunk_end; ++i) out[i - begin] = static_cast<float>(mean + std * rng.normal());
  }
}

std::vector<SafetensorsWriter::Entry> random_checkpoint_entries(
    const std::vector<RandomComponent>& components, StDType dtype) {
  std::vector<SafetensorsWriter::Entry> entries;
  for (const auto& c : components)
    for (const auto& s : c.specs) entries.push_back({c.prefix + s.key, dtype, s.shape});
  return entries;
}

void write_random_checkpoint(const std::string& path,
                             const std::vector<RandomComponent>& components, StDType dtype,
                             uint64_t seed, const std::map<std::string, std::string>& metadata) {
  DType engine_dtype;
  switch (dtype) {
    case StDType::F32: engine_dtype = DType::F32; break;
    case StDType::F16: engine_dtype = DType::F16; break;
    case StDType::BF16: engine_dtype = DType::BF16; break;
    default: fail("random checkpoints are F32, F16 or BF16, not ", st_dtype_name(dtype));
  }
  SafetensorsWriter writer(path, random_checkpoint_entries(components, dtype), metadata);
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  for (const auto& c : components) {
    for (const auto& s : c.specs) {
      writer.begin(c.prefix + s.key);
      const int64_t n = shape_numel(s.shape);
      for (int64_t begin = 0; begin < n; begin += kBlock) {
        const int64_t count = std::min(kBlock, n - begin);
        values.resize(static_cast<size_t>(count));
        bytes.resize(static_cast<size_t>(count) * dtype_size(engine_dtype));
        const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
        for (int64_t k = 0; k < chunks; ++k) {
          const int64_t off = k * kChunk;
          random_values(seed, c.name, s.key, s.shape, begin + off, std::min(kChunk, count - off),
                        values.data() + off);
        }
        convert_elements(values.data(), DType::F32, bytes.data(), engine_dtype,
                         static_cast<size_t>(count));
        writer.append(bytes.data(), bytes.size());
      }
    }
  }
  writer.commit();
}

std::map<std::string, Tensor> random_weights(const RandomComponent& component, DType dtype,
                                             uint64_t seed) {
  std::map<std::string, Tensor> out;
  for (const auto& s : component.specs) {
    const int64_t n = shape_numel(s.shape);
    std::vector<float> values(static_cast<size_t>(n));
    const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t off = k * kChunk;
      random_values(seed, component.name, s.key, s.shape, off, std::min(kChunk, n - off),
                    values.data() + off);
    }
    out[s.key] = Tensor::from_floats(values, s.shape, dtype);
  }
  return out;
}

void write_sparse_safetensors(const std::string& path,
                              const std::vector<SafetensorsWriter::Entry>& entries,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    SD3_CHECK(!header.contains(e.key), "duplicate tensor name '", e.key, "' for '", path, "'");
    header[e.key] = {{"dtype", st_dtype_name(e.dtype)},
                     {"shape", e.shape},
                     {"data_offsets", {offset, offset + e.nbytes()}}};
    offset += e.nbytes();
  }
  std::string json = header.dump();
  while (json.size() % 8 != 0) json.push_back(' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((json.size() >> (8 * i)) & 0xff);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SD3_CHECK(fd >= 0, "cannot create '", path, "': ", std::strerror(errno));
  try {
    write_all(fd, len, 8, path);
    write_all(fd, json.data(), json.size(), path);
    SD3_CHECK(::ftruncate(fd, static_cast<off_t>(8 + json.size() + offset)) == 0, "cannot extend '",
              path, "' to ", 8 + json.size() + offset, " bytes: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

}  // namespace sd3::models
