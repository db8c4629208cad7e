// The text clean-up OpenAI's CLIP tokenizer applies before BPE (SD3_TOKENIZATION.md section 8):
// the parts of ftfy.fix_text (6.3.1 defaults) that change prompts, Python's html.unescape,
// whitespace collapsing and Python's lower-casing. All functions work on code points.
#pragma once

#include <string>
#include <string_view>

namespace sd3::tok {

// Python's html.unescape(): named references with and without ';' (longest known prefix for
// the latter), decimal and hex references with the HTML5 replacements for invalid numbers.
std::u32string html_unescape(std::u32string_view text);

// ftfy's unescape_html(): only `&name;` / `&#...;` forms whose name is a known entity ending in
// ';' (plus ftfy's all-caps spellings such as &EACUTE;), never the ';'-less legacy forms.
std::u32string ftfy_unescape_html(std::u32string_view text);

// The subset of ftfy.fix_text() that the CLIP tokenizer relies on; see docs/tokenizers.md for
// what is ported exactly and where the mojibake repair is simplified.
std::u32string ftfy_fix_text(std::u32string_view text);

// ftfy's single-encoding mojibake repair as ported here (one fix_encoding call).
std::u32string fix_mojibake(std::u32string_view text);

// CLIP's full clean-up: ftfy_fix_text, html_unescape twice, strip, `\s+` -> ' ', strip, lower.
std::u32string clip_clean_text(std::u32string_view text);

}  // namespace sd3::tok
