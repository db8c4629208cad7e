#!/usr/bin/env bash
# The test command: installs what is missing, builds everything (CUDA sources too when nvcc
# is present), and runs every test. CUDA tests skip (and say so) on machines without a GPU.
# Fixtures and tokenizer data come from ../shared unless SD3_FIXTURES / SD3_TOKENIZERS say
# otherwise.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/tools/build.sh" "$@"
cd "$build"
# Say up front whether the CUDA tests will run or skip, and why (they skip without a GPU).
if [ -x tests/sd3_cuda_tests ]; then
  reason="$(tests/sd3_cuda_tests --gtest_filter='CudaRuntime.*' 2>&1 | grep -A1 ': Skipped$' |
            sed -n 2p)"
  if [ -n "$reason" ]; then
    echo "run_tests: CUDA tests will be skipped: $reason"
  else
    echo "run_tests: a CUDA GPU is present: the CUDA tests run"
  fi
fi
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900
