#include "tokenizers/sd3_tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <limits>

#include "engine/error.h"
#include "tokenizers/unicode_text.h"

namespace fs = std::filesystem;

namespace sd3::tok {
namespace {

constexpr size_t kNone = std::numeric_limits<size_t>::max();

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

// escape_important / unescape_important: `\)` and `\(` hide behind "\0\1" / "\0\2" while the
// brackets are parsed and come back as bare brackets (the backslash is gone).
constexpr std::string_view kEscClose("\0\1", 2);
constexpr std::string_view kEscOpen("\0\2", 2);

std::string escape_important(std::string_view text) {
  return replace_all(replace_all(text, "\\)", kEscClose), "\\(", kEscOpen);
}

std::string unescape_important(std::string_view text) {
  return replace_all(replace_all(text, kEscClose, ")"), kEscOpen, "(");
}

struct Range {
  size_t begin, end;
};

// parse_parentheses() on the whole prompt, ported literally: a '(' at level 0 starts a piece,
// the ')' that returns to level 0 ends it; a stray ')' drives the level negative and is text.
std::vector<Range> split_top_level(std::string_view s) {
  std::vector<Range> out;
  size_t cur = 0;
  long level = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '(') {
      if (level == 0) {
        if (i > cur) out.push_back({cur, i});
        cur = i;
      }
      ++level;
    } else if (s[i] == ')') {
      --level;
      if (level == 0) {
        out.push_back({cur, i + 1});
        cur = i + 1;
      }
    }
  }
  if (cur < s.size()) out.push_back({cur, s.size()});
  return out;
}

// Note [Weight syntax in linear time]
// The reference recurses into every bracket group and re-scans the group's whole text at each
// level (and Python gives up past ~1000 levels). The text it recurses into is always the inside
// of a group, possibly cut before its last ':'; inside a group the bracket level never drops
// below zero, so a '(' there closes at its ordinary matching ')' (computed once for the whole
// prompt) if that lies inside the range, and otherwise (unclosed) takes the rest of the range as
// one literal piece. Jumping from each '(' to its match, and finding the last ':' and the next
// bracket from precomputed tables, makes every byte cost O(1) whatever the nesting depth.
struct PromptIndex {
  std::string_view s;
  std::vector<size_t> match;       // '(' -> its matching ')' (kNone if unmatched)
  std::vector<size_t> prev_colon;  // i -> last ':' before i (kNone if none)
  std::vector<size_t> next_paren;  // i -> first '(' or ')' at or after i (s.size() if none)

  explicit PromptIndex(std::string_view text) : s(text) {
    const size_t n = s.size();
    match.assign(n, kNone);
    prev_colon.assign(n + 1, kNone);
    next_paren.assign(n + 1, n);
    std::vector<size_t> open;
    for (size_t i = 0; i < n; ++i) {
      prev_colon[i + 1] = s[i] == ':' ? i : prev_colon[i];
      if (s[i] == '(') {
        open.push_back(i);
      } else if (s[i] == ')' && !open.empty()) {
        match[open.back()] = i;
        open.pop_back();
      }
    }
    for (size_t i = n; i-- > 0;) {
      next_paren[i] = (s[i] == '(' || s[i] == ')') ? i : next_paren[i + 1];
    }
  }

  // parse_parentheses() of s[begin, end), a range whose bracket level never goes negative.
  std::vector<Range> split_inside(size_t begin, size_t end) const {
    std::vector<Range> out;
    size_t cur = begin;
    size_t i = begin;
    while (i < end) {
      size_t p = std::min(next_paren[i], end);
      if (p == end) break;
      if (s[p] == ')') {
        // Cannot happen inside a group (see the note); port the general case literally.
        std::vector<Range> literal = split_top_level(s.substr(begin, end - begin));
        for (Range& r : literal) {
          r.begin += begin;
          r.end += begin;
        }
        return literal;
      }
      if (p > cur) out.push_back({cur, p});
      size_t m = match[p];
      if (m != kNone && m < end) {
        out.push_back({p, m + 1});
        cur = i = m + 1;
      } else {
        out.push_back({p, end});
        cur = i = end;
      }
    }
    if (cur < end) out.push_back({cur, end});
    return out;
  }
};

