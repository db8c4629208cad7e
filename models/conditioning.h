// SD3 text conditioning: token ids of the three streams -> the MM-DiT's context and pooled y,
// as the reference's SD3Inferencer.get_cond (constants.md section 5):
//
//   lg      = pad(cat([clip_l hidden, clip_g hidden], features), to D)  // [B, 77, D]
//   context = cat([lg, t5 output], tokens)                              // [B, 77 + N, D]
//   y       = cat([clip_l pooled, clip_g pooled], features)             // [B, 2048]
//
// D is the T5 width (4096 for T5-XXL), the MM-DiT's context_embedder input width. Without a
// T5 encoder the T5 part is zeros of [B, 77, D] (stable-diffusion.cpp's choice), so the
// context keeps 154 tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "models/clip.h"
#include "models/t5.h"

namespace sd3::models {

// Tokenized prompt, as the SD3 tokenizer lays it out: CLIP windows of 77 ids each (start,
// up to 75 ids, end, pad) and the single T5 sequence (ids, eos, 0-padded to >= 77).
struct Sd3PromptTokens {
  std::vector<std::vector<int64_t>> clip_l;
  std::vector<std::vector<int64_t>> clip_g;
  std::vector<std::vector<int64_t>> t5;  // may be empty when no T5 encoder is used
};

// Loaded encoders; the CLIPs are required, T5 is optional.
struct Sd3TextEncoders {
  const ClipTextModel* clip_l = nullptr;
  const ClipTextModel* clip_g = nullptr;
  const T5Encoder* t5 = nullptr;
};

struct Sd3ConditioningOptions {
  // Context feature width D; 0 = the T5's d_model, or 4096 (T5-XXL) without a T5 encoder.
  int64_t context_width = 0;
};

struct Sd3Conditioning {
  Tensor context;  // [B, 77 + N, D] f32
  Tensor pooled;   // [B, C_l + C_g] f32 (y)
};

// Batched form: tokens_l / tokens_g [B, 77], tokens_t5 [B, N] (undefined when there is no T5
// encoder; ignored then).
Sd3Conditioning sd3_conditioning(const Tensor& tokens_l, const Tensor& tokens_g,
                                 const Tensor& tokens_t5, const Sd3TextEncoders& encoders,
                                 const Sd3ConditioningOptions& opt = {});

// One prompt (B = 1). Like the reference (encode_token_weights keeps token_weight_pairs[0]),
// each encoder sees only the first window of its stream: CLIP text past the first window is
// dropped.
Sd3Conditioning sd3_conditioning(const Sd3PromptTokens& tokens, const Sd3TextEncoders& encoders,
                                 const Sd3ConditioningOptions& opt = {});

}  // namespace sd3::models
