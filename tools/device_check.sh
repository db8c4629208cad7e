#!/usr/bin/env bash
# tools/device_check.sh DIR [--quick] [--only PHASES] [--budget S] [--build-dir B] [--build-only]
#
# The CUDA backend's check on a GPU machine that has only the CUDA toolkit, CMake, ninja and
# Python (+ PyTorch): builds (or reuses) the project, runs every CUDA test, the kernel
# benchmarks, PyTorch's SDPA at the same attention shapes for the cuDNN / flash-attention
# reference, the full-size random-weight SD3-medium generation at 1024x1024 (all fusions on,
# then all off) and compute-sanitizer memcheck / racecheck / synccheck on the small kernel
# tests; writes results.md (a short table) and full logs into DIR (8 files at most, the device
# tool's limit).
#
# Phases, in order of the value of what they tell: build, tests, bench, sdpa, e2e, memcheck,
# racecheck, synccheck, e2e_unfused. The whole run has a budget (--budget, default 520 s, so
# that a 540-600 s device call returns): each phase's time limit is cut to what is left, a
# phase with under 10 s left is skipped (and says so), and results.md is rewritten after
# every phase, so a cut-off call still returns its table.
#
#   --quick        tests, the four fused-kernel benchmarks at 1024x1024 and the SDPA reference
#                  at that shape (target: 2 minutes)
#   --only LIST    comma-separated phases to run (build is always done or reused), e.g.
#                  --only e2e,memcheck,racecheck,synccheck,e2e_unfused for a second call;
#                  `ncu` (Nsight Compute on one launch of each fused kernel) runs only when
#                  listed here
#   --budget S     seconds for the whole run (default 520; SD3_CHECK_BUDGET_S also sets it)
#   --build-dir B  build tree (default build-device/ in the repository; reused when present)
#   --build-only   configure and build, then stop (used to test the dependency setup)
#
# Our Debian -dev packages are not on that machine: tools/fetch_device_debs.sh downloads them
# into .deb/ here, and the device call carries that folder (carry: [".deb"]); this script
# unpacks them with dpkg -x into a private prefix (no install, nothing in /) and points CMake
# and pkg-config there. cuDNN is taken from the toolkit or, failing that, from PyTorch's
# nvidia-cudnn wheel (with headers carried in .deb/cudnn-include if the wheel has none).
#
# A GPU session runs it as, e.g.:
#   run(command="bash tools/device_check.sh $OUT", carry=[".deb"], timeout_s=580)
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: tools/device_check.sh DIR [--quick] [--only PHASES] [--budget S] [--build-dir B] [--build-only]}"
shift
quick=0
build_only=0
only=""
budget="${SD3_CHECK_BUDGET_S:-520}"
build="$root/build-device"
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --build-only) build_only=1 ;;
    --only) only="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --build-dir) build="$2"; shift ;;
    *) echo "device_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
