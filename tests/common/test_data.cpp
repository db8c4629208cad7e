#include "common/test_data.h"

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "engine/error.h"

namespace fs = std::filesystem;

namespace sd3::test {
namespace {

std::string dir_from_env(const char* var, const std::string& fallback) {
  const char* value = std::getenv(var);
  std::string dir = (value && *value) ? std::string(value) : fallback;
  SD3_CHECK(fs::is_directory(dir), "test data directory '", dir, "' does not exist (set ", var,
            " to the directory, default ", fallback, ")");
  return dir;
}

std::string checked(const std::string& dir, const std::string& name, const char* var) {
  std::string path = dir + "/" + name;
  SD3_CHECK(fs::exists(path), "test data file '", path, "' is missing (directory from ", var, ")");
  return path;
}

}  // namespace

std::string fixtures_dir() {
  return dir_from_env("SD3_FIXTURES", std::string(SD3_DEFAULT_SHARED_DIR) + "/fixtures");
}

std::string tokenizers_dir() {
  return dir_from_env("SD3_TOKENIZERS", std::string(SD3_DEFAULT_SHARED_DIR) + "/tokenizers");
}

std::string fixture_path(const std::string& name) {
  return checked(fixtures_dir(), name, "SD3_FIXTURES");
}

std::string tokenizer_path(const std::string& name) {
  return checked(tokenizers_dir(), name, "SD3_TOKENIZERS");
}

std::string bin_dir() { return std::string(SD3_BINARY_DIR) + "/bin"; }

std::string temp_dir() {
  static std::mutex mutex;
  static std::vector<std::string> made;
  std::lock_guard<std::mutex> lock(mutex);
  std::string templ = (fs::temp_directory_path() / "sd3-test-XXXXXX").string();
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  SD3_CHECK(mkdtemp(buf.data()) != nullptr, "cannot create a temporary directory under ",
            fs::temp_directory_path().string());
  if (made.empty()) {
    std::atexit([] {
      for (const auto& d : made) {
        std::error_code ec;
        fs::remove_all(d, ec);
      }
    });
  }
  made.emplace_back(buf.data());
  return made.back();
}

}  // namespace sd3::test