// Value of a decimal digit (general category Nd): Unicode encodes every set of decimal digits
// as a contiguous run 0..9 (runs may follow each other, as the mathematical digits do).
int decimal_value(char32_t cp) {
  char32_t start = cp;
  while (start > 0 && is_decimal_digit(start - 1)) --start;
  return static_cast<int>((cp - start) % 10);
}

}  // namespace

std::optional<double> parse_python_float(std::u32string_view text) {
  // Unicode spaces -> ' ', Unicode decimal digits -> ASCII, anything else non-ASCII -> invalid.
  std::string ascii;
  ascii.reserve(text.size());
  for (char32_t c : text) {
    if (c < 0x80) {
      ascii.push_back(static_cast<char>(c));
    } else if (is_py_space(c)) {
      ascii.push_back(' ');
    } else if (is_decimal_digit(c)) {
      ascii.push_back(static_cast<char>('0' + decimal_value(c)));
    } else {
      return std::nullopt;
    }
  }
  // Underscores only between two digits; then they are dropped.
  std::string s;
  s.reserve(ascii.size());
  char prev = '\0';
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  for (char c : ascii) {
    if (c == '_') {
      if (!is_digit(prev)) return std::nullopt;
    } else {
      if (prev == '_' && !is_digit(c)) return std::nullopt;
      s.push_back(c);
    }
    prev = c;
  }
  if (prev == '_') return std::nullopt;
  auto is_space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  std::string body = s.substr(b, e - b);
  if (body.empty()) return std::nullopt;

  size_t i = 0;
  bool negative = false;
  if (body[i] == '+' || body[i] == '-') negative = body[i++] == '-';
  std::string rest = body.substr(i);
  std::string lower;
  for (char c : rest) lower.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
  if (lower == "inf" || lower == "infinity") {
    return negative ? -std::numeric_limits<double>::infinity()
                    : std::numeric_limits<double>::infinity();
  }
  if (lower == "nan") return std::numeric_limits<double>::quiet_NaN();
  // digits [. digits] | . digits, then an optional exponent with at least one digit.
  size_t k = 0, digits = 0;
  while (k < rest.size() && is_digit(rest[k])) ++k, ++digits;
  if (k < rest.size() && rest[k] == '.') {
    ++k;
    while (k < rest.size() && is_digit(rest[k])) ++k, ++digits;
  }
  if (digits == 0) return std::nullopt;
  if (k < rest.size() && (rest[k] == 'e' || rest[k] == 'E')) {
    ++k;
    if (k < rest.size() && (rest[k] == '+' || rest[k] == '-')) ++k;
    size_t exp_digits = 0;
    while (k < rest.size() && is_digit(rest[k])) ++k, ++exp_digits;
    if (exp_digits == 0) return std::nullopt;
  }
  if (k != rest.size()) return std::nullopt;
  double value = std::strtod(rest.c_str(), nullptr);
  return negative ? -value : value;
}

std::vector<WeightedText> parse_prompt_weights(std::string_view utf8_prompt) {
  const std::string text = escape_important(utf8_prompt);
  const PromptIndex index(text);
  std::vector<WeightedText> out;

  // token_weights(), recursion unrolled into an explicit stack so that deep nesting cannot
  // overflow the C++ stack.
  struct Frame {
    std::vector<Range> pieces;
    size_t next;
    double weight;
  };
  std::vector<Frame> stack;
  stack.push_back({split_top_level(text), 0, 1.0});
  while (!stack.empty()) {
    Frame& frame = stack.back();
    if (frame.next == frame.pieces.size()) {
      stack.pop_back();
      continue;
    }
    const Range r = frame.pieces[frame.next++];
    const double weight = frame.weight;
    const bool group = r.end - r.begin >= 2 && text[r.begin] == '(' && text[r.end - 1] == ')';
    if (!group) {
      out.push_back(
          {unescape_important(std::string_view(text).substr(r.begin, r.end - r.begin)), weight});
      continue;
    }
    size_t begin = r.begin + 1, end = r.end - 1;
    double inner_weight = weight * 1.1;
    size_t colon = index.prev_colon[end];
    if (colon != kNone && colon > begin) {
      std::optional<double> value;
      if (index.next_paren[colon + 1] >= end) {  // a bracket is never part of a number
        value = parse_python_float(
            decode_utf8(std::string_view(text).substr(colon + 1, end - colon - 1)));
      }
      if (value) {
        inner_weight = *value;
        end = colon;
      }
    }
    stack.push_back({index.split_inside(begin, end), 0, inner_weight});  // invalidates `frame`
  }
  return out;
}

