#!/usr/bin/env bash
# tools/device_check.sh DIR [--quick] [--build-dir B] [--build-only]
#
# The CUDA backend's check on a GPU machine that has only the CUDA toolkit, CMake, ninja and
# Python (+ PyTorch): builds (or reuses) the project, runs every CUDA test, compute-sanitizer
# memcheck and racecheck on the small kernel tests, the kernel benchmarks, PyTorch's SDPA at
# the same attention shapes for the cuDNN / flash-attention reference, and the full-size
# random-weight SD3-medium generation at 1024x1024; writes results.md (a short table) and full
# logs into DIR (8 files at most, the device tool's limit).
#
#   --quick        tests and the four fused-kernel benchmarks only (target: 2 minutes)
#   --build-dir B  build tree (default build-device/ in the repository; reused when present)
#   --build-only   configure and build, then stop (used to test the dependency setup)
#
# Our Debian -dev packages are not on that machine: tools/fetch_device_debs.sh downloads them
# into .deb/ here, and the device call carries that folder (carry: [".deb"]); this script
# unpacks them with dpkg -x into a private prefix (no install, nothing in /) and points CMake
# and pkg-config there. cuDNN is taken from the toolkit or, failing that, from PyTorch's
# nvidia-cudnn wheel.
#
# A GPU session runs it as, e.g.:
#   run(command="bash tools/device_check.sh $OUT", carry=[".deb"], timeout_s=540)
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: tools/device_check.sh DIR [--quick] [--build-dir B] [--build-only]}"
shift
quick=0
build_only=0
build="$root/build-device"
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --build-only) build_only=1 ;;
    --build-dir) build="$2"; shift ;;
    *) echo "device_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
t0=$(date +%s)
status=0
log() { echo "[device_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/run.log"; }
phase_fail() { log "FAILED: $*"; status=1; }

# ---- environment ------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  ninja --version 2>&1 | sed 's/^/ninja /'
  c++ --version 2>&1 | head -1
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1
  grep -m1 PRETTY_NAME /etc/os-release
} > "$out/run.log" 2>&1
export PATH="/usr/local/cuda/bin:$PATH"
log "card: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"

