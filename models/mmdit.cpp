#include "models/mmdit.h"

#include "models/weight_keys.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <tuple>
#include <utility>

#include "engine/error.h"
#include "engine/ops.h"

namespace sd3::models {

namespace {

// LayerNorm (no affine) before every modulation, and the qk RMSNorm (mmditx.py).
constexpr float kNormEps = 1e-6f;

// adaLN modulations per stream: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
// (+ shift_msa2, scale_msa2, gate_msa2 with attn2); a pre_only block only shift_msa, scale_msa.
constexpr int64_t kMods = 6;
constexpr int64_t kModsSelfAttn = 9;
constexpr int64_t kModsPreOnly = 2;
enum Mod : int64_t {
  kShiftMsa,
  kScaleMsa,
  kGateMsa,
  kShiftMlp,
  kScaleMlp,
  kGateMlp,
  kShiftMsa2,
  kScaleMsa2,
  kGateMsa2
};

std::string block_name(int64_t i) {
  return "joint_blocks." + std::to_string(i) + ".";
}

int64_t n_mods(const MMDiTConfig& cfg, int64_t block, bool context_stream) {
  if (context_stream) return block == cfg.depth - 1 ? kModsPreOnly : kMods;
  return cfg.x_block_self_attn(block) ? kModsSelfAttn : kMods;
}

}  // namespace

// ---- configuration --------------------------------------------------------------------------

bool MMDiTConfig::x_block_self_attn(int64_t block) const {
  return std::find(x_block_self_attn_layers.begin(), x_block_self_attn_layers.end(), block) !=
         x_block_self_attn_layers.end();
}

MMDiTConfig MMDiTConfig::sd3_medium() {
  MMDiTConfig c;
  c.depth = 24;
  c.hidden_size = 1536;
  c.num_heads = 24;
  c.pos_embed_max_size = 192;
  return c;
}

MMDiTConfig MMDiTConfig::sd35_large() {
  MMDiTConfig c;
  c.depth = 38;
  c.hidden_size = 2432;
  c.num_heads = 38;
  c.pos_embed_max_size = 192;
  c.qk_norm = true;
  return c;
}

MMDiTConfig MMDiTConfig::sd35_medium() {
  MMDiTConfig c;
  c.depth = 24;
  c.hidden_size = 1536;
  c.num_heads = 24;
  c.pos_embed_max_size = 384;
  c.qk_norm = true;
  for (int64_t i = 0; i <= 12; ++i) c.x_block_self_attn_layers.push_back(i);
  return c;
}

bool operator==(const MMDiTConfig& a, const MMDiTConfig& b) {
  return a.depth == b.depth && a.hidden_size == b.hidden_size && a.num_heads == b.num_heads &&
         a.patch_size == b.patch_size && a.in_channels == b.in_channels &&
         a.out_channels == b.out_channels && a.pos_embed_max_size == b.pos_embed_max_size &&
         a.adm_in_channels == b.adm_in_channels && a.context_in_features == b.context_in_features &&
         a.frequency_embedding_size == b.frequency_embedding_size && a.mlp_ratio == b.mlp_ratio &&
         a.qk_norm == b.qk_norm && a.x_block_self_attn_layers == b.x_block_self_attn_layers &&
         a.register_length == b.register_length;
}

std::string to_string(const MMDiTConfig& c) {
  std::ostringstream os;
  os << "depth " << c.depth << ", hidden " << c.hidden_size << ", heads " << c.num_heads
     << ", patch " << c.patch_size << ", in " << c.in_channels << ", out " << c.out_channels
     << ", pos_embed_max_size " << c.pos_embed_max_size << ", adm_in " << c.adm_in_channels
     << ", context_in " << c.context_in_features << ", qk_norm " << (c.qk_norm ? "rms" : "none")
     << ", x_block_self_attn_layers " << shape_str(c.x_block_self_attn_layers) << ", registers "
     << c.register_length;
  return os.str();
}

MMDiTConfig mmdit_config_from_weights(const WeightStore& w) {
  const std::string x_proj = "x_embedder.proj.weight";
  auto proj = w.shape(x_proj);
  SD3_CHECK(proj.has_value(), "no MM-DiT in ", w.describe(), ": missing '", w.prefix(), x_proj,
            "'");
  const Shape& ps = *proj;
  SD3_CHECK(
      ps.size() == 4 && ps[0] > 0 && ps[0] % kMMDiTHeadDim == 0 && ps[2] == ps[3] && ps[2] > 0, "'",
      w.prefix(), x_proj, "' in ", w.describe(), " has shape ", shape_str(ps),
      ", expected [64 * depth, in_channels, patch, patch]");
  MMDiTConfig c;
  // mmditx.py "apply magic": hidden = 64 * depth, heads = depth.
  c.depth = ps[0] / kMMDiTHeadDim;
  c.hidden_size = ps[0];
  c.num_heads = c.depth;
  c.in_channels = ps[1];
  c.patch_size = ps[2];
  SD3_CHECK(c.in_channels > 0, "'", w.prefix(), x_proj, "' in ", w.describe(), " has shape ",
            shape_str(ps), ": no input channels");
  // The depth comes from a shape, i.e. from the header: before anything is sized by it, it must
  // agree with the joint blocks the file holds (count_layers bounds those by the key count).
  const int64_t blocks = count_layers(w, "joint_blocks.");
  SD3_CHECK(blocks == c.depth, "'", w.prefix(), x_proj, "' in ", w.describe(), " has shape ",
            shape_str(ps), " (depth ", c.depth, ") but the file holds ", blocks,
            " joint blocks");

  auto pos = w.shape("pos_embed");
  SD3_CHECK(pos.has_value(), "no MM-DiT position table in ", w.describe(), ": missing '",
            w.prefix(), "pos_embed'");
  SD3_CHECK(pos->size() == 3 && (*pos)[0] == 1 && (*pos)[2] == c.hidden_size, "'", w.prefix(),
            "pos_embed' has shape ", shape_str(*pos), ", expected [1, M*M, ", c.hidden_size, "]");
  c.pos_embed_max_size = std::llround(std::sqrt(static_cast<double>((*pos)[1])));
  SD3_CHECK(c.pos_embed_max_size * c.pos_embed_max_size == (*pos)[1], "'", w.prefix(),
            "pos_embed' has ", (*pos)[1], " positions, not a square number");

  auto y = w.shape("y_embedder.mlp.0.weight");
  c.adm_in_channels = y && y->size() == 2 ? (*y)[1] : 0;

  auto ctx = w.shape("context_embedder.weight");
  SD3_CHECK(ctx.has_value() && ctx->size() == 2, "no MM-DiT context embedder in ", w.describe(),
            ": missing or misshapen '", w.prefix(), "context_embedder.weight'");
  c.context_in_features = (*ctx)[1];

  auto final_linear = w.shape("final_layer.linear.weight");
  SD3_CHECK(final_linear.has_value() && final_linear->size() == 2 &&
                (*final_linear)[0] % (c.patch_size * c.patch_size) == 0,
            "no MM-DiT final layer in ", w.describe(), ": missing or misshapen '", w.prefix(),
            "final_layer.linear.weight'");
  c.out_channels = (*final_linear)[0] / (c.patch_size * c.patch_size);

  c.qk_norm = w.has("joint_blocks.0.context_block.attn.ln_k.weight");
  for (int64_t i = 0; i < c.depth; ++i)
    if (w.has(block_name(i) + "x_block.attn2.qkv.weight")) c.x_block_self_attn_layers.push_back(i);

  if (auto reg = w.shape("register")) {
    SD3_CHECK(reg->size() == 3 && (*reg)[0] == 1 && (*reg)[2] == c.hidden_size, "'", w.prefix(),
              "register' has shape ", shape_str(*reg), ", expected [1, register_length, ",
              c.hidden_size, "]");
    c.register_length = (*reg)[1];
  }
  return c;
}

std::vector<WeightSpec> mmdit_weight_specs(const MMDiTConfig& c) {
  const int64_t h = c.hidden_size, p = c.patch_size, d = c.head_dim();
  std::vector<WeightSpec> s;
  auto linear = [&s](const std::string& name, int64_t out, int64_t in) {
    s.push_back({name + ".weight", {out, in}});
    s.push_back({name + ".bias", {out}});
  };
  s.push_back({"pos_embed", {1, c.pos_embed_max_size * c.pos_embed_max_size, h}});
  s.push_back({"x_embedder.proj.weight", {h, c.in_channels, p, p}});
  s.push_back({"x_embedder.proj.bias", {h}});
  linear("t_embedder.mlp.0", h, c.frequency_embedding_size);
  linear("t_embedder.mlp.2", h, h);
  if (c.adm_in_channels > 0) {
    linear("y_embedder.mlp.0", h, c.adm_in_channels);
    linear("y_embedder.mlp.2", h, h);
  }
  linear("context_embedder", h, c.context_in_features);
  if (c.register_length > 0) s.push_back({"register", {1, c.register_length, h}});

  auto attention = [&](const std::string& name, bool pre_only) {
    linear(name + ".qkv", 3 * h, h);
    if (!pre_only) linear(name + ".proj", h, h);
    if (c.qk_norm) {
      s.push_back({name + ".ln_q.weight", {d}});
      s.push_back({name + ".ln_k.weight", {d}});
    }
  };
  for (int64_t i = 0; i < c.depth; ++i) {
    for (bool context_stream : {true, false}) {
      const std::string b = block_name(i) + (context_stream ? "context_block" : "x_block");
      const bool pre_only = context_stream && i == c.depth - 1;
      attention(b + ".attn", pre_only);
      if (!context_stream && c.x_block_self_attn(i)) attention(b + ".attn2", false);
      if (!pre_only) {
        linear(b + ".mlp.fc1", c.mlp_hidden(), h);
        linear(b + ".mlp.fc2", h, c.mlp_hidden());
      }
      linear(b + ".adaLN_modulation.1", n_mods(c, i, context_stream) * h, h);
    }
  }
  linear("final_layer.linear", p * p * c.out_channels, h);
  linear("final_layer.adaLN_modulation.1", 2 * h, h);
  return s;
}

// ---- loading --------------------------------------------------------------------------------

const Tensor& MMDiTTrace::at(const std::string& name) const {
  auto it = tensors.find(name);
  SD3_CHECK(it != tensors.end(), "MM-DiT trace has no '", name, "'");
  return it->second;
}

MMDiT MMDiT::load(const WeightStore& w, Device device) {
  MMDiTConfig cfg = mmdit_config_from_weights(w);
  std::vector<WeightSpec> specs = mmdit_weight_specs(cfg);
  MMDiT m = from_tensors(cfg, w.load_all(specs), device);
  m.unexpected_ = w.unexpected(specs);
  return m;
}

MMDiT MMDiT::from_tensors(const MMDiTConfig& cfg, const std::map<std::string, Tensor>& tensors,
                          Device device) {
  SD3_CHECK(cfg.depth > 0 && cfg.num_heads > 0 && cfg.hidden_size % cfg.num_heads == 0,
            "invalid MM-DiT config: ", to_string(cfg));
  for (int64_t i : cfg.x_block_self_attn_layers)
    SD3_CHECK(i >= 0 && i < cfg.depth, "invalid MM-DiT config: x_block_self_attn layer ", i,
              " outside 0..", cfg.depth - 1);
  // Check every spec first, so a bad map fails with one message before anything is uploaded.
  for (const WeightSpec& s : mmdit_weight_specs(cfg)) {
    auto it = tensors.find(s.key);
    SD3_CHECK(it != tensors.end(), "MM-DiT weights: missing '", s.key, "' (expected shape ",
              shape_str(s.shape), ")");
    SD3_CHECK(it->second.shape() == s.shape, "MM-DiT weights: '", s.key, "' has shape ",
              shape_str(it->second.shape()), ", expected ", shape_str(s.shape));
  }
  auto get = [&](const std::string& key) { return tensors.at(key).to(device); };
  auto linear = [&](const std::string& name) {
    return mmdit::Linear{get(name + ".weight"), get(name + ".bias")};
  };
  auto attention = [&](const std::string& name, bool pre_only) {
    mmdit::Attention a;
    a.qkv = linear(name + ".qkv");
    if (!pre_only) a.proj = linear(name + ".proj");
    if (cfg.qk_norm) {
      a.ln_q = get(name + ".ln_q.weight");
      a.ln_k = get(name + ".ln_k.weight");
    }
    return a;
  };

  MMDiT m;
  m.cfg_ = cfg;
  m.pos_embed = get("pos_embed");
  // A conv with kernel = stride = p is a linear map of each flattened (c, py, px) patch.
  m.x_embedder_proj.weight =
      get("x_embedder.proj.weight")
          .contiguous()
          .view({cfg.hidden_size, cfg.in_channels * cfg.patch_size * cfg.patch_size});
  m.x_embedder_proj.bias = get("x_embedder.proj.bias");
  m.t_embedder = {linear("t_embedder.mlp.0"), linear("t_embedder.mlp.2")};
  if (cfg.adm_in_channels > 0)
    m.y_embedder = {linear("y_embedder.mlp.0"), linear("y_embedder.mlp.2")};
  m.context_embedder = linear("context_embedder");
  if (cfg.register_length > 0) m.register_tokens = get("register");
  for (int64_t i = 0; i < cfg.depth; ++i) {
    mmdit::JointBlock jb;
    for (bool context_stream : {true, false}) {
      const std::string b = block_name(i) + (context_stream ? "context_block" : "x_block");
      mmdit::DismantledBlock& d = context_stream ? jb.context_block : jb.x_block;
      d.pre_only = context_stream && i == cfg.depth - 1;
      d.attn = attention(b + ".attn", d.pre_only);
      if (!context_stream && cfg.x_block_self_attn(i)) d.attn2 = attention(b + ".attn2", false);
      if (!d.pre_only) d.mlp = {linear(b + ".mlp.fc1"), linear(b + ".mlp.fc2")};
      d.adaLN_modulation = linear(b + ".adaLN_modulation.1");
    }
    m.joint_blocks.push_back(std::move(jb));
  }
  m.final_layer = {linear("final_layer.adaLN_modulation.1"), linear("final_layer.linear")};
  return m;
}

// ---- forward --------------------------------------------------------------------------------

namespace {

void record(MMDiTTrace* trace, const std::string& name, const Tensor& t) {
  if (trace) trace->tensors[name] = t;
}

Tensor apply(const mmdit::Linear& l, const Tensor& x, ops::Activation act = ops::Activation::None) {
  return ops::linear(x, l.weight, l.bias, act);
}

struct Qkv {
  Tensor q, k, v;  // [B, L, hidden] (views of the qkv projection where no norm copies them)
};

// SelfAttention.pre_attention: qkv projection split into q, k, v, then the optional per-head
// RMSNorm of q and k over head_dim.
Qkv attention_qkv(const mmdit::Attention& a, const Tensor& x, int64_t heads) {
  Tensor qkv = apply(a.qkv, x);  // [B, L, 3 * hidden]
  const int64_t B = qkv.size(0), L = qkv.size(1), hidden = qkv.size(2) / 3;
  Qkv r;
  if (!a.ln_q.defined()) {
    r.q = qkv.slice(2, 0, hidden);
    r.k = qkv.slice(2, hidden, 2 * hidden);
    r.v = qkv.slice(2, 2 * hidden, 3 * hidden);
    return r;
  }
  Tensor heads5 = qkv.view({B, L, 3, heads, hidden / heads});  // [B, L, q|k|v, H, D]
  r.q = ops::rms_norm(heads5.select(2, 0), a.ln_q, kNormEps).view({B, L, hidden});
  r.k = ops::rms_norm(heads5.select(2, 1), a.ln_k, kNormEps).view({B, L, hidden});
  r.v = qkv.slice(2, 2 * hidden, 3 * hidden);
  return r;
}

// The first half of a DismantledBlock: modulation chunks and the attention inputs.
struct PreAttention {
  std::vector<Tensor> mods;  // n_mods views [B, hidden]
  Qkv qkv;
  Qkv qkv2;  // MMDiT-X self-attention, when the block has attn2
};

PreAttention pre_attention(const mmdit::DismantledBlock& b, const Tensor& x, const Tensor& silu_c,
                           int64_t heads, MMDiTTrace* trace, const std::string& mod_name) {
  Tensor mod = apply(b.adaLN_modulation, silu_c);  // [B, n_mods * hidden]
  record(trace, mod_name, mod);
  const int64_t n = mod.size(1) / x.size(2);
  PreAttention p;
  p.mods = ops::chunk(mod, n, 1);
  // norm1 then modulate; with attn2 both attentions read the same LayerNorm(x), each with its
  // own shift and scale.
  p.qkv = attention_qkv(
      b.attn, ops::adaln_modulate(x, p.mods[kShiftMsa], p.mods[kScaleMsa], kNormEps), heads);
  if (b.has_attn2())
    p.qkv2 = attention_qkv(
        b.attn2, ops::adaln_modulate(x, p.mods[kShiftMsa2], p.mods[kScaleMsa2], kNormEps), heads);
  return p;
}

// The second half: gated residuals of the attention projection(s) and the MLP.
// x += gate_msa * proj(attn) [+ gate_msa2 * attn2.proj(attn2)]; x += gate_mlp * mlp(mod(norm2 x))
Tensor post_attention(const mmdit::DismantledBlock& b, const PreAttention& p, const Tensor& attn,
                      const Tensor& attn2, const Tensor& x) {
  Tensor out = ops::gated_add(x, p.mods[kGateMsa], apply(b.attn.proj, attn));
  if (b.has_attn2()) out = ops::gated_add(out, p.mods[kGateMsa2], apply(b.attn2.proj, attn2));
  Tensor h = ops::adaln_modulate(out, p.mods[kShiftMlp], p.mods[kScaleMlp], kNormEps);
  h = apply(b.mlp.fc1, h, ops::Activation::GeluTanh);  // [B, L, mlp_hidden]
  return ops::gated_add(out, p.mods[kGateMlp], apply(b.mlp.fc2, h));
}

// One joint block (the reference's block_mixing): both streams attend over [context; x].
// Returns the new (context, x); context is undefined after a pre_only context block.
std::pair<Tensor, Tensor> joint_block(const mmdit::JointBlock& jb, const Tensor& context,
                                      const Tensor& x, const Tensor& silu_c, int64_t heads,
                                      MMDiTTrace* trace, int64_t index) {
  const std::string tag = trace ? "block" + std::to_string(index) + "." : std::string();
  PreAttention pc =
      pre_attention(jb.context_block, context, silu_c, heads, trace, tag + "context_mod");
  PreAttention px = pre_attention(jb.x_block, x, silu_c, heads, trace, tag + "x_mod");
  const int64_t Lc = context.size(1), T = x.size(1);

  Tensor q = ops::concat({pc.qkv.q, px.qkv.q}, 1);  // [B, Lc + T, hidden]
  Tensor k = ops::concat({pc.qkv.k, px.qkv.k}, 1);
  Tensor v = ops::concat({pc.qkv.v, px.qkv.v}, 1);
  record(trace, tag + "q", q);
  record(trace, tag + "k", k);
  ops::AttentionOptions opt;
  opt.heads = heads;
  Tensor attn = ops::attention(q, k, v, opt);  // [B, Lc + T, hidden]
  record(trace, tag + "attn", attn);

  Tensor attn2;
  if (jb.x_block.has_attn2()) {
    attn2 = ops::attention(px.qkv2.q, px.qkv2.k, px.qkv2.v, opt);  // [B, T, hidden]
    record(trace, tag + "attn2", attn2);
  }

  Tensor new_context;
  if (!jb.context_block.pre_only)
    new_context = post_attention(jb.context_block, pc, attn.slice(1, 0, Lc), Tensor(), context);
  Tensor new_x = post_attention(jb.x_block, px, attn.slice(1, Lc, Lc + T), attn2, x);
  return {new_context, new_x};
}

}  // namespace

Tensor MMDiT::cropped_pos_embed(int64_t h, int64_t w) const {
  const int64_t M = cfg_.pos_embed_max_size;
  SD3_CHECK(h > 0 && w > 0 && h <= M && w <= M, "MM-DiT: a latent of ", h, " x ", w,
            " patches exceeds the position table (", M, " x ", M, " patches, i.e. latents up to ",
            M * cfg_.patch_size, " x ", M * cfg_.patch_size, ")");
  const int64_t top = (M - h) / 2, left = (M - w) / 2;
  const Tensor crop =
      pos_embed.view({M, M, cfg_.hidden_size}).slice(0, top, top + h).slice(1, left, left + w);
  // ops::contiguous gathers on the table's device (Tensor::reshape copies on the host only).
  return ops::contiguous(crop).view({1, h * w, cfg_.hidden_size});
}

Tensor MMDiT::forward(const Tensor& x, const Tensor& t, const Tensor& y, const Tensor& context,
                      const MMDiTForwardOptions& opt) const {
  const MMDiTConfig& c = cfg_;
  const int64_t p = c.patch_size;
  SD3_CHECK(x.dim() == 4 && x.size(1) == c.in_channels, "MM-DiT: latent x has shape ",
            shape_str(x.shape()), ", expected [B, ", c.in_channels, ", H, W]");
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  SD3_CHECK(H % p == 0 && W % p == 0, "MM-DiT: latent size ", H, " x ", W,
            " is not a multiple of the patch size ", p);
  SD3_CHECK(t.dim() == 1 && t.size(0) == B, "MM-DiT: timesteps t have shape ", shape_str(t.shape()),
            ", expected [", B, "]");
  SD3_CHECK(context.dim() == 3 && context.size(0) == B && context.size(2) == c.context_in_features,
            "MM-DiT: context has shape ", shape_str(context.shape()), ", expected [", B, ", L, ",
            c.context_in_features, "]");
  if (c.adm_in_channels > 0)
    SD3_CHECK(y.defined() && y.dim() == 2 && y.size(0) == B && y.size(1) == c.adm_in_channels,
              "MM-DiT: pooled y has shape ", y.defined() ? shape_str(y.shape()) : "(none)",
              ", expected [", B, ", ", c.adm_in_channels, "]");
  for (int64_t i : opt.skip_layers)
    SD3_CHECK(i >= 0 && i < c.depth, "MM-DiT: skip layer ", i, " outside 0..", c.depth - 1);
  MMDiTTrace* trace = opt.trace;
  const int64_t h = H / p, w = W / p;

  // Patch embedding (conv k = s = p as patchify + linear) plus the cropped position table.
  Tensor xt = apply(x_embedder_proj, ops::patchify(x, p));  // [B, T, hidden]
  record(trace, "x_patch_embed", xt);
  Tensor pos = cropped_pos_embed(h, w);  // [1, T, hidden]
  record(trace, "pos_embed_cropped", pos);
  xt = ops::add(xt, pos);
  record(trace, "x_embed_pos", xt);

  // c = t_embedder(t) + y_embedder(y). The reference evaluates the sinusoidal features in
  // float32 and casts them to the activation dtype.
  Tensor t_freq =
      ops::cast(ops::timestep_embedding(ops::cast(t, DType::F32), c.frequency_embedding_size),
                x.dtype());  // [B, 256]
  record(trace, "t_freq", t_freq);
  Tensor cvec = apply(t_embedder.mlp_2, apply(t_embedder.mlp_0, t_freq, ops::Activation::Silu));
  record(trace, "t_emb", cvec);
  if (c.adm_in_channels > 0) {
    Tensor y_emb = apply(y_embedder.mlp_2, apply(y_embedder.mlp_0, y, ops::Activation::Silu));
    record(trace, "y_emb", y_emb);
    cvec = ops::add(cvec, y_emb);  // [B, hidden]
  }
  record(trace, "c_mod", cvec);
  // Every adaLN_modulation is Sequential(SiLU, Linear): SiLU(c) is shared.
  Tensor silu_c = ops::silu(cvec);

  Tensor ctx = apply(context_embedder, context);  // [B, Lc, hidden]
  record(trace, "context_embed", ctx);
  if (c.register_length > 0) {
    std::vector<Tensor> parts(static_cast<size_t>(B), register_tokens);
    ctx = ops::concat({ops::concat(parts, 0), ctx}, 1);  // [B, R + Lc, hidden]
  }

  for (int64_t i = 0; i < c.depth; ++i) {
    if (std::find(opt.skip_layers.begin(), opt.skip_layers.end(), i) != opt.skip_layers.end())
      continue;
    std::tie(ctx, xt) =
        joint_block(joint_blocks[static_cast<size_t>(i)], ctx, xt, silu_c, c.num_heads, trace, i);
    if (trace) {
      const std::string tag = "block" + std::to_string(i) + ".";
      record(trace, tag + "x", xt);
      if (ctx.defined()) record(trace, tag + "context", ctx);
    }
  }

  // Final layer: adaLN (shift, scale) then the linear map to p*p*out_channels per patch.
  std::vector<Tensor> mod = ops::chunk(apply(final_layer.adaLN_modulation, silu_c), 2, 1);
  Tensor tokens = apply(final_layer.linear, ops::adaln_modulate(xt, mod[0], mod[1], kNormEps));
  record(trace, "final_layer_tokens", tokens);                    // [B, T, p * p * out_channels]
  Tensor out = ops::unpatchify(tokens, h, w, p, c.out_channels);  // [B, out, H, W]
  record(trace, "out", out);
  return out;
}

}  // namespace sd3::models