t0=$(date +%s)
deadline=$((t0 + budget))
status=0
log() { echo "[device_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/run.log"; }
phase_fail() { log "FAILED: $*"; status=1; }
# wanted PHASE: whether --only (if given) lists it, and --quick keeps it.
wanted() {
  if [ -n "$only" ]; then [[ ",$only," == *",$1,"* ]]; return; fi
  ((quick)) && [[ "$1" != tests && "$1" != bench ]] && return 1
  return 0
}
# limit CAP: CAP seconds, or what is left of the budget (minus 10 s for the report) if less;
# prints 0 when under 10 s would be left.
limit() {
  local left=$((deadline - $(date +%s) - 10))
  ((left < 10)) && { echo 0; return; }
  ((left < $1)) && echo "$left" || echo "$1"
}
report() {
  python3 "$root/tools/device_report.py" "$out" > "$out/results.md" 2>> "$out/run.log" ||
    log "report generation failed"
}

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
  # Unpacked once per set of packages (the marker holds their names).
  want="$(cd "$root/.deb" && ls -1 ./*.deb)"
  if [ "$(cat "$prefix/.done" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$prefix"
    for f in "$root"/.deb/*.deb; do dpkg -x "$f" "$prefix" || phase_fail "dpkg -x $f"; done
    echo "$want" > "$prefix/.done"
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
  # zlib1g-dev's libz.so is an absolute link to Debian's /lib/.../libz.so.1.2.13: point it at
  # the system's runtime zlib instead (present on any distribution).
  if [ ! -e "$lib/libz.so" ]; then
    sysz="$(ls /usr/lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/libz.so.1 2>/dev/null | head -1)"
    [ -n "$sysz" ] && ln -sfn "$sysz" "$lib/libz.so"
  fi
  # pkg-config may be missing there; the carried pkgconf (pkgconf-bin) stands in.
  if ! command -v pkg-config >/dev/null 2>&1 && [ -x "$prefix/usr/bin/pkgconf" ]; then
    cmake_extra+=("-DPKG_CONFIG_EXECUTABLE=$prefix/usr/bin/pkgconf")
  fi
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
  # The nvidia namespace package(s) of the Python that holds PyTorch; the wheel's layout has
  # varied (nvidia/cudnn/{include,lib}, nvidia/cu13/...), so search rather than assume.
  nv_dirs="$(python3 -c 'import nvidia; print(" ".join(list(nvidia.__path__)))' 2>/dev/null)"
  cudnn_lib="" cudnn_inc=""
  for d in $nv_dirs; do
    [ -n "$cudnn_lib" ] || cudnn_lib="$(find "$d" -name 'libcudnn.so*' 2>/dev/null | sort | head -1)"
    [ -n "$cudnn_inc" ] || cudnn_inc="$(find "$d" -name cudnn.h 2>/dev/null | head -1)"
  done
  [ -n "$cudnn_inc" ] || { [ -f "$root/.deb/cudnn-include/cudnn.h" ] && cudnn_inc="$root/.deb/cudnn-include/cudnn.h"; }
  if [ -n "$cudnn_lib" ] && [ -n "$cudnn_inc" ]; then
    cmake_extra+=("-DCUDNN_INCLUDE_DIR=$(dirname "$cudnn_inc")" "-DCUDNN_LIBRARY=$cudnn_lib")
    export LD_LIBRARY_PATH="$(dirname "$cudnn_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "cuDNN: $cudnn_lib, headers $(dirname "$cudnn_inc")"
  else
    log "cuDNN not found in /usr/local/cuda nor in the nvidia wheels (lib '$cudnn_lib', header '$cudnn_inc')"
  fi
fi
{
  echo "---- CUDA libraries"
  ls /usr/local/cuda/lib64 2>&1 | grep -E 'cublas|cudart|cudnn' | head -20
} >> "$out/run.log" 2>&1

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
e2e="$build/bin/sd3-bench"
if ((build_only)) || [ ! -x "$tests" ]; then
  ((build_only)) || phase_fail "no test binary"
  report
  exit $status
fi
# What the compiler made of the hand-written kernels (HGMMA vs HMMA, cp.async, 16-byte
# accesses, local memory), appended to build.log for device_report.py.
if command -v cuobjdump >/dev/null 2>&1; then
  {
    echo "==== SASS summary"
    cuobjdump -sass "$tests" 2>/dev/null | python3 "$root/tools/sass_summary.py" \
      'attention|group_norm|group_stats|group_apply|adaln|row_norm|euler|gated'
    echo "==== end SASS summary"
  } >> "$out/build.log" 2>&1
fi
report

# ---- tests --------------------------------------------------------------------------------------
if wanted tests; then
  t=$(limit 200)
  if ((t > 0)); then
    timeout "$t" "$tests" --gtest_color=no > "$out/tests.log" 2>&1 || phase_fail "CUDA tests (see tests.log)"
    log "tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/tests.log" | tr '\n' ' ')"
  else
    log "tests skipped: no time left"
  fi
  report
fi

# ---- benchmarks ---------------------------------------------------------------------------------
if wanted bench; then
  filter='.'
  ((quick)) && filter='^(adaln_modulate|joint_attention|groupnorm_silu|euler_step)/.*/1024|^copy/'
  t=$(limit 150)
  if ((t > 0)); then
    timeout "$t" "$bench" --benchmark_filter="$filter" --benchmark_out="$out/bench.json" \
      --benchmark_out_format=json >> "$out/run.log" 2>&1 || phase_fail "kernel benchmarks"
    log "kernel benchmarks done"
  else
    log "kernel benchmarks skipped: no time left"
  fi
  report
fi
if wanted sdpa || { ((quick)) && [ -z "$only" ]; }; then
  t=$(limit 60)
  if ((t > 0)); then
    PYTHONUNBUFFERED=1 timeout "$t" python3 "$root/tools/sdpa_bench.py" --out "$out/sdpa.json" \
      $( ((quick)) && echo --quick ) >> "$out/run.log" 2>&1 || log "PyTorch SDPA reference unavailable"
  else
    log "SDPA reference skipped: no time left"
  fi
  report
fi

# ---- full-size generation ------------------------------------------------------------------------
# STEP E2E: the SD3-medium MMDiT + VAE at 1024x1024 with random weights made in memory, random
# text conditioning, 5 Euler steps with CFG (batch 2), f16: seconds per step, peak GPU memory
# and an op-by-op profile of one step and one decode (tools/sd3_bench.cpp). Phase e2e runs it with every fusion on, phase e2e_unfused with all of
# them off (last: the least needed number), so the end-to-end effect of the fused kernels is
# measured on the same machine. e2e.json holds one JSON object per line.
run_e2e() {  # run_e2e UNFUSED
  if [ ! -x "$e2e" ]; then
    log "STEP E2E skipped: sd3-bench was not built"
    return
  fi
  local t
  t=$(limit 120)
  if ((t > 0)); then
    # 5 steps: a warm-up, 3 timed, and one more timed op by op (--profile-ops; outside the
    # timings), plus one op-profiled VAE decode after the timed ones.
    timeout "$t" "$e2e" --backend cuda --arch sd3_medium --size 1024 --steps 5 --dtype f16 \
      --unfused "$1" --profile-ops --json >> "$out/e2e.json" 2>> "$out/run.log" ||
      phase_fail "end-to-end generation (--unfused $1)"
    log "STEP E2E (--unfused $1) done: $(tail -1 "$out/e2e.json" 2>/dev/null | python3 -c \
      'import json, sys; r = json.load(sys.stdin); print({k: r.get(k) for k in (
          "step_s_median", "profiled_step_s", "vae_decode_s", "peak_device_bytes",
          "output_finite")})' 2>/dev/null)"
  else
    log "STEP E2E (--unfused $1) skipped: no time left"
  fi
  report
}
wanted e2e && run_e2e none

