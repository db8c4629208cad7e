#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention at the shapes of bench/cuda/kernels_bench.cpp's
joint_attention (SD3-medium: batch 2, 24 heads x 64, 1024 + 154 and 4096 + 154 tokens, bf16),
on the cuDNN and flash-attention backends: the reference that joint_attention's throughput
is set against (target: >= 70% of cuDNN at 1024x1024). Timed like kernels_bench: CUDA events
around each call, L2 flushed before each, the median of the runs. Writes JSON to --out.
tools/device_check.sh runs it in the same GPU session as the kernel benchmarks."""
import argparse
import json
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)
    results = []
    shapes = [("1024", 4096 + 154)] if args.quick else [("512", 1024 + 154), ("1024", 4096 + 154)]
    backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]
    for tag, L in shapes:
        B, H, D = 2, 24, 64
        q, k, v = (torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = 4.0 * B * H * L * L * D
        for name, backend in backends:
            try:
                with sdpa_kernel([backend]):
                    for _ in range(3):
                        F.scaled_dot_product_attention(q, k, v)
                    times = []
                    for _ in range(args.reps):
                        flush.zero_()
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()
                        F.scaled_dot_product_attention(q, k, v)
                        e.record()
                        e.synchronize()
                        times.append(s.elapsed_time(e))
                ms = statistics.median(times)
                results.append({"shape": tag, "L": L, "backend": name, "ms": ms,
                                "tflops": flops / (ms * 1e-3) / 1e12})
                print(f"sdpa {name:6s} {tag:5s} L={L}: {ms:.3f} ms, {flops / (ms * 1e-3) / 1e12:.1f} TFLOP/s")
            except Exception as exc:  # a backend missing from this build of PyTorch
                results.append({"shape": tag, "L": L, "backend": name, "error": str(exc)[:300]})
                print(f"sdpa {name} {tag}: unavailable: {exc}", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
