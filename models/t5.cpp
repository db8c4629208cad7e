#include "models/t5.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>

#include "engine/error.h"
#include "engine/ops.h"
#include "models/weight_keys.h"

namespace sd3::models {

namespace {

const char kEmbedTokens[] = "encoder.embed_tokens.weight";
const char kShared[] = "shared.weight";
const char kFinalLayerNorm[] = "encoder.final_layer_norm.weight";
const char kBlockPrefix[] = "encoder.block.";
const char kRelativeAttentionBias[] = "layer.0.SelfAttention.relative_attention_bias.weight";

std::string block_key(int64_t i, const std::string& rest) {
  return indexed_key(kBlockPrefix, i, rest);
}

Shape shape_of(const WeightStore& w, const std::string& key, size_t rank) {
  return required_shape(w, key, rank, "not a T5 encoder");
}

}  // namespace

T5Config T5Config::xxl() {
  return T5Config{};
}

T5Config t5_config_from_weights(const WeightStore& w) {
  T5Config c;
  c.has_encoder_embed_tokens = w.has(kEmbedTokens);
  c.has_shared = w.has(kShared);
  SD3_CHECK(c.has_encoder_embed_tokens || c.has_shared, "not a T5 encoder: neither '",
            w.prefix() + kEmbedTokens, "' nor '", w.prefix() + kShared, "' in ", w.describe());
  const Shape embed = shape_of(w, c.has_encoder_embed_tokens ? kEmbedTokens : kShared, 2);
  c.vocab_size = embed[0];
  c.d_model = embed[1];

  c.num_layers = count_layers(w, kBlockPrefix);  // Note [Layer counts from key names]
  SD3_CHECK(c.num_layers > 0, "not a T5 encoder: no '", w.prefix(), kBlockPrefix,
            "N.*' tensors in ", w.describe());
  const Shape rel = shape_of(w, block_key(0, kRelativeAttentionBias), 2);  // [buckets, heads]
  c.num_buckets = rel[0];
  c.num_heads = rel[1];
  SD3_CHECK(c.num_heads > 0 && c.num_buckets >= 4, "T5 relative_attention_bias in ", w.describe(),
            " has unusable shape ", shape_str(rel));
  const Shape q = shape_of(w, block_key(0, "layer.0.SelfAttention.q.weight"), 2);  // [inner, D]
  SD3_CHECK(q[0] % c.num_heads == 0, "T5 attention width ", q[0], " in ", w.describe(),
            " is not a multiple of the ", c.num_heads, " heads of relative_attention_bias");
  c.d_kv = q[0] / c.num_heads;
  c.d_ff = shape_of(w, block_key(0, "layer.1.DenseReluDense.wi_0.weight"), 2)[0];
  return c;
}

std::vector<WeightSpec> t5_weight_specs(const T5Config& cfg) {
  const int64_t D = cfg.d_model, I = cfg.inner_dim(), F = cfg.d_ff;
  std::vector<WeightSpec> s;
  if (cfg.has_encoder_embed_tokens) s.push_back({kEmbedTokens, {cfg.vocab_size, D}});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    s.push_back({block_key(i, "layer.0.SelfAttention.q.weight"), {I, D}});
    s.push_back({block_key(i, "layer.0.SelfAttention.k.weight"), {I, D}});
    s.push_back({block_key(i, "layer.0.SelfAttention.v.weight"), {I, D}});
    s.push_back({block_key(i, "layer.0.SelfAttention.o.weight"), {D, I}});
    if (i == 0)
      s.push_back({block_key(i, kRelativeAttentionBias), {cfg.num_buckets, cfg.num_heads}});
    s.push_back({block_key(i, "layer.0.layer_norm.weight"), {D}});
    s.push_back({block_key(i, "layer.1.DenseReluDense.wi_0.weight"), {F, D}});
    s.push_back({block_key(i, "layer.1.DenseReluDense.wi_1.weight"), {F, D}});
    s.push_back({block_key(i, "layer.1.DenseReluDense.wo.weight"), {D, F}});
    s.push_back({block_key(i, "layer.1.layer_norm.weight"), {D}});
  }
  s.push_back({kFinalLayerNorm, {D}});
  if (cfg.has_shared) s.push_back({kShared, {cfg.vocab_size, D}});
  return s;
}

