#!/usr/bin/env bash
# The main job: installs what is missing, builds sd3, and generates an image.
#
#   tools/run_main.sh                  a tiny random-weight SD3 checkpoint made by sd3-randckpt,
#                                      through the whole pipeline in seconds (random weights
#                                      give noise, not a picture): out/tiny.png
#   tools/run_main.sh SD3_ARGS...      the runner with your arguments, e.g.
#                                      -m sd3_medium_incl_clips_t5xxlfp16.safetensors -p "a cat"
#
# Tokenizer files for the tiny run come from $SD3_TOKENIZERS (default ../shared/tokenizers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/tools/build.sh"
if (($#)); then
  exec "$build/bin/sd3" "$@"
fi
tok="${SD3_TOKENIZERS:-$root/../shared/tokenizers}"
out="$root/out"
mkdir -p "$out"
"$build/bin/sd3-randckpt" sd3_medium_incl_clips_t5xxl -o "$out/tiny_sd3.safetensors" \
  --depth 2 --vae-ch 32 --clip-l-width 64 --clip-l-layers 2 --clip-g-width 64 \
  --clip-g-layers 2 --t5-width 128 --t5-layers 2 --seed 1
"$build/bin/sd3-inspect" "$out/tiny_sd3.safetensors" | tail -n 12
"$build/bin/sd3" -m "$out/tiny_sd3.safetensors" \
  --clip-vocab "$tok/clip/bpe_simple_vocab_16e6.txt.gz" --t5-model "$tok/t5/spiece.model" \
  -p "a photograph of a red fox in fresh snow" -W 256 -H 256 --steps 4 --seed 42 \
  -o "$out/tiny.png"
echo "run_main: wrote $out/tiny.png (random weights: expect noise, not a picture)"
