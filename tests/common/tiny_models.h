// Reduced configurations of every SD3 architecture, for tests that build header-only or
// random-weight files quickly; and the runner's model paths for a list of -m/--model files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/checkpoint.h"

namespace sd3::test {

// `c` (a preset, which picks the family) at `depth` blocks, 64-wide heads, a small position
// table and small conditioning widths; MMDiT-X layers beyond the depth are dropped.
models::MMDiTConfig tiny_mmdit(models::MMDiTConfig c, int64_t depth);
// The SD3 VAE at base width 32, two levels, one ResNet block per level.
models::VaeConfig tiny_vae();
// CLIP-G (with text_projection) or CLIP-L at width 128, two layers.
models::ClipConfig tiny_clip(bool g);
// T5 at width 64, four heads, two blocks.
models::T5Config tiny_t5();

// -m/--model files only.
models::ModelPaths positional(std::vector<std::string> files);

}  // namespace sd3::test
