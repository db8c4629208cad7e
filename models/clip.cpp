#include "models/clip.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>

#include "engine/error.h"
#include "models/weight_keys.h"

namespace sd3::models {

namespace {

const char kTokenEmbedding[] = "text_model.embeddings.token_embedding.weight";
const char kPositionEmbedding[] = "text_model.embeddings.position_embedding.weight";
const char kTextProjection[] = "text_projection.weight";
const char kLayerPrefix[] = "text_model.encoder.layers.";

std::string layer_key(int64_t i, const std::string& rest) {
  return indexed_key(kLayerPrefix, i, rest);
}

// The `__metadata__` value of `name` in the file holding `key`, or "".
std::string metadata_of(const WeightStore& w, const std::string& key, const std::string& name) {
  for (const auto& f : w.files()) {
    if (!f->find(w.prefix() + key)) continue;
    auto it = f->metadata().find(name);
    return it == f->metadata().end() ? std::string() : it->second;
  }
  return {};
}

Shape shape_of(const WeightStore& w, const std::string& key, size_t rank) {
  return required_shape(w, key, rank, "not a CLIP text model");
}

}  // namespace

ClipConfig ClipConfig::clip_l() {
  ClipConfig c;
  c.variant = ClipVariant::L;
  c.hidden_size = 768;
  c.intermediate_size = 3072;
  c.num_heads = 12;
  c.num_layers = 12;
  c.hidden_act = ops::Activation::QuickGelu;
  c.has_text_projection = false;  // SAI's clip_l.safetensors has none; SD3 does not use it
  c.projection_dim = 768;
  c.project_pooled = false;
  return c;
}

ClipConfig ClipConfig::clip_g() {
  ClipConfig c;
  c.variant = ClipVariant::G;
  c.hidden_size = 1280;
  c.intermediate_size = 5120;
  c.num_heads = 20;
  c.num_layers = 32;
  c.hidden_act = ops::Activation::Gelu;
  c.has_text_projection = true;
  c.projection_dim = 1280;
  c.project_pooled = true;
  return c;
}

ClipConfig clip_config_from_weights(const WeightStore& w) {
  const Shape tok = shape_of(w, kTokenEmbedding, 2);  // [V, C]
  const Shape pos = shape_of(w, kPositionEmbedding, 2);
  const int64_t hidden = tok[1];
  const int64_t layers = count_layers(w, kLayerPrefix);  // Note [Layer counts from key names]
  SD3_CHECK(layers > 0, "not a CLIP text model: no '", w.prefix(), kLayerPrefix, "N.*' tensors in ",
            w.describe());
  const Shape fc1 = shape_of(w, layer_key(0, "mlp.fc1.weight"), 2);  // [I, C]

  // Variant: explicit metadata, else the released widths, else whether a projection exists.
  const std::string arch = metadata_of(w, kTokenEmbedding, "arch");
  ClipVariant variant;
  if (arch == "clip_l") {
    variant = ClipVariant::L;
  } else if (arch == "clip_g") {
    variant = ClipVariant::G;
  } else if (hidden == 768) {
    variant = ClipVariant::L;
  } else if (hidden == 1280) {
    variant = ClipVariant::G;
  } else {
    variant = w.has(kTextProjection) ? ClipVariant::G : ClipVariant::L;
  }
  ClipConfig c = variant == ClipVariant::G ? ClipConfig::clip_g() : ClipConfig::clip_l();
  c.vocab_size = tok[0];
  c.hidden_size = hidden;
  c.max_positions = pos[0];
  c.num_layers = layers;
  c.intermediate_size = fc1[0];

  // Heads: shapes cannot tell them; tiny files say so in metadata, released ones use 64-wide.
  const std::string heads = metadata_of(w, kTokenEmbedding, "num_attention_heads");
  if (!heads.empty()) {
    char* end = nullptr;
    const long long h = std::strtoll(heads.c_str(), &end, 10);
    SD3_CHECK(end && *end == '\0' && h > 0 && hidden % h == 0,
              "CLIP metadata num_attention_heads '", heads, "' in ", w.describe(),
              " does not divide the width ", hidden);
    c.num_heads = h;
  } else {
    SD3_CHECK(hidden % 64 == 0, "CLIP width ", hidden, " in ", w.describe(),
              " is not a multiple of the 64-wide heads and no num_attention_heads metadata");
    c.num_heads = hidden / 64;
  }

  c.has_text_projection = w.has(kTextProjection);
  if (c.has_text_projection) {
    c.projection_dim = shape_of(w, kTextProjection, 2)[0];
  } else {
    c.projection_dim = hidden;
    SD3_CHECK(!c.project_pooled, "CLIP-G model in ", w.describe(), " lacks '", w.prefix(),
              kTextProjection, "' (its pooled output is projected)");
  }
  return c;
}

std::vector<WeightSpec> clip_weight_specs(const ClipConfig& cfg) {
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size;
  std::vector<WeightSpec> s;
  s.push_back({kTokenEmbedding, {cfg.vocab_size, C}});
  s.push_back({kPositionEmbedding, {cfg.max_positions, C}});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    s.push_back({layer_key(i, "layer_norm1.weight"), {C}});
    s.push_back({layer_key(i, "layer_norm1.bias"), {C}});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      const std::string base = std::string("self_attn.") + proj;
      s.push_back({layer_key(i, base + ".weight"), {C, C}});
      s.push_back({layer_key(i, base + ".bias"), {C}});
    }
    s.push_back({layer_key(i, "layer_norm2.weight"), {C}});
    s.push_back({layer_key(i, "layer_norm2.bias"), {C}});
    s.push_back({layer_key(i, "mlp.fc1.weight"), {I, C}});
    s.push_back({layer_key(i, "mlp.fc1.bias"), {I}});
    s.push_back({layer_key(i, "mlp.fc2.weight"), {C, I}});
    s.push_back({layer_key(i, "mlp.fc2.bias"), {C}});
  }
  s.push_back({"text_model.final_layer_norm.weight", {C}});
  s.push_back({"text_model.final_layer_norm.bias", {C}});
  if (cfg.has_text_projection) s.push_back({kTextProjection, {cfg.projection_dim, C}});
  return s;
}

