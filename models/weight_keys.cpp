#include "models/weight_keys.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "engine/error.h"

namespace sd3::models {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// `under`: the prefix, relative to w's, whose `limit` keys bound the index.
[[noreturn]] void refuse_index(const WeightStore& w, const std::string& key,
                               std::string_view digits, size_t limit, const std::string& under) {
  const std::string scope = w.prefix() + under;
  fail("implausible index ", digits, " in key '", w.prefix(), key, "' in ", w.describe(),
       ": at or beyond the ", limit, " tensors ",
       scope.empty() ? std::string("of the file") : "under '" + scope + "'",
       " (a damaged or hostile header)");
}

}  // namespace

std::string indexed_key(const std::string& prefix, int64_t index, const std::string& rest) {
  return prefix + std::to_string(index) + "." + rest;
}

std::optional<int64_t> parse_index(std::string_view segment) {
  if (segment.empty()) return std::nullopt;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t value = 0;
  for (const char c : segment) {
    if (c < '0' || c > '9') return std::nullopt;
    const int64_t digit = c - '0';
    value = value > (kMax - digit) / 10 ? kMax : value * 10 + digit;
  }
  return value;
}

int64_t count_layers(const WeightStore& w, const std::string& prefix) {
  const std::vector<std::string> keys = w.keys();  // sorted: those under `prefix` are a run
  const auto first = std::lower_bound(keys.begin(), keys.end(), prefix);
  const auto last = std::find_if_not(first, keys.end(),
                                     [&](const std::string& k) { return starts_with(k, prefix); });
  const size_t under = static_cast<size_t>(last - first);
  int64_t n = 0;
  for (auto it = first; it != last; ++it) {
    const size_t dot = it->find('.', prefix.size());
    if (dot == std::string::npos) continue;
    const std::string_view digits =
        std::string_view(*it).substr(prefix.size(), dot - prefix.size());
    const std::optional<int64_t> index = parse_index(digits);
    if (!index) continue;
    if (static_cast<uint64_t>(*index) >= under) refuse_index(w, *it, digits, under, prefix);
    n = std::max(n, *index + 1);
  }
  return n;
}

void check_key_indices(const WeightStore& w) {
  const std::vector<std::string> keys = w.keys();
  for (const std::string& k : keys) {
    for (size_t start = 0; start <= k.size();) {
      const size_t dot = std::min(k.find('.', start), k.size());
      const std::string_view segment = std::string_view(k).substr(start, dot - start);
      const std::optional<int64_t> index = parse_index(segment);
      if (index && static_cast<uint64_t>(*index) >= keys.size())
        refuse_index(w, k, segment, keys.size(), "");
      start = dot + 1;
    }
  }
}

Shape required_shape(const WeightStore& w, const std::string& key, size_t rank,
                     const std::string& model) {
  const std::optional<Shape> s = w.shape(key);
  SD3_CHECK(s.has_value(), model, ": missing tensor '", w.prefix(), key, "' in ", w.describe());
  SD3_CHECK(s->size() == rank, model, ": tensor '", w.prefix(), key, "' in ", w.describe(),
            " has shape ", shape_str(*s), ", expected ", rank, " dimensions");
  return *s;
}

}  // namespace sd3::models
