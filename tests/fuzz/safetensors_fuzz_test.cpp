// Deterministic fuzzing of the safetensors reader, the model loaders and the component finder:
// random mutations of valid files' headers (bit flips, JSON punctuation, extreme numbers,
// truncation, a lying length field). Every outcome must be sd3::Error or success; any other
// exception fails the test, and a crash fails the binary. Bounded by iterations and wall time.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <typeinfo>

#include "common/files.h"
#include "common/test_data.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/checkpoint.h"
#include "models/random_weights.h"

namespace sd3 {
namespace {

// Defaults keep CI short; SD3_FUZZ_ITERATIONS / SD3_FUZZ_SEED run a longer or different soak.
constexpr int kIterations = 10000;
constexpr double kMaxSeconds = 30.0;

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// Valid starting points: a mixed-dtype file with metadata, and a tiny CLIP-L checkpoint (so
// the component finder and the loader's spec checks run on the mutants too).
std::vector<std::string> seed_files(const std::string& dir) {
  std::vector<std::string> out;
  const std::string mixed = dir + "/mixed.safetensors";
  write_safetensors(mixed,
                    {{"a.weight", Tensor::from_floats({1, 2, 3, 4, 5, 6}, {2, 3})},
                     {"b.bias", Tensor::from_floats({1, 2, 3}, {3}, DType::F16)},
                     {"c", Tensor::from_floats({0.5f, -1.0f}, {2}, DType::BF16)},
                     {"d.ids", Tensor::from_ints({7, 8, 9}, {3}, DType::I64)}},
                    {{"format", "pt"}, {"num_attention_heads", "2"}});
  out.push_back(test::read_file(mixed));

  models::ClipConfig cfg = models::ClipConfig::clip_l();
  cfg.vocab_size = 16;
  cfg.max_positions = 8;
  cfg.hidden_size = 8;
  cfg.intermediate_size = 16;
  cfg.num_heads = 2;
  cfg.num_layers = 2;
  const std::string clip = dir + "/clip.safetensors";
  models::write_random_checkpoint(clip, {{"clip_l", "", models::clip_weight_specs(cfg)}},
                                  StDType::F16, 1, {{"num_attention_heads", "2"}});
  out.push_back(test::read_file(clip));
  return out;
}

uint64_t header_len(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 0; i < 8 && i < static_cast<int>(bytes.size()); ++i)
    n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  return n;
}

// Applies one random mutation, mostly inside the header; returns what it did.
std::string mutate(std::string& bytes, models::Rng& rng) {
  auto pick = [&](uint64_t n) { return n == 0 ? 0 : rng.next() % n; };
  const uint64_t hend = std::min<uint64_t>(bytes.size(), 8 + header_len(bytes));
  static const char kPunct[] = "{}[]\":,.-+eE0123456789 aFBIU_";
  static const char* kNumbers[] = {"0",
                                   "1",
                                   "-1",
                                   "2147483648",
                                   "4294967296",
                                   "9223372036854775807",
                                   "18446744073709551615",
                                   "18446744073709551616",
                                   "1e30",
                                   "3.5",
                                   "-0",
                                   "99999999999999999999999999999"};
  switch (pick(6)) {
    case 0: {  // flip one bit
      const uint64_t at = pick(hend);
      bytes[at] = static_cast<char>(bytes[at] ^ (1 << pick(8)));
      return "bit flip at " + std::to_string(at);
    }
    case 1: {  // a JSON-significant character
      const uint64_t at = 8 + pick(hend > 8 ? hend - 8 : 1);
      if (at < bytes.size()) bytes[at] = kPunct[pick(sizeof kPunct - 1)];
      return "punctuation at " + std::to_string(at);
    }
    case 2: {  // replace a number in the header with an extreme one (length field adjusted)
      const uint64_t start = 8 + pick(hend > 8 ? hend - 8 : 1);
      const size_t at = bytes.find_first_of("0123456789", start);
      if (at == std::string::npos || at >= hend) return "no number";
      const size_t end = bytes.find_first_not_of("0123456789", at);
      const std::string num = kNumbers[pick(sizeof kNumbers / sizeof *kNumbers)];
      bytes.replace(at, end - at, num);
      const uint64_t len = header_len(bytes) + num.size() - (end - at);
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
      return "number " + num + " at " + std::to_string(at);
    }
    case 3: {  // truncate anywhere
      const uint64_t at = pick(bytes.size() + 1);
      bytes.resize(at);
      return "truncate to " + std::to_string(at);
    }
    case 4: {  // a lying length field
      uint64_t len = header_len(bytes);
      const int64_t delta = static_cast<int64_t>(pick(33)) - 16;
      len = pick(4) == 0 ? rng.next() : len + delta;
      for (int i = 0; i < 8 && i < static_cast<int>(bytes.size()); ++i)
        bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
      return "length " + std::to_string(len);
    }
    default: {  // delete a few header bytes, keeping the length consistent
      const uint64_t at = 8 + pick(hend > 8 ? hend - 8 : 1);
      if (at >= bytes.size()) return "nothing to delete";
      const uint64_t n = std::min<uint64_t>(1 + pick(8), bytes.size() > at ? bytes.size() - at : 0);
      bytes.erase(at, n);
      const uint64_t len = header_len(bytes) >= n ? header_len(bytes) - n : 0;
      for (int i = 0; i < 8 && i < static_cast<int>(bytes.size()); ++i)
        bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
      return "delete " + std::to_string(n) + " at " + std::to_string(at);
    }
  }
}

// A file passed straight to a model's loader skips the component finder: each loader on its
// own must refuse a mutant with sd3::Error or load it.
void load_directly(const WeightStore& w) {
  const std::function<void()> loaders[] = {
      [&] { models::ClipTextModel::load(w); }, [&] { models::T5Encoder::load(w); },
      [&] { models::Vae::load(w); }, [&] { models::MMDiT::load(w); }};
  for (const auto& load : loaders) {
    try {
      load();
    } catch (const Error&) {
    }
  }
}

// Everything a user's file goes through: open, load every tensor, each model's loader, find
// components, load them.
void exercise(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  for (const auto& t : f->tensors()) f->load(t, DType::F32);
  load_directly(WeightStore({f}));
  const models::CheckpointContents c = models::find_components(WeightStore({f}));
  for (const auto& comp : c.components)
    if (comp.problems.empty()) comp.weights.load_all(comp.specs);
}

TEST(SafetensorsFuzz, MutatedHeadersThrowSd3ErrorOrLoad) {
  const test::AddressSpaceLimit limit(rlim_t{8} << 30);
  const std::string dir = test::temp_dir();
  const std::vector<std::string> seeds = seed_files(dir);
  const int64_t iterations = env_int("SD3_FUZZ_ITERATIONS", kIterations);
  const double max_seconds = kMaxSeconds * std::max<double>(1.0, iterations / double(kIterations));
  models::Rng rng(static_cast<uint64_t>(env_int("SD3_FUZZ_SEED", 20240611)));
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0, rejected = 0;
  for (; done < iterations; ++done) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
        max_seconds)
      break;
    std::string bytes = seeds[rng.next() % seeds.size()];
    std::string what;
    const int n = 1 + static_cast<int>(rng.next() % 3);
    for (int m = 0; m < n; ++m) what += mutate(bytes, rng) + "; ";
    // A fresh name each time: rewriting one file in place makes ext4 flush it on close.
    const std::string path = dir + "/mutant" + std::to_string(done) + ".safetensors";
    test::write_file(path, bytes);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      exercise(path);
    } catch (const Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << done << " (" << what << "): non-sd3 exception "
                    << typeid(e).name() << ": " << e.what();
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(secs, 1.0) << "iteration " << done << " (" << what << ") took " << secs << " s";
    std::remove(path.c_str());
  }
  EXPECT_GE(done, 500) << "too few iterations in the time bound";
  EXPECT_GT(rejected, 0);
  std::printf("[ fuzz     ] %lld mutants, %lld rejected with sd3::Error, %lld accepted\n",
              static_cast<long long>(done), static_cast<long long>(rejected),
              static_cast<long long>(done - rejected));
}

}  // namespace
}  // namespace sd3