ClipTextModel ClipTextModel::load(const WeightStore& w, Device device) {
  return load(w, clip_config_from_weights(w), device);
}

ClipTextModel ClipTextModel::load(const WeightStore& w, const ClipConfig& cfg, Device device) {
  SD3_CHECK(cfg.num_heads > 0 && cfg.hidden_size % cfg.num_heads == 0,
            "CLIP config: ", cfg.num_heads, " heads do not divide the width ", cfg.hidden_size);
  SD3_CHECK(cfg.num_layers > 0 && cfg.hidden_layer < cfg.num_layers &&
                cfg.num_layers + cfg.hidden_layer >= 0,
            "CLIP config: hidden_layer ", cfg.hidden_layer, " outside ", cfg.num_layers, " layers");
  SD3_CHECK(!cfg.project_pooled || cfg.has_text_projection,
            "CLIP config: pooled projection without text_projection");
  std::map<std::string, Tensor> t = w.load_all(clip_weight_specs(cfg));
  auto take = [&](const std::string& key) { return t.at(key).to(device); };

  ClipTextModel m;
  m.cfg_ = cfg;
  m.device_ = device;
  m.token_embedding_ = take(kTokenEmbedding);
  m.position_embedding_ = take(kPositionEmbedding);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    auto linear = [&](const std::string& name) {
      return Linear{take(layer_key(i, name + ".weight")), take(layer_key(i, name + ".bias"))};
    };
    auto norm = [&](const std::string& name) {
      return LayerNorm{take(layer_key(i, name + ".weight")), take(layer_key(i, name + ".bias"))};
    };
    EncoderLayer layer;
    layer.layer_norm1 = norm("layer_norm1");
    layer.self_attn.q_proj = linear("self_attn.q_proj");
    layer.self_attn.k_proj = linear("self_attn.k_proj");
    layer.self_attn.v_proj = linear("self_attn.v_proj");
    layer.self_attn.out_proj = linear("self_attn.out_proj");
    layer.layer_norm2 = norm("layer_norm2");
    layer.mlp.fc1 = linear("mlp.fc1");
    layer.mlp.fc2 = linear("mlp.fc2");
    m.layers_.push_back(std::move(layer));
  }
  m.final_layer_norm_ = LayerNorm{take("text_model.final_layer_norm.weight"),
                                  take("text_model.final_layer_norm.bias")};
  if (cfg.has_text_projection) m.text_projection_ = take(kTextProjection);
  return m;
}

