// sd3-randckpt: writes a safetensors checkpoint of random weights at the real shapes of an SD3
// architecture, or at a reduced depth / width, so benchmarks and demos need no download.
//
// The file is produced tensor by tensor (SD3.5-large is ~16 GB in f16 and never sits in memory)
// and written atomically. Before any data is written, the header is checked to be recognised by
// the checkpoint loader as the requested architecture and configuration.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/checkpoint.h"
#include "models/random_weights.h"

namespace {

using namespace sd3;
using namespace sd3::models;

constexpr const char* kUsage = R"(usage: sd3-randckpt ARCH -o OUT.safetensors [options]

Writes a checkpoint of random weights (deterministic per --seed) at the real shapes of ARCH,
or at a reduced size. Weights: N(0, 1/fan_in), embeddings N(0, 1), biases N(0, 0.05^2), norm
gains 1 + N(0, 0.1^2); the MMDiT's pos_embed is the real 2-D sin-cos table.

ARCH (one, or several joined by commas for a combined file):
  sd3_medium   (= sd3_medium_mmdit)    MMDiT of SD3-medium: depth 24
  sd35_large   (= sd35_large_mmdit)    MMDiT of SD3.5-large: depth 38, QK RMSNorm
  sd35_medium  (= sd35_medium_mmditx)  MMDiT-X of SD3.5-medium: depth 24, x-self-attention 0..12
  vae          (= sd3_vae)             the SD3 VAE
  clip_l, clip_g, t5xxl                text encoders
  sd3_medium_incl_clips                sd3_medium + vae + clip_l + clip_g in one file
  sd3_medium_incl_clips_t5xxl          the same + t5xxl
  e.g. sd35_large,vae is laid out like the released sd3.5_large.safetensors.

Key prefixes: a single MMDiT is written under 'model.diffusion_model.', a single VAE under
'first_stage_model.', a single text encoder with bare keys; in a combined file the text
encoders go under 'text_encoders.<name>.transformer.'. --bare / --prefix P change a single
component's prefix.

options:
  -o, --output PATH      output file (required)
  --dtype f32|f16|bf16   stored dtype (default f16)
  --seed N               random seed (default 0)
  --bare                 no key prefix (single component)
  --prefix P             key prefix P (single component)
  --list                 print the configuration of each ARCH and exit
  -h, --help             this help
size (default: the released size). A flag applies to every component that has the setting;
prefix it with mmdit-, vae-, clip-l-, clip-g- or t5- to set one component only
(e.g. --clip-g-width 64):
  MMDiT:  --depth N (hidden = 64 N, heads = N), --hidden N (= 64 depth),
          --pos-embed-max-size N, --adm N (pooled width; default in a combined file:
          CLIP-L width + CLIP-G projection), --context-dim N (default in a combined file
          with T5: the T5 width), --x-attn-layers LIST|none (MMDiT-X blocks; default: the
          released 0..12 below the depth)
  VAE:    --ch N (multiple of 32), --ch-mult A,B,..., --res-blocks N, --z-channels N
  CLIP:   --layers N, --width N (alias --hidden), --heads N (default width/64; stored as
          num_attention_heads metadata), --ff N (default 4 width), --vocab N,
          --projection N (CLIP-G text_projection rows, default width)
  T5:     --layers N, --width N (alias --hidden; d_model), --heads N (default width/64),
          --d-kv N (default width/heads), --ff N (default 5 width / 2), --vocab N
)";

struct Setting {
  std::string scope;  // "" = every component that knows the setting
  std::string name;
  std::string value;
  bool used = false;
};

int64_t parse_int(const std::string& flag, const std::string& v, int64_t min = 1) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  SD3_CHECK(!v.empty() && end && *end == '\0' && errno == 0 && x >= min, "--", flag,
            ": expected an integer >= ", min, ", got '", v, "'");
  return x;
}

