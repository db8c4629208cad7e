#include "models/vae.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "engine/error.h"
#include "engine/ops.h"
#include "models/weight_keys.h"

namespace sd3::models {

VaeConfig VaeConfig::sd3() {
  return VaeConfig{};
}

int64_t VaeConfig::downscale() const {
  return int64_t{1} << (levels() - 1);
}

Tensor sd3_latent_process_in(const Tensor& z) {
  return ops::scale(ops::add_scalar(z, -kSd3LatentShift), kSd3LatentScale);
}

Tensor sd3_latent_process_out(const Tensor& z) {
  return ops::add_scalar(ops::scale(z, 1.0f / kSd3LatentScale), kSd3LatentShift);
}

const Tensor& VaeTrace::at(const std::string& name) const {
  auto it = tensors.find(name);
  SD3_CHECK(it != tensors.end(), "VAE trace has no tensor '", name, "'");
  return it->second;
}

// ---- parameters: one walk over the module tree serves both the specs and the loader -------

namespace {

// Called once per parameter with its key (relative to the VAE prefix), shape and slot.
using ParamVisitor = std::function<void(const std::string& key, const Shape& shape, Tensor& slot)>;

void visit_conv(vae::Conv& c, const std::string& key, int64_t cout, int64_t cin, int64_t k,
                const ParamVisitor& f) {
  f(key + ".weight", {cout, cin, k, k}, c.weight);
  f(key + ".bias", {cout}, c.bias);
}

void visit_norm(vae::Norm& n, const std::string& key, int64_t c, const ParamVisitor& f) {
  f(key + ".weight", {c}, n.weight);
  f(key + ".bias", {c}, n.bias);
}

void visit_resnet(vae::ResnetBlock& b, const std::string& key, int64_t cin, int64_t cout,
                  const ParamVisitor& f) {
  visit_norm(b.norm1, key + ".norm1", cin, f);
  visit_conv(b.conv1, key + ".conv1", cout, cin, 3, f);
  visit_norm(b.norm2, key + ".norm2", cout, f);
  visit_conv(b.conv2, key + ".conv2", cout, cout, 3, f);
  if (cin != cout) visit_conv(b.nin_shortcut, key + ".nin_shortcut", cout, cin, 1, f);
}

void visit_attn(vae::AttnBlock& a, const std::string& key, int64_t c, const ParamVisitor& f) {
  visit_norm(a.norm, key + ".norm", c, f);
  visit_conv(a.q, key + ".q", c, c, 1, f);
  visit_conv(a.k, key + ".k", c, c, 1, f);
  visit_conv(a.v, key + ".v", c, c, 1, f);
  visit_conv(a.proj_out, key + ".proj_out", c, c, 1, f);
}

void visit_mid(vae::MidBlock& m, const std::string& key, int64_t c, const ParamVisitor& f) {
  visit_resnet(m.block_1, key + ".block_1", c, c, f);
  visit_attn(m.attn_1, key + ".attn_1", c, f);
  visit_resnet(m.block_2, key + ".block_2", c, c, f);
}

// VAEEncoder: level i maps ch*ch_mult[i-1] (ch for i = 0) to ch*ch_mult[i] channels.
void visit_encoder(vae::Encoder& e, const VaeConfig& cfg, const ParamVisitor& f) {
  const int64_t n = cfg.levels();
  visit_conv(e.conv_in, "encoder.conv_in", cfg.ch, cfg.in_channels, 3, f);
  e.down.resize(static_cast<size_t>(n));
  int64_t cin = cfg.ch;
  for (int64_t i = 0; i < n; ++i) {
    const std::string key = "encoder.down." + std::to_string(i);
    vae::DownLevel& level = e.down[static_cast<size_t>(i)];
    level.block.resize(static_cast<size_t>(cfg.num_res_blocks));
    const int64_t cout = cfg.level_channels(i);
    for (int64_t j = 0; j < cfg.num_res_blocks; ++j) {
      visit_resnet(level.block[static_cast<size_t>(j)], key + ".block." + std::to_string(j), cin,
                   cout, f);
      cin = cout;
    }
    if (i != n - 1) visit_conv(level.downsample, key + ".downsample.conv", cin, cin, 3, f);
  }
  visit_mid(e.mid, "encoder.mid", cin, f);
  visit_norm(e.norm_out, "encoder.norm_out", cin, f);
  visit_conv(e.conv_out, "encoder.conv_out", 2 * cfg.z_channels, cin, 3, f);
}

// VAEDecoder: levels run from the deepest (n-1) to 0, each with num_res_blocks + 1 blocks
// mapping the previous level's width to ch*ch_mult[i]; up.i is stored at index i.
void visit_decoder(vae::Decoder& d, const VaeConfig& cfg, const ParamVisitor& f) {
  const int64_t n = cfg.levels();
  const int64_t c_mid = cfg.level_channels(n - 1);
  visit_conv(d.conv_in, "decoder.conv_in", c_mid, cfg.z_channels, 3, f);
  visit_mid(d.mid, "decoder.mid", c_mid, f);
  d.up.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const std::string key = "decoder.up." + std::to_string(i);
    vae::UpLevel& level = d.up[static_cast<size_t>(i)];
    level.block.resize(static_cast<size_t>(cfg.num_res_blocks + 1));
    int64_t cin = i == n - 1 ? c_mid : cfg.level_channels(i + 1);
    const int64_t cout = cfg.level_channels(i);
    for (int64_t j = 0; j <= cfg.num_res_blocks; ++j) {
      visit_resnet(level.block[static_cast<size_t>(j)], key + ".block." + std::to_string(j), cin,
                   cout, f);
      cin = cout;
    }
    if (i != 0) visit_conv(level.upsample, key + ".upsample.conv", cout, cout, 3, f);
  }
  const int64_t c0 = cfg.level_channels(0);
  visit_norm(d.norm_out, "decoder.norm_out", c0, f);
  visit_conv(d.conv_out, "decoder.conv_out", cfg.out_channels, c0, 3, f);
}

ParamVisitor spec_collector(std::vector<WeightSpec>& out) {
  return [&out](const std::string& key, const Shape& shape, Tensor&) {
    out.push_back({key, shape});
  };
}

}  // namespace

