// Shared helpers for the tokenizer tests: the tokenizer data under $SD3_TOKENIZERS (default
// ../shared/tokenizers), loaded once per process, and the golden file.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/test_data.h"
#include "tokenizers/sd3_tokenizer.h"

namespace sd3::tok::test_util {

inline std::string gz_vocab() {
  return test::tokenizer_path("clip/bpe_simple_vocab_16e6.txt.gz");
}
inline std::string hf_vocab() {
  return test::tokenizer_path("clip/vocab.json");
}
inline std::string hf_merges() {
  return test::tokenizer_path("clip/merges.txt");
}
inline std::string spiece() {
  return test::tokenizer_path("t5/spiece.model");
}

// One tokenizer per vocabulary format, loaded on first use.
const Sd3Tokenizer& tokenizer_gz();
const Sd3Tokenizer& tokenizer_hf();

struct GoldenLine {
  std::string raw;  // the line as stored
  nlohmann::json json;
};
// All lines of a .jsonl file under the tokenizer directory.
std::vector<GoldenLine> read_jsonl(const std::string& name);

std::vector<int64_t> ids_of(const nlohmann::json& array);
std::vector<std::vector<int64_t>> windows_of(const nlohmann::json& array);

// "[1, 2, 3]" for failure messages.
std::string ids_str(const std::vector<int64_t>& ids);

}  // namespace sd3::tok::test_util
