// Unicode helpers the tokenizers share: UTF-8 <-> code points, character classes as Python's
// str methods and the `regex` module see them, NFC / NFKC and Python's str.lower().
// Character data comes from utf8proc; the reference (Python 3.11) may differ for characters
// assigned in a newer Unicode version than the one utf8proc was built with (see
// docs/tokenizers.md).
#pragma once

#include <string>
#include <string_view>

namespace sd3::tok {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes UTF-8. Every maximal ill-formed subsequence (Unicode's "maximal subpart" rule, the
// same as Python's bytes.decode("utf-8", "replace")) becomes one U+FFFD: stray continuation
// bytes, truncated sequences, overlong forms, encoded surrogates and values above U+10FFFF.
std::u32string decode_utf8(std::string_view bytes);

// Encodes code points as UTF-8; surrogates and values above U+10FFFF become U+FFFD.
std::string encode_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t cp);

// decode_utf8 followed by encode_utf8: valid UTF-8 comes back unchanged.
std::string sanitize_utf8(std::string_view bytes);

// Python str.isspace(): Unicode White_Space plus U+001C..U+001F.
bool is_py_space(char32_t cp);
// `\s` of the `regex` module: Unicode White_Space (without U+001C..U+001F).
bool is_regex_space(char32_t cp);
// General category L* (\p{L}) and N* (\p{N}).
bool is_letter(char32_t cp);
bool is_number(char32_t cp);
// General category Nd (what Python's `re` matches with \d).
bool is_decimal_digit(char32_t cp);

// Canonical composition (NFC) of a whole string.
std::u32string nfc(std::u32string_view text);
// NFKC of a single code point (used for the full-width / half-width forms).
std::u32string nfkc_char(char32_t cp);

// Python's str.lower(): simple lower-case mappings, U+0130 -> "i" + U+0307, and a capital
// sigma at the end of a word (Final_Sigma context) -> U+03C2.
std::u32string py_lower(std::u32string_view text);

// Python's str.strip() with no argument (removes is_py_space characters at both ends).
std::u32string_view py_strip(std::u32string_view text);

}  // namespace sd3::tok
