#!/usr/bin/env python3
"""PyTorch baseline for bench/bench_mmdit_cpu.cpp: one SD3-medium-shaped MM-DiT forward on the CPU.

Same architecture and shapes as the C++ benchmark (depth 24, hidden 1536, 24 heads, batch 2,
32x32 latent -> 256 image tokens, 154 context tokens of width 4096, pooled 2048), written here as
a small self-contained module (nn.Linear / LayerNorm / scaled-dot-product attention), f32 random
weights N(0, 1/fan_in). Prints the median forward time of --runs timed forwards after one
warm-up, and the GFLOP/s for the same FLOP count the C++ benchmark reports.

    python3 tools/bench_mmdit_torch.py --threads 2 [--runs 3]

Needs about 8.5 GB of memory for the weights. Use a PyTorch whose BLAS is OpenBLAS or MKL (for
example Debian's python3-torch with libopenblas0-pthread), never the netlib reference BLAS.
"""
import argparse
import math
import os
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--runs", type=int, default=3, help="timed forwards (median reported)")
    p.add_argument("--depth", type=int, default=24)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--context-tokens", type=int, default=154)
    p.add_argument("--batch", type=int, default=2)
    return p.parse_args()


ARGS = parse_args()
# BLAS threads follow the same count (OpenBLAS reads this when torch loads it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HEAD_DIM = 64
EPS = 1e-6


def sdpa(q, k, v):
    """q, k, v [B, H, L, D] -> [B, H, L, D]."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v)
    # torch < 2.0: the same math.
    w = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1)
    return torch.matmul(w, v)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Attention(nn.Module):
    def __init__(self, dim, pre_only):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = None if pre_only else nn.Linear(dim, dim)


class Stream(nn.Module):
    """One stream's half of a joint block (adaLN modulation, attention projections, MLP)."""

    def __init__(self, dim, pre_only):
        super().__init__()
        self.pre_only = pre_only
        self.n_mods = 2 if pre_only else 6
        self.adaLN_modulation = nn.Linear(dim, self.n_mods * dim)
        self.attn = Attention(dim, pre_only)
        self.mlp = None if pre_only else Mlp(dim, 4 * dim)

    def pre_attention(self, x, silu_c):
        mods = self.adaLN_modulation(silu_c).chunk(self.n_mods, dim=1)
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=EPS), mods[0], mods[1])
        return self.attn.qkv(h), mods

    def post_attention(self, attn, x, mods):
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa.unsqueeze(1) * self.attn.proj(attn)
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=EPS), shift_mlp, scale_mlp)
        return x + gate_mlp.unsqueeze(1) * self.mlp(h)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class JointBlock(nn.Module):
    def __init__(self, dim, heads, last):
        super().__init__()
        self.heads = heads
        self.context_block = Stream(dim, pre_only=last)
        self.x_block = Stream(dim, pre_only=False)

    def forward(self, context, x, silu_c):
        B, Lc, D = context.shape
        cqkv, cmods = self.context_block.pre_attention(context, silu_c)
        xqkv, xmods = self.x_block.pre_attention(x, silu_c)
        qkv = torch.cat([cqkv, xqkv], dim=1)  # [B, Lc + T, 3D]
        L = qkv.shape[1]
        q, k, v = qkv.view(B, L, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh]
        attn = sdpa(q, k, v).transpose(1, 2).reshape(B, L, D)
        if self.context_block.pre_only:
            context = None
        else:
            context = self.context_block.post_attention(attn[:, :Lc], context, cmods)
        x = self.x_block.post_attention(attn[:, Lc:], x, xmods)
        return context, x