std::vector<WeightSpec> vae_encoder_weight_specs(const VaeConfig& cfg) {
  std::vector<WeightSpec> specs;
  vae::Encoder scratch;
  visit_encoder(scratch, cfg, spec_collector(specs));
  return specs;
}

std::vector<WeightSpec> vae_decoder_weight_specs(const VaeConfig& cfg) {
  std::vector<WeightSpec> specs;
  vae::Decoder scratch;
  visit_decoder(scratch, cfg, spec_collector(specs));
  return specs;
}

std::vector<WeightSpec> vae_weight_specs(const VaeConfig& cfg) {
  std::vector<WeightSpec> specs = vae_encoder_weight_specs(cfg);
  std::vector<WeightSpec> dec = vae_decoder_weight_specs(cfg);
  specs.insert(specs.end(), dec.begin(), dec.end());
  return specs;
}

// ---- configuration from the weights --------------------------------------------------------

namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

Shape shape_of(const WeightStore& w, const std::string& key, size_t rank) {
  return required_shape(w, key, rank, "SD3 VAE");
}

// The number of levels `<what>.N` (Note [Layer counts from key names]): 1 to 16.
int64_t count_levels(const WeightStore& w, const std::string& what) {
  const int64_t levels = count_layers(w, what + ".");
  SD3_CHECK(levels > 0, "SD3 VAE in ", w.describe(), ": no '", what, ".N' levels");
  SD3_CHECK(levels <= 16, "SD3 VAE in ", w.describe(), ": ", levels, " '", what,
            ".N' levels is not plausible");
  return levels;
}

// ch_mult from the first ResNet block of each level: `<what>.N.block.0.conv1.weight` has
// ch * ch_mult[N] output channels.
std::vector<int64_t> level_multipliers(const WeightStore& w, const std::string& what,
                                       int64_t levels, int64_t ch) {
  std::vector<int64_t> mult;
  for (int64_t i = 0; i < levels; ++i) {
    const std::string key = indexed_key(what + ".", i, "block.0.conv1.weight");
    const int64_t c = shape_of(w, key, 4)[0];
    SD3_CHECK(c % ch == 0, "SD3 VAE: '", w.prefix(), key, "' has ", c,
              " output channels, not a multiple of the base width ", ch);
    mult.push_back(c / ch);
  }
  return mult;
}

