#!/usr/bin/env python3
"""Emulates kernels/cuda/groupnorm_silu.cu's one-pass kernel (Note [One-pass group norm])
without a GPU: R resident blocks, each a state machine over the kernel's own steps (take a
ticket, load its chunk with the kernel's index expressions, reduce it as ShiftedSums and a
Chan merge, publish, wait for the group's count, merge the group's partials, normalise the
chunk it holds), interleaved in random orders. Checks, in float64 against numpy's group norm:
every output element written exactly once and equal to the reference (1e-12); no deadlock
whenever a group's chunk count is at most R (the host's condition), for many schedules; and
that the condition matters (a group with more chunks than resident blocks can deadlock).

Run: /usr/bin/python3 kernels/cuda/lab/groupnorm_onepass.py (numpy needed)."""
import random
import sys

import numpy as np

THREADS = 256  # kOneThreads


def welford_merge(a, b):
    n = a[0] + b[0]
    if n == 0:
        return a
    d = b[1] - a[1]
    f = b[0] / n
    return (n, a[1] + d * f, a[2] + b[2] + d * d * a[0] * f)


def shifted_sums(values):
    """ShiftedSums over one thread's values, in order (shift = its first value)."""
    if len(values) == 0:
        return (0.0, 0.0, 0.0)
    shift = values[0]
    d = values - shift
    n = float(len(values))
    s1, s2 = d.sum(), (d * d).sum()
    dm = s1 / n
    return (n, shift + dm, max(s2 - s1 * dm, 0.0))