// token_embedding[ids] + position_embedding[0..L), in f32 on every device: the reference runs
// the text encoders in float32, and they cost little next to the MM-DiT.
Tensor ClipTextModel::embed(const Tensor& ids) const {
  const int64_t L = ids.size(1);
  Tensor tokens = ops::cast(ops::embedding(ids, token_embedding_), DType::F32);  // [B, L, C]
  return ops::add(tokens, position_embedding_.slice(0, 0, L));
}

// Pre-LN transformer layer: x += attn(ln1(x)) (causal); x += fc2(act(fc1(ln2(x)))).
Tensor ClipTextModel::encoder_layer(const EncoderLayer& layer, const Tensor& x) const {
  const float eps = cfg_.layer_norm_eps;
  Tensor h = ops::layer_norm(x, layer.layer_norm1.weight, layer.layer_norm1.bias, eps);
  const SelfAttention& a = layer.self_attn;
  Tensor q = ops::linear(h, a.q_proj.weight, a.q_proj.bias);  // [B, L, C]
  Tensor k = ops::linear(h, a.k_proj.weight, a.k_proj.bias);
  Tensor v = ops::linear(h, a.v_proj.weight, a.v_proj.bias);
  ops::AttentionOptions attn;
  attn.heads = cfg_.num_heads;
  attn.causal = true;
  Tensor o = ops::attention(q, k, v, attn);  // [B, L, C]
  Tensor y = ops::add(x, ops::linear(o, a.out_proj.weight, a.out_proj.bias));

  h = ops::layer_norm(y, layer.layer_norm2.weight, layer.layer_norm2.bias, eps);
  h = ops::linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias, cfg_.hidden_act);  // [B, L, I]
  return ops::add(y, ops::linear(h, layer.mlp.fc2.weight, layer.mlp.fc2.bias));
}

ClipOutput ClipTextModel::forward(const Tensor& tokens, const ClipForwardOptions& opt) const {
  SD3_CHECK(tokens.defined() && tokens.dim() == 2 && !is_float(tokens.dtype()),
            "CLIP tokens must be integer ids [B, L], got ", tokens.str());
  const int64_t B = tokens.size(0), L = tokens.size(1);
  SD3_CHECK(B > 0 && L > 0 && L <= cfg_.max_positions, "CLIP tokens ", tokens.str(),
            ": length must be 1..", cfg_.max_positions);

  // The pooled position is argmax(ids) per row (the first end token, 49407 being the largest
  // id), found on the host from the ids themselves.
  const std::vector<int64_t> ids = tokens.to_ints();
  std::vector<int64_t> pooled_at(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = ids.data() + b * L;
    for (int64_t j = 0; j < L; ++j)
      SD3_CHECK(row[j] >= 0 && row[j] < cfg_.vocab_size, "CLIP token id ", row[j], " at [", b, ", ",
                j, "] outside the vocabulary of ", cfg_.vocab_size);
    pooled_at[b] = std::max_element(row, row + L) - row;
  }

  ClipTrace* trace = opt.trace;
  Tensor x = embed(tokens.to(device_));  // [B, L, C]
  if (trace) {
    trace->embeddings = x;
    trace->layers.clear();
  }
  const int64_t hidden_at =
      cfg_.hidden_layer < 0 ? cfg_.num_layers + cfg_.hidden_layer : cfg_.hidden_layer;
  ClipOutput out;
  for (int64_t i = 0; i < cfg_.num_layers; ++i) {
    x = encoder_layer(layers_[i], x);
    if (i == hidden_at) out.hidden = x;
    if (trace) trace->layers.push_back(x);
  }
  out.final_layer_norm =
      ops::layer_norm(x, final_layer_norm_.weight, final_layer_norm_.bias, cfg_.layer_norm_eps);

  std::vector<Tensor> rows;
  for (int64_t b = 0; b < B; ++b)
    rows.push_back(out.final_layer_norm.select(0, b).slice(0, pooled_at[b], pooled_at[b] + 1));
  Tensor pooled = ops::concat(rows, 0);  // [B, C]
  Tensor projected;
  if (text_projection_.defined()) projected = ops::linear(pooled, text_projection_);  // [B, P]
  out.pooled = cfg_.project_pooled ? projected : pooled;

  if (trace) {
    trace->final_layer_norm = out.final_layer_norm;
    trace->pooled_index = Tensor::from_ints(pooled_at, {B});
    trace->pooled_unprojected = pooled;
    trace->pooled_projected = projected;
  }
  return out;
}

}  // namespace sd3::models
