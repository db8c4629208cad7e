#!/usr/bin/env bash
# Downloads (here, where Debian's archive is reachable) the .deb packages that a bare GPU
# machine lacks to build sd3 and run its CUDA tests and benchmarks, into .deb/ at the
# repository root (git-ignored). tools/device_check.sh unpacks them with `dpkg -x` into a
# private prefix there; nothing is installed. Carry the folder with the device call
# (carry: [".deb"]). About 61 MB with the fixtures copy below: check `du -sh .deb` and the
# 64 MiB limit on what a device call carries (the source tree counts too).
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
  libpng-dev libpng16-16 zlib1g-dev
  pkgconf-bin libpkgconf3                        # pkg-config, if the GPU image has none
)
mkdir -p "$dest"
cd "$dest"
rm -f ./*.deb
if ! apt-get download "${pkgs[@]}" >/dev/null 2>&1; then
  echo "fetch_device_debs: apt-get download failed; running 'apt-get update' once and retrying" >&2
  apt-get update -qq
  apt-get download "${pkgs[@]}"
fi
# The fixtures and tokenizer data the CUDA tests read: ../shared does not travel with the
# device call, so a copy goes along inside .deb/shared (device_check.sh points SD3_FIXTURES
# and SD3_TOKENIZERS there). About 43 MB; the whole carried tree must stay under 64 MiB.
shared="${SD3_SHARED:-$root/../shared}"
if [ -d "$shared/fixtures" ]; then
  rm -rf "$dest/shared"
  mkdir -p "$dest/shared/tokenizers/clip" "$dest/shared/tokenizers/t5"
  cp -r "$shared/fixtures" "$dest/shared/fixtures"
  cp "$shared/tokenizers/clip/bpe_simple_vocab_16e6.txt.gz" "$dest/shared/tokenizers/clip/"
  cp "$shared/tokenizers/t5/spiece.model" "$dest/shared/tokenizers/t5/"
else
  echo "fetch_device_debs: no fixtures at $shared (set SD3_SHARED): fixture tests will fail there" >&2
fi
# cuDNN's headers, in case the GPU image's cuDNN (PyTorch's nvidia-cudnn wheel) ships none;
# under 1 MB. device_check.sh uses them only when no cudnn.h is found there.
rm -rf "$dest/cudnn-include"
inc="$(dirname "$(ls /usr/local/cuda/include/cudnn.h /usr/include/cudnn.h /usr/include/x86_64-linux-gnu/cudnn.h 2>/dev/null | head -1)")"
if [ -f "$inc/cudnn.h" ]; then
  mkdir -p "$dest/cudnn-include"
  cp "$inc"/cudnn*.h "$dest/cudnn-include/"
fi
du -sh "$dest"
ls "$dest"/*.deb | wc -l