class Block:
    """One resident block of the one-pass kernel; step() advances it by one kernel phase."""

    def __init__(self, k, broken=None):
        self.k = k
        self.broken = broken
        self.state = "ticket"
        self.done = False

    def step(self):
        k = self.k
        if self.state == "ticket":
            self.ticket = k.sync[0]
            k.sync[0] += 1
            if self.ticket >= k.total:
                self.done = True
                return True
            self.group = self.ticket // k.chunks
            self.begin = (self.ticket % k.chunks) * k.chunk_elems
            self.rem = k.group_elems - self.begin
            if self.broken == "rem":  # bound by the group, not by what is left of it
                self.rem = k.group_elems
            self.at = self.group * k.group_elems + self.begin
            self.state = "load"
            return True
        if self.state == "load":
            # Vector r of thread tid: offset (r * THREADS + tid) * kV within the chunk.
            self.held = {}
            for tid in range(THREADS):
                for r in range(k.vecs):
                    i = (r * THREADS + tid) * k.kv
                    if i < self.rem:
                        self.held[(tid, r)] = k.x[self.at + i:self.at + i + k.kv].copy()
            # Per-thread sums (vectors in r order), then the block's Chan merge.
            w = (0.0, 0.0, 0.0)
            for tid in range(THREADS):
                vals = [self.held[(tid, r)] for r in range(k.vecs) if (tid, r) in self.held]
                w = welford_merge(w, shifted_sums(np.concatenate(vals) if vals else np.array([])))
            k.partial[self.ticket] = w
            k.sync[1 + self.group] += 1  # after the partial store (the fence)
            self.state = "wait"
            return True
        if self.state == "wait":
            if k.sync[1 + self.group] < k.chunks:
                return False  # still spinning
            t = (0.0, 0.0, 0.0)
            for i in range(k.chunks):
                t = welford_merge(t, k.partial[self.group * k.chunks + i])
            mean, rstd = t[1], 1.0 / np.sqrt(t[2] / t[0] + k.eps)
            c0 = (self.group % k.G) * (k.C // k.G)
            for (tid, r), v in self.held.items():
                i = (r * THREADS + tid) * k.kv
                c = c0 + (self.begin + i) // k.S
                if self.broken == "channel":  # channel from the offset in the chunk only
                    c = c0 + i // k.S
                mul = k.w[c] * rstd
                add = k.b[c] - mean * mul
                dst = slice(self.at + i, self.at + i + k.kv)
                k.written[dst] += 1
                k.out[dst] = v * mul + add
            self.state = "ticket"
            return True
        raise AssertionError(self.state)


class Kernel:
    def __init__(self, B, C, G, S, kv, vecs, rng):
        self.B, self.C, self.G, self.S, self.kv, self.vecs = B, C, G, S, kv, vecs
        assert S % kv == 0
        self.group_elems = (C // G) * S
        self.chunk_elems = THREADS * vecs * kv
        self.chunks = -(-self.group_elems // self.chunk_elems)
        self.total = self.chunks * B * G
        self.eps = 1e-6
        self.x = rng.normal(2.0, 1.5, B * C * S)
        self.w = rng.normal(0.0, 1.0, C)
        self.b = rng.normal(0.0, 1.0, C)
        self.out = np.full(B * C * S, np.nan)
        self.written = np.zeros(B * C * S, dtype=np.int64)
        self.partial = [None] * self.total
        self.sync = [0] * (1 + B * G)

    def run(self, resident, sched_rng, broken=None):
        """Runs min(total, resident) blocks in a random interleaving; False on deadlock."""
        blocks = [Block(self, broken) for _ in range(min(self.total, resident))]
        while True:
            live = [b for b in blocks if not b.done]
            if not live:
                return True
            sched_rng.shuffle(live)
            if not any(b.step() for b in live[: sched_rng.randint(1, len(live))]):
                # None of the chosen ones moved: deadlock only if no live block can.
                if not any(b.state != "wait" or self.sync[1 + b.group] >= self.chunks
                           for b in live):
                    return False

    def reference(self):
        x = self.x.reshape(self.B, self.G, -1)
        mean = x.mean(axis=2, keepdims=True)
        var = x.var(axis=2, keepdims=True)
        y = ((x - mean) / np.sqrt(var + self.eps)).reshape(self.B, self.C, self.S)
        return (y * self.w[None, :, None] + self.b[None, :, None]).reshape(-1)


def check(B, C, G, S, kv, vecs, resident, seed, broken=None):
    k = Kernel(B, C, G, S, kv, vecs, np.random.default_rng(seed))
    assert k.chunks <= resident, "the host would not take this shape"
    ok = k.run(resident, random.Random(seed), broken)
    assert ok, f"deadlock: B{B} C{C} S{S} chunks {k.chunks} resident {resident}"
    assert (k.written == 1).all(), f"elements written {k.written.min()}..{k.written.max()} times"
    err = np.abs(k.out - k.reference()).max()
    assert err < 1e-12, f"max |err| {err:.3e}"
    return k.chunks, k.total, err


def main():
    cases = [
        # B, C, G, S, kV, kVecs, resident
        (1, 32, 32, 136 * 136, 8, 8, 6),     # two chunks per group, partial last one
        (1, 32, 32, 136 * 136, 4, 8, 5),     # f32 vectors: three chunks per group
        (1, 64, 32, 136 * 136, 8, 16, 2),    # 64 KB chunks: two per group, two resident
        (6, 96, 32, 40, 8, 8, 7),            # many tiny groups, tickets recycled
        (2, 64, 32, 8, 8, 8, 3),             # two vectors per group
        (1, 128, 32, 64 * 64, 8, 8, 1),      # one chunk per group, a single resident block
        (2, 128, 32, 96 * 96, 8, 8, 9),      # groups of 36864: 3 chunks, 9 resident
    ]
    for n, (B, C, G, S, kv, vecs, res) in enumerate(cases):
        for seed in range(3):
            chunks, total, err = check(B, C, G, S, kv, vecs, res, 100 * n + seed)
        print(f"ok: B{B} C{C} S{S} kV{kv} vecs{vecs}: {chunks} chunks/group, {total} tickets, "
              f"{res} resident, max |err| {err:.1e}")
    # Deliberately broken index expressions must fail.
    for broken in ("channel", "rem"):
        try:
            check(1, 64, 32, 136 * 136, 8, 8, 6, 1, broken)
        except (AssertionError, ValueError, IndexError) as e:
            print(f"ok: broken '{broken}' caught ({str(e)[:60]})")
        else:
            raise AssertionError(f"broken '{broken}' was not caught")
    # The host condition is needed: with fewer resident blocks than a group's chunks some
    # schedule deadlocks (all blocks waiting on one group whose last chunks nobody can take).
    k = Kernel(1, 64, 32, 136 * 136, 4, 8, np.random.default_rng(7))  # 5 chunks per group
    deadlocked = any(not Kernel(1, 64, 32, 136 * 136, 4, 8, np.random.default_rng(s)).run(
        k.chunks - 1, random.Random(s)) for s in range(20))
    assert deadlocked, "expected a deadlock with fewer resident blocks than chunks per group"
    print(f"ok: {k.chunks}-chunk groups with {k.chunks - 1} resident blocks deadlock, as the host "
          "check assumes")
    print("one-pass group norm: indices, statistics and forward progress consistent")


if __name__ == "__main__":
    sys.exit(main())
