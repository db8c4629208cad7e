#include "tokenizers/text_cleanup.h"

#include <algorithm>
#include <cstdint>
#include <optional>

#include "tokenizers/unicode_text.h"

namespace sd3::tok {
namespace {

struct EntityEntry {
  const char* name;   // without the leading '&'
  const char* value;  // UTF-8
};

#include "tokenizers/html_entities.inc"

template <size_t N>
const char* find_entity(const EntityEntry (&table)[N], std::string_view name) {
  auto it = std::lower_bound(
      std::begin(table), std::end(table), name,
      [](const EntityEntry& e, std::string_view key) { return std::string_view(e.name) < key; });
  if (it != std::end(table) && std::string_view(it->name) == name) return it->value;
  return nullptr;
}

// Windows-1252 as ftfy's "sloppy" codec reads bytes 0x80..0x9F: the five bytes Windows-1252
// leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) stay the C1 control of the same number.
// Python's html.unescape uses the same table for &#128; .. &#159;.
constexpr char32_t kCp1252High[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,  // 0x80
    0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,  // 0x88
    0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,  // 0x90
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,  // 0x98
};

bool is_ascii_digit(char32_t c) {
  return c >= '0' && c <= '9';
}
bool is_ascii_alpha(char32_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_ascii_alnum(char32_t c) {
  return is_ascii_digit(c) || is_ascii_alpha(c);
}
bool is_ascii_hex(char32_t c) {
  return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
int hex_value(char32_t c) {
  if (is_ascii_digit(c)) return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  return static_cast<int>(c - 'A' + 10);
}

void append_utf8_decoded(std::u32string& out, const char* utf8) {
  out += decode_utf8(utf8);
}

std::string ascii_of(std::u32string_view text) {
  std::string s;
  s.reserve(text.size());
  for (char32_t c : text) {
    if (c >= 0x80) return {};  // entity names are ASCII; anything else cannot match
    s.push_back(static_cast<char>(c));
  }
  return s;
}

// What Python's html.unescape puts in place of a numeric reference with value `num`
// (num == UINT32_MAX stands for "too large").
void append_numeric_reference(std::u32string& out, uint32_t num) {
  if (num == 0x00) {
    out.push_back(kReplacementChar);
  } else if (num == 0x0D) {
    out.push_back(U'\r');
  } else if (num >= 0x80 && num <= 0x9F) {
    out.push_back(kCp1252High[num - 0x80]);
  } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out.push_back(kReplacementChar);
  } else if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) ||
             num == 0x7F || (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE) {
    // invalid code points are dropped
  } else {
    out.push_back(static_cast<char32_t>(num));
  }
}

// Tries to read one character reference at text[i] == '&' the way Python's html.unescape
// does. Returns the index after it and appends the replacement, or returns nullopt.
std::optional<size_t> unescape_reference_at(std::u32string_view text, size_t i,
                                            std::u32string& out) {
  const size_t n = text.size();
  size_t j = i + 1;
  if (j < n && text[j] == '#') {
    size_t k = j + 1;
    uint64_t num = 0;
    if (k < n && is_ascii_digit(text[k])) {
      for (; k < n && is_ascii_digit(text[k]); ++k) {
        num = std::min<uint64_t>(num * 10 + (text[k] - '0'), 0x110000);
      }
    } else if (k + 1 < n && (text[k] == 'x' || text[k] == 'X') && is_ascii_hex(text[k + 1])) {
      for (++k; k < n && is_ascii_hex(text[k]); ++k) {
        num = std::min<uint64_t>(num * 16 + hex_value(text[k]), 0x110000);
      }
    } else {
      return std::nullopt;  // "&#" not followed by a number: the pattern does not match
    }
    if (k < n && text[k] == ';') ++k;
    append_numeric_reference(out, num > 0x10FFFF ? UINT32_MAX : static_cast<uint32_t>(num));
    return k;
  }
  // Named: 1..32 characters other than \t \n \f space < & # ;, then an optional ';'.
  size_t k = j;
  while (k < n && k - j < 32) {
    char32_t c = text[k];
    if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' ||
        c == ';')
      break;
    ++k;
  }
  if (k == j) return std::nullopt;
  if (k < n && text[k] == ';') ++k;
  std::u32string_view s = text.substr(j, k - j);
  std::string name = ascii_of(s);
  if (!name.empty()) {
    if (const char* value = find_entity(kHtml5Entities, name)) {
      append_utf8_decoded(out, value);
      return k;
    }
  }
  // The longest prefix (at least two characters) that is a known name wins.
  for (size_t len = s.size() - 1; len >= 2; --len) {
    std::string prefix = ascii_of(s.substr(0, len));
    if (prefix.empty()) continue;
    if (const char* value = find_entity(kHtml5Entities, prefix)) {
      append_utf8_decoded(out, value);
      out.append(s.substr(len));
      return k;
    }
  }
  out.push_back('&');
  out.append(s);
  return k;
}

// ---------------------------------------------------------------------------------------------
// Mojibake: UTF-8 bytes that were decoded as Latin-1 or Windows-1252.

// The byte a character stands for when text is read as Latin-1 / sloppy Windows-1252.
int byte_of(char32_t c) {
  if (c < 0x100) return static_cast<int>(c);
  for (int k = 0; k < 32; ++k) {
    if (kCp1252High[k] == c) return 0x80 + k;
  }
  return -1;
}

bool encodable_latin1(char32_t c) {
  return c < 0x100;
}
bool encodable_sloppy1252(char32_t c) {
  if (c == 0x1A) return false;  // ftfy's sloppy codecs reserve byte 0x1A for U+FFFD
  if (c < 0x80 || (c >= 0xA0 && c < 0x100)) return true;
  for (char32_t m : kCp1252High) {
    if (m == c) return true;
  }
  return false;
}

// Continuation bytes that also show up beside letters in ordinary text (dashes, quotes,
// ellipsis, NBSP, soft hyphen, guillemets, degree, copyright...). A sequence made only of
// these after a 3/4-byte lead (say "ë…”") is left alone; any other continuation byte is a
// telltale of mojibake.
bool is_common_continuation(int b) {
  switch (b) {
    case 0x85:
    case 0x91:
    case 0x92:
    case 0x93:
    case 0x94:
    case 0x95:
    case 0x96:
    case 0x97:
    case 0xA0:
    case 0xA9:
    case 0xAB:
    case 0xAD:
    case 0xAE:
    case 0xB0:
    case 0xB4:
    case 0xB7:
    case 0xBB: return true;
    default: return false;
  }
}

// If text[i..] spells one well-formed UTF-8 sequence of 2..4 bytes, returns its length in
// characters and the decoded code point; `telltale` says whether it looks like mojibake.
size_t utf8_sequence_at(std::u32string_view text, size_t i, char32_t* cp, bool* telltale) {
  int lead = byte_of(text[i]);
  int need;
  int lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + static_cast<size_t>(need) >= text.size()) return 0;
  char32_t value = static_cast<char32_t>(lead & (need == 1 ? 0x1F : need == 2 ? 0x0F : 0x07));
  bool any_telltale = false;
  for (int k = 1; k <= need; ++k) {
    int b = byte_of(text[i + k]);
    int min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (b < min || b > max) return 0;
    if (!is_common_continuation(b)) any_telltale = true;
    value = (value << 6) | static_cast<char32_t>(b & 0x3F);
  }
  *cp = value;
  *telltale =
      any_telltale || (need == 1 && (lead == 0xC2 || lead == 0xC3 || lead == 0xCE || lead == 0xD0));
  return static_cast<size_t>(need) + 1;
}

