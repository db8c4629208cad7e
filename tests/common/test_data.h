// Where tests find shared data: fixtures from $SD3_FIXTURES, tokenizer files from
// $SD3_TOKENIZERS, both defaulting to ../shared beside the source tree. A missing directory
// or file is a test failure with a message naming the path and the variable, never a pass.
#pragma once

#include <string>

namespace sd3::test {

// Directory of the golden fixtures (manifest.json inside). Throws sd3::Error if missing.
std::string fixtures_dir();
// Directory of the tokenizer data (clip/, t5/, golden.jsonl). Throws sd3::Error if missing.
std::string tokenizers_dir();
// fixtures_dir() + "/" + name, checked to exist.
std::string fixture_path(const std::string& name);
// tokenizers_dir() + "/" + name, checked to exist.
std::string tokenizer_path(const std::string& name);
// Directory holding the built programs (sd3, sd3-inspect, ...).
std::string bin_dir();
// A fresh empty temporary directory, removed at process exit.
std::string temp_dir();

}  // namespace sd3::test
