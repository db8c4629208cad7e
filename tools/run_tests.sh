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
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900
