// T5 v1.1 encoder (T5-XXL as SD3 uses it), in the key layout of t5xxl_fp16.safetensors.
//
// x = embed_tokens[ids]; every block: x += o(attn(rms(x) q, rms(x) k, rms(x) v) + bias), no
// 1/sqrt(d) scaling; x += wo(gelu_tanh(wi_0 rms(x)) * wi_1 rms(x)); output = rms(x) with
// encoder.final_layer_norm. The relative position bias is computed from block 0's
// relative_attention_bias (bidirectional buckets) and the same bias is added in every block.
// No padding mask (the reference attends pad tokens). Activations stay f32 whatever the weight
// dtype, because T5-XXL's activations overflow fp16.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "engine/weights.h"

namespace sd3::models {

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 4096;
  int64_t d_kv = 64;  // per head; inner width = num_heads * d_kv
  int64_t d_ff = 10240;
  int64_t num_heads = 64;
  int64_t num_layers = 24;
  int64_t num_buckets = 32;
  int64_t max_distance = 128;
  float layer_norm_eps = 1e-6f;
  // Which copies of the embedding matrix the file holds (released files hold both, equal);
  // encoder.embed_tokens.weight (what the reference reads) is preferred.
  bool has_encoder_embed_tokens = true;
  bool has_shared = true;

  int64_t inner_dim() const { return num_heads * d_kv; }
  static T5Config xxl();
};

// Reads the configuration from key names and shapes: d_model and vocab from the embedding,
// heads and buckets from relative_attention_bias [num_buckets, heads], d_kv = q rows / heads,
// d_ff from wi_0, depth from the highest block index. Throws naming the store if not T5.
T5Config t5_config_from_weights(const WeightStore& w);

// Every tensor the loader checks, keys relative to the component prefix (both embedding keys
// when the config says the file has both; only one of them is loaded).
std::vector<WeightSpec> t5_weight_specs(const T5Config& cfg);

// Bucket of a relative position d = key position - query position (bidirectional T5 buckets,
// with the reference's float32 logarithm).
int64_t t5_relative_position_bucket(int64_t d, int64_t num_buckets, int64_t max_distance);

struct T5Trace {
  Tensor embeddings;                 // [B, L, D]
  Tensor relative_position_bucket;   // [2L-1] i64 (CPU), index k = d + L - 1
  Tensor position_bias_by_distance;  // [H, 2L-1] f32, index k = d + L - 1
  Tensor position_bias;              // [1, H, L, L] f32
  std::vector<Tensor> blocks;        // [B, L, D] output of each block, before the final norm
};

struct T5ForwardOptions {
  T5Trace* trace = nullptr;
};

class T5Encoder {
 public:
  static T5Encoder load(const WeightStore& w, Device device = Device::cpu());
  static T5Encoder load(const WeightStore& w, const T5Config& cfg, Device device = Device::cpu());

  // tokens [B, L] (i32/i64, any device) -> [B, L, d_model] f32, after the final norm.
  Tensor forward(const Tensor& tokens, const T5ForwardOptions& opt = {}) const;

  const T5Config& config() const { return cfg_; }
  Device device() const { return device_; }

 private:
  struct SelfAttention {
    Tensor q, k, v, o;  // [inner, D] (o: [D, inner])
  };
  struct DenseReluDense {
    Tensor wi_0, wi_1;  // [F, D]
    Tensor wo;          // [D, F]
  };
  struct Block {
    Tensor attn_layer_norm;  // layer.0.layer_norm.weight [D]
    SelfAttention attn;      // layer.0.SelfAttention
    Tensor ff_layer_norm;    // layer.1.layer_norm.weight [D]
    DenseReluDense ff;       // layer.1.DenseReluDense
  };

  Tensor position_bias(int64_t L, T5Trace* trace) const;
  Tensor block(const Block& b, const Tensor& x, const Tensor& bias) const;

  T5Config cfg_;
  Device device_;
  Tensor embed_tokens_;             // [V, D]
  Tensor relative_attention_bias_;  // [num_buckets, H] (block 0)
  std::vector<Block> blocks_;
  Tensor final_layer_norm_;  // [D]
};

}  // namespace sd3::models
