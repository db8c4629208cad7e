#include "common/tiny_models.h"

#include <utility>

namespace sd3::test {

models::MMDiTConfig tiny_mmdit(models::MMDiTConfig c, int64_t depth) {
  c.depth = depth;
  c.hidden_size = 64 * depth;
  c.num_heads = depth;
  c.pos_embed_max_size = 8;
  c.adm_in_channels = 40;
  c.context_in_features = 48;
  std::vector<int64_t> kept;
  for (int64_t l : c.x_block_self_attn_layers)
    if (l < depth) kept.push_back(l);
  c.x_block_self_attn_layers = kept;
  return c;
}

models::VaeConfig tiny_vae() {
  models::VaeConfig c = models::VaeConfig::sd3();
  c.ch = 32;
  c.ch_mult = {1, 2};
  c.num_res_blocks = 1;
  return c;
}

models::ClipConfig tiny_clip(bool g) {
  models::ClipConfig c = g ? models::ClipConfig::clip_g() : models::ClipConfig::clip_l();
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_heads = 2;
  c.num_layers = 2;
  c.vocab_size = 100;
  c.has_text_projection = g;
  c.projection_dim = 128;
  return c;
}

models::T5Config tiny_t5() {
  models::T5Config c = models::T5Config::xxl();
  c.d_model = 64;
  c.num_heads = 4;
  c.d_kv = 16;
  c.d_ff = 96;
  c.num_layers = 2;
  c.vocab_size = 100;
  return c;
}

models::ModelPaths positional(std::vector<std::string> files) {
  models::ModelPaths p;
  p.models = std::move(files);
  return p;
}

}  // namespace sd3::test
