// SD3's three token streams, built exactly as Stability AI's reference does
// (../shared/tokenizers/SD3_TOKENIZATION.md): the `(text:1.2)` weight syntax is parsed and
// stripped, the text is split into words on ' ' and '\n', every word is tokenized on its own,
// and the words are packed into 77-token CLIP windows (clip_l pads with the end token, clip_g
// with 0) and one T5 sequence of at least 77 tokens built from the first 226 code points.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_tokenizer.h"

namespace sd3::tok {

// One piece of a prompt after the weight syntax: the text with brackets and `:weight` removed
// and `\(` `\)` turned into bare parentheses. The weight is what the reference computes (it
// never reaches the encoders; SD3 ignores it).
struct WeightedText {
  std::string text;
  double weight = 1.0;
};
std::vector<WeightedText> parse_prompt_weights(std::string_view utf8_prompt);

// The words the reference tokenizes one by one: every weighted piece with '\n' -> ' ', split on
// ' ', empty strings dropped.
std::vector<std::string> prompt_words(std::string_view utf8_prompt);

// Python's float() on a string: optional Unicode whitespace around, sign, digits with single
// '_' between digits (any Unicode decimal digits), '.', exponent, inf / infinity / nan.
std::optional<double> parse_python_float(std::u32string_view text);

// How one stream packs its words (SDTokenizer.tokenize_with_weights).
struct WindowOptions {
  std::optional<int64_t> start;  // start token, if the stream has one
  int64_t end = 0;               // end token, closes every window
  int64_t pad = 0;
  size_t max_length = 77;  // window length (start + content + end)
  bool pad_to_max_length = true;
  size_t min_length = 0;       // the last window is padded to at least this length
  size_t max_word_length = 8;  // words with this many tokens may be split across windows
};
std::vector<std::vector<int64_t>> build_windows(const std::vector<std::vector<int64_t>>& words,
                                                const WindowOptions& options);

struct Sd3Tokens {
  std::vector<std::vector<int64_t>> clip_l;  // windows of 77 ids; the pipeline uses the first
  std::vector<std::vector<int64_t>> clip_g;  // windows of 77 ids (pad 0)
  std::vector<std::vector<int64_t>> t5;      // one sequence, max(77, tokens + 1) ids
};

class Sd3Tokenizer {
 public:
  static constexpr size_t kClipWindow = 77;
  static constexpr size_t kT5MinLength = 77;
  static constexpr size_t kT5MaxCodePoints = 226;

  // `clip_vocab_path`: bpe_simple_vocab_16e6.txt.gz or vocab.json (merges.txt beside it);
  // `t5_model_path`: spiece.model, or empty for a tokenizer without the T5 stream (a run
  // without the T5 encoder: tokenize() then leaves `t5` empty).
  static Sd3Tokenizer load(const std::string& clip_vocab_path, const std::string& t5_model_path);
  Sd3Tokenizer(ClipBpe clip, std::optional<T5Tokenizer> t5)
      : clip_(std::move(clip)), t5_(std::move(t5)) {}

  // The three streams for one prompt (UTF-8; ill-formed bytes are read as U+FFFD).
  Sd3Tokens tokenize(std::string_view utf8_prompt) const;
  // Raw ids of the whole prompt, no weight syntax, no truncation, no special tokens: the
  // `clip_bpe_ids` and `t5_ids` fields of the golden files.
  std::vector<int64_t> clip_ids(std::string_view utf8_prompt) const;
  std::vector<int64_t> t5_ids(std::string_view utf8_prompt) const;

  const ClipBpe& clip() const { return clip_; }
  bool has_t5() const { return t5_.has_value(); }
  // The T5 tokenizer; throws sd3::Error when this tokenizer was loaded without one.
  const T5Tokenizer& t5() const;

 private:
  ClipBpe clip_;
  std::optional<T5Tokenizer> t5_;
};

// Where the tokenizer files of a model are. A flag value, when given, wins (and must exist).
// Otherwise they are looked up the way a Hugging Face download lays them out, next to the
// model file (or inside a model directory) and one directory up:
//   CLIP: tokenizer/vocab.json + merges.txt, tokenizer_2/..., bpe_simple_vocab_16e6.txt.gz
//   T5:   tokenizer_3/spiece.model, spiece.model
// Throws sd3::Error listing every place looked at and the flag (--clip-vocab / --t5-model)
// that supplies the file.
struct TokenizerFiles {
  std::string clip_vocab;
  std::string t5_model;
};
// With need_t5 false (a run without the T5 encoder) a T5 model that is not found is no error:
// t5_model is then empty.
TokenizerFiles find_tokenizer_files(const std::string& model_path,
                                    const std::string& clip_vocab_flag = "",
                                    const std::string& t5_model_flag = "", bool need_t5 = true);

}  // namespace sd3::tok