// Bidirectional buckets (half of them for keys after the query): |d| < max_exact maps to
// itself; larger distances go logarithmically up to max_distance, then clamp. The reference
// evaluates log(|d| / max_exact) / log(max_distance / max_exact) * (half - max_exact) in
// float32 and truncates; we do the same so boundary distances land in the same bucket.
int64_t t5_relative_position_bucket(int64_t d, int64_t num_buckets, int64_t max_distance) {
  const int64_t half = num_buckets / 2;
  const int64_t max_exact = half / 2;
  const int64_t base = d > 0 ? half : 0;
  const int64_t n = d < 0 ? -d : d;
  if (n < max_exact) return base + n;
  const float log_ratio = std::log(static_cast<float>(n) / static_cast<float>(max_exact));
  const float log_range = static_cast<float>(
      std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float scaled = log_ratio / log_range * static_cast<float>(half - max_exact);
  const int64_t large = max_exact + static_cast<int64_t>(scaled);
  return base + std::min(large, half - 1);
}

T5Encoder T5Encoder::load(const WeightStore& w, Device device) {
  return load(w, t5_config_from_weights(w), device);
}

T5Encoder T5Encoder::load(const WeightStore& w, const T5Config& cfg, Device device) {
  SD3_CHECK(cfg.num_layers > 0 && cfg.num_heads > 0 && cfg.d_kv > 0 && cfg.num_buckets >= 4,
            "T5 config: unusable sizes (", cfg.num_layers, " blocks, ", cfg.num_heads, " heads)");
  SD3_CHECK(cfg.has_encoder_embed_tokens || cfg.has_shared, "T5 config: no embedding key");
  // Both embedding copies are shape-checked, only the one the reference reads is loaded.
  const std::string embed_key = cfg.has_encoder_embed_tokens ? kEmbedTokens : kShared;
  std::map<std::string, Tensor> t;
  for (const WeightSpec& s : t5_weight_specs(cfg)) {
    if (s.key == kShared && embed_key != kShared) {
      std::optional<Shape> found = w.shape(s.key);
      SD3_CHECK(found.has_value(), "missing tensor '", w.prefix() + s.key, "' (expected shape ",
                shape_str(s.shape), ") in ", w.describe());
      SD3_CHECK(*found == s.shape, "tensor '", w.prefix() + s.key, "' in ", w.describe(),
                " has shape ", shape_str(*found), ", expected ", shape_str(s.shape));
      continue;
    }
    t[s.key] = w.get(s.key, s.shape);
  }
  auto take = [&](const std::string& key) { return t.at(key).to(device); };

  T5Encoder m;
  m.cfg_ = cfg;
  m.device_ = device;
  m.embed_tokens_ = take(embed_key);
  m.relative_attention_bias_ = take(block_key(0, kRelativeAttentionBias));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    Block b;
    b.attn_layer_norm = take(block_key(i, "layer.0.layer_norm.weight"));
    b.attn.q = take(block_key(i, "layer.0.SelfAttention.q.weight"));
    b.attn.k = take(block_key(i, "layer.0.SelfAttention.k.weight"));
    b.attn.v = take(block_key(i, "layer.0.SelfAttention.v.weight"));
    b.attn.o = take(block_key(i, "layer.0.SelfAttention.o.weight"));
    b.ff_layer_norm = take(block_key(i, "layer.1.layer_norm.weight"));
    b.ff.wi_0 = take(block_key(i, "layer.1.DenseReluDense.wi_0.weight"));
    b.ff.wi_1 = take(block_key(i, "layer.1.DenseReluDense.wi_1.weight"));
    b.ff.wo = take(block_key(i, "layer.1.DenseReluDense.wo.weight"));
    m.blocks_.push_back(std::move(b));
  }
  m.final_layer_norm_ = take(kFinalLayerNorm);
  return m;
}

