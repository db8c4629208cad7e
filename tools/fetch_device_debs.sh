#!/usr/bin/env bash
# Downloads (here, where Debian's archive is reachable) the .deb packages that a bare GPU
# machine lacks to build sd3 and run its CUDA tests and benchmarks, into .deb/ at the
# repository root (git-ignored). tools/device_check.sh unpacks them with `dpkg -x` into a
# private prefix there; nothing is installed. Carry the folder with the device call
# (carry: [".deb"]). About 16 MB.
#
# The packages are Debian 12's (glibc 2.36): their libraries also load on newer systems
# (the GPU image is Ubuntu 24.04-like, glibc 2.39).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.deb"
pkgs=(
  libgtest-dev                                   # GoogleTest static libs + CMake config
  libbenchmark-dev libbenchmark1debian           # Google Benchmark
  nlohmann-json3-dev                             # headers only
  libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
  libsentencepiece-dev libsentencepiece0
  libutf8proc-dev libutf8proc2
  libpng-dev libpng16-16 zlib1g-dev zlib1g
)
mkdir -p "$dest"
cd "$dest"
rm -f ./*.deb
if ! apt-get download "${pkgs[@]}" >/dev/null 2>&1; then
  echo "fetch_device_debs: apt-get download failed; running 'apt-get update' once and retrying" >&2
  apt-get update -qq
  apt-get download "${pkgs[@]}"
fi
du -sh "$dest"
ls "$dest"