void refuse_other_layouts(const WeightStore& w, const std::vector<std::string>& keys) {
  for (const std::string& k : keys) {
    if (starts_with(k, "encoder.down_blocks.") || starts_with(k, "decoder.up_blocks.") ||
        starts_with(k, "encoder.mid_block.") || starts_with(k, "decoder.mid_block.")) {
      fail("VAE in ", w.describe(), " uses the diffusers layout (key '", w.prefix(), k,
           "'), which is not supported: use the SAI/ldm layout of the single-file releases "
           "(keys 'first_stage_model.encoder.down.N...') or a separate VAE file with bare "
           "'encoder.down.N...' keys");
    }
  }
  SD3_CHECK(!w.has("quant_conv.weight") && !w.has("post_quant_conv.weight"), "VAE in ",
            w.describe(),
            " has quant_conv/post_quant_conv: that is an SD1/SDXL-style VAE, "
            "not the SD3 VAE (16 latent channels, no quant convs)");
}

}  // namespace

VaeConfig vae_config_from_weights(const WeightStore& w) {
  const std::vector<std::string> keys = w.keys();
  refuse_other_layouts(w, keys);
  const bool enc = w.has("encoder.conv_in.weight");
  const bool dec = w.has("decoder.conv_in.weight");
  SD3_CHECK(enc || dec, "no SD3 VAE in ", w.describe(),
            ": neither 'encoder.conv_in.weight' nor 'decoder.conv_in.weight' exists");

  VaeConfig cfg;
  if (enc) {
    const Shape conv_in = shape_of(w, "encoder.conv_in.weight", 4);
    cfg.ch = conv_in[0];
    cfg.in_channels = conv_in[1];
    SD3_CHECK(cfg.ch > 0, "SD3 VAE: 'encoder.conv_in.weight' has no output channels");
    const int64_t levels = count_levels(w, "encoder.down");
    cfg.num_res_blocks = count_layers(w, "encoder.down.0.block.");
    cfg.ch_mult = level_multipliers(w, "encoder.down", levels, cfg.ch);
    const int64_t moments = shape_of(w, "encoder.conv_out.weight", 4)[0];
    SD3_CHECK(moments % 2 == 0, "SD3 VAE: 'encoder.conv_out.weight' has ", moments,
              " output channels, expected 2 x latent channels");
    cfg.z_channels = moments / 2;
    cfg.out_channels = dec ? shape_of(w, "decoder.conv_out.weight", 4)[0] : cfg.in_channels;
  } else {
    // Decoder only: its widths give ch*ch_mult[i]; the reference's ch_mult starts at 1.
    const int64_t levels = count_levels(w, "decoder.up");
    cfg.num_res_blocks = count_layers(w, "decoder.up.0.block.") - 1;
    cfg.ch = shape_of(w, "decoder.up.0.block.0.conv1.weight", 4)[0];
    SD3_CHECK(cfg.ch > 0, "SD3 VAE: 'decoder.up.0.block.0.conv1.weight' has no output channels");
    cfg.ch_mult = level_multipliers(w, "decoder.up", levels, cfg.ch);
    cfg.z_channels = shape_of(w, "decoder.conv_in.weight", 4)[1];
    cfg.out_channels = shape_of(w, "decoder.conv_out.weight", 4)[0];
    cfg.in_channels = cfg.out_channels;
  }
  SD3_CHECK(cfg.num_res_blocks > 0, "SD3 VAE in ", w.describe(), ": no ResNet blocks in level 0");
  SD3_CHECK(cfg.z_channels > 0 && cfg.in_channels > 0 && cfg.out_channels > 0, "SD3 VAE in ",
            w.describe(), ": zero latent or image channels");
  for (int64_t i = 0; i < cfg.levels(); ++i)
    SD3_CHECK(cfg.level_channels(i) % cfg.groups == 0, "SD3 VAE: level ", i, " has ",
              cfg.level_channels(i), " channels, not divisible into ", cfg.groups,
              " GroupNorm groups");
  return cfg;
}