# ---- compute-sanitizer on the small kernel tests -------------------------------------------------
# memcheck also covers the library-backed small tests (CudaSanitizeLib: cuDNN's algorithm
# search is slow under racecheck, which also reports hazards inside library kernels).
san="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
for tool in memcheck racecheck synccheck; do
  wanted "$tool" || continue
  filter='CudaSanitize.*'
  cap=60
  [ "$tool" = memcheck ] && filter='CudaSanitize.*:CudaSanitizeLib.*:CudaLayout.*' && cap=100
  [ "$tool" = synccheck ] && cap=45
  t=$(limit "$cap")
  if ((t == 0)); then
    log "compute-sanitizer $tool skipped: no time left"
    continue
  fi
  echo "==== $tool ($filter)" >> "$out/sanitizer.log"
  SD3_CUDA_ALLOC=direct timeout "$t" "$san" --tool "$tool" --error-exitcode 3 \
    "$tests" --gtest_filter="$filter" --gtest_color=no >> "$out/sanitizer.log" 2>&1
  rc=$?
  echo "==== $tool exit $rc" >> "$out/sanitizer.log"
  ((rc == 0)) || phase_fail "compute-sanitizer $tool (exit $rc, see sanitizer.log)"
  log "compute-sanitizer $tool: exit $rc"
  report
done

wanted e2e_unfused && run_e2e all

# ---- Nsight Compute (only with --only ncu) ------------------------------------------------------
# Speed-of-light, occupancy and launch statistics of one launch of each fused kernel at the
# 1024x1024 shapes (clocks left as they are: --clock-control none), appended to run.log.
if [ -n "$only" ] && wanted ncu; then
  # Benchmark names continue after the shape (/min_time:.../manual_time): end filters with '/'.
  for pair in 'joint_attention/fused/1024/:flash_attention_kernel' \
              'joint_attention/fused_wgmma/1024/:wgmma_attention_kernel' \
              'groupnorm_silu/fused/1024_c128/:group_norm_onepass_kernel' \
              'adaln_modulate/fused/1024/:row_norm_kernel' 'euler_step/fused/1024/:cfg_euler_kernel'; do
    t=$(limit 60)
    ((t > 0)) || { log "ncu ${pair%%:*} skipped: no time left"; continue; }
    echo "==== ncu ${pair}" >> "$out/run.log"
    timeout "$t" ncu --clock-control none --section SpeedOfLight --section Occupancy \
      --section LaunchStats -k "regex:${pair##*:}" -s 2 -c 1 \
      "$bench" --benchmark_filter="^${pair%%:*}" >> "$out/run.log" 2>&1 ||
      log "ncu ${pair%%:*}: exit $?"
  done
  log "ncu done"
fi

# ---- report -------------------------------------------------------------------------------------
log "total $(( $(date +%s) - t0 ))s, status $status"
report
cat "$out/results.md" 2>/dev/null
exit $status
