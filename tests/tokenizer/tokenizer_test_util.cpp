#include "tokenizer/tokenizer_test_util.h"

#include <fstream>

#include "engine/error.h"

namespace sd3::tok::test_util {

const Sd3Tokenizer& tokenizer_gz() {
  static const Sd3Tokenizer t = Sd3Tokenizer::load(gz_vocab(), spiece());
  return t;
}

const Sd3Tokenizer& tokenizer_hf() {
  static const Sd3Tokenizer t = Sd3Tokenizer::load(hf_vocab(), spiece());
  return t;
}

std::vector<GoldenLine> read_jsonl(const std::string& name) {
  const std::string path = test::tokenizer_path(name);
  std::ifstream in(path, std::ios::binary);
  SD3_CHECK(in.good(), "cannot open '", path, "'");
  std::vector<GoldenLine> lines;
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    try {
      lines.push_back({line, nlohmann::json::parse(line)});
    } catch (const nlohmann::json::exception& e) {
      fail("'", path, "' line ", number, " is not JSON: ", e.what());
    }
  }
  SD3_CHECK(!lines.empty(), "'", path, "' holds no lines");
  return lines;
}

std::vector<int64_t> ids_of(const nlohmann::json& array) {
  return array.get<std::vector<int64_t>>();
}

std::vector<std::vector<int64_t>> windows_of(const nlohmann::json& array) {
  return array.get<std::vector<std::vector<int64_t>>>();
}

std::string ids_str(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

}  // namespace sd3::tok::test_util