// ---- blocks ---------------------------------------------------------------------------------

namespace {

using ops::Conv2dOptions;

Tensor conv(const vae::Conv& c, const Tensor& x, const Conv2dOptions& opt) {
  return ops::conv2d(x, c.weight, c.bias, opt);
}

Tensor conv3x3(const vae::Conv& c, const Tensor& x) {
  return conv(c, x, Conv2dOptions::same(1));
}

Tensor norm_silu(const vae::Norm& n, const Tensor& x, const VaeConfig& cfg) {
  return ops::groupnorm_silu(x, cfg.groups, n.weight, n.bias, cfg.eps);
}

// x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1 conv on x where widths differ.
// x is taken by value so callers can hand over their only reference and let it go early.
Tensor resnet_block(const vae::ResnetBlock& b, Tensor x, const VaeConfig& cfg) {
  Tensor h = conv3x3(b.conv1, norm_silu(b.norm1, x, cfg));
  h = conv3x3(b.conv2, norm_silu(b.norm2, h, cfg));
  if (b.nin_shortcut.weight.defined()) x = conv(b.nin_shortcut, x, Conv2dOptions{});
  return ops::add(x, h);
}

// Single-head self-attention over the H*W positions: x + proj_out(attn(q, k, v)) with
// q, k, v 1x1 convs of GroupNorm(x) and scale 1/sqrt(C). A 1x1 conv on [B, C, H, W] is a
// linear on the [B, HW, C] token view, so the tokens are formed once, before the projections.
Tensor attn_block(const vae::AttnBlock& a, Tensor x, const VaeConfig& cfg) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor t = ops::group_norm(x, cfg.groups, a.norm.weight, a.norm.bias, cfg.eps);
  t = ops::permute(t.view({B, C, H * W}), {0, 2, 1});  // [B, HW, C]
  const Tensor q = ops::linear(t, a.q.weight.view({C, C}), a.q.bias);
  const Tensor k = ops::linear(t, a.k.weight.view({C, C}), a.k.bias);
  const Tensor v = ops::linear(t, a.v.weight.view({C, C}), a.v.bias);
  ops::AttentionOptions opt;
  opt.heads = 1;                     // scale defaults to 1/sqrt(C)
  t = ops::attention(q, k, v, opt);  // [B, HW, C]
  t = ops::linear(t, a.proj_out.weight.view({C, C}), a.proj_out.bias);  // [B, HW, C]
  t = ops::permute(t, {0, 2, 1}).view({B, C, H, W});
  return ops::add(x, t);
}

Tensor mid_block(const vae::MidBlock& m, Tensor h, const VaeConfig& cfg, VaeTrace* trace) {
  h = resnet_block(m.block_1, std::move(h), cfg);
  if (trace) trace->record("mid.block_1", h);
  h = attn_block(m.attn_1, std::move(h), cfg);
  if (trace) trace->record("mid.attn_1", h);
  h = resnet_block(m.block_2, std::move(h), cfg);
  if (trace) trace->record("mid.block_2", h);
  return h;
}

// Downsample: zero-pad right and bottom by one, then a 3x3 stride-2 conv (the conv's own
// asymmetric padding, which saves materialising the padded copy).
Tensor downsample(const vae::Conv& c, const Tensor& x) {
  Conv2dOptions opt;
  opt.stride = 2;
  opt.pad_bottom = 1;
  opt.pad_right = 1;
  return conv(c, x, opt);
}

// Upsample: nearest-neighbour x2, then a 3x3 conv.
Tensor upsample(const vae::Conv& c, const Tensor& x) {
  return conv3x3(c, ops::upsample_nearest2x(x));
}