bool looks_like_mojibake(std::u32string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t cp;
    bool telltale;
    if (utf8_sequence_at(text, i, &cp, &telltale) && telltale) return true;
  }
  return false;
}

// Re-encodes the whole text in one single-byte encoding and decodes it as UTF-8, if every
// character is encodable and the bytes are well-formed UTF-8.
std::optional<std::u32string> redecode_whole(std::u32string_view text,
                                             bool (*encodable)(char32_t)) {
  std::string bytes;
  bytes.reserve(text.size());
  for (char32_t c : text) {
    if (!encodable(c)) return std::nullopt;
    bytes.push_back(static_cast<char>(byte_of(c)));
  }
  std::u32string decoded = decode_utf8(bytes);
  if (decoded.find(kReplacementChar) != std::u32string::npos) {
    // decode_utf8 marks errors with U+FFFD; the text itself cannot contain one (not encodable).
    return std::nullopt;
  }
  return decoded;
}

std::u32string fix_mojibake_one_step(std::u32string_view text) {
  bool ascii = std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x80; });
  if (text.empty() || ascii || !looks_like_mojibake(text)) return std::u32string(text);
  if (auto fixed = redecode_whole(text, encodable_latin1)) return *fixed;
  if (auto fixed = redecode_whole(text, encodable_sloppy1252)) return *fixed;
  // The text mixes mojibake with characters that cannot be re-encoded: repair the telltale
  // sequences one by one.
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t cp;
    bool telltale;
    size_t len = utf8_sequence_at(text, i, &cp, &telltale);
    if (len && telltale) {
      out.push_back(cp);
      i += len;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The individual fixers, in ftfy's order.

std::u32string fix_c1_controls(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c >= 0x80 && c <= 0x9F) c = kCp1252High[c - 0x80];
  }
  return out;
}

