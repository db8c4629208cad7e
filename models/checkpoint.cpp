#include "models/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "engine/error.h"
#include "models/weight_keys.h"

namespace sd3::models {

namespace {

// A key whose presence locates a component: the prefix is what precedes `suffix`.
struct Marker {
  const char* suffix;
  const char* guess;  // what the component looks like, for messages
};
constexpr Marker kMarkers[] = {
    {"x_embedder.proj.weight", "mmdit"},
    {"encoder.conv_in.weight", "vae"},
    {"decoder.conv_in.weight", "vae"},
    {"text_model.embeddings.token_embedding.weight", "clip"},
    {"encoder.block.0.layer.0.SelfAttention.q.weight", "t5"},
};

bool starts_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::string quoted_list(const std::vector<std::string>& items, size_t max_items) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < max_items; ++i) {
    if (i) out += ", ";
    out += "'" + items[i] + "'";
  }
  if (items.size() > max_items) out += str_cat(" and ", items.size() - max_items, " more");
  return out;
}

// Config, specs and arch of the component a marker points at; throws when it cannot be read.
void derive(const std::string& guess, Component& c) {
  if (guess == "mmdit") {
    MMDiTConfig cfg = mmdit_config_from_weights(c.weights);
    c.kind = ComponentKind::MMDiT;
    c.arch = mmdit_arch(cfg);
    c.specs = mmdit_weight_specs(cfg);
    c.config = cfg;
  } else if (guess == "vae") {
    VaeConfig cfg = vae_config_from_weights(c.weights);
    c.kind = ComponentKind::Vae;
    c.arch = kArchSd3Vae;
    // A file may hold only one half (a decoder-only VAE): check what is there.
    const bool has_encoder = c.weights.has("encoder.conv_in.weight");
    const bool has_decoder = c.weights.has("decoder.conv_in.weight");
    if (has_encoder && has_decoder) {
      c.specs = vae_weight_specs(cfg);
    } else {
      c.specs = has_encoder ? vae_encoder_weight_specs(cfg) : vae_decoder_weight_specs(cfg);
    }
    c.config = cfg;
  } else if (guess == "clip") {
    ClipConfig cfg = clip_config_from_weights(c.weights);
    c.kind = cfg.variant == ClipVariant::G ? ComponentKind::ClipG : ComponentKind::ClipL;
    c.arch = cfg.variant == ClipVariant::G ? kArchClipG : kArchClipL;
    c.specs = clip_weight_specs(cfg);
    c.config = cfg;
  } else {
    T5Config cfg = t5_config_from_weights(c.weights);
    c.kind = ComponentKind::T5;
    c.arch = kArchT5Xxl;
    c.specs = t5_weight_specs(cfg);
    c.config = cfg;
  }
}

// One line per spec tensor that is missing or has another shape.
std::vector<std::string> check_specs(const Component& c) {
  std::vector<std::string> problems;
  for (const WeightSpec& s : c.specs) {
    const TensorInfo* info = c.weights.info(s.key);
    if (!info) {
      problems.push_back(str_cat("missing tensor '", c.prefix + s.key, "' (expected shape ",
                                 shape_str(s.shape), ")"));
    } else if (info->shape != s.shape) {
      problems.push_back(str_cat("tensor '", c.prefix + s.key, "' has shape ",
                                 shape_str(info->shape), ", expected ", shape_str(s.shape)));
    }
  }
  return problems;
}

// The dotted ancestors of a prefix, longest first, without the empty one:
// "a.b.c." -> "a.b.", "a.".
std::vector<std::string> prefix_ancestors(const std::string& prefix) {
  std::vector<std::string> out;
  if (prefix.size() < 2) return out;
  size_t end = prefix.size() - 1;  // the trailing '.'
  while (true) {
    const size_t dot = prefix.rfind('.', end - 1);
    if (dot == std::string::npos || dot == 0) break;
    out.push_back(prefix.substr(0, dot + 1));
    end = dot;
  }
  return out;
}

}  // namespace