void check_image_input(const Tensor& x, int64_t channels, int64_t factor, const char* what,
                       const char* name) {
  SD3_CHECK(x.defined() && x.dim() == 4 && x.size(1) == channels, what, ": ", name, " must be [B, ",
            channels, ", H, W], got ",
            x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  SD3_CHECK(x.size(0) > 0 && x.size(2) > 0 && x.size(3) > 0 && x.size(2) % factor == 0 &&
                x.size(3) % factor == 0,
            what, ": ", name, " ", shape_str(x.shape()),
            " must have a non-zero height and width that are multiples of ", factor);
  SD3_CHECK(is_float(x.dtype()), what, ": ", name, " must be a float tensor, got ",
            dtype_name(x.dtype()));
}

// Note [VAE sampling on the host]
// The op API has no exp or clamp, so the log-variance clamp and the reparameterisation
// mean + exp(logvar/2) * noise run on the host in f32 (as the reference's float32 math) and
// the results return to the moments' device. The tensors are latent-sized (16 x H/8 x W/8,
// about 1 MB at 1024 px), so this costs nothing next to the encoder.
VaeMoments clamp_moments(const Tensor& moments) {
  std::vector<Tensor> halves = ops::chunk(moments, 2, 1);
  VaeMoments out;
  out.mean = ops::contiguous(halves[0]);
  std::vector<float> lv = halves[1].to_floats();
  for (float& v : lv) v = std::min(std::max(v, kVaeLogvarMin), kVaeLogvarMax);
  out.logvar = Tensor::from_floats(lv, out.mean.shape(), moments.dtype()).to(moments.device());
  return out;
}

Tensor reparameterize(const VaeMoments& m, const Tensor& noise) {
  const std::vector<float> mean = m.mean.to_floats();
  const std::vector<float> logvar = m.logvar.to_floats();
  std::vector<float> eps = noise.to_floats();
  for (size_t i = 0; i < eps.size(); ++i) eps[i] = mean[i] + std::exp(0.5f * logvar[i]) * eps[i];
  return Tensor::from_floats(eps, m.mean.shape(), m.mean.dtype()).to(m.mean.device());
}

}  // namespace

// ---- the model -------------------------------------------------------------------------------

Vae Vae::load(const WeightStore& w, Device device, const VaeLoadOptions& options) {
  SD3_CHECK(options.encoder || options.decoder,
            "Vae::load: asked to load neither the encoder nor the decoder");
  Vae m;
  m.cfg_ = vae_config_from_weights(w);
  m.device_ = device;
  const ParamVisitor load = [&](const std::string& key, const Shape& shape, Tensor& slot) {
    slot = w.get(key, shape).to(device);
  };
  if (options.encoder) {
    SD3_CHECK(w.has("encoder.conv_in.weight"), "Vae::load: ", w.describe(),
              " has no VAE encoder (only a decoder)");
    visit_encoder(m.encoder_, m.cfg_, load);
    m.has_encoder_ = true;
  }
  if (options.decoder) {
    SD3_CHECK(w.has("decoder.conv_in.weight"), "Vae::load: ", w.describe(),
              " has no VAE decoder (only an encoder)");
    visit_decoder(m.decoder_, m.cfg_, load);
    m.has_decoder_ = true;
  }
  m.unexpected_ = w.unexpected(vae_weight_specs(m.cfg_));
  return m;
}

Vae Vae::from_tensors(const VaeConfig& cfg, const std::map<std::string, Tensor>& tensors,
                      Device device) {
  Vae m;
  m.cfg_ = cfg;
  m.device_ = device;
  m.has_encoder_ = tensors.count("encoder.conv_in.weight") != 0;
  m.has_decoder_ = tensors.count("decoder.conv_in.weight") != 0;
  SD3_CHECK(m.has_encoder_ || m.has_decoder_,
            "VAE weights: neither 'encoder.conv_in.weight' nor 'decoder.conv_in.weight' given");
  const ParamVisitor take = [&](const std::string& key, const Shape& shape, Tensor& slot) {
    auto it = tensors.find(key);
    SD3_CHECK(it != tensors.end(), "VAE weights: missing '", key, "' (expected shape ",
              shape_str(shape), ")");
    SD3_CHECK(it->second.shape() == shape, "VAE weights: '", key, "' has shape ",
              shape_str(it->second.shape()), ", expected ", shape_str(shape));
    slot = it->second.to(device);
  };
  if (m.has_encoder_) visit_encoder(m.encoder_, m.cfg_, take);
  if (m.has_decoder_) visit_decoder(m.decoder_, m.cfg_, take);
  return m;
}

