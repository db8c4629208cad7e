// Per-op time of the op API (engine/ops.h), for finding where a step or a decode spends its
// time and what each fusion buys.
//
// Note [Op profile]
// With profiling on (set_op_profile(true), e.g. `sd3-bench --profile-ops`), every op called
// through the op API is timed, outermost
// calls only: an op that is composed of other ops (an unfused composition, a cast inside a
// linear) counts as itself, not as its parts. On the CPU the ops run synchronously and the
// wall clock times them; on a CUDA device two events are recorded on the device's stream
// around the op (no synchronisation is added, so the queue keeps running ahead) and read when
// the profile is. The cost is about two event records per op on the host, so the GPU's own
// time is unchanged while the host keeps ahead of it (the first profiled run also creates the
// events; sd3-bench's profiled_step_s against its median shows the cost). Off, it costs one
// relaxed atomic load per op. Read and reset the profile only while no op runs on another
// thread; op names must outlive the read (string literals).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/device.h"

namespace sd3 {

struct OpStat {
  std::string op;
  int64_t calls = 0;
  double ms = 0.0;  // summed time of the calls
};

void set_op_profile(bool on);
// Drops what was recorded (events included); profiling stays on or off as it was.
void reset_op_profile();
// The ops recorded since the last reset, the most time first. Synchronises the devices that
// have pending CUDA measurements.
std::vector<OpStat> read_op_profile();
// A text table of `stats` (op, calls, ms, share of the total), `title` on its first line.
std::string op_profile_table(const std::vector<OpStat>& stats, const std::string& title);

namespace detail {
extern std::atomic<bool> g_op_profile_on;
}  // namespace detail

inline bool op_profile_on() {
  return detail::g_op_profile_on.load(std::memory_order_relaxed);
}

// Times one op call while profiling is on (Note [Op profile]); nested scopes are not counted.
class OpScope {
 public:
  OpScope(const char* op, Device device) {
    if (op_profile_on()) begin(op, device);
  }
  ~OpScope() {
    if (active_) end();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  void begin(const char* op, Device device);
  void end() noexcept;

  bool active_ = false;     // this scope took part (profiling was on at its start)
  bool recording_ = false;  // and it is the outermost one
  const char* op_ = nullptr;
  Device device_;
  int64_t start_ = 0;  // CPU: steady-clock nanoseconds; CUDA: event slot
};

}  // namespace sd3
