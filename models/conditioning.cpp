#include "models/conditioning.h"

#include "engine/error.h"
#include "engine/ops.h"

namespace sd3::models {

namespace {

// T5-XXL's width: the context width of every released SD3 MM-DiT.
constexpr int64_t kT5XxlWidth = 4096;

Tensor first_window(const std::vector<std::vector<int64_t>>& windows, const char* stream) {
  SD3_CHECK(!windows.empty() && !windows[0].empty(), "SD3 conditioning: no ", stream, " tokens");
  const std::vector<int64_t>& w = windows[0];
  return Tensor::from_ints(w, {1, static_cast<int64_t>(w.size())});
}

}  // namespace

Sd3Conditioning sd3_conditioning(const Tensor& tokens_l, const Tensor& tokens_g,
                                 const Tensor& tokens_t5, const Sd3TextEncoders& encoders,
                                 const Sd3ConditioningOptions& opt) {
  SD3_CHECK(encoders.clip_l && encoders.clip_g, "SD3 conditioning needs CLIP-L and CLIP-G");
  SD3_CHECK(tokens_l.defined() && tokens_g.defined() && tokens_l.dim() == 2 &&
                tokens_g.dim() == 2 && tokens_l.shape() == tokens_g.shape(),
            "SD3 conditioning: CLIP-L tokens ", tokens_l.str(), " and CLIP-G tokens ",
            tokens_g.str(), " must both be [B, 77]");
  const int64_t B = tokens_l.size(0), L = tokens_l.size(1);
  const int64_t width = opt.context_width > 0 ? opt.context_width
                        : encoders.t5         ? encoders.t5->config().d_model
                                              : kT5XxlWidth;
  if (encoders.t5) {
    SD3_CHECK(encoders.t5->config().d_model == width, "SD3 conditioning: T5 width ",
              encoders.t5->config().d_model, " differs from the context width ", width);
    SD3_CHECK(tokens_t5.defined() && tokens_t5.dim() == 2 && tokens_t5.size(0) == B,
              "SD3 conditioning: T5 tokens must be [", B, ", N], got ",
              tokens_t5.defined() ? tokens_t5.str() : std::string("none"));
  }

  const ClipOutput l = encoders.clip_l->forward(tokens_l);
  const ClipOutput g = encoders.clip_g->forward(tokens_g);
  const Device device = l.hidden.device();
  Tensor lg =
      ops::cast(ops::concat({l.hidden, g.hidden.to(device)}, -1), DType::F32);  // [B, L, Cl+Cg]
  const int64_t clip_width = lg.size(-1);
  SD3_CHECK(clip_width <= width, "SD3 conditioning: CLIP widths ", l.hidden.size(-1), " + ",
            g.hidden.size(-1), " exceed the context width ", width);
  if (clip_width < width)  // zero features on the right (the reference's F.pad)
    lg = ops::concat({lg, Tensor::zeros({B, L, width - clip_width}, DType::F32, device)}, -1);

  Tensor t5_out = encoders.t5 ? encoders.t5->forward(tokens_t5).to(device)
                              : Tensor::zeros({B, L, width}, DType::F32, device);  // [B, N, D]

  Sd3Conditioning out;
  out.context = ops::concat({lg, t5_out}, 1);  // [B, L + N, D]
  out.pooled = ops::cast(ops::concat({l.pooled, g.pooled.to(device)}, -1), DType::F32);
  return out;
}

Sd3Conditioning sd3_conditioning(const Sd3PromptTokens& tokens, const Sd3TextEncoders& encoders,
                                 const Sd3ConditioningOptions& opt) {
  Tensor t5;
  if (encoders.t5) t5 = first_window(tokens.t5, "T5");
  return sd3_conditioning(first_window(tokens.clip_l, "CLIP-L"),
                          first_window(tokens.clip_g, "CLIP-G"), t5, encoders, opt);
}

}  // namespace sd3::models