std::vector<int64_t> parse_list(const std::string& flag, const std::string& v, int64_t min) {
  std::vector<int64_t> out;
  if (v == "none") return out;
  size_t start = 0;
  while (start <= v.size()) {
    const size_t comma = v.find(',', start);
    const std::string item =
        v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    out.push_back(parse_int(flag, item, min));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// The settings that apply to a component (scoped to it, or unscoped and known to it).
class Settings {
 public:
  explicit Settings(std::vector<Setting>* all) : all_(all) {}
  std::optional<std::string> get(const std::string& scope, const std::set<std::string>& names) {
    std::optional<std::string> v;
    for (Setting& s : *all_) {
      if (!names.count(s.name) || !(s.scope.empty() || s.scope == scope)) continue;
      // A scoped setting wins over an unscoped one, whatever the order.
      if (!v || !s.scope.empty()) v = s.value;
      s.used = true;
    }
    return v;
  }

 private:
  std::vector<Setting>* all_;
};

struct Planned {
  ComponentKind kind;
  std::string name;  // "mmdit", "vae", "clip_l", "clip_g", "t5xxl"
  std::string prefix;
  ComponentConfig config;
  std::string expected_arch;
};

int64_t default_heads(const std::string& what, int64_t width) {
  SD3_CHECK(width % 64 == 0, what, " width ", width,
            " is not a multiple of the 64-wide heads: give --heads");
  return width / 64;
}

MMDiTConfig plan_mmdit(const std::string& arch, Settings& s) {
  MMDiTConfig c = arch == kArchSd35LargeMMDiT     ? MMDiTConfig::sd35_large()
                  : arch == kArchSd35MediumMMDiTX ? MMDiTConfig::sd35_medium()
                                                  : MMDiTConfig::sd3_medium();
  const auto depth = s.get("mmdit", {"depth"});
  const auto hidden = s.get("mmdit", {"hidden", "width"});
  if (depth) c.depth = parse_int("depth", *depth);
  if (hidden) {
    const int64_t h = parse_int("hidden", *hidden);
    SD3_CHECK(h % kMMDiTHeadDim == 0, "--hidden ", h, ": the MMDiT width is 64 x depth");
    SD3_CHECK(!depth || h == kMMDiTHeadDim * c.depth, "--hidden ", h, " and --depth ", c.depth,
              " disagree: the MMDiT width is 64 x depth");
    c.depth = h / kMMDiTHeadDim;
  }
  c.hidden_size = kMMDiTHeadDim * c.depth;
  c.num_heads = c.depth;
  if (auto v = s.get("mmdit", {"pos-embed-max-size", "pos-embed"}))
    c.pos_embed_max_size = parse_int("pos-embed-max-size", *v);
  if (auto v = s.get("mmdit", {"adm", "adm-in-channels"})) c.adm_in_channels = parse_int("adm", *v);
  if (auto v = s.get("mmdit", {"context-dim", "context-in-features"}))
    c.context_in_features = parse_int("context-dim", *v);
  if (auto v = s.get("mmdit", {"x-attn-layers"})) {
    c.x_block_self_attn_layers = parse_list("x-attn-layers", *v, 0);
  } else {
    std::vector<int64_t> kept;
    for (int64_t l : c.x_block_self_attn_layers)
      if (l < c.depth) kept.push_back(l);
    c.x_block_self_attn_layers = kept;
  }
  for (int64_t l : c.x_block_self_attn_layers)
    SD3_CHECK(l < c.depth, "--x-attn-layers: block ", l, " is beyond the depth ", c.depth);
  return c;
}

VaeConfig plan_vae(Settings& s) {
  VaeConfig c = VaeConfig::sd3();
  if (auto v = s.get("vae", {"ch"})) c.ch = parse_int("ch", *v);
  if (auto v = s.get("vae", {"ch-mult"})) c.ch_mult = parse_list("ch-mult", *v, 1);
  if (auto v = s.get("vae", {"res-blocks"})) c.num_res_blocks = parse_int("res-blocks", *v);
  if (auto v = s.get("vae", {"z-channels"})) c.z_channels = parse_int("z-channels", *v);
  SD3_CHECK(!c.ch_mult.empty(), "--ch-mult: at least one level");
  for (int64_t m : c.ch_mult)
    SD3_CHECK((c.ch * m) % c.groups == 0, "VAE width ", c.ch, " x ", m, " is not divisible by the ",
              c.groups, " GroupNorm groups");
  return c;
}

ClipConfig plan_clip(bool g, Settings& s) {
  const std::string scope = g ? "clip-g" : "clip-l";
  ClipConfig c = g ? ClipConfig::clip_g() : ClipConfig::clip_l();
  // The released CLIP-L file has no text_projection (SAI's layout); CLIP-G needs it.
  c.has_text_projection = g;
  c.projection_dim = c.hidden_size;
  if (auto v = s.get(scope, {"layers"})) c.num_layers = parse_int("layers", *v);
  const auto width = s.get(scope, {"width", "hidden"});
  if (width) {
    c.hidden_size = parse_int("width", *width);
    c.intermediate_size = 4 * c.hidden_size;
    c.projection_dim = c.hidden_size;
  }
  if (auto v = s.get(scope, {"heads"})) {
    c.num_heads = parse_int("heads", *v);
  } else if (width) {
    c.num_heads = default_heads(g ? "CLIP-G" : "CLIP-L", c.hidden_size);
  }
  SD3_CHECK(c.hidden_size % c.num_heads == 0, "CLIP width ", c.hidden_size, " is not divisible by ",
            c.num_heads, " heads");
  if (auto v = s.get(scope, {"ff"})) c.intermediate_size = parse_int("ff", *v);
  if (auto v = s.get(scope, {"vocab"})) c.vocab_size = parse_int("vocab", *v);
  if (auto v = s.get(scope, {"projection"})) {
    SD3_CHECK(g, "--projection: only CLIP-G has a text_projection");
    c.projection_dim = parse_int("projection", *v);
  }
  SD3_CHECK(c.num_layers >= 2, "CLIP needs at least 2 layers (SD3 reads the penultimate one)");
  return c;
}

T5Config plan_t5(Settings& s) {
  T5Config c = T5Config::xxl();
  if (auto v = s.get("t5", {"layers"})) c.num_layers = parse_int("layers", *v);
  const auto width = s.get("t5", {"width", "hidden"});
  if (width) {
    c.d_model = parse_int("width", *width);
    c.d_ff = c.d_model * 5 / 2;
  }
  if (auto v = s.get("t5", {"heads"})) {
    c.num_heads = parse_int("heads", *v);
  } else if (width) {
    c.num_heads = default_heads("T5", c.d_model);
  }
  if (auto v = s.get("t5", {"d-kv"})) {
    c.d_kv = parse_int("d-kv", *v);
  } else {
    SD3_CHECK(c.d_model % c.num_heads == 0, "T5 width ", c.d_model, " is not divisible by ",
              c.num_heads, " heads: give --d-kv");
    c.d_kv = c.d_model / c.num_heads;
  }
  if (auto v = s.get("t5", {"ff"})) c.d_ff = parse_int("ff", *v);
  if (auto v = s.get("t5", {"vocab"})) c.vocab_size = parse_int("vocab", *v);
  return c;
}

// "sd3_medium" -> the canonical arch names of the components it stands for.
std::vector<std::string> expand_arch(const std::string& name) {
  static const std::map<std::string, std::vector<std::string>> kNames = {
      {"sd3_medium", {kArchSd3MediumMMDiT}},
      {"sd3_medium_mmdit", {kArchSd3MediumMMDiT}},
      {"sd35_large", {kArchSd35LargeMMDiT}},
      {"sd35_large_mmdit", {kArchSd35LargeMMDiT}},
      {"sd35_medium", {kArchSd35MediumMMDiTX}},
      {"sd35_medium_mmditx", {kArchSd35MediumMMDiTX}},
      {"vae", {kArchSd3Vae}},
      {"sd3_vae", {kArchSd3Vae}},
      {"clip_l", {kArchClipL}},
      {"clip_g", {kArchClipG}},
      {"t5xxl", {kArchT5Xxl}},
      {"t5", {kArchT5Xxl}},
      {"sd3_medium_incl_clips", {kArchSd3MediumMMDiT, kArchSd3Vae, kArchClipL, kArchClipG}},
      {"sd3_medium_incl_clips_t5xxl",
       {kArchSd3MediumMMDiT, kArchSd3Vae, kArchClipL, kArchClipG, kArchT5Xxl}},
  };
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = name.find(',', start);
    const std::string part =
        name.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    auto it = kNames.find(part);
    SD3_CHECK(it != kNames.end(), "unknown ARCH '", part, "' (see --help)");
    out.insert(out.end(), it->second.begin(), it->second.end());
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

ComponentKind kind_of(const std::string& arch) {
  if (arch == kArchSd3Vae) return ComponentKind::Vae;
  if (arch == kArchClipL) return ComponentKind::ClipL;
  if (arch == kArchClipG) return ComponentKind::ClipG;
  if (arch == kArchT5Xxl) return ComponentKind::T5;
  return ComponentKind::MMDiT;
}

std::vector<Planned> plan(const std::vector<std::string>& archs, Settings& s,
                          const std::optional<std::string>& prefix) {
  std::vector<Planned> out;
  std::set<ComponentKind> kinds;
  for (const std::string& arch : archs) {
    const ComponentKind kind = kind_of(arch);
    SD3_CHECK(kinds.insert(kind).second, "ARCH names two ", component_kind_name(kind),
              " components");
    Planned p;
    p.kind = kind;
    p.name = component_kind_name(kind);
    p.expected_arch = arch;
    switch (kind) {
      case ComponentKind::MMDiT: p.config = plan_mmdit(arch, s); break;
      case ComponentKind::Vae: p.config = plan_vae(s); break;
      case ComponentKind::ClipL: p.config = plan_clip(false, s); break;
      case ComponentKind::ClipG: p.config = plan_clip(true, s); break;
      case ComponentKind::T5: p.config = plan_t5(s); break;
    }
    out.push_back(std::move(p));
  }
  const bool combined = out.size() > 1;
  SD3_CHECK(!combined || !prefix, "--bare / --prefix apply to a single component");
  for (Planned& p : out) {
    if (prefix) {
      p.prefix = *prefix;
    } else if (p.kind == ComponentKind::MMDiT) {
      p.prefix = "model.diffusion_model.";
    } else if (p.kind == ComponentKind::Vae) {
      p.prefix = "first_stage_model.";
    } else {
      p.prefix = combined ? "text_encoders." + p.name + ".transformer." : "";
    }
  }
  return out;
}

// In a combined file, the MMDiT's input widths follow the encoders unless given: pooled =
// CLIP-L width + CLIP-G projection, context = T5 width (the released 2048 and 4096).
void link_widths(std::vector<Planned>& comps, Settings& s) {
  const ClipConfig* l = nullptr;
  const ClipConfig* g = nullptr;
  const T5Config* t5 = nullptr;
  MMDiTConfig* mmdit = nullptr;
  for (Planned& p : comps) {
    if (auto* c = std::get_if<ClipConfig>(&p.config)) (p.kind == ComponentKind::ClipG ? g : l) = c;
    if (auto* c = std::get_if<T5Config>(&p.config)) t5 = c;
    if (auto* c = std::get_if<MMDiTConfig>(&p.config)) mmdit = c;
  }
  if (!mmdit) return;
  if (l && g && !s.get("mmdit", {"adm", "adm-in-channels"}))
    mmdit->adm_in_channels = l->hidden_size + g->projection_dim;
  if (t5 && !s.get("mmdit", {"context-dim", "context-in-features"}))
    mmdit->context_in_features = t5->d_model;
  if (l && g)
    SD3_CHECK(l->hidden_size + g->hidden_size <= mmdit->context_in_features,
              "the conditioning zero-pads CLIP-L || CLIP-G (", l->hidden_size + g->hidden_size,
              " features) to the MMDiT's context width ", mmdit->context_in_features,
              ": make the T5 width (or --context-dim) at least that");
}

std::vector<WeightSpec> specs_of(const Planned& p) {
  if (auto* c = std::get_if<MMDiTConfig>(&p.config)) return mmdit_weight_specs(*c);
  if (auto* c = std::get_if<VaeConfig>(&p.config)) return vae_weight_specs(*c);
  if (auto* c = std::get_if<ClipConfig>(&p.config)) return clip_weight_specs(*c);
  return t5_weight_specs(std::get<T5Config>(p.config));
}

// Metadata: what the file is, and the CLIP head count where shapes cannot tell it.
std::map<std::string, std::string> metadata_of(const std::vector<Planned>& comps,
                                               const std::string& arch_arg, uint64_t seed) {
  std::map<std::string, std::string> m;
  m["format"] = "pt";
  m["arch"] = comps.size() == 1 ? comps.front().expected_arch : arch_arg;
  m["seed"] = std::to_string(seed);
  m["generator"] = "sd3-randckpt";
  m["description"] = "random weights (not a trained model)";
  // clip_config_from_weights reads one num_attention_heads per file; without it, heads are
  // 64 wide. Write it when all CLIPs agree; differing counts are only possible at 64-wide heads.
  std::set<int64_t> heads;
  bool all_standard = true;
  for (const Planned& p : comps) {
    if (const auto* c = std::get_if<ClipConfig>(&p.config)) {
      heads.insert(c->num_heads);
      all_standard = all_standard && c->hidden_size == kMMDiTHeadDim * c->num_heads;
    }
  }
  SD3_CHECK(heads.size() <= 1 || all_standard,
            "CLIP-L and CLIP-G with different head counts cannot share a file's "
            "num_attention_heads metadata: use widths of 64 x heads, or equal head counts");
  if (heads.size() == 1) m["num_attention_heads"] = std::to_string(*heads.begin());
  return m;
}

// The loader must recognise the header as exactly what was planned, before any data is written.
void check_recognised(const std::string& out, const std::vector<Planned>& comps,
                      const std::vector<RandomComponent>& randoms, StDType dtype,
                      const std::map<std::string, std::string>& metadata) {
  namespace fs = std::filesystem;
  const fs::path target(out);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string probe =
      (dir / ("." + target.filename().string() + ".header-check-" + std::to_string(getpid())))
          .string();
  CheckpointContents found;
  try {
    write_sparse_safetensors(probe, random_checkpoint_entries(randoms, dtype), metadata);
    found = inspect_checkpoint(probe);
  } catch (...) {
    std::remove(probe.c_str());
    throw;
  }
  std::remove(probe.c_str());
  SD3_CHECK(found.components.size() == comps.size() && found.unassigned.empty(),
            "internal error: the planned file would hold ", found.components.size(),
            " recognised components instead of ", comps.size());
  for (const Planned& p : comps) {
    bool ok = false;
    for (const Component& c : found.components) {
      if (c.prefix != p.prefix) continue;
      SD3_CHECK(c.arch == p.expected_arch, "a ", p.expected_arch, " of this size would be read as ",
                c.arch, " (", config_to_json(c.config).dump(), "); choose other sizes");
      SD3_CHECK(config_to_json(c.config) == config_to_json(p.config), "a ", p.expected_arch,
                " of this size would be read back with another configuration: ",
                config_to_json(c.config).dump(), " instead of ", config_to_json(p.config).dump());
      SD3_CHECK(c.problems.empty(), "internal error: ", c.problems.front());
      ok = true;
    }
    SD3_CHECK(ok, "internal error: no component found at prefix '", p.prefix, "'");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string arch_arg, output, dtype_name = "f16";
  uint64_t seed = 0;
  std::optional<std::string> prefix;
  bool list = false;
  std::vector<Setting> settings;
  static const std::set<std::string> kSizeFlags = {"depth",
                                                   "hidden",
                                                   "width",
                                                   "pos-embed-max-size",
                                                   "pos-embed",
                                                   "adm",
                                                   "adm-in-channels",
                                                   "context-dim",
                                                   "context-in-features",
                                                   "x-attn-layers",
                                                   "ch",
                                                   "ch-mult",
                                                   "res-blocks",
                                                   "z-channels",
                                                   "layers",
                                                   "heads",
                                                   "ff",
                                                   "vocab",
                                                   "projection",
                                                   "d-kv"};
  static const char* kScopes[] = {"mmdit-", "vae-", "clip-l-", "clip-g-", "t5-"};
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        SD3_CHECK(i + 1 < argc, a, ": missing value");
        return argv[++i];
      };
      if (a == "-h" || a == "--help") {
        std::fputs(kUsage, stdout);
        return 0;
      } else if (a == "-o" || a == "--output") {
        output = value();
      } else if (a == "--dtype") {
        dtype_name = value();
      } else if (a == "--seed") {
        const std::string v = value();
        char* end = nullptr;
        errno = 0;
        seed = std::strtoull(v.c_str(), &end, 10);
        SD3_CHECK(!v.empty() && v[0] != '-' && end && *end == '\0' && errno == 0,
                  "--seed: expected a non-negative integer, got '", v, "'");
      } else if (a == "--bare") {
        prefix = "";
      } else if (a == "--prefix") {
        prefix = value();
        SD3_CHECK(prefix->empty() || prefix->back() == '.', "--prefix '", *prefix,
                  "' must be empty or end with '.'");
      } else if (a == "--list") {
        list = true;
      } else if (a == "--arch") {
        arch_arg = value();
      } else if (a.rfind("--", 0) == 0) {
        std::string name = a.substr(2), scope;
        for (const char* sc : kScopes) {
          const std::string p = sc;
          if (name.rfind(p, 0) == 0 && kSizeFlags.count(name.substr(p.size()))) {
            scope = p.substr(0, p.size() - 1);
            name = name.substr(p.size());
          }
        }
        SD3_CHECK(kSizeFlags.count(name), "unknown option '", a, "' (see --help)");
        settings.push_back({scope, name, value()});
      } else if (a.size() > 1 && a[0] == '-') {
        sd3::fail("unknown option '", a, "' (see --help)");
      } else {
        SD3_CHECK(arch_arg.empty(), "more than one ARCH given ('", arch_arg, "', '", a,
                  "'): join components with commas");
        arch_arg = a;
      }
    }
    SD3_CHECK(!arch_arg.empty(), "no ARCH given (see --help)");
    const std::vector<std::string> archs = expand_arch(arch_arg);
    Settings s(&settings);
    std::vector<Planned> comps = plan(archs, s, prefix);
    link_widths(comps, s);
    for (const Setting& st : settings)
      SD3_CHECK(st.used, "--", st.scope.empty() ? "" : st.scope + "-", st.name,
                " does not apply to ", arch_arg);

    const DType dt = sd3::parse_dtype(dtype_name);
    SD3_CHECK(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16, "--dtype '", dtype_name,
              "': random checkpoints are f32, f16 or bf16");
    const StDType st = dt == DType::F32   ? StDType::F32
                       : dt == DType::F16 ? StDType::F16
                                          : StDType::BF16;
    std::vector<RandomComponent> randoms;
    int64_t params = 0, tensors = 0;
    for (const Planned& p : comps) {
      randoms.push_back({p.name, p.prefix, specs_of(p)});
      for (const auto& spec : randoms.back().specs) params += shape_numel(spec.shape);
      tensors += static_cast<int64_t>(randoms.back().specs.size());
    }
    if (list) {
      for (const Planned& p : comps)
        std::printf("%s at prefix '%s': %s\n", p.expected_arch.c_str(), p.prefix.c_str(),
                    config_to_json(p.config).dump().c_str());
      std::printf("%lld tensors, %lld parameters, %lld bytes as %s\n",
                  static_cast<long long>(tensors), static_cast<long long>(params),
                  static_cast<long long>(params * static_cast<int64_t>(st_dtype_size(st))),
                  st_dtype_name(st));
      return 0;
    }
    SD3_CHECK(!output.empty(), "no output file: give -o/--output PATH");
    const auto metadata = metadata_of(comps, arch_arg, seed);
    check_recognised(output, comps, randoms, st, metadata);
    write_random_checkpoint(output, randoms, st, seed, metadata);
    for (const Planned& p : comps)
      std::printf("%s at prefix '%s': %s\n", p.expected_arch.c_str(), p.prefix.c_str(),
                  config_to_json(p.config).dump().c_str());
    std::printf("wrote %s: %lld tensors, %lld parameters, %s, seed %llu\n", output.c_str(),
                static_cast<long long>(tensors), static_cast<long long>(params), st_dtype_name(st),
                static_cast<unsigned long long>(seed));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd3-randckpt: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