namespace {

// What each kind is called, in ComponentKind order.
struct KindNames {
  const char* name;   // "clip_l": sd3-inspect, sd3-randckpt
  const char* flag;   // the runner flag that supplies it on its own file
  const char* title;  // "CLIP-L text encoder", for messages
};
constexpr KindNames kKindNames[] = {
    {"mmdit", "-m/--model", "diffusion model (MMDiT)"},
    {"vae", "--vae", "VAE"},
    {"clip_l", "--clip-l", "CLIP-L text encoder"},
    {"clip_g", "--clip-g", "CLIP-G text encoder"},
    {"t5xxl", "--t5xxl", "T5-XXL text encoder"},
};
static_assert(std::size(kKindNames) == std::size(kAllComponentKinds), "a kind without names");

const KindNames& names_of(ComponentKind kind) {
  static constexpr KindNames kUnknown = {"?", "?", "?"};
  const size_t i = static_cast<size_t>(kind);
  return i < std::size(kKindNames) ? kKindNames[i] : kUnknown;
}

const char* component_title(ComponentKind kind) {
  return names_of(kind).title;
}

// The component's configuration as a `Config`, or an error saying it is not `what`.
template <class Config>
const Config& config_as(const Component& c, const char* what) {
  const auto* config = std::get_if<Config>(&c.config);
  SD3_CHECK(config != nullptr, c.describe(), " is not ", what);
  return *config;
}

}  // namespace

const char* component_kind_name(ComponentKind kind) {
  return names_of(kind).name;
}

const char* component_flag(ComponentKind kind) {
  return names_of(kind).flag;
}

