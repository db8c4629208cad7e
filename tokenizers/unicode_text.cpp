#include "tokenizers/unicode_text.h"

#include <utf8proc.h>

#include <cstdlib>

#include "engine/error.h"

namespace sd3::tok {
namespace {

bool is_continuation(unsigned char b) {
  return (b & 0xC0) == 0x80;
}

utf8proc_category_t category(char32_t cp) {
  if (cp > 0x10FFFF) return UTF8PROC_CATEGORY_CN;
  return static_cast<utf8proc_category_t>(utf8proc_category(static_cast<utf8proc_int32_t>(cp)));
}

struct Range {
  char32_t first, last;
};

template <size_t N>
bool in_ranges(const Range (&ranges)[N], char32_t cp) {
  for (const Range& r : ranges) {
    if (cp >= r.first && cp <= r.last) return true;
  }
  return false;
}

// Unicode PropList Other_Lowercase / Other_Uppercase: characters that count as cased (for the
// Final_Sigma rule) although their general category is not Lu, Ll or Lt.
constexpr Range kOtherCased[] = {
    {0x00AA, 0x00AA},   {0x00BA, 0x00BA},   {0x02B0, 0x02B8},   {0x02C0, 0x02C1},
    {0x02E0, 0x02E4},   {0x0345, 0x0345},   {0x037A, 0x037A},   {0x10FC, 0x10FC},
    {0x1D2C, 0x1D6A},   {0x1D78, 0x1D78},   {0x1D9B, 0x1DBF},   {0x2071, 0x2071},
    {0x207F, 0x207F},   {0x2090, 0x209C},   {0x2160, 0x217F},   {0x24B6, 0x24E9},
    {0x2C7C, 0x2C7D},   {0xA69C, 0xA69D},   {0xA770, 0xA770},   {0xA7F2, 0xA7F4},
    {0xA7F8, 0xA7F9},   {0xAB5C, 0xAB5F},   {0xAB69, 0xAB69},   {0x10780, 0x10780},
    {0x10783, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x1F130, 0x1F149},
    {0x1F150, 0x1F169}, {0x1F170, 0x1F189},
};

// Word_Break MidLetter, MidNumLet and Single_Quote: case-ignorable whatever their category.
constexpr Range kWordBreakIgnorable[] = {
    {0x0027, 0x0027}, {0x002E, 0x002E}, {0x003A, 0x003A}, {0x00B7, 0x00B7},
    {0x0387, 0x0387}, {0x055F, 0x055F}, {0x05F4, 0x05F4}, {0x2018, 0x2019},
    {0x2024, 0x2024}, {0x2027, 0x2027}, {0xFE13, 0xFE13}, {0xFE52, 0xFE52},
    {0xFE55, 0xFE55}, {0xFF07, 0xFF07}, {0xFF0E, 0xFF0E}, {0xFF1A, 0xFF1A},
};

bool is_cased(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT: return true;
    default: return in_ranges(kOtherCased, cp);
  }
}

bool is_case_ignorable(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK: return true;
    default: return in_ranges(kWordBreakIgnorable, cp);
  }
}

// Python's Final_Sigma test for the capital sigma at text[i]: a cased letter before it and
// none after it, skipping case-ignorable characters in both directions.
bool final_sigma(std::u32string_view text, size_t i) {
  size_t j = i;
  bool cased_before = false;
  while (j > 0) {
    --j;
    if (!is_case_ignorable(text[j])) {
      cased_before = is_cased(text[j]);
      break;
    }
  }
  if (!cased_before) return false;
  for (size_t k = i + 1; k < text.size(); ++k) {
    if (!is_case_ignorable(text[k])) return !is_cased(text[k]);
  }
  return true;
}

std::u32string utf8proc_transform(std::u32string_view text, int options) {
  std::string bytes = encode_utf8(text);
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(bytes.data()),
                                    static_cast<utf8proc_ssize_t>(bytes.size()), &out,
                                    static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    fail("Unicode normalization failed: ", utf8proc_errmsg(n));
  }
  std::u32string result =
      decode_utf8(std::string_view(reinterpret_cast<const char*>(out), static_cast<size_t>(n)));
  std::free(out);
  return result;
}

}  // namespace

std::u32string decode_utf8(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    unsigned char b = s[i];
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int need;                            // continuation bytes still expected
    char32_t cp;                         // value so far
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
      cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      cp = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;  // no overlong forms
      if (b == 0xED) hi = 0x9F;  // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      cp = b & 0x07;
      if (b == 0xF0) lo = 0x90;  // no overlong forms
      if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
      out.push_back(kReplacementChar);  // stray continuation byte or invalid lead byte
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool ok = true;
    for (int k = 0; k < need; ++k, ++j) {
      unsigned char c = j < n ? s[j] : 0;
      bool in_range = j < n && (k == 0 ? (c >= lo && c <= hi) : is_continuation(c));
      if (!in_range) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (c & 0x3F);
    }
    out.push_back(ok ? cp : kReplacementChar);
    i = j;  // on failure: skip the maximal subpart consumed so far
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacementChar;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

std::string sanitize_utf8(std::string_view bytes) {
  return encode_utf8(decode_utf8(bytes));
}

bool is_regex_space(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_py_space(char32_t cp) {
  return is_regex_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

bool is_letter(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: return true;
    default: return false;
  }
}

bool is_number(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO: return true;
    default: return false;
  }
}

bool is_decimal_digit(char32_t cp) {
  return category(cp) == UTF8PROC_CATEGORY_ND;
}

std::u32string nfc(std::u32string_view text) {
  // Pure ASCII is already in NFC; skip the round trip through utf8proc.
  bool ascii = true;
  for (char32_t cp : text) {
    if (cp >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::u32string(text);
  return utf8proc_transform(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
}

std::u32string nfkc_char(char32_t cp) {
  return utf8proc_transform(std::u32string_view(&cp, 1),
                            UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
}

std::u32string py_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t cp = text[i];
    if (cp < 0x80) {
      out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    } else if (cp == 0x0130) {  // the one unconditional multi-character lower-case mapping
      out.push_back(U'i');
      out.push_back(0x0307);
    } else if (cp == 0x03A3) {
      out.push_back(final_sigma(text, i) ? 0x03C2 : 0x03C3);
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

std::u32string_view py_strip(std::u32string_view text) {
  size_t b = 0, e = text.size();
  while (b < e && is_py_space(text[b])) ++b;
  while (e > b && is_py_space(text[e - 1])) --e;
  return text.substr(b, e - b);
}

}  // namespace sd3::tok
