// The whole text-to-image (and image-to-image) job: prompt -> tokens -> CLIP-L, CLIP-G, T5
// -> context and pooled y -> seeded noise -> flow-matching sampling of the MM-DiT with
// classifier-free guidance -> latent un-scaling -> VAE decode -> 8-bit RGB.
//
// Components are loaded stage by stage (text encoders, then the MM-DiT, then the VAE) from
// the files found by ModelFiles, so a model larger than RAM plus its encoders still runs:
// weights are zero-copy views of the memory-mapped files on the CPU, and encoders can be
// dropped once the prompt is encoded (free_encoders).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/checkpoint.h"
#include "models/image.h"
#include "models/sampler.h"

namespace sd3::models {

struct PipelineOptions {
  ModelPaths paths;
  // Tokenizer files: a CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz, or vocab.json with
  // merges.txt beside it) and the T5 spiece.model; empty = look next to the model files the
  // way a Hugging Face download lays them out (tokenizer/, tokenizer_2/, tokenizer_3/).
  std::string clip_vocab;
  std::string t5_model;
  Device device = Device::cpu();
  // Drop the text encoders after each prompt is encoded (they are reloaded for the next).
  bool free_encoders = false;
  // Run without T5: its part of the context is zeros of [77, D].
  bool use_t5 = true;
  // Sampler defaults preset (see defaults_for); empty = from the detected architecture.
  std::string preset;
};

// One generation. Unset optionals take the model's defaults (defaults_for).
struct GenerateParams {
  std::string prompt;
  std::string negative_prompt;  // empty = the reference's unconditional get_cond("")
  int64_t width = 0;            // 0 = 1024; must be a multiple of 16
  int64_t height = 0;
  std::optional<int> steps;
  std::optional<float> cfg_scale;
  std::optional<float> shift;
  std::optional<SamplerKind> sampler;
  uint64_t seed = 0;
  // Skip-layer guidance: scale 0 disables it; unset = the preset's (off unless asked).
  std::optional<float> slg_scale;
  std::optional<std::vector<int>> skip_layers;
  std::optional<double> slg_start, slg_end;
  // img2img: an RGB image of width x height, and how much of the schedule to run (0, 1].
  std::optional<Image> init_image;
  double strength = 0.75;
};

// What a generation actually used, after defaults.
struct ResolvedParams {
  std::string prompt, negative_prompt;
  int64_t width = 0, height = 0;
  int steps = 0;
  float cfg_scale = 0, shift = 0;
  SamplerKind sampler = SamplerKind::Euler;
  uint64_t seed = 0;
  SkipLayerGuidance slg;
  bool img2img = false;
  double strength = 1.0;
  std::string mmdit_arch;
  std::string preset;
};

struct StageTiming {
  std::string stage;  // "load_text", "encode", "load_mmdit", "sample", "load_vae", "decode", ...
  double seconds = 0;
};

struct GenerateResult {
  Image image;
  ResolvedParams params;
  std::vector<StageTiming> timings;
  size_t peak_host_bytes = 0;    // peak resident set of the process (getrusage)
  size_t peak_device_bytes = 0;  // peak of the CUDA caching allocator (0 on the CPU)
};

// Progress: the stage, and for "sample" the step (1-based, after it finished) and total.
struct Progress {
  std::string stage;
  int step = 0;
  int total = 0;
  double stage_seconds = 0;  // since the stage began
};
// Return false to cancel; generate() then throws GenerationCancelled.
using ProgressFn = std::function<bool(const Progress&)>;

class GenerationCancelled : public Error {
 public:
  GenerationCancelled() : Error("generation cancelled") {}
};

class Pipeline {
 public:
  // Opens and validates the files, finds the components and the tokenizer files; loads no
  // weights yet. Errors name the file, the component or the flag at fault.
  static std::unique_ptr<Pipeline> open(const PipelineOptions& options);
  ~Pipeline();

  GenerateResult generate(const GenerateParams& params, const ProgressFn& progress = {});

  const ModelFiles& files() const;
  // Defaults of the detected model (or the preset).
  const SamplerDefaults& defaults() const;
  const std::string& mmdit_arch() const;
  // Warnings gathered while opening (extra tensors, fp8 upcasts, a missing T5, ...).
  const std::vector<std::string>& warnings() const;

 private:
  struct State;
  explicit Pipeline(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// Checks a size (width or height) for the MM-DiT: positive and a multiple of 16.
void check_image_size(int64_t value, const char* what);

}  // namespace sd3::models
