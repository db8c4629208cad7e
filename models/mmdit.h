// MM-DiT: the diffusion transformer of SD3-medium, SD3.5-large and SD3.5-medium (MMDiT-X),
// as Stability's reference builds it (mmditx.MMDiTX with the configuration sd3_impls.BaseModel
// reads from the weights).
//
// x [B, C, H, W] latent -> patches + cropped 2-D sin-cos position table -> `depth` joint blocks
// in which the context stream [B, Lc, hidden] and the image stream [B, T, hidden] attend jointly
// over [context; x], each modulated by c = t_embedder(t) + y_embedder(y) -> final adaLN layer ->
// unpatchify -> velocity [B, C, H, W].
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "engine/weights.h"

namespace sd3::models {

// Every MM-DiT uses 64-wide attention heads: hidden = 64 * depth, heads = depth.
constexpr int64_t kMMDiTHeadDim = 64;

struct MMDiTConfig {
  int64_t depth = 24;          // joint blocks
  int64_t hidden_size = 1536;  // 64 * depth
  int64_t num_heads = 24;      // depth
  int64_t patch_size = 2;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  int64_t pos_embed_max_size = 192;  // the stored table covers M x M patches
  int64_t adm_in_channels = 2048;    // pooled text vector y; 0 = no y_embedder
  int64_t context_in_features = 4096;
  int64_t frequency_embedding_size = 256;  // sinusoidal timestep features
  int64_t mlp_ratio = 4;
  bool qk_norm = false;                           // per-head RMSNorm of q and k (SD3.5)
  std::vector<int64_t> x_block_self_attn_layers;  // MMDiT-X blocks with the extra attn2
  int64_t register_length = 0;                    // learned tokens prepended to the context

  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t mlp_hidden() const { return hidden_size * mlp_ratio; }
  bool x_block_self_attn(int64_t block) const;

  // The released models.
  static MMDiTConfig sd3_medium();
  static MMDiTConfig sd35_large();
  static MMDiTConfig sd35_medium();
};

bool operator==(const MMDiTConfig& a, const MMDiTConfig& b);
inline bool operator!=(const MMDiTConfig& a, const MMDiTConfig& b) {
  return !(a == b);
}
// "depth 24, hidden 1536, heads 24, patch 2, ..." for messages.
std::string to_string(const MMDiTConfig& cfg);

// The configuration as the reference derives it from the weights (keys relative to the
// diffusion model's prefix): depth = x_embedder.proj.weight.shape[0] / 64, patch from that
// weight, pos_embed_max_size = sqrt(pos_embed.shape[1]), adm_in from y_embedder.mlp.0.weight,
// context_in from context_embedder.weight, qk_norm from joint_blocks.0.context_block.attn.ln_k,
// MMDiT-X layers from the blocks holding x_block.attn2 weights, register tokens from
// `register`. Throws naming the store when it does not hold an MM-DiT.
MMDiTConfig mmdit_config_from_weights(const WeightStore& w);

// Every tensor the loader reads, keys relative to the diffusion model's prefix
// ("model.diffusion_model." in the released files), with shapes.
std::vector<WeightSpec> mmdit_weight_specs(const MMDiTConfig& cfg);

// Typed weights, named after the checkpoint keys.
namespace mmdit {

struct Linear {
  Tensor weight;  // [out, in]
  Tensor bias;    // [out]
};

// t_embedder / y_embedder: mlp.0 -> SiLU -> mlp.2.
struct Embedder {
  Linear mlp_0, mlp_2;
};

struct Attention {
  Linear qkv;         // [3 * hidden, hidden], output features ordered (q|k|v, head, head_dim)
  Linear proj;        // undefined in a pre_only block
  Tensor ln_q, ln_k;  // [head_dim] RMSNorm gains, undefined without qk_norm
};

struct Mlp {
  Linear fc1, fc2;
};

// One stream's half of a joint block (the reference's DismantledBlock).
struct DismantledBlock {
  Linear adaLN_modulation;  // the Linear of Sequential(SiLU, Linear): [n_mods * hidden, hidden]
  Attention attn;
  Attention attn2;  // MMDiT-X x-only self-attention; attn2.qkv undefined elsewhere
  Mlp mlp;          // undefined when pre_only
  bool pre_only = false;

