// The SD3 / SD3.5 VAE (Stability's SDVAE: VAEEncoder + VAEDecoder, 16 latent channels, no
// quant_conv / post_quant_conv), loaded by the SAI/ldm key names (`first_stage_model.encoder.*`,
// `first_stage_model.decoder.*` in the single-file releases, bare keys in a separate file).
//
// Vae::encode is SDVAE.encode (moments -> clamped log-variance -> reparameterised sample) and
// Vae::decode is SDVAE.decode. The SD3 latent format (scale 1.5305, shift 0.0609) is applied
// outside, as the reference pipeline does: sd3_latent_process_in after encode,
// sd3_latent_process_out before decode.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "engine/weights.h"

namespace sd3::models {

struct VaeConfig {
  int64_t in_channels = 3;   // image channels the encoder reads
  int64_t out_channels = 3;  // image channels the decoder writes
  int64_t ch = 128;          // base width; level i has ch * ch_mult[i] channels
  std::vector<int64_t> ch_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;  // encoder blocks per level; the decoder has one more
  int64_t z_channels = 16;     // latent channels (the encoder emits 2x: mean, logvar)
  int64_t groups = 32;         // GroupNorm groups
  float eps = 1e-6f;           // GroupNorm eps

  static VaeConfig sd3();  // the released SD3 / SD3.5 VAE

  int64_t levels() const { return static_cast<int64_t>(ch_mult.size()); }
  // Image pixels per latent pixel along each axis: 2^(levels-1) (8 for the released VAE).
  int64_t downscale() const;
  int64_t level_channels(int64_t level) const { return ch * ch_mult.at(level); }
};

// SD3LatentFormat (sd3_impls.py): the sampler's latents are (z - shift) * scale.
constexpr float kSd3LatentScale = 1.5305f;
constexpr float kSd3LatentShift = 0.0609f;
// SDVAE.encode clamps the log-variance to this range before sampling.
constexpr float kVaeLogvarMin = -30.0f;
constexpr float kVaeLogvarMax = 20.0f;

// (z - 0.0609) * 1.5305: VAE latent -> sampler latent (after encode).
Tensor sd3_latent_process_in(const Tensor& z);
// z / 1.5305 + 0.0609: sampler latent -> VAE latent (before decode).
Tensor sd3_latent_process_out(const Tensor& z);

// Derives the configuration from key names and shapes (either the encoder or the decoder
// suffices). A diffusers-layout VAE or one with quant_conv (SD1/SDXL style) is refused with a
// message saying so.
VaeConfig vae_config_from_weights(const WeightStore& w);
// Every tensor of the VAE (encoder then decoder), keys relative to the component prefix, in
// the order of the reference's state_dict.
std::vector<WeightSpec> vae_weight_specs(const VaeConfig& cfg);
std::vector<WeightSpec> vae_encoder_weight_specs(const VaeConfig& cfg);  // `encoder.*`
std::vector<WeightSpec> vae_decoder_weight_specs(const VaeConfig& cfg);  // `decoder.*`

// Named intermediates for tests and debugging (names as in the golden manifest: "conv_in",
// "down0.blocks_out", "mid.attn_1", "up3.blocks_out", "norm_out", "moments", ...). Recording
// keeps those tensors alive, so the production path passes no trace.
struct VaeTrace {
  std::map<std::string, Tensor> tensors;
  void record(const std::string& name, const Tensor& t) { tensors[name] = t; }
  // The recorded tensor; throws naming the missing name.
  const Tensor& at(const std::string& name) const;
};

// Which halves to load: text-to-image needs only the decoder (saves ~34M parameters).
struct VaeLoadOptions {
  bool encoder = true;
  bool decoder = true;
};

namespace vae {

// Parameter groups, named after the checkpoint's module names.
struct Conv {
  Tensor weight;  // [Cout, Cin, kh, kw]
  Tensor bias;    // [Cout]
};
struct Norm {
  Tensor weight;  // [C]
  Tensor bias;    // [C]
};
struct ResnetBlock {
  Norm norm1;
  Conv conv1;
  Norm norm2;
  Conv conv2;
  Conv nin_shortcut;  // 1x1, only where the block changes the channel count
};
struct AttnBlock {
  Norm norm;
  Conv q, k, v, proj_out;  // 1x1 convs, [C, C, 1, 1]
};
struct MidBlock {
  ResnetBlock block_1;
  AttnBlock attn_1;
  ResnetBlock block_2;
};
struct DownLevel {
  std::vector<ResnetBlock> block;
  Conv downsample;  // `downsample.conv`; all but the last level
};
struct UpLevel {
  std::vector<ResnetBlock> block;
  Conv upsample;  // `upsample.conv`; all but level 0
};
struct Encoder {
  Conv conv_in;
  std::vector<DownLevel> down;
  MidBlock mid;
  Norm norm_out;
  Conv conv_out;
};
struct Decoder {
  Conv conv_in;
  MidBlock mid;
  std::vector<UpLevel> up;  // up[i] works at the resolution of encoder level i
  Norm norm_out;
  Conv conv_out;
};

}  // namespace vae

// The encoder's output split in two, log-variance already clamped.
struct VaeMoments {
  Tensor mean;    // [B, z, H/f, W/f]
  Tensor logvar;  // [B, z, H/f, W/f], clamped to [kVaeLogvarMin, kVaeLogvarMax]
};

class Vae {
 public:
  static Vae load(const WeightStore& w, Device device = Device::cpu(),
                  const VaeLoadOptions& options = {});
  // The same from tensors already in memory (keys as in vae_weight_specs), e.g. random weights
  // for benchmarks. A half is set up when its conv_in weight ("encoder.conv_in.weight",
  // "decoder.conv_in.weight") is present, and must then be complete with the spec shapes;
  // extras are ignored.
  static Vae from_tensors(const VaeConfig& cfg, const std::map<std::string, Tensor>& tensors,
                          Device device = Device::cpu());

  const VaeConfig& config() const { return cfg_; }
  Device device() const { return device_; }
  bool has_encoder() const { return has_encoder_; }
  bool has_decoder() const { return has_decoder_; }
  // Keys of the store that no spec names (for a warning).
  const std::vector<std::string>& unexpected_keys() const { return unexpected_; }

  // image [B, in_channels, H, W] in [-1, 1] (H, W multiples of downscale()) -> moments.
  VaeMoments encode_moments(const Tensor& image, VaeTrace* trace = nullptr) const;
  // SDVAE.encode: mean + exp(logvar / 2) * noise, noise [B, z, H/f, W/f] standard normal
  // (the reference draws it with randn_like). The result is the raw VAE latent: apply
  // sd3_latent_process_in before sampling with it.
  Tensor encode(const Tensor& image, const Tensor& noise, VaeTrace* trace = nullptr) const;
  // SDVAE.decode: latent [B, z, h, w] (already sd3_latent_process_out'ed) ->
  // image [B, out_channels, h*f, w*f], nominally in [-1, 1] and not clamped.
  Tensor decode(const Tensor& latent, VaeTrace* trace = nullptr) const;

 private:
  VaeConfig cfg_;
  Device device_;
  bool has_encoder_ = false;
  bool has_decoder_ = false;
  vae::Encoder encoder_;
  vae::Decoder decoder_;
  std::vector<std::string> unexpected_;
};

}  // namespace sd3::models