std::u32string fix_latin_ligatures(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    switch (c) {
      case 0x0132: out += U"IJ"; break;
      case 0x0133: out += U"ij"; break;
      case 0x0149: out += U"\u02BCn"; break;
      case 0x01C4: out += U"D\u017D"; break;
      case 0x01C5: out += U"D\u017E"; break;
      case 0x01C6: out += U"d\u017E"; break;
      case 0x01C7: out += U"LJ"; break;
      case 0x01C8: out += U"Lj"; break;
      case 0x01C9: out += U"lj"; break;
      case 0x01CA: out += U"NJ"; break;
      case 0x01CB: out += U"Nj"; break;
      case 0x01CC: out += U"nj"; break;
      case 0x01F1: out += U"DZ"; break;
      case 0x01F2: out += U"Dz"; break;
      case 0x01F3: out += U"dz"; break;
      case 0xFB00: out += U"ff"; break;
      case 0xFB01: out += U"fi"; break;
      case 0xFB02: out += U"fl"; break;
      case 0xFB03: out += U"ffi"; break;
      case 0xFB04: out += U"ffl"; break;
      case 0xFB05: out += U"\u017Ft"; break;
      case 0xFB06: out += U"st"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::u32string fix_character_width(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0x3000) {
      out.push_back(' ');
    } else if (c >= 0xFF01 && c < 0xFFF0) {
      out += nfkc_char(c);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::u32string uncurl_quotes(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) {
      c = '\'';
    } else if (c >= 0x201C && c <= 0x201F) {
      c = '"';
    }
  }
  return out;
}

std::u32string fix_line_breaks(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    if (c == '\r') {
      out.push_back('\n');
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back('\n');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// ESC '[' then digits or ';' then one ASCII letter.
std::u32string remove_terminal_escapes(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == '[') {
      size_t k = i + 2;
      while (k < text.size() && (is_decimal_digit(text[k]) || text[k] == ';')) ++k;
      if (k < text.size() && is_ascii_alpha(text[k])) {
        i = k + 1;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

std::u32string remove_control_chars(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (!is_removed_control(c)) out.push_back(c);
  }
  return out;
}

// ftfy's fix_and_explain() on one segment: apply every fixer until nothing changes. Each round
// either shrinks the text or makes it stable after a few rounds; the cap only guarantees that
// no input can keep this loop busy.
std::u32string fix_segment(std::u32string text, bool unescape) {
  constexpr int kMaxRounds = 64;
  for (int round = 0; round < kMaxRounds; ++round) {
    std::u32string orig = text;
    if (unescape) text = ftfy_unescape_html(text);
    text = fix_mojibake(text);
    text = fix_c1_controls(text);
    text = fix_latin_ligatures(text);
    text = fix_character_width(text);
    text = uncurl_quotes(text);
    text = fix_line_breaks(text);
    // fix_surrogates has nothing to do: these strings never hold surrogate code points.
    text = remove_terminal_escapes(text);
    text = remove_control_chars(text);
    text = nfc(text);
    if (text == orig) return text;
  }
  return text;
}

}  // namespace

std::u32string html_unescape(std::u32string_view text) {
  if (text.find('&') == std::u32string_view::npos) return std::u32string(text);
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '&') {
      if (auto next = unescape_reference_at(text, i, out)) {
        i = *next;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

std::u32string ftfy_unescape_html(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    if (text[i] != '&') {
      out.push_back(text[i++]);
      continue;
    }
    // `&#?[0-9A-Za-z]{1,24};`
    size_t j = i + 1;
    bool numeric = j < n && text[j] == '#';
    if (numeric) ++j;
    size_t k = j;
    while (k < n && k - j < 24 && is_ascii_alnum(text[k])) ++k;
    if (k == j || k >= n || text[k] != ';') {
      out.push_back(text[i++]);
      continue;
    }
    std::u32string_view match = text.substr(i, k + 1 - i);
    std::string name = ascii_of(match.substr(1));  // "name;" or "#123;"
    const char* value = nullptr;
    if (!numeric) {
      value = find_entity(kHtml5Entities, name);
      if (!value) value = find_entity(kUpperCaseEntities, name);
    }
    if (value) {
      append_utf8_decoded(out, value);
    } else if (numeric) {
      std::u32string decoded = html_unescape(match);
      out += decoded.find(';') == std::u32string::npos ? decoded : std::u32string(match);
    } else {
      out.append(match);
    }
    i = k + 1;
  }
  return out;
}

std::u32string fix_mojibake(std::u32string_view text) {
  std::u32string current(text);
  while (true) {
    std::u32string next = fix_mojibake_one_step(current);
    if (next == current) return current;
    current = std::move(next);
  }
}

std::u32string ftfy_fix_text(std::u32string_view text) {
  // ftfy works on lines (each keeps its '\n'), cut further every 10^6 code points. HTML
  // unescaping is switched off for a line containing '<' and for every line after it.
  constexpr size_t kMaxSegment = 1000000;
  std::u32string out;
  out.reserve(text.size());
  bool unescape = true;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t brk = text.find('\n', pos);
    size_t end = brk == std::u32string_view::npos ? text.size() : brk + 1;
    end = std::min(end, pos + kMaxSegment);
    std::u32string_view segment = text.substr(pos, end - pos);
    if (unescape && segment.find('<') != std::u32string_view::npos) unescape = false;
    out += fix_segment(std::u32string(segment), unescape);
    pos = end;
  }
  return out;
}

std::u32string clip_clean_text(std::u32string_view text) {
  std::u32string t = ftfy_fix_text(text);
  t = html_unescape(html_unescape(t));
  std::u32string_view stripped = py_strip(t);
  std::u32string collapsed;
  collapsed.reserve(stripped.size());
  bool in_space = false;
  for (char32_t c : stripped) {
    if (is_regex_space(c)) {
      if (!in_space) collapsed.push_back(' ');
      in_space = true;
    } else {
      collapsed.push_back(c);
      in_space = false;
    }
  }
  return py_lower(py_strip(collapsed));
}

}  // namespace sd3::tok
