#include "engine/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <sstream>

#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace sd3 {

namespace detail {
std::atomic<bool> g_op_profile_on{false};
}  // namespace detail

namespace {

struct Pending {  // a CUDA op whose events are not read yet
  const char* op;
  int device;
  int64_t from, to;
};

struct Profile {
  std::mutex mu;
  std::map<std::string, OpStat> stats;
  std::vector<Pending> pending;
};

Profile& profile() {
  static Profile* p = new Profile();  // outlives every static destructor that may run ops
  return *p;
}

thread_local int t_depth = 0;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void add(const std::string& op, double ms) {
  OpStat& s = profile().stats[op];
  s.op = op;
  s.calls += 1;
  s.ms += ms;
}

}  // namespace

void set_op_profile(bool on) {
  detail::g_op_profile_on.store(on);
}

void reset_op_profile() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.clear();
  p.pending.clear();
#ifdef SD3_HAVE_CUDA
  cuda::profile_reset_events();
#endif
}

void OpScope::begin(const char* op, Device device) {
  if (t_depth == 0) {
    // The start mark comes first: if it throws, the constructor throws and no destructor
    // runs, so nothing may have been counted yet (the depth would stay raised for good).
#ifdef SD3_HAVE_CUDA
    start_ = device.is_cuda() ? cuda::profile_mark(device.index) : now_ns();
#else
    start_ = now_ns();
#endif
    recording_ = true;
    op_ = op;
    device_ = device;
  }
  ++t_depth;
  active_ = true;
}

void OpScope::end() noexcept {
  --t_depth;
  if (!recording_) return;
  try {
    Profile& p = profile();
#ifdef SD3_HAVE_CUDA
    if (device_.is_cuda()) {
      const int64_t to = cuda::profile_mark(device_.index);
      std::lock_guard<std::mutex> lock(p.mu);
      p.pending.push_back(Pending{op_, device_.index, start_, to});
      return;
    }
#endif
    const double ms = static_cast<double>(now_ns() - start_) * 1e-6;
    std::lock_guard<std::mutex> lock(p.mu);
    add(op_, ms);
  } catch (...) {
    // A profile that cannot record (a failed event record after a device fault) loses this
    // op; the fault itself is reported by the next checked CUDA call.
  }
}

std::vector<OpStat> read_op_profile() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
#ifdef SD3_HAVE_CUDA
  std::vector<int> synced;
  for (const Pending& q : p.pending) {
    if (std::find(synced.begin(), synced.end(), q.device) == synced.end()) {
      cuda::synchronize(q.device);
      synced.push_back(q.device);
    }
    add(q.op, cuda::profile_elapsed_ms(q.device, q.from, q.to));
  }
  p.pending.clear();
  cuda::profile_reset_events();
#endif
  std::vector<OpStat> out;
  for (const auto& [name, s] : p.stats) out.push_back(s);
  std::sort(out.begin(), out.end(), [](const OpStat& a, const OpStat& b) { return a.ms > b.ms; });
  return out;
}

std::string op_profile_table(const std::vector<OpStat>& stats, const std::string& title) {
  double total = 0.0;
  for (const OpStat& s : stats) total += s.ms;
  std::ostringstream o;
  o << title << "\n";
  char line[160];
  std::snprintf(line, sizeof line, "  %-22s %8s %11s %7s\n", "op", "calls", "ms", "share");
  o << line;
  for (const OpStat& s : stats) {
    std::snprintf(line, sizeof line, "  %-22s %8lld %11.3f %6.1f%%\n", s.op.c_str(),
                  static_cast<long long>(s.calls), s.ms, total > 0 ? 100.0 * s.ms / total : 0.0);
    o << line;
  }
  std::snprintf(line, sizeof line, "  %-22s %8s %11.3f\n", "total", "", total);
  o << line;
  return o.str();
}

}  // namespace sd3