# ---- dependencies: unpack the carried .deb files into a prefix --------------------------------
prefix="${SD3_DEPS_PREFIX:-/tmp/sd3-deps}"
cmake_extra=()
if ls "$root"/.deb/*.deb >/dev/null 2>&1; then
  if [ ! -f "$prefix/.done" ]; then
    mkdir -p "$prefix"
    for f in "$root"/.deb/*.deb; do dpkg -x "$f" "$prefix" || phase_fail "dpkg -x $f"; done
    touch "$prefix/.done"
  fi
  lib="$prefix/usr/lib/x86_64-linux-gnu"
  export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  # Only the prefix's .pc files; their absolute /usr paths are re-rooted by the sysroot.
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$prefix/usr/share/pkgconfig:$lib/openblas-pthread/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$prefix"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Debian's openblas.so is chosen by update-alternatives, which dpkg -x does not run.
  [ -e "$lib/libopenblas.so" ] || ln -sf openblas-pthread/libopenblas.so "$lib/libopenblas.so"
  [ -e "$lib/libopenblas.so.0" ] || ln -sf openblas-pthread/libopenblas.so.0 "$lib/libopenblas.so.0"
  log "dependencies from .deb/ unpacked in $prefix"
else
  log "no .deb/ carried: using the system's packages"
fi

# ---- test data: ../shared does not travel; fetch_device_debs.sh copies it into .deb/shared ------
if [ -d "$root/.deb/shared/fixtures" ]; then
  export SD3_FIXTURES="${SD3_FIXTURES:-$root/.deb/shared/fixtures}"
  export SD3_TOKENIZERS="${SD3_TOKENIZERS:-$root/.deb/shared/tokenizers}"
  log "fixtures from .deb/shared"
elif [ ! -d "$root/../shared/fixtures" ]; then
  log "no fixtures carried (.deb/shared) nor beside the checkout: fixture tests will fail"
fi

# ---- cuDNN: the toolkit's, or PyTorch's wheel ---------------------------------------------------
if [ ! -f /usr/local/cuda/include/cudnn.h ] || ! ls /usr/local/cuda/lib64/libcudnn.so* >/dev/null 2>&1; then
  cudnn_dir="$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)"
  if [ -n "$cudnn_dir" ] && [ -f "$cudnn_dir/include/cudnn.h" ]; then
    cudnn_lib="$(ls "$cudnn_dir"/lib/libcudnn.so* | head -1)"
    cmake_extra+=("-DCUDNN_INCLUDE_DIR=$cudnn_dir/include" "-DCUDNN_LIBRARY=$cudnn_lib")
    export LD_LIBRARY_PATH="$cudnn_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "cuDNN from the Python wheel: $cudnn_lib"
  else
    log "cuDNN not found in /usr/local/cuda nor in the nvidia-cudnn wheel"
  fi
fi

# ---- configure and build ------------------------------------------------------------------------
{
  if [ ! -f "$build/build.ninja" ]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSD3_CUDA=ON \
      -DSD3_BUILD_TESTS=ON -DSD3_BUILD_BENCH=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
      -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "${cmake_extra[@]}"
  fi
  targets=(sd3_cuda_tests kernels_bench sd3-bench)
  cmake --build "$build" -j"${SD3_BUILD_JOBS:-16}" --target "${targets[@]}"
} > "$out/build.log" 2>&1 || phase_fail "build (see build.log)"
log "build done"
tests="$build/tests/sd3_cuda_tests"
bench="$build/bench/kernels_bench"
if ((build_only)) || [ ! -x "$tests" ]; then
  ((build_only)) || phase_fail "no test binary"
  exit $status
fi

# ---- tests --------------------------------------------------------------------------------------
timeout 240 "$tests" --gtest_color=no > "$out/tests.log" 2>&1 || phase_fail "CUDA tests (see tests.log)"
log "tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/tests.log" | tr '\n' ' ')"

# ---- compute-sanitizer on the small kernel tests -------------------------------------------------
if ((!quick)); then
  san="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  : > "$out/sanitizer.log"
  for tool in memcheck racecheck synccheck; do
    filter='CudaSanitize.*'
    limit=60
    [ "$tool" = memcheck ] && filter='CudaSanitize.*:CudaLayout.*' && limit=100
    [ "$tool" = synccheck ] && limit=45
    echo "==== $tool ($filter)" >> "$out/sanitizer.log"
    SD3_CUDA_ALLOC=direct timeout "$limit" "$san" --tool "$tool" --error-exitcode 3 \
      "$tests" --gtest_filter="$filter" --gtest_color=no >> "$out/sanitizer.log" 2>&1
    rc=$?
    echo "==== $tool exit $rc" >> "$out/sanitizer.log"
    ((rc == 0)) || phase_fail "compute-sanitizer $tool (exit $rc, see sanitizer.log)"
    log "compute-sanitizer $tool: exit $rc"
  done
fi

# ---- benchmarks ---------------------------------------------------------------------------------
filter='.'
((quick)) && filter='^(adaln_modulate|joint_attention|groupnorm_silu|euler_step)/.*/1024|^copy/'
timeout 150 "$bench" --benchmark_filter="$filter" --benchmark_out="$out/bench.json" \
  --benchmark_out_format=json >> "$out/run.log" 2>&1 || phase_fail "kernel benchmarks"
log "kernel benchmarks done"
PYTHONUNBUFFERED=1 timeout 90 python3 "$root/tools/sdpa_bench.py" --out "$out/sdpa.json" \
  $( ((quick)) && echo --quick ) >> "$out/run.log" 2>&1 || log "PyTorch SDPA reference unavailable"

# ---- full-size generation ------------------------------------------------------------------------
# STEP E2E: the SD3-medium MMDiT + VAE at 1024x1024 with random weights made in memory, random
# text conditioning, 4 Euler steps with CFG (batch 2), f16: seconds per step and peak GPU memory
# (tools/sd3_bench.cpp), once with every fusion on and once with all of them off, so the
# end-to-end effect of the fused kernels is measured in the same run. e2e.json holds one JSON
# object per line.
if ((!quick)); then
  e2e="$build/bin/sd3-bench"
  if [ -x "$e2e" ]; then
    : > "$out/e2e.json"
    for unfused in none all; do
      timeout 150 "$e2e" --backend cuda --arch sd3_medium --size 1024 --steps 4 --dtype f16 \
        --unfused "$unfused" --json >> "$out/e2e.json" 2>> "$out/run.log" ||
        phase_fail "end-to-end generation (--unfused $unfused)"
    done
    log "STEP E2E done: $(cat "$out/e2e.json" 2>/dev/null)"
  else
    log "STEP E2E skipped: sd3-bench was not built"
  fi
fi

# ---- report -------------------------------------------------------------------------------------
python3 "$root/tools/device_report.py" "$out" > "$out/results.md" 2>> "$out/run.log" ||
  log "report generation failed"
log "total $(( $(date +%s) - t0 ))s, status $status"
cat "$out/results.md" 2>/dev/null
exit $status