std::vector<std::string> prompt_words(std::string_view utf8_prompt) {
  std::vector<std::string> words;
  for (const WeightedText& piece : parse_prompt_weights(utf8_prompt)) {
    const std::string& t = piece.text;
    size_t start = 0;
    for (size_t i = 0; i <= t.size(); ++i) {
      if (i == t.size() || t[i] == ' ' || t[i] == '\n') {
        if (i > start) words.push_back(t.substr(start, i - start));
        start = i + 1;
      }
    }
  }
  return words;
}

std::vector<std::vector<int64_t>> build_windows(const std::vector<std::vector<int64_t>>& words,
                                                const WindowOptions& o) {
  SD3_ASSERT(o.max_length >= 2);
  std::vector<std::vector<int64_t>> windows;
  auto new_window = [&]() -> std::vector<int64_t>& {
    windows.emplace_back();
    if (o.start) windows.back().push_back(*o.start);
    return windows.back();
  };
  std::vector<int64_t>* window = &new_window();
  for (const std::vector<int64_t>& word : words) {
    const bool is_large = word.size() >= o.max_word_length;
    size_t offset = 0;
    while (offset < word.size()) {
      const size_t remaining = word.size() - offset;
      if (remaining + window->size() > o.max_length - 1) {
        const size_t room = o.max_length - window->size() - 1;
        if (is_large) {
          // Split the word: fill this window to max_length - 1, close it, go on in the next.
          window->insert(window->end(), word.begin() + static_cast<ptrdiff_t>(offset),
                         word.begin() + static_cast<ptrdiff_t>(offset + room));
          window->push_back(o.end);
          offset += room;
        } else {
          // Close the window and move the whole word to the next one.
          window->push_back(o.end);
          if (o.pad_to_max_length) window->insert(window->end(), room, o.pad);
        }
        window = &new_window();
      } else {
        window->insert(window->end(), word.begin() + static_cast<ptrdiff_t>(offset), word.end());
        offset = word.size();
      }
    }
  }
  window->push_back(o.end);
  if (o.pad_to_max_length && window->size() < o.max_length) {
    window->insert(window->end(), o.max_length - window->size(), o.pad);
  }
  if (window->size() < o.min_length) {
    window->insert(window->end(), o.min_length - window->size(), o.pad);
  }
  return windows;
}

Sd3Tokenizer Sd3Tokenizer::load(const std::string& clip_vocab_path,
                                const std::string& t5_model_path) {
  std::optional<T5Tokenizer> t5;
  if (!t5_model_path.empty()) t5 = T5Tokenizer::load(t5_model_path);
  return Sd3Tokenizer(ClipBpe::load(clip_vocab_path), std::move(t5));
}

const T5Tokenizer& Sd3Tokenizer::t5() const {
  SD3_CHECK(t5_.has_value(), "this SD3 tokenizer was loaded without a T5 model (spiece.model)");
  return *t5_;
}

Sd3Tokens Sd3Tokenizer::tokenize(std::string_view utf8_prompt) const {
  const std::string prompt = sanitize_utf8(utf8_prompt);
  Sd3Tokens tokens;

  // CLIP-L and CLIP-G share one vocabulary: tokenize the words once, pack them twice.
  std::vector<std::vector<int64_t>> clip_words;
  for (const std::string& word : prompt_words(prompt)) clip_words.push_back(clip_.encode(word));
  WindowOptions clip;
  clip.start = clip_.start_id();
  clip.end = clip_.end_id();
  clip.max_length = kClipWindow;
  clip.pad = clip_.end_id();
  tokens.clip_l = build_windows(clip_words, clip);
  clip.pad = 0;
  tokens.clip_g = build_windows(clip_words, clip);

  if (!t5_) return tokens;  // no T5 stream
  // T5 sees only the first 226 code points, cut before the weight syntax is parsed.
  std::u32string cps = decode_utf8(prompt);
  if (cps.size() > kT5MaxCodePoints) cps.resize(kT5MaxCodePoints);
  std::vector<std::vector<int64_t>> t5_words;
  for (const std::string& word : prompt_words(encode_utf8(cps))) {
    t5_words.push_back(t5_->encode(word));
  }
  WindowOptions t5;
  t5.end = t5_->eos_id();
  t5.pad = t5_->pad_id();
  t5.max_length = std::numeric_limits<size_t>::max();  // never split (max_length=99999999)
  t5.pad_to_max_length = false;
  t5.min_length = kT5MinLength;
  tokens.t5 = build_windows(t5_words, t5);
  return tokens;
}

