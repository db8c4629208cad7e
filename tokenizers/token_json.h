// The JSON line format of sd3-tokenize and of ../shared/tokenizers/golden.jsonl: input lines
// are JSON strings; output lines are objects written the way Python's
// json.dumps(obj, ensure_ascii=False) writes them, so that they compare byte for byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sd3::tok {

// Parses a line holding exactly one JSON string (JSON whitespace around it allowed). Returns
// the UTF-8 text, or nullopt with `error` set. A lone surrogate escape (\ud800 without its
// partner) is read as U+FFFD, as are ill-formed UTF-8 bytes inside the quotes.
std::optional<std::string> parse_json_string_line(std::string_view line, std::string* error);

// Appends `utf8` as a JSON string: '"', '\\' and control characters escaped (\n \r \t \b \f,
// others as \u00xx), everything else (non-ASCII included) written as is.
void append_json_string(std::string& out, std::string_view utf8);

// One output line (no trailing newline) with the fields of golden.jsonl, in its order:
// prompt, clip_bpe_ids, clip_l_77, clip_g_77, t5_ids, t5_77.
std::string golden_json_line(std::string_view prompt, const std::vector<int64_t>& clip_bpe_ids,
                             const std::vector<std::vector<int64_t>>& clip_l_77,
                             const std::vector<std::vector<int64_t>>& clip_g_77,
                             const std::vector<int64_t>& t5_ids,
                             const std::vector<std::vector<int64_t>>& t5_77);

}  // namespace sd3::tok