namespace {

// A float as the shortest decimal that reads back as the same float (1e-05, not
// 9.999999747378752e-06), so configs print and compare like the schemas' numbers.
double float_json(float f) {
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

}  // namespace

const char* mmdit_arch(const MMDiTConfig& cfg) {
  if (!cfg.x_block_self_attn_layers.empty()) return kArchSd35MediumMMDiTX;
  if (cfg.qk_norm) return kArchSd35LargeMMDiT;
  return kArchSd3MediumMMDiT;
}

nlohmann::json config_to_json(const ComponentConfig& config) {
  nlohmann::json j = nlohmann::json::object();
  if (const auto* m = std::get_if<MMDiTConfig>(&config)) {
    j["depth"] = m->depth;
    j["hidden_size"] = m->hidden_size;
    j["num_heads"] = m->num_heads;
    j["patch_size"] = m->patch_size;
    j["in_channels"] = m->in_channels;
    j["out_channels"] = m->out_channels;
    j["pos_embed_max_size"] = m->pos_embed_max_size;
    j["num_patches"] = m->pos_embed_max_size * m->pos_embed_max_size;
    j["adm_in_channels"] = m->adm_in_channels;
    j["context_in_features"] = m->context_in_features;
    j["qk_norm"] = m->qk_norm ? nlohmann::json("rms") : nlohmann::json(nullptr);
    j["x_block_self_attn_layers"] = m->x_block_self_attn_layers;
    j["register_length"] = m->register_length;
  } else if (const auto* v = std::get_if<VaeConfig>(&config)) {
    j["ch"] = v->ch;
    j["ch_mult"] = v->ch_mult;
    j["num_res_blocks"] = v->num_res_blocks;
    j["z_channels"] = v->z_channels;
    j["in_channels"] = v->in_channels;
    j["out_ch"] = v->out_channels;
    j["groupnorm_groups"] = v->groups;
    j["groupnorm_eps"] = float_json(v->eps);
  } else if (const auto* c = std::get_if<ClipConfig>(&config)) {
    j["hidden_act"] = c->hidden_act == ops::Activation::QuickGelu ? "quick_gelu" : "gelu";
    j["hidden_size"] = c->hidden_size;
    j["intermediate_size"] = c->intermediate_size;
    j["num_attention_heads"] = c->num_heads;
    j["num_hidden_layers"] = c->num_layers;
    j["vocab_size"] = c->vocab_size;
    j["max_position_embeddings"] = c->max_positions;
    j["layer_norm_eps"] = float_json(c->layer_norm_eps);
    j["text_projection"] = c->has_text_projection;
    if (c->has_text_projection) j["projection_dim"] = c->projection_dim;
  } else if (const auto* t = std::get_if<T5Config>(&config)) {
    j["d_ff"] = t->d_ff;
    j["d_model"] = t->d_model;
    j["num_heads"] = t->num_heads;
    j["num_layers"] = t->num_layers;
    j["vocab_size"] = t->vocab_size;
    j["d_kv"] = t->d_kv;
    j["relative_attention_num_buckets"] = t->num_buckets;
    j["relative_attention_max_distance"] = t->max_distance;
  }
  return j;
}

const MMDiTConfig& Component::mmdit() const {
  return config_as<MMDiTConfig>(*this, "an MMDiT");
}

const VaeConfig& Component::vae() const {
  return config_as<VaeConfig>(*this, "a VAE");
}

const ClipConfig& Component::clip() const {
  return config_as<ClipConfig>(*this, "a CLIP text encoder");
}

const T5Config& Component::t5() const {
  return config_as<T5Config>(*this, "a T5 encoder");
}

std::string Component::describe() const {
  std::string files;
  for (size_t i = 0; i < weights.files().size(); ++i) {
    if (i) files += ", ";
    files += "'" + weights.files()[i]->path() + "'";
  }
  return str_cat(arch, prefix.empty() ? std::string(" (bare keys)") : " at prefix '" + prefix + "'",
                 " in ", files);
}

CheckpointContents find_components(const WeightStore& store) {
  CheckpointContents out;
  out.store = WeightStore(store.files());
  const std::vector<std::string> keys = out.store.keys();

  // Candidate (guess, prefix) pairs, in key order, each prefix once.
  std::vector<std::pair<std::string, std::string>> candidates;
  std::set<std::string> seen_prefix_guess;
  for (const std::string& key : keys) {
    for (const Marker& m : kMarkers) {
      if (!ends_with(key, m.suffix)) continue;
      const std::string prefix =
          key.substr(0, key.size() - std::char_traits<char>::length(m.suffix));
      if (!prefix.empty() && prefix.back() != '.') continue;
      if (seen_prefix_guess.insert(std::string(m.guess) + "|" + prefix).second)
        candidates.emplace_back(m.guess, prefix);
    }
  }

  // Owners of keys: every candidate prefix, recognised or not (index into `owners`).
  struct Owner {
    std::string prefix;
    int component = -1;  // index into out.components, or -1 for an unrecognised candidate
  };
  std::vector<Owner> owners;
  for (const auto& [guess, prefix] : candidates) {
    Component c;
    c.prefix = prefix;
    c.weights = out.store.with_prefix(prefix);
    try {
      // Any implausible index (Note [Layer counts from key names]) marks the candidate
      // unreadable, even where its derivation would not read that index.
      check_key_indices(c.weights);
      derive(guess, c);
    } catch (const Error& e) {
      out.unrecognised.push_back({guess, prefix, e.what()});
      owners.push_back({prefix, -1});
      continue;
    }
    c.problems = check_specs(c);
    owners.push_back({prefix, static_cast<int>(out.components.size())});
    out.components.push_back(std::move(c));
  }

  // Each key belongs to the owner with the longest prefix of it; a key under none of them
  // goes to the owner whose prefix has the longest dotted ancestor in common (e.g.
  // `text_encoders.clip_l.logit_scale` to `text_encoders.clip_l.transformer.`), if unique.
  std::vector<std::set<std::string>> spec_keys(out.components.size());
  for (size_t i = 0; i < out.components.size(); ++i)
    for (const auto& s : out.components[i].specs) spec_keys[i].insert(s.key);
  std::vector<std::set<std::string>> dtypes(out.components.size());
  for (const std::string& key : keys) {
    int best = -1;
    size_t best_len = 0;
    for (size_t o = 0; o < owners.size(); ++o) {
      const std::string& p = owners[o].prefix;
      if (starts_with(key, p) && (best < 0 || p.size() > best_len)) {
        best = static_cast<int>(o);
        best_len = p.size();
      }
    }
    if (best < 0) {
      size_t longest = 0;
      int count = 0;
      for (size_t o = 0; o < owners.size(); ++o) {
        for (const std::string& a : prefix_ancestors(owners[o].prefix)) {
          if (!starts_with(key, a)) continue;
          if (a.size() > longest) {
            longest = a.size();
            best = static_cast<int>(o);
            count = 1;
          } else if (a.size() == longest && best != static_cast<int>(o)) {
            ++count;
          }
          break;  // ancestors are longest first
        }
      }
      if (count != 1) best = -1;
    }
    const int comp = best < 0 ? -1 : owners[best].component;
    if (comp < 0) {
      out.unassigned.push_back(key);
      continue;
    }
    Component& c = out.components[comp];
    const TensorInfo* info = out.store.info(key);
    c.tensor_count += 1;
    c.param_count += info->numel();
    dtypes[comp].insert(st_dtype_name(info->dtype));
    const bool in_specs =
        starts_with(key, c.prefix) && spec_keys[comp].count(key.substr(c.prefix.size()));
    if (!in_specs) c.extras.push_back(key);
  }
  for (size_t i = 0; i < out.components.size(); ++i)
    out.components[i].dtypes.assign(dtypes[i].begin(), dtypes[i].end());
  // Pipeline order (MMDiT, VAE, CLIP-L, CLIP-G, T5), then by prefix.
  std::stable_sort(out.components.begin(), out.components.end(),
                   [](const Component& a, const Component& b) {
                     return a.kind != b.kind ? a.kind < b.kind : a.prefix < b.prefix;
                   });
  return out;
}

CheckpointContents inspect_checkpoint(const std::string& path) {
  return find_components(WeightStore({SafetensorsFile::open(path)}));
}

// ---- ModelFiles ---------------------------------------------------------------------------

namespace {

size_t kind_index(ComponentKind kind) {
  return static_cast<size_t>(kind);
}

std::string file_identity(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : p.string();
}

// "clip_g (bare keys), sd3_vae at prefix 'first_stage_model.'" or "nothing recognised".
std::string found_summary(const CheckpointContents& c) {
  std::vector<std::string> parts;
  for (const auto& comp : c.components)
    parts.push_back(comp.arch +
                    (comp.prefix.empty() ? " (bare keys)" : " at prefix '" + comp.prefix + "'"));
  if (parts.empty()) return "no SD3 component";
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? ", " : "") + parts[i];
  return s;
}

}  // namespace