VaeMoments Vae::encode_moments(const Tensor& image, VaeTrace* trace) const {
  SD3_CHECK(has_encoder_, "VAE encode: the encoder was not loaded");
  check_image_input(image, cfg_.in_channels, cfg_.downscale(), "VAE encode", "image");
  SD3_CHECK(image.device() == device_, "VAE encode: image on ", image.device().str(),
            ", weights on ", device_.str());
  const vae::Encoder& e = encoder_;
  const int64_t n = cfg_.levels();
  Tensor h = conv3x3(e.conv_in, image);  // [B, ch, H, W]
  for (int64_t i = 0; i < n; ++i) {
    const vae::DownLevel& level = e.down[static_cast<size_t>(i)];
    for (const vae::ResnetBlock& b : level.block) h = resnet_block(b, std::move(h), cfg_);
    const std::string name = "down" + std::to_string(i);
    if (trace) trace->record(name + ".blocks_out", h);
    if (i != n - 1) {
      h = downsample(level.downsample, h);  // [B, C_i, H/2^(i+1), W/2^(i+1)]
      if (trace) trace->record(name + ".downsample", h);
    }
  }
  h = mid_block(e.mid, std::move(h), cfg_, trace);
  h = conv3x3(e.conv_out, norm_silu(e.norm_out, h, cfg_));  // [B, 2z, H/f, W/f]
  if (trace) trace->record("moments", h);
  VaeMoments m = clamp_moments(h);
  if (trace) {
    trace->record("mean", m.mean);
    trace->record("logvar_clamped", m.logvar);
  }
  return m;
}

Tensor Vae::encode(const Tensor& image, const Tensor& noise, VaeTrace* trace) const {
  VaeMoments m = encode_moments(image, trace);
  SD3_CHECK(noise.defined() && noise.shape() == m.mean.shape(), "VAE encode: noise must be ",
            shape_str(m.mean.shape()), ", got ",
            noise.defined() ? shape_str(noise.shape()) : std::string("an undefined tensor"));
  Tensor sample = reparameterize(m, noise);  // [B, z, H/f, W/f]
  if (trace) trace->record("sample", sample);
  return sample;
}

Tensor Vae::decode(const Tensor& latent, VaeTrace* trace) const {
  SD3_CHECK(has_decoder_, "VAE decode: the decoder was not loaded");
  check_image_input(latent, cfg_.z_channels, 1, "VAE decode", "latent");
  SD3_CHECK(latent.device() == device_, "VAE decode: latent on ", latent.device().str(),
            ", weights on ", device_.str());
  const vae::Decoder& d = decoder_;
  Tensor h = conv3x3(d.conv_in, latent);  // [B, C_mid, h, w]
  if (trace) trace->record("conv_in", h);
  h = mid_block(d.mid, std::move(h), cfg_, trace);
  for (int64_t i = cfg_.levels() - 1; i >= 0; --i) {
    const vae::UpLevel& level = d.up[static_cast<size_t>(i)];
    for (const vae::ResnetBlock& b : level.block) h = resnet_block(b, std::move(h), cfg_);
    if (trace) trace->record("up" + std::to_string(i) + ".blocks_out", h);
    if (i != 0) h = upsample(level.upsample, h);  // [B, C_i, 2x, 2x]
  }
  if (trace) {
    // The golden records GroupNorm before its SiLU, so the traced path runs them unfused.
    Tensor normed = ops::group_norm(h, cfg_.groups, d.norm_out.weight, d.norm_out.bias, cfg_.eps);
    trace->record("norm_out", normed);
    h = ops::silu(normed);
  } else {
    h = norm_silu(d.norm_out, h, cfg_);
  }
  h = conv3x3(d.conv_out, h);  // [B, out_channels, h*f, w*f]
  if (trace) trace->record("decoded", h);
  return h;
}

}  // namespace sd3::models