  bool has_attn2() const { return attn2.qkv.weight.defined(); }
};

struct JointBlock {
  DismantledBlock context_block;
  DismantledBlock x_block;
};

struct FinalLayer {
  Linear adaLN_modulation;  // [2 * hidden, hidden]: shift, scale
  Linear linear;            // [p * p * out_channels, hidden]
};

}  // namespace mmdit

// Intermediates MMDiT::forward records when asked (tests, debugging), named as in the golden
// fixtures: "x_patch_embed", "pos_embed_cropped", "x_embed_pos", "t_freq", "t_emb", "y_emb",
// "c_mod", "context_embed", "block<i>.{x_mod, context_mod, q, k, attn, attn2, x, context}",
// "final_layer_tokens", "out". q and k are the joint [context; x] tensors [B, Lc+T, hidden] after
// the qk-norm; attn is the joint attention output before the split and proj; attn2 the x-only
// self-attention output before its proj; *_mod all adaLN chunks as one [B, n_mods * hidden].
struct MMDiTTrace {
  std::map<std::string, Tensor> tensors;

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  const Tensor& at(const std::string& name) const;  // throws naming a missing entry
};

struct MMDiTForwardOptions {
  // Joint blocks that are not run at all (the reference's skip_layers, used by skip-layer
  // guidance: SD3.5-medium skips blocks 7, 8, 9 on an extra conditional pass).
  std::vector<int64_t> skip_layers;
  // When set, every intermediate listed above is stored here; null costs nothing.
  MMDiTTrace* trace = nullptr;
};

class MMDiT {
 public:
  // Config from the weights, every tensor of mmdit_weight_specs loaded (shapes checked) in its
  // stored dtype and moved to `device`. `w` is the diffusion model's view (prefix
  // "model.diffusion_model." in the released single files).
  static MMDiT load(const WeightStore& w, Device device = Device::cpu());
  // The same from tensors already in memory (keys as in mmdit_weight_specs), e.g. random
  // weights for benchmarks; every spec must be present with its shape, extras are ignored.
  static MMDiT from_tensors(const MMDiTConfig& cfg, const std::map<std::string, Tensor>& tensors,
                            Device device = Device::cpu());

  const MMDiTConfig& config() const { return cfg_; }
  // Keys of the store that the model does not read (listed by load; the caller may warn).
  const std::vector<std::string>& unexpected_keys() const { return unexpected_; }

  // x [B, in_channels, H, W] (H, W multiples of the patch size, at most pos_embed_max_size
  // patches each way), t [B] timesteps (1000 * sigma), y [B, adm_in_channels] pooled text,
  // context [B, Lc, context_in_features] -> velocity [B, out_channels, H, W] in x's dtype.
  Tensor forward(const Tensor& x, const Tensor& t, const Tensor& y, const Tensor& context,
                 const MMDiTForwardOptions& opt = {}) const;

  // The centre crop of pos_embed for an h x w patch grid: [1, h * w, hidden].
  Tensor cropped_pos_embed(int64_t h, int64_t w) const;

 private:
  MMDiTConfig cfg_;
  Tensor pos_embed;               // [1, M * M, hidden]
  mmdit::Linear x_embedder_proj;  // conv weight [hidden, C, p, p] viewed as [hidden, C * p * p]
  mmdit::Embedder t_embedder;
  mmdit::Embedder y_embedder;  // undefined without adm_in_channels
  mmdit::Linear context_embedder;
  Tensor register_tokens;  // key `register`: [1, register_length, hidden], or undefined
  std::vector<mmdit::JointBlock> joint_blocks;
  mmdit::FinalLayer final_layer;
  std::vector<std::string> unexpected_;
};

}  // namespace sd3::models
