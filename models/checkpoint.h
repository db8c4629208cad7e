// Finding SD3 components in the files a user passes.
//
// Components are recognised by structure only (key names and shapes, never file names): a
// marker key locates a component and its key prefix, the model's own *_config_from_weights
// derives its configuration, and the family follows from that configuration:
//
//   marker key (after the prefix)                     component   arch
//   x_embedder.proj.weight                            MMDiT       sd35_medium_mmditx with
//                                                                 x_block.attn2 (MMDiT-X),
//                                                                 else sd35_large_mmdit with
//                                                                 QK RMSNorm, else
//                                                                 sd3_medium_mmdit
//   encoder.conv_in.weight / decoder.conv_in.weight   VAE         sd3_vae
//   text_model.embeddings.token_embedding.weight      CLIP        clip_g / clip_l (as
//                                                                 clip_config_from_weights
//                                                                 decides: metadata, the
//                                                                 released widths, else
//                                                                 text_projection = clip_g)
//   encoder.block.0.layer.0.SelfAttention.q.weight    T5          t5xxl
//
// so reduced-size files of the same architectures are recognised too. The prefix is whatever
// precedes the marker ('' or ending in '.'): `model.diffusion_model.`, `first_stage_model.`,
// `text_encoders.clip_l.transformer.`, ... in the single-file releases, bare in separate files.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "engine/safetensors.h"
#include "engine/weights.h"
#include "models/clip.h"
#include "models/mmdit.h"
#include "models/t5.h"
#include "models/vae.h"

namespace sd3::models {

// The roles the pipeline needs one of each.
enum class ComponentKind { MMDiT, Vae, ClipL, ClipG, T5 };
constexpr ComponentKind kAllComponentKinds[] = {ComponentKind::MMDiT, ComponentKind::Vae,
                                                ComponentKind::ClipL, ComponentKind::ClipG,
                                                ComponentKind::T5};
// "mmdit", "vae", "clip_l", "clip_g", "t5xxl"
const char* component_kind_name(ComponentKind kind);
// The runner flag that supplies a component on its own file ("--vae", ...; "-m/--model" for
// the MMDiT).
const char* component_flag(ComponentKind kind);

// Architecture names exactly as ../shared/schemas spells them.
constexpr const char* kArchSd3MediumMMDiT = "sd3_medium_mmdit";
constexpr const char* kArchSd35LargeMMDiT = "sd35_large_mmdit";
constexpr const char* kArchSd35MediumMMDiTX = "sd35_medium_mmditx";
constexpr const char* kArchSd3Vae = "sd3_vae";
constexpr const char* kArchClipL = "clip_l";
constexpr const char* kArchClipG = "clip_g";
constexpr const char* kArchT5Xxl = "t5xxl";

// The MMDiT family of a configuration (by structure: MMDiT-X self-attention, QK norm).
const char* mmdit_arch(const MMDiTConfig& cfg);

using ComponentConfig = std::variant<MMDiTConfig, VaeConfig, ClipConfig, T5Config>;

// The configuration as a JSON object, with the field names of the schemas and the fixture
// manifest ("depth", "hidden_size", "qk_norm": "rms" | null, "ch_mult", ...).
nlohmann::json config_to_json(const ComponentConfig& cfg);

// One recognised component of a file (or of a set of files read as one key space).
struct Component {
  ComponentKind kind = ComponentKind::MMDiT;
  std::string arch;     // schema spelling, e.g. "sd35_large_mmdit"
  std::string prefix;   // e.g. "model.diffusion_model." or ""
  WeightStore weights;  // the files, viewed through `prefix`: what X::load takes
  ComponentConfig config;
  std::vector<WeightSpec> specs;  // what the loader reads, keys relative to `prefix`
  // Elements and tensors of every key attributed to the component (specs and extras).
  int64_t param_count = 0;
  int64_t tensor_count = 0;
  std::vector<std::string> dtypes;  // stored dtypes of its tensors, sorted ("F16", "F8_E4M3")
  // Full keys of tensors attributed to the component that the loader does not read
  // (position_ids, logit_scale, fp8 scale tensors, ...): listed in a warning, never fatal.
  std::vector<std::string> extras;
  // One line per missing or misshapen tensor (naming key, expected and found shape); a
  // component with problems cannot be loaded.
  std::vector<std::string> problems;

  const MMDiTConfig& mmdit() const;
  const VaeConfig& vae() const;
  const ClipConfig& clip() const;
  const T5Config& t5() const;
  // "sd3_medium_mmdit at prefix 'model.diffusion_model.' in 'a.safetensors'"
  std::string describe() const;
};

// A marker key whose component could not be read (its config derivation threw).
struct UnrecognisedComponent {
  std::string kind_guess;  // "mmdit", "vae", "clip", "t5"
  std::string prefix;
  std::string reason;
};

// Everything recognised in one file (or in a set of files read as one key space).
struct CheckpointContents {
  WeightStore store;  // the files, no prefix
  std::vector<Component> components;
  std::vector<UnrecognisedComponent> unrecognised;
  // Keys that no component claims.
  std::vector<std::string> unassigned;
};

// Finds every component in `store` (its prefix is ignored: all keys are searched).
CheckpointContents find_components(const WeightStore& store);
// Opens (and validates) one safetensors file and finds its components.
CheckpointContents inspect_checkpoint(const std::string& path);

// The files of one generation run: -m/--model files (any mix) and the explicit per-component
// overrides of the runner (--clip-l, --clip-g, --t5xxl, --vae).
struct ModelPaths {
  std::vector<std::string> models;
  std::string clip_l;
  std::string clip_g;
  std::string t5xxl;
  std::string vae;
};

// One component of each kind, chosen from the files. Each path is opened once, even when it is
// named twice. An override file contributes only its component of that kind (the same kind in
// the -m files is then ignored, with a warning). Errors (sd3::Error, one line): a file that is
// not valid safetensors, a file holding no SD3 component, an override file without the
// component it was given for, two components of the same kind without an override to choose,
// and a chosen component with missing or misshapen tensors.
class ModelFiles {
 public:
  static ModelFiles open(const ModelPaths& paths);

  // The component of that kind, or nullptr.
  const Component* find(ComponentKind kind) const;
  // The component of that kind; throws naming the component, the files searched and the
  // flag that supplies it.
  const Component& require(ComponentKind kind) const;
  // Unexpected tensors, ignored components, fp8 upcasts, unassigned keys: one line each, for
  // the caller to print.
  const std::vector<std::string>& warnings() const { return warnings_; }
  // Every file opened, with what was found in it, in the order given.
  const std::vector<std::pair<std::string, CheckpointContents>>& files() const { return files_; }

 private:
  std::vector<std::pair<std::string, CheckpointContents>> files_;
  std::vector<std::optional<Component>> chosen_ =
      std::vector<std::optional<Component>>(std::size(kAllComponentKinds));
  std::vector<std::string> warnings_;
};

}  // namespace sd3::models
