// Reading a model's structure from a checkpoint's key names and shapes, safely: every header
// is input, and a damaged or hostile one must end in one sd3::Error naming the key, never in
// an unbounded allocation or a foreign exception.
//
// Note [Layer counts from key names]
// Depths are read from key names: one past the highest N among the keys `<prefix>N.<rest>`
// (a layer missing in the middle then surfaces as a missing tensor when loading). N comes
// from the header, so parsed naively 'text_model.encoder.layers.2147483648.x' asks for
// billions of layers, and a spec list that grows until the process is killed, while a
// 20-digit N overflows the integer parse. A model holds at least one tensor per layer, so N
// must be below the number of keys under the prefix; a larger N is refused, naming the key,
// before anything is sized by it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engine/weights.h"

namespace sd3::models {

// `prefix` N `.` `rest`: the key of a tensor of layer N, e.g. ("encoder.block.", 3, "x.weight")
// -> "encoder.block.3.x.weight".
std::string indexed_key(const std::string& prefix, int64_t index, const std::string& rest);

// A key segment read as a layer index: nullopt unless it is one or more decimal digits (a
// named module, not a layer); the value saturates at INT64_MAX, so no length of digits
// overflows.
std::optional<int64_t> parse_index(std::string_view segment);

// One past the highest N among the keys `<prefix>N.<rest>` of `w` (keys and `prefix` relative
// to w's prefix), 0 when there is none. Throws sd3::Error naming the full key and the files
// when an N is at or beyond the number of keys under `prefix` (Note [Layer counts from key
// names]).
int64_t count_layers(const WeightStore& w, const std::string& prefix);

// Every all-digit segment of every key of `w` is below the number of keys of `w`; throws
// sd3::Error naming the first key that breaks this. For a caller that has not yet decided
// what the keys are.
void check_key_indices(const WeightStore& w);

// The shape of `key` in `w`, which must exist and have `rank` dimensions; otherwise an
// sd3::Error led by `model` ("not a T5 encoder: missing tensor '...' in ...").
Shape required_shape(const WeightStore& w, const std::string& key, size_t rank,
                     const std::string& model);

}  // namespace sd3::models
