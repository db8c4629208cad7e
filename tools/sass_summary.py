#!/usr/bin/env python3
"""Summarises `cuobjdump -sass` output (read from stdin) per kernel: instruction count and the
opcodes that say whether a kernel is on the path it was written for: HGMMA (Hopper warpgroup
MMA), HMMA (warp-level mma.sync), LDSM (ldmatrix), LDGSTS (cp.async), LDG/STG 128-bit
accesses, and LDL/STL (local memory: a register array indexed at run time, or spills).
tools/device_check.sh runs it on the test binary after the build (cuobjdump is on the GPU
image, not here). Usage: cuobjdump -sass BINARY | python3 tools/sass_summary.py [FILTER]"""
import re
import sys

KEYS = ["HGMMA", "HMMA", "LDSM", "LDGSTS", "LDG.E.128", "STG.E.128", "LDL", "STL"]


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
    print("| kernel | instructions | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for name, k in sorted(kernels.items()):
        if flt and not flt.search(name):
            continue
        print(f"| {name[:90]} | {k['n']} | " + " | ".join(str(k[key]) for key in KEYS) + " |")


if __name__ == "__main__":
    main()
