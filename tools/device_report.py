#!/usr/bin/env python3
"""Turns the outputs of tools/device_check.sh (DIR/bench.json from kernels_bench,
DIR/sdpa.json, DIR/tests.log, DIR/sanitizer.log, DIR/e2e.json, DIR/run.log) into the short
markdown table printed as DIR/results.md: the card, test and sanitizer results, and for each
fused kernel its time, GB/s, fraction of a same-size device copy's bandwidth (target >= 80%)
and speed-up over its unfused composition (target >= 1.5x); attention's TFLOP/s against
PyTorch's cuDNN SDPA (target >= 70% at 1024x1024)."""
import json
import os
import re
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_json_lines(path):
    """One JSON object per line; lines that do not parse are skipped."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def main():
    d = sys.argv[1]
    run = read(os.path.join(d, "run.log"))
    card = re.search(r"card: (.*)", run)
    date = re.search(r"date: (.*)", run)
    print("# CUDA device check\n")
    print(f"- card: {card.group(1) if card else '?'}; date: {date.group(1) if date else '?'}")
    tests = read(os.path.join(d, "tests.log"))
    summary = re.findall(r"^\[  (PASSED|FAILED|SKIPPED) *\] (\d+) tests?", tests, re.M)
    failed = re.findall(r"^\[  FAILED  \] (\S+\.\S+)", tests, re.M)
    print(f"- tests: {', '.join(f'{n} {w.lower()}' for w, n in summary) or 'not run'}"
          + (f"; failed: {', '.join(sorted(set(failed)))}" if failed else ""))
    san = read(os.path.join(d, "sanitizer.log"))
    exits = re.findall(r"==== (\w+) exit (\d+)", san)
    if exits:
        print("- compute-sanitizer: " + ", ".join(f"{t} {'clean' if c == '0' else 'exit ' + c}"
                                                  for t, c in exits))
    total = re.findall(r"total (\d+)s, status (\d+)", run)
    if total:
        print(f"- wall time {total[-1][0]} s, status {total[-1][1]}")

    bench = load_json(os.path.join(d, "bench.json"))
    rows = {}
    errors = []
    if bench:
        for b in bench.get("benchmarks", []):
            # Google Benchmark appends /min_time:... (MinTime) and /manual_time to the name.
            name = re.sub(r"/(?:min_time:[^/]*|manual_time|real_time)", "", b["name"])
            if b.get("error_occurred"):
                errors.append(f"{name}: {b.get('error_message', '?')}")
                continue
            parts = name.split("/")
            if len(parts) != 3:
                continue
            op, variant, shape = parts
            rows.setdefault((op, shape), {})[variant] = b
    if errors:
        print(f"- benchmarks skipped with an error: {len(errors)}")
        for e in errors[:12]:
            print(f"  - {e}")
    print("\n## Memory-bound fused kernels\n")
    print("Single calls after an L2 flush; `batched %` is the same ratio from back-to-back calls "
          "(no host dispatch, L2-warm when the op fits in L2): use it for the small shapes.\n")
    print("| kernel | shape | fused us | GB/s | copy GB/s | % of copy (>= 80) | batched % | unfused us | speed-up (>= 1.5) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (op, shape), v in sorted(rows.items()):
        if "fused" not in v or "copy" not in v:
            continue
        c, u = v["copy"], v.get("unfused")
        # The default kernel first, then its lab variants (fused_*), each against the same
        # copy and unfused composition.
        for name in ["fused"] + sorted(k for k in v if k.startswith("fused_")):
            f = v[name]
            label = op if name == "fused" else f"{op} ({name})"
            frac = f["GB/s"] / c["GB/s"] * 100 if c.get("GB/s") else float("nan")
            fb, cb = f.get("GB/s_batched"), c.get("GB/s_batched")
            batched = f"{fb / cb * 100:.0f}%" if fb and cb else "-"
            if u:
                speed = u["real_time"] / f["real_time"]
                print(f"| {label} | {shape} | {f['real_time']:.1f} | {f['GB/s']:.0f} | "
                      f"{c['GB/s']:.0f} | {frac:.0f}% | {batched} | {u['real_time']:.1f} | "
                      f"{speed:.2f}x |")
            else:
                print(f"| {label} | {shape} | {f['real_time']:.1f} | {f['GB/s']:.0f} | "
                      f"{c['GB/s']:.0f} | {frac:.0f}% | {batched} | - | - |")
    sdpa = load_json(os.path.join(d, "sdpa.json")) or {}
    ref = {(r["shape"], r["backend"]): r for r in sdpa.get("results", []) if "tflops" in r}
    print("\n## Attention (B 2, 24 heads x 64, bf16)\n")
    print("| shape | joint_attention TFLOP/s | unfused TFLOP/s | cuDNN SDPA TFLOP/s | flash SDPA TFLOP/s | vs cuDNN (>= 70%) |")
    print("|---|---|---|---|---|---|")
    for (op, shape), v in sorted(rows.items()):
        if op != "joint_attention" or "fused" not in v:
            continue
        u = v.get("unfused", {}).get("TFLOP/s", float("nan"))
        cd, fl = ref.get((shape, "cudnn")), ref.get((shape, "flash"))
        for name in ["fused"] + sorted(k for k in v if k.startswith("fused_")):
            f = v[name]["TFLOP/s"]
            label = shape if name == "fused" else f"{shape} ({name})"
            ratio = f / cd["tflops"] * 100 if cd else float("nan")
            print(f"| {label} | {f:.0f} | {u:.0f} | {cd['tflops'] if cd else float('nan'):.0f} | "
                  f"{fl['tflops'] if fl else float('nan'):.0f} | {ratio:.0f}% |")
    print("\n## Library ops\n")
    print("| op | shape | us | TFLOP/s |")
    print("|---|---|---|---|")
    for (op, shape), v in sorted(rows.items()):
        for variant, b in v.items():
            if variant in ("cublaslt", "cudnn"):
                print(f"| {op} ({variant}) | {shape} | {b['real_time']:.1f} | {b.get('TFLOP/s', 0):.0f} |")
    if bench:
        for b in bench.get("benchmarks", []):
            if b["name"].startswith("copy/"):
                print(f"\nDevice-to-device copy, 1 GiB: {b['GB/s']:.0f} GB/s (read + write).")
    build = read(os.path.join(d, "build.log"))
    m = re.search(r"==== SASS summary\n(.*?)==== end SASS summary", build, re.S)
    if m and m.group(1).strip():
        print("\n## SASS (tools/sass_summary.py)\n")
        print(m.group(1).strip())
    runs = load_json_lines(os.path.join(d, "e2e.json"))
    print("\n## End to end (sd3-bench, random weights)\n")
    if runs:
        print("| fusions off | size | dtype | s/step (median) | it/s | VAE decode s | peak GPU GiB |")
        print("|---|---|---|---|---|---|---|")
        for r in runs:
            peak = (r.get("peak_device_bytes") or 0) / 2**30
            print(f"| {r.get('unfused') or 'none'} | {r.get('width')}x{r.get('height')} | "
                  f"{r.get('dtype')} | {r.get('step_s_median', float('nan')):.3f} | "
                  f"{r.get('it_per_s', float('nan')):.2f} | {r.get('vae_decode_s') or float('nan'):.3f} | "
                  f"{peak:.1f} |")
        for r in runs:
            for key, title, top in (("op_profile_step", "one sampling step", 12),
                                    ("op_profile_vae", "one VAE decode", 8)):
                prof = r.get(key)
                if not prof:
                    continue
                total = sum(o["ms"] for o in prof) or float("nan")
                step = ""
                if key == "op_profile_step" and r.get("profiled_step_s"):
                    step = (f"; the step took {r['profiled_step_s']:.3f} s with the profile on, "
                            f"{r.get('step_s_median', float('nan')):.3f} s without")
                print(f"\nOp profile, {title} (fusions off: {r.get('unfused') or 'none'}; "
                      f"{total:.1f} ms in all{step}):\n")
                print("| op | calls | ms | share |")
                print("|---|---|---|---|")
                for o in prof[:top]:
                    print(f"| {o['op']} | {o['calls']} | {o['ms']:.2f} | "
                          f"{o['ms'] / total * 100:.1f}% |")
        if len(runs) == 2 and runs[0].get("step_s_median") and runs[1].get("step_s_median"):
            print(f"\nAll fusions off / on, seconds per step: "
                  f"{runs[1]['step_s_median'] / runs[0]['step_s_median']:.2f}x")
    else:
        print("not run (see run.log)")


if __name__ == "__main__":
    main()
