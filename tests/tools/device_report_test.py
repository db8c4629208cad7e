#!/usr/bin/env python3
"""tools/device_report.py on outputs shaped like a real device_check.sh run (benchmark names
as Google Benchmark 1.7 writes them, with /min_time:.../manual_time; a benchmark skipped with
an error; SDPA and e2e results; a SASS summary in build.log): every table must have its rows.
Run by ctest (label unit); no GPU needed."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench(name, us, gbs=None, tflops=None, batched=None):
    b = {"name": f"{name}/min_time:0.050/manual_time", "run_name": f"{name}/min_time:0.050",
         "real_time": us, "time_unit": "us"}
    if gbs is not None:
        b["GB/s"] = gbs
        b["GB/s_batched"] = batched or gbs
    if tflops is not None:
        b["TFLOP/s"] = tflops
    return b


def main():
    d = tempfile.mkdtemp()
    benches = [
        bench("adaln_modulate/fused/1024", 20.0, 2600), bench("adaln_modulate/fused_warp/1024", 18.0, 2900),
        bench("adaln_modulate/unfused/1024", 60.0, 870), bench("adaln_modulate/copy/1024", 17.0, 3000),
        bench("joint_attention/fused/1024", 700.0, tflops=300), bench("joint_attention/fused_wgmma/1024", 450.0, tflops=470),
        bench("joint_attention/unfused/1024", 2000.0, tflops=110),
        bench("linear_gelu/cublaslt/1024", 300.0, tflops=600), bench("copy/1GiB", 700.0, 3050),
        {"name": "euler_step/fused/512/min_time:0.050/manual_time", "error_occurred": True,
         "error_message": "boom"},
    ]
    with open(os.path.join(d, "bench.json"), "w") as f:
        json.dump({"benchmarks": benches}, f)
    with open(os.path.join(d, "sdpa.json"), "w") as f:
        json.dump({"results": [{"shape": "1024", "backend": "cudnn", "tflops": 500}]}, f)
    with open(os.path.join(d, "e2e.json"), "w") as f:
        f.write(json.dumps({"unfused": "", "width": 1024, "height": 1024, "dtype": "f16",
                            "step_s_median": 0.08, "it_per_s": 12.5, "vae_decode_s": 0.4,
                            "peak_device_bytes": 20 << 30, "profiled_step_s": 0.081,
                            "op_profile_step": [{"op": "linear", "calls": 170, "ms": 60.0},
                                                {"op": "attention", "calls": 24, "ms": 15.0}],
                            "op_profile_vae": [{"op": "conv2d", "calls": 35, "ms": 300.0}]})
                + "\n")
        f.write(json.dumps({"unfused": "adaln,attn,groupnorm,euler", "width": 1024, "height": 1024, "dtype": "f16",
                            "step_s_median": 0.1, "it_per_s": 10.0, "vae_decode_s": 0.5,
                            "peak_device_bytes": 22 << 30}) + "\n")
    with open(os.path.join(d, "run.log"), "w") as f:
        f.write("date: 2026-11-26T00:00:00Z\n[device_check +1s] card: NVIDIA H100 80GB HBM3\n")
    with open(os.path.join(d, "tests.log"), "w") as f:
        f.write("[  PASSED  ] 57 tests.\n")
    with open(os.path.join(d, "build.log"), "w") as f:
        f.write("==== SASS summary\n| kernel family | instantiations |\n|---|---|\n"
                "| wgmma_attention_kernel | 4 |\n==== end SASS summary\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "device_report.py"), d],
                         capture_output=True, text=True, check=True).stdout
    expect = [
        "card: NVIDIA H100 80GB HBM3",
        "57 passed",
        "skipped with an error: 1",
        "euler_step/fused/512: boom",
        "| adaln_modulate | 1024 | 20.0 | 2600 | 3000 | 87% |",
        "| adaln_modulate (fused_warp) | 1024 | 18.0 | 2900 | 3000 | 97% |",
        "| 1024 | 300 | 110 | 500 |",
        "| 1024 (fused_wgmma) | 470 | 110 | 500 |",
        "linear_gelu (cublaslt) | 1024 | 300.0 | 600",
        "Device-to-device copy, 1 GiB: 3050 GB/s",
        "| wgmma_attention_kernel | 4 |",
        "All fusions off / on, seconds per step: 1.25x",
        "Op profile, one sampling step (fusions off: none; 75.0 ms in all; the step took "
        "0.081 s with the profile on, 0.080 s without)",
        "| adaln,attn,groupnorm,euler | 1024x1024 | f16 | 0.100 |",
        "| linear | 170 | 60.00 | 80.0% |",
        "| conv2d | 35 | 300.00 | 100.0% |",
    ]
    missing = [e for e in expect if e not in out]
    if missing:
        print(out)
        print("missing from the report:", *missing, sep="\n  ")
        return 1
    print("device_report: every section has its rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