class Embedder(nn.Module):
    def __init__(self, din, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(din, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x):
        return self.mlp(x)


class MMDiT(nn.Module):
    def __init__(self, depth, patch=2, channels=16, adm=2048, context_in=4096, pos_max=192):
        super().__init__()
        dim = HEAD_DIM * depth
        self.dim, self.heads, self.patch, self.channels, self.pos_max = dim, depth, patch, channels, pos_max
        self.x_embedder = nn.Conv2d(channels, dim, patch, stride=patch)
        self.register_buffer("pos_embed", torch.empty(1, pos_max * pos_max, dim))
        self.t_embedder = Embedder(256, dim)
        self.y_embedder = Embedder(adm, dim)
        self.context_embedder = nn.Linear(context_in, dim)
        self.joint_blocks = nn.ModuleList(
            [JointBlock(dim, depth, last=(i == depth - 1)) for i in range(depth)])
        self.final_adaLN = nn.Linear(dim, 2 * dim)
        self.final_linear = nn.Linear(dim, patch * patch * channels)

    def timestep_embedding(self, t, dim=256, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, t, y, context):
        B, C, H, W = x.shape
        p, h, w = self.patch, H // self.patch, W // self.patch
        top, left = (self.pos_max - h) // 2, (self.pos_max - w) // 2
        pos = self.pos_embed.view(1, self.pos_max, self.pos_max, self.dim)[:, top:top + h, left:left + w]
        xt = self.x_embedder(x).flatten(2).transpose(1, 2) + pos.reshape(1, h * w, self.dim)
        c = self.t_embedder(self.timestep_embedding(t)) + self.y_embedder(y)
        silu_c = F.silu(c)
        ctx = self.context_embedder(context)
        for block in self.joint_blocks:
            ctx, xt = block(ctx, xt, silu_c)
        shift, scale = self.final_adaLN(silu_c).chunk(2, dim=1)
        tokens = self.final_linear(modulate(F.layer_norm(xt, xt.shape[-1:], eps=EPS), shift, scale))
        out = tokens.view(B, h, w, p, p, self.channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(B, self.channels, H, W)


def forward_flops(depth, B, T, Lc, patch=2, channels=16, adm=2048, context_in=4096):
    """Multiply-adds x 2 of matrix products and attention (as bench_mmdit_cpu.cpp counts)."""
    h = HEAD_DIM * depth
    m = 4 * h
    L = Lc + T
    f = T * channels * patch * patch * h + 256 * h + h * h + adm * h + h * h + Lc * context_in * h
    for i in range(depth):
        last = i == depth - 1
        f += h * h * ((2 if last else 6) + 6)
        f += Lc * (3 * h * h if last else 4 * h * h + 2 * h * m)
        f += T * (4 * h * h + 2 * h * m)
        f += 2 * L * L * h
    f += 2 * h * h + T * h * patch * patch * channels
    return 2.0 * f * B


@torch.no_grad()
def main():
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)
    # Skip the default (kaiming) initialisation: every tensor is drawn below.
    saved = nn.Linear.reset_parameters, nn.Conv2d.reset_parameters
    nn.Linear.reset_parameters = nn.Conv2d.reset_parameters = lambda self: None
    model = MMDiT(ARGS.depth)
    nn.Linear.reset_parameters, nn.Conv2d.reset_parameters = saved
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dim() >= 2 and name != "pos_embed":
            t.normal_(0.0, 1.0 / math.sqrt(t[0].numel()))
        elif name == "pos_embed":
            t.normal_(0.0, 1.0)
        else:
            t.normal_(0.0, 0.05)
    model.eval()
    B, S, Lc = ARGS.batch, ARGS.latent, ARGS.context_tokens
    x = torch.randn(B, 16, S, S)
    t = torch.full((B,), 750.0)
    y = torch.randn(B, 2048)
    context = torch.randn(B, Lc, 4096)
    model(x, t, y, context)  # warm-up
    times = []
    for _ in range(ARGS.runs):
        start = time.perf_counter()
        out = model(x, t, y, context)
        times.append(time.perf_counter() - start)
    assert out.shape == x.shape
    T = (S // 2) ** 2
    med = statistics.median(times)
    gflop = forward_flops(ARGS.depth, B, T, Lc) * 1e-9
    blas = [f for f in torch.__config__.show().replace(",", " ").split() if f.startswith("BLAS_INFO")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {' '.join(blas)}")
    print("runs: " + ", ".join(f"{s:.3f}" for s in times))
    print(f"median {med:.3f} s  ({gflop:.1f} GFLOP, {gflop / med:.1f} GFLOP/s)")


if __name__ == "__main__":
    sys.exit(main())
