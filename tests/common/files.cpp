#include "common/files.h"

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/error.h"

namespace sd3::test {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SD3_CHECK(in.good(), "cannot read '", path, "'");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

std::string write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  SD3_CHECK(out.good(), "cannot write '", path, "'");
  return path;
}

CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* p = popen(command.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

AddressSpaceLimit::AddressSpaceLimit(rlim_t bytes) {
  ok_ = getrlimit(RLIMIT_AS, &old_) == 0;
  rlimit lim = old_;
  lim.rlim_cur = std::min<rlim_t>(bytes, old_.rlim_max);
  ok_ = ok_ && setrlimit(RLIMIT_AS, &lim) == 0;
}

AddressSpaceLimit::~AddressSpaceLimit() {
  if (ok_) setrlimit(RLIMIT_AS, &old_);
}

}  // namespace sd3::test
