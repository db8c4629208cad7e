#include "tokenizers/token_json.h"

#include "engine/error.h"
#include "tokenizers/unicode_text.h"

namespace sd3::tok {
namespace {

bool is_json_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads the 4 hex digits of a \u escape starting at line[i]; -1 if malformed.
long read_hex4(std::string_view line, size_t i) {
  if (i + 4 > line.size()) return -1;
  long v = 0;
  for (size_t k = 0; k < 4; ++k) {
    int d = hex_digit(line[i + k]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

void append_ids(std::string& out, const std::vector<int64_t>& ids) {
  out.push_back('[');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  out.push_back(']');
}

void append_windows(std::string& out, const std::vector<std::vector<int64_t>>& windows) {
  out.push_back('[');
  for (size_t i = 0; i < windows.size(); ++i) {
    if (i) out += ", ";
    append_ids(out, windows[i]);
  }
  out.push_back(']');
}

}  // namespace

std::optional<std::string> parse_json_string_line(std::string_view line, std::string* error) {
  auto failed = [&](const std::string& why) -> std::optional<std::string> {
    if (error) *error = why;
    return std::nullopt;
  };
  size_t i = 0;
  while (i < line.size() && is_json_space(line[i])) ++i;
  if (i == line.size()) return failed("the line is empty");
  if (line[i] != '"') return failed("expected a JSON string in double quotes");
  ++i;
  std::string raw;  // UTF-8, possibly ill-formed where the input bytes were
  bool closed = false;
  while (i < line.size()) {
    const char c = line[i++];
    if (c == '"') {
      closed = true;
      break;
    }
    if (static_cast<unsigned char>(c) < 0x20) {
      return failed("unescaped control character in the string");
    }
    if (c != '\\') {
      raw.push_back(c);
      continue;
    }
    if (i >= line.size()) break;
    const char e = line[i++];
    switch (e) {
      case '"': raw.push_back('"'); break;
      case '\\': raw.push_back('\\'); break;
      case '/': raw.push_back('/'); break;
      case 'b': raw.push_back('\b'); break;
      case 'f': raw.push_back('\f'); break;
      case 'n': raw.push_back('\n'); break;
      case 'r': raw.push_back('\r'); break;
      case 't': raw.push_back('\t'); break;
      case 'u': {
        long cp = read_hex4(line, i);
        if (cp < 0) return failed("\\u must be followed by four hex digits");
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          // A high surrogate pairs with an immediately following \u low surrogate.
          long low = (i + 1 < line.size() && line[i] == '\\' && line[i + 1] == 'u')
                         ? read_hex4(line, i + 2)
                         : -1;
          if (low >= 0xDC00 && low <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            i += 6;
          } else {
            cp = kReplacementChar;  // lone high surrogate
          }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          cp = kReplacementChar;  // lone low surrogate
        }
        append_utf8(raw, static_cast<char32_t>(cp));
        break;
      }
      default: return failed(std::string("invalid escape \\") + e);
    }
  }
  if (!closed) return failed("the string has no closing quote");
  while (i < line.size() && is_json_space(line[i])) ++i;
  if (i != line.size()) return failed("unexpected characters after the closing quote");
  return sanitize_utf8(raw);
}

void append_json_string(std::string& out, std::string_view utf8) {
  static const char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char c : utf8) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out.push_back(kHex[(c >> 4) & 0xF]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

std::string golden_json_line(std::string_view prompt, const std::vector<int64_t>& clip_bpe_ids,
                             const std::vector<std::vector<int64_t>>& clip_l_77,
                             const std::vector<std::vector<int64_t>>& clip_g_77,
                             const std::vector<int64_t>& t5_ids,
                             const std::vector<std::vector<int64_t>>& t5_77) {
  std::string out = "{\"prompt\": ";
  append_json_string(out, prompt);
  out += ", \"clip_bpe_ids\": ";
  append_ids(out, clip_bpe_ids);
  out += ", \"clip_l_77\": ";
  append_windows(out, clip_l_77);
  out += ", \"clip_g_77\": ";
  append_windows(out, clip_g_77);
  out += ", \"t5_ids\": ";
  append_ids(out, t5_ids);
  out += ", \"t5_77\": ";
  append_windows(out, t5_77);
  out.push_back('}');
  return out;
}

}  // namespace sd3::tok
