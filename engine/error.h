// Errors are values that travel: every failure throws sd3::Error with a one-line message
// that names what failed and where (file, key, shape, flag). Nothing in the library exits.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void append_parts(std::ostringstream&) {}
template <class T, class... Rest>
void append_parts(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_parts(os, rest...);
}
}  // namespace detail

// Concatenates its arguments (anything with operator<<) into one string.
template <class... Parts>
std::string str_cat(const Parts&... parts) {
  std::ostringstream os;
  detail::append_parts(os, parts...);
  return os.str();
}

// Throws sd3::Error with the concatenated message.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(str_cat(parts...));
}

// "[2, 3, 4]"
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace sd3

// Validates a condition on input (files, flags, shapes); the message must name the culprit.
#define SD3_CHECK(cond, ...)          \
  do {                                \
    if (!(cond)) ::sd3::fail(__VA_ARGS__); \
  } while (0)

// Internal invariant: a failure is a bug in sd3, reported with its source location.
#define SD3_ASSERT(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::sd3::fail("internal error at ", __FILE__, ":", __LINE__, ": ", #cond, " ", ##__VA_ARGS__); \
  } while (0)
