// The shared main() of the CPU Google Benchmark programs: takes our own `--threads=N` (0 = all
// cores; CPU kernels and BLAS) off the command line, hands the rest to Google Benchmark, lets
// the program register its benchmarks, records the thread count in the context, and runs.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/ops.h"

namespace sd3::bench {

template <class Register>
int cpu_bench_main(int argc, char** argv, Register register_benchmarks) {
  int threads = 0;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else {
      rest.push_back(argv[i]);
    }
  }
  set_num_threads(threads);
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  register_benchmarks();
  benchmark::AddCustomContext("threads", std::to_string(num_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace sd3::bench
