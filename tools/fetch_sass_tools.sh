#!/usr/bin/env bash
# Fetches cuobjdump and nvdisasm (NVIDIA's PyPI wheels nvidia-cuda-cuobjdump and
# nvidia-cuda-nvdisasm) into .sass-tools/ (git-ignored), for reading the SASS of the CUDA
# kernels on a machine whose toolkit ships neither (this one: nvcc and ptxas only). Then:
#
#   tools/fetch_sass_tools.sh
#   .sass-tools/cuobjdump -sass build/tests/sd3_cuda_tests | python3 tools/sass_summary.py
#
# (.sass-tools/cuobjdump is a wrapper that points cuobjdump at the nvdisasm beside it.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.sass-tools"
mkdir -p "$dest/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest/wheels" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
for w in "$dest"/wheels/*.whl; do
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$dest/unpacked"
done
bin="$(dirname "$(find "$dest/unpacked" -name nvdisasm -type f | head -1)")"
chmod +x "$bin"/*
cat > "$dest/cuobjdump" <<WRAP
#!/usr/bin/env bash
NVDISASM_PATH="$bin" exec "$bin/cuobjdump" "\$@"
WRAP
chmod +x "$dest/cuobjdump"
"$dest/cuobjdump" --version | tail -1