// bias[h, i, j] = relative_attention_bias[bucket(j - i), h], as [H, L, L] f32 on the device.
// The bucket grid is integer work on the host; the lookup is an embedding of the table.
Tensor T5Encoder::position_bias(int64_t L, T5Trace* trace) const {
  const int64_t H = cfg_.num_heads;
  std::vector<int64_t> by_distance(static_cast<size_t>(2 * L - 1));
  for (int64_t k = 0; k < 2 * L - 1; ++k)
    by_distance[k] = t5_relative_position_bucket(k - (L - 1), cfg_.num_buckets, cfg_.max_distance);
  std::vector<int64_t> grid(static_cast<size_t>(L * L));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) grid[i * L + j] = by_distance[j - i + L - 1];

  Tensor ids = Tensor::from_ints(grid, {1, L * L}).to(device_);
  Tensor table =
      ops::cast(ops::embedding(ids, relative_attention_bias_), DType::F32);  // [1, L*L, H]
  Tensor bias = ops::permute(table, {0, 2, 1}).view({H, L, L});
  if (trace) {
    trace->relative_position_bucket = Tensor::from_ints(by_distance, {2 * L - 1});
    Tensor d_ids = Tensor::from_ints(by_distance, {1, 2 * L - 1}).to(device_);
    Tensor d_table = ops::cast(ops::embedding(d_ids, relative_attention_bias_), DType::F32);
    trace->position_bias_by_distance = ops::permute(d_table, {0, 2, 1}).view({H, 2 * L - 1});
    trace->position_bias = bias.view({1, H, L, L});
  }
  return bias;
}

// x += o(attention(q, k, v) + bias) with unit scale; x += wo(gelu_tanh(wi_0 h) * wi_1 h).
Tensor T5Encoder::block(const Block& b, const Tensor& x, const Tensor& bias) const {
  const float eps = cfg_.layer_norm_eps;
  Tensor h = ops::rms_norm(x, b.attn_layer_norm, eps);  // [B, L, D]
  Tensor q = ops::linear(h, b.attn.q);                  // [B, L, H*d_kv]
  Tensor k = ops::linear(h, b.attn.k);
  Tensor v = ops::linear(h, b.attn.v);
  ops::AttentionOptions attn;
  attn.heads = cfg_.num_heads;
  attn.bias = bias;
  attn.scale = 1.0f;  // T5 folds the 1/sqrt(d_kv) into its initialisation
  Tensor y = ops::add(x, ops::linear(ops::attention(q, k, v, attn), b.attn.o));

  h = ops::rms_norm(y, b.ff_layer_norm, eps);
  Tensor gate = ops::linear(h, b.ff.wi_0, {}, ops::Activation::GeluTanh);  // [B, L, F]
  Tensor up = ops::linear(h, b.ff.wi_1);
  return ops::add(y, ops::linear(ops::mul(gate, up), b.ff.wo));
}

Tensor T5Encoder::forward(const Tensor& tokens, const T5ForwardOptions& opt) const {
  SD3_CHECK(tokens.defined() && tokens.dim() == 2 && !is_float(tokens.dtype()),
            "T5 tokens must be integer ids [B, L], got ", tokens.str());
  const int64_t L = tokens.size(1);
  SD3_CHECK(tokens.size(0) > 0 && L > 0, "T5 tokens ", tokens.str(), " are empty");
  for (int64_t id : tokens.to_ints())
    SD3_CHECK(id >= 0 && id < cfg_.vocab_size, "T5 token id ", id, " outside the vocabulary of ",
              cfg_.vocab_size);

  T5Trace* trace = opt.trace;
  // f32 activations whatever the weights: T5-XXL's residual stream exceeds the fp16 range.
  Tensor x = ops::cast(ops::embedding(tokens.to(device_), embed_tokens_), DType::F32);  // [B, L, D]
  if (trace) {
    trace->embeddings = x;
    trace->blocks.clear();
  }
  const Tensor bias = position_bias(L, trace);  // [H, L, L], shared by every block
  for (const Block& b : blocks_) {
    x = block(b, x, bias);
    if (trace) trace->blocks.push_back(x);
  }
  return ops::rms_norm(x, final_layer_norm_, cfg_.layer_norm_eps);
}

}  // namespace sd3::models
