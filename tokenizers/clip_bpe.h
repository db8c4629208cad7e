// CLIP's byte-level BPE tokenizer (OpenAI simple_tokenizer.py behaviour), written by hand:
// ftfy-style clean-up, lower-casing, the pre-tokenisation pattern, byte -> unicode mapping,
// `</w>` on the last symbol of a word and merges applied by rank. Used by CLIP-L and CLIP-G.
//
// Input is UTF-8; ill-formed bytes are read as U+FFFD (see unicode_text.h), never rejected.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sd3::tok {

// One piece of the pre-tokenisation pattern
// `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
// (case-insensitive) over cleaned text: [begin, end) in code points.
struct PreToken {
  size_t begin = 0;
  size_t end = 0;
};
std::vector<PreToken> clip_pre_tokenize(std::u32string_view cleaned);

class ClipBpe {
 public:
  // Number of merges CLIP uses (lines 1..48894 of bpe_simple_vocab_16e6.txt.gz).
  static constexpr size_t kNumMerges = 49152 - 256 - 2;

  // `path` is either bpe_simple_vocab_16e6.txt.gz (any gzip file in that format), a Hugging
  // Face vocab.json with merges.txt in the same directory, or a directory holding one of these.
  // Throws sd3::Error naming the file on a missing, unreadable or malformed vocabulary.
  static ClipBpe load(const std::string& path);
  static ClipBpe load_gz(const std::string& gz_path);
  static ClipBpe load_hf(const std::string& vocab_json_path, const std::string& merges_txt_path);

  // SimpleTokenizer.encode(): ids of the cleaned text, without start / end tokens.
  std::vector<int64_t> encode(std::string_view utf8) const;
  // The BPE ids of one pre-token (already cleaned, lower-cased UTF-8), `</w>` included.
  std::vector<int64_t> bpe(std::string_view piece) const;

  int64_t start_id() const;  // <|startoftext|>, 49406 in CLIP's vocabulary
  int64_t end_id() const;    // <|endoftext|>, 49407
  size_t vocab_size() const;
  // The vocabulary entry of an id ("a</w>", "<|endoftext|>"), for diagnostics and tests.
  std::string token_text(int64_t id) const;

  struct Impl;

 private:
  explicit ClipBpe(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;  // immutable tables plus a mutex-guarded cache
};

}  // namespace sd3::tok
