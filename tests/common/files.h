// Small file and process helpers shared by the tests: whole-file bytes, running one of our
// programs, and a cap on the address space for tests that must not allocate without bound.
#pragma once

#include <sys/resource.h>

#include <string>

namespace sd3::test {

// The bytes of a file; throws sd3::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);
// Writes `bytes` to `path` (replacing it) and returns the path; throws sd3::Error on failure.
std::string write_file(const std::string& path, const std::string& bytes);

struct CommandResult {
  int status = -1;  // exit status, or -1 when the command could not run or did not exit
  std::string out;  // what it printed on stdout (redirect 2>&1 in `command` for stderr)
};

// Runs `command` through /bin/sh and waits for it.
CommandResult run_command(const std::string& command);

// Caps the address space while alive, so code that allocates without bound fails with
// std::bad_alloc (which a test reports) instead of summoning the OOM killer.
class AddressSpaceLimit {
 public:
  explicit AddressSpaceLimit(rlim_t bytes);
  ~AddressSpaceLimit();
  AddressSpaceLimit(const AddressSpaceLimit&) = delete;
  AddressSpaceLimit& operator=(const AddressSpaceLimit&) = delete;

 private:
  rlimit old_{};
  bool ok_ = false;
};

}  // namespace sd3::test
