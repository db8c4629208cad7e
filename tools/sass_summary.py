#!/usr/bin/env python3
"""Summarises `cuobjdump -sass` output (read from stdin): per kernel family (a template's
instantiations together), the opcodes that say whether the kernels are on the path they were
written for: HGMMA (Hopper warpgroup MMA), HMMA (warp-level mma.sync), LDSM (ldmatrix),
LDGSTS (cp.async), 128-bit global loads/stores; then every instantiation that touches local
memory (LDL/STL: a register array indexed at run time, or spills). tools/device_check.sh runs
it on the test binary after the build; cuobjdump (and the nvdisasm it calls) are on the GPU
image, and here from the PyPI wheels nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm
(NVDISASM_PATH pointing at the latter).
Usage: cuobjdump -sass BINARY | python3 tools/sass_summary.py [REGEX]"""
import re
import shutil
import subprocess
import sys

KEYS = ["HGMMA", "HMMA", "LDSM", "LDGSTS", "LDG.E.128", "STG.E.128", "LDL", "STL"]


def demangle(names):
    """c++filt when present, else the mangled names."""
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                         text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short(name):
    name = re.sub(r"sd3::cuda::(\(anonymous namespace\)::)?", "", name)
    name = re.sub(r"\([^()]*\)$", "", name)  # parameters (not "(Enum)2" template arguments)
    name = re.sub(r"^void ", "", name)
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "f16")


def main():
    flt = re.compile(sys.argv[1]) if len(sys.argv) > 1 else None
    kernels = {}
    name = None
    for line in sys.stdin:
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            kernels.setdefault(name, {"n": 0, **{k: 0 for k in KEYS}})
            continue
        if name is None:
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m:
            continue
        op = m.group(1)
        k = kernels[name]
        k["n"] += 1
        for key in KEYS:
            if op == key or op.startswith(key + "."):
                k[key] += 1
    names = demangle(sorted(kernels))
    families = {}
    local = []
    for mangled, k in kernels.items():
        full = short(names[mangled])
        if flt and not flt.search(full):
            continue
        fam = re.sub(r"<.*$", "", full)
        f = families.setdefault(fam, {"count": 0, "local": 0, **{key: 0 for key in KEYS}})
        f["count"] += 1
        for key in KEYS:
            f[key] += k[key]
        if k["LDL"] or k["STL"]:
            f["local"] += 1
            local.append((full, k["LDL"], k["STL"]))
    cols = KEYS[:6]
    print("| kernel family | instantiations | " + " | ".join(cols) + " | with local memory |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for fam, f in sorted(families.items()):
        print(f"| {fam} | {f['count']} | " + " | ".join(str(f[c]) for c in cols) +
              f" | {f['local']} |")
    if local:
        print("\nInstantiations with local memory (LDL / STL instructions):\n")
        for full, ldl, stl in sorted(local):
            print(f"- `{full}`: {ldl} / {stl}")


if __name__ == "__main__":
    main()
