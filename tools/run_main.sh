#!/usr/bin/env bash
# The main job: installs what is missing, builds sd3, makes a tiny random-weight checkpoint
# and inspects it. Pass real checkpoint files as arguments to inspect those instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/tools/build.sh"
if (($#)); then
  exec "$build/bin/sd3-inspect" "$@"
fi
out="$root/out"
mkdir -p "$out"
"$build/bin/sd3-randckpt" --arch sd3_medium --depth 2 --dtype f16 --seed 1 -o "$out/tiny_sd3.safetensors"
"$build/bin/sd3-inspect" "$out/tiny_sd3.safetensors"