std::vector<int64_t> Sd3Tokenizer::clip_ids(std::string_view utf8_prompt) const {
  return clip_.encode(utf8_prompt);
}

std::vector<int64_t> Sd3Tokenizer::t5_ids(std::string_view utf8_prompt) const {
  return t5().encode(utf8_prompt);
}

// ---------------------------------------------------------------------------------------------

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

}  // namespace

TokenizerFiles find_tokenizer_files(const std::string& model_path,
                                    const std::string& clip_vocab_flag,
                                    const std::string& t5_model_flag, bool need_t5) {
  TokenizerFiles files;
  std::error_code ec;
  std::vector<fs::path> dirs;
  if (!model_path.empty()) {
    fs::path model(model_path);
    fs::path dir = fs::is_directory(model, ec) ? model : model.parent_path();
    if (dir.empty()) dir = ".";
    dirs.push_back(dir);
    fs::path up = fs::absolute(dir, ec).parent_path();
    if (!up.empty() && up != fs::absolute(dir, ec)) dirs.push_back(up);
  }

  if (!clip_vocab_flag.empty()) {
    SD3_CHECK(fs::exists(clip_vocab_flag, ec), "--clip-vocab '", clip_vocab_flag,
              "' does not exist");
    files.clip_vocab = clip_vocab_flag;
  } else {
    std::string looked;
    for (const fs::path& dir : dirs) {
      for (const char* sub : {"tokenizer", "tokenizer_2"}) {
        fs::path vocab = dir / sub / "vocab.json";
        looked += (looked.empty() ? "" : ", ") + vocab.string() + " (+ merges.txt)";
        if (files.clip_vocab.empty() && is_file(vocab) && is_file(dir / sub / "merges.txt")) {
          files.clip_vocab = vocab.string();
        }
      }
      for (fs::path gz : {dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz",
                          dir / "bpe_simple_vocab_16e6.txt.gz"}) {
        looked += ", " + gz.string();
        if (files.clip_vocab.empty() && is_file(gz)) files.clip_vocab = gz.string();
      }
    }
    SD3_CHECK(!files.clip_vocab.empty(), "no CLIP tokenizer vocabulary found",
              model_path.empty() ? std::string() : " for model '" + model_path + "'",
              looked.empty() ? std::string() : " (looked for " + looked + ")",
              "; pass --clip-vocab PATH: the model's tokenizer/vocab.json with merges.txt beside "
              "it (Hugging Face layout) or OpenAI's bpe_simple_vocab_16e6.txt.gz");
  }

  if (!t5_model_flag.empty()) {
    SD3_CHECK(fs::exists(t5_model_flag, ec), "--t5-model '", t5_model_flag, "' does not exist");
    files.t5_model = t5_model_flag;
  } else {
    std::string looked;
    bool saw_tokenizer_json = false;
    for (const fs::path& dir : dirs) {
      for (fs::path sp : {dir / "tokenizer_3" / "spiece.model", dir / "spiece.model"}) {
        looked += (looked.empty() ? "" : ", ") + sp.string();
        if (files.t5_model.empty() && is_file(sp)) files.t5_model = sp.string();
      }
      saw_tokenizer_json |= is_file(dir / "tokenizer_3" / "tokenizer.json");
    }
    SD3_CHECK(!files.t5_model.empty() || !need_t5, "no T5 tokenizer model found",
              model_path.empty() ? std::string() : " for model '" + model_path + "'",
              looked.empty() ? std::string() : " (looked for " + looked + ")",
              saw_tokenizer_json ? "; tokenizer_3/tokenizer.json is there but sd3 reads the "
                                   "sentencepiece file spiece.model from the same repository"
                                 : "",
              "; pass --t5-model PATH: the model's tokenizer_3/spiece.model (T5 v1.1 XXL "
              "sentencepiece model)");
  }
  return files;
}

}  // namespace sd3::tok