ModelFiles ModelFiles::open(const ModelPaths& paths) {
  ModelFiles mf;
  std::map<std::string, size_t> by_identity;  // canonical path -> index in files_
  auto open_once = [&](const std::string& path) -> size_t {
    const std::string id = file_identity(path);
    auto it = by_identity.find(id);
    if (it != by_identity.end()) return it->second;
    mf.files_.emplace_back(path, inspect_checkpoint(path));
    by_identity[id] = mf.files_.size() - 1;
    return mf.files_.size() - 1;
  };

  // Explicit overrides first: the named file must hold exactly one component of that kind.
  const std::pair<ComponentKind, const std::string*> overrides[] = {
      {ComponentKind::ClipL, &paths.clip_l},
      {ComponentKind::ClipG, &paths.clip_g},
      {ComponentKind::T5, &paths.t5xxl},
      {ComponentKind::Vae, &paths.vae}};
  std::vector<bool> overridden(std::size(kAllComponentKinds), false);
  for (const auto& [kind, path] : overrides) {
    if (path->empty()) continue;
    const auto& [name, contents] = mf.files_[open_once(*path)];
    const Component* pick = nullptr;
    for (const auto& c : contents.components) {
      if (c.kind != kind) continue;
      SD3_CHECK(pick == nullptr, "'", name, "' given as ", component_flag(kind), " holds two ",
                component_title(kind), "s: ", pick ? pick->describe() : "", " and ", c.describe());
      pick = &c;
    }
    if (!pick) {
      std::string why = found_summary(contents);
      if (!contents.unrecognised.empty())
        why += "; unreadable: " + contents.unrecognised.front().reason;
      fail("'", name, "' given as ", component_flag(kind), " holds no ", component_title(kind),
           " (found: ", why, ")");
    }
    mf.chosen_[kind_index(kind)] = *pick;
    overridden[kind_index(kind)] = true;
  }

  for (const std::string& path : paths.models) {
    const size_t index = open_once(path);
    const auto& [name, contents] = mf.files_[index];
    if (contents.components.empty()) {
      if (!contents.unrecognised.empty()) {
        const auto& u = contents.unrecognised.front();
        fail("'", name, "': the ", u.kind_guess, " weights at prefix '", u.prefix,
             "' cannot be read: ", u.reason);
      }
      const auto keys = contents.store.keys();
      fail("'", name, "' holds no SD3 component (", keys.size(), " tensors",
           keys.empty() ? std::string() : ", e.g. '" + keys.front() + "'",
           "): expected an MMDiT, VAE, CLIP-L/G or T5-XXL in the released key layout");
    }
    for (const auto& u : contents.unrecognised)
      mf.warnings_.push_back(str_cat("'", name, "': ", u.kind_guess, "-like weights at prefix '",
                                     u.prefix, "' ignored: ", u.reason));
    for (const Component& c : contents.components) {
      std::optional<Component>& slot = mf.chosen_[kind_index(c.kind)];
      if (overridden[kind_index(c.kind)]) {
        const bool same = slot && slot->prefix == c.prefix &&
                          file_identity(slot->weights.files().front()->path()) ==
                              file_identity(c.weights.files().front()->path());
        if (!same)
          mf.warnings_.push_back(str_cat(c.describe(), " ignored: ", component_flag(c.kind),
                                         " gives the ", component_title(c.kind)));
        continue;
      }
      if (slot) {
        if (slot->prefix == c.prefix && slot->weights.files() == c.weights.files()) continue;
        if (c.kind == ComponentKind::MMDiT)
          fail("two diffusion models: ", slot->describe(), " and ", c.describe(),
               "; pass only one with -m/--model");
        fail("two ", component_title(c.kind), "s: ", slot->describe(), " and ", c.describe(),
             "; choose one with ", component_flag(c.kind), " FILE");
      }
      slot = c;
    }
  }

  // What the chosen components need the user to know.
  for (const auto& slot : mf.chosen_) {
    if (!slot) continue;
    const Component& c = *slot;
    if (!c.problems.empty()) {
      fail(c.describe(), ": ", c.problems.front(),
           c.problems.size() > 1 ? str_cat(" (and ", c.problems.size() - 1, " more problems)")
                                 : std::string());
    }
    if (!c.extras.empty())
      mf.warnings_.push_back(str_cat(c.describe(), ": ", c.extras.size(),
                                     " unexpected tensors ignored: ", quoted_list(c.extras, 4)));
    for (const std::string& dt : c.dtypes)
      if (dt == "F8_E4M3" || dt == "F8_E5M2")
        mf.warnings_.push_back(
            str_cat(c.describe(), ": ", dt, " weights are upcast to f16 on load (exact)"));
  }
  for (const auto& [name, contents] : mf.files_)
    if (!contents.unassigned.empty())
      mf.warnings_.push_back(
          str_cat("'", name, "': ", contents.unassigned.size(),
                  " tensors belong to no known component: ", quoted_list(contents.unassigned, 4)));
  return mf;
}

const Component* ModelFiles::find(ComponentKind kind) const {
  const auto& slot = chosen_[kind_index(kind)];
  return slot ? &*slot : nullptr;
}

const Component& ModelFiles::require(ComponentKind kind) const {
  if (const Component* c = find(kind)) return *c;
  std::vector<std::string> names;
  for (const auto& f : files_) names.push_back(f.first);
  const std::string where = names.empty() ? std::string("no model files were given")
                                          : "not found in " + quoted_list(names, 8);
  switch (kind) {
    case ComponentKind::MMDiT:
      fail("no diffusion model (MMDiT) given: ", where,
           "; pass an SD3 / SD3.5 checkpoint with -m/--model");
    case ComponentKind::Vae:
      fail("no VAE: ", where,
           "; pass a checkpoint that includes it (first_stage_model.*) with -m/--model or a VAE "
           "file with --vae");
    default:
      fail("no ", component_title(kind), ": ", where, "; pass its file with ", component_flag(kind),
           " FILE (e.g. ", component_kind_name(kind),
           ".safetensors) or a checkpoint that includes it with -m/--model");
  }
}

}  // namespace sd3::models
