#!/usr/bin/env bash
# Installs missing Debian packages, then configures and builds sd3 into BUILD_DIR (default build/).
# Extra arguments go to CMake's configure step (e.g. -DSD3_CUDA=OFF).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/tools/install_deps.sh"
jobs="${JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "$jobs"
