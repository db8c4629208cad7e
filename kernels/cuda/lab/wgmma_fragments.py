#!/usr/bin/env python3
"""Lab check of joint_attention_wgmma.cu's index math, runnable without a GPU.

Two halves, kept apart on purpose:

1. A model of the hardware written from the PTX ISA 9.0 only (never from the kernel):
   - wgmma.mma_async shared-memory matrix descriptors (section 9.7.15.5.1.2.2: bit fields,
     matrix-descriptor-encode, base offset), the canonical K-major / MN-major layouts for every
     swizzle mode (9.7.15.5.1.2.1.3, as CuTe layouts with Swizzle<b,4,3>), imm-trans-a/b
     (9.7.15.5.1.2: 0 = K-major, 1 = M/N-major), the register fragments of A and D for
     m64nNk16 (9.7.15.5.1.1.1, figures 148 and 149), scale-d;
   - cp.async visibility: data of a cp.async group is readable by wgmma only after
     cp.async.wait_group retired the group, the writing threads executed
     fence.proxy.async.shared::cta, and a barrier followed;
   - shared memory as an array of float64 values, one per 16-bit element, NaN until written;
     every access is checked for alignment and bounds.
2. A transcription of the kernel (wgmma_attention_kernel and its helpers): the same loop
   structure, cp.async chunk->address expressions, descriptor construction, stage indices,
   wait_group counts, masking, online softmax, P packing, output rows and columns, evaluated
   for every thread of the CTA (numpy arrays over the thread index, "lane by lane").

Without rounding (float64 throughout, P not rounded to bf16) the result must equal plain
softmax attention to ~1e-12. Each entry of MUTATIONS breaks one kernel expression; every one
must be caught (a wrong result, or a hardware-model assertion such as reading shared memory
that has not landed). Needs numpy (Debian's python3-numpy for /usr/bin/python3). Usage:
    /usr/bin/python3 kernels/cuda/lab/wgmma_fragments.py
"""
import math

import numpy as np

# ==========================================================================================
# Hardware model (PTX ISA 9.0)
# ==========================================================================================

# Descriptor swizzle field (bits 62-63) -> b of Swizzle<b,4,3>, and the byte boundary on which
# the repeating pattern must start for base offset 0.
SWIZZLE_BITS = {0: 0, 1: 3, 2: 2, 3: 1}  # none, 128-byte, 64-byte, 32-byte
PATTERN_BYTES = {1: 1024, 2: 512, 3: 256}
ATOM_CHUNKS = {1: 8, 2: 4, 3: 2}  # 16-byte chunks per swizzle row


class HardwareError(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise HardwareError(msg)


def decode_desc(desc):
    """Matrix descriptor -> (start, lbo, sbo, base_offset, mode); reserved bits must be 0."""
    check(0 <= desc < 1 << 64, "descriptor is not a 64-bit value")
    reserved = (0x3 << 14) | (0x3 << 30) | (0x7 << 46) | (((1 << 10) - 1) << 52)
    check(desc & reserved == 0, f"descriptor {desc:#x}: reserved bits set")
    start = (desc & 0x3FFF) << 4  # matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    base = (desc >> 49) & 0x7
    mode = (desc >> 62) & 0x3
    return start, lbo, sbo, base, mode


def swizzle(addr, mode):
    """Swizzle<b,4,3> on byte addresses: bits [7, 7+b) XOR into bits [4, 4+b)."""
    b = SWIZZLE_BITS[mode]
    return addr ^ (((addr >> 7) & ((1 << b) - 1)) << 4)


def operand_addresses(desc, major, mn_size, k_size=16, elem_bytes=2):
    """Byte addresses [mn_size, k_size] of the elements (mn, k) of a wgmma shared-memory operand
    (A: mn = m; B: mn = n), from the canonical layouts, T = 16 / elem_bytes elements:
      K-major,  no swizzle:  ((8,m),(T,2k)):((1T,SBO),(1,LBO))
      K-major,  swizzled:    ((8,m),(T,2k)):((W T,SBO),(1,T))      W = 8 / 4 / 2 chunks
      MN-major, no swizzle:  ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
      MN-major, swizzled:    ((T,W,m),(8,k)):((1,T,LBO),(W T,SBO))
    then Swizzle<b,4,3> on the byte address."""
    start, lbo, sbo, base, mode = decode_desc(desc)
    check(start % 16 == 0, "matrix start address not 16-byte aligned")
    if mode != 0:
        # The case the documentation pins down: base offset 0 and the swizzle pattern starting
        # on its boundary. (Other starts depend on how the base offset and the swizzle combine,
        # which the model does not guess.)
        check(base == 0 and start % PATTERN_BYTES[mode] == 0,
              f"start {start:#x} not on a {PATTERN_BYTES.get(mode)}-byte pattern boundary "
              f"(base offset {base})")
    T = 16 // elem_bytes
    mn = np.arange(mn_size)[:, None]
    k = np.arange(k_size)[None, :]
    if major == "K":
        if mode == 0:
            off = (mn % 8) * 16 + (mn // 8) * sbo + (k % T) * elem_bytes + (k // T) * lbo
        else:
            W = ATOM_CHUNKS[mode]
            check(k_size // T <= W, "K extent wider than the swizzle atom")
            off = (mn % 8) * W * 16 + (mn // 8) * sbo + (k % T) * elem_bytes + (k // T) * 16
    else:
        if mode == 0:
            off = (mn % T) * elem_bytes + (mn // T) * sbo + (k % 8) * 16 + (k // 8) * lbo
        else:
            W = ATOM_CHUNKS[mode]
            off = ((mn % T) * elem_bytes + ((mn // T) % W) * 16 + (mn // (T * W)) * lbo
                   + (k % 8) * W * 16 + (k // 8) * sbo)
    return swizzle(start + off, mode)


def d_rowcol(n):
    """Accumulator D of m64nNk16 (figure 149): register i of warpgroup thread tid holds
    row 16 warp + lane/4 + 8 ((i/2) % 2), column 8 (i/4) + 2 (lane % 4) + i % 2."""
    tid = np.arange(128)[:, None]
    i = np.arange(n // 2)[None, :]
    warp, lane = tid // 32, tid % 32
    return 16 * warp + lane // 4 + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * (lane % 4) + i % 2


def a_rowcol():
    """A of m64nNk16 in registers, 16-bit (figure 148): element e = 2 reg + half (a0..a7) of
    warpgroup thread tid is row 16 warp + lane/4 + 8 (reg % 2), column 2 (lane % 4) + half +
    8 (reg / 2). Returns arrays [128, 4, 2]."""
    tid = np.arange(128)[:, None, None]
    reg = np.arange(4)[None, :, None]
    half = np.arange(2)[None, None, :]
    warp, lane = tid // 32, tid % 32
    return 16 * warp + lane // 4 + 8 * (reg % 2), 2 * (lane % 4) + half + 8 * (reg // 2)


class Cta:
    """Shared memory and the cp.async / proxy-fence / barrier visibility of one CTA. Every
    thread issues the same sequence of commits and waits (the kernel's are uniform), so group
    state is kept per CTA."""

    def __init__(self, raw_base, nbytes):
        self.lo, self.hi = raw_base, raw_base + nbytes
        self.val = np.full((self.hi + 1) // 2, np.nan)
        self.group = np.full((self.hi + 1) // 2, -1)  # cp.async group of the last write
        self.committed = 0  # groups committed so far; the open group has this id
        self.landed = -1  # groups <= landed have completed (cp.async.wait_group)
        self.fenced = -1  # ... and were fenced to the async proxy
        self.visible = -1  # ... and a barrier followed

    def cp_async16(self, dst, values):
        """cp.async.cg 16 bytes: values = 8 elements (zeros when src-size is 0)."""
        check(dst % 16 == 0, f"cp.async destination {dst:#x} not 16-byte aligned")
        check(self.lo <= dst and dst + 16 <= self.hi, f"cp.async destination {dst:#x} out of bounds")
        self.val[dst // 2:dst // 2 + 8] = values
        self.group[dst // 2:dst // 2 + 8] = self.committed

    def commit(self):
        self.committed += 1

    def wait_group(self, n):
        self.landed = max(self.landed, self.committed - 1 - n)

    def fence_proxy_async(self):
        self.fenced = self.landed

    def barrier(self):
        self.visible = self.fenced

    def wgmma_read(self, addrs):
        addrs = np.asarray(addrs)
        check(np.all(addrs % 2 == 0), "unaligned element address")
        check(np.all((addrs >= self.lo) & (addrs + 2 <= self.hi)), "wgmma operand out of bounds")
        g = self.group[addrs // 2]
        check(np.all(g >= 0), "wgmma reads shared memory never written")
        check(np.all(g <= self.visible), "wgmma reads cp.async data not yet landed, fenced to "
                                         "the async proxy and published by a barrier")
        return self.val[addrs // 2]


def wgmma(cta, d, n, a, desc_b, scale_d, trans_b, desc_a=None, trans_a=0):
    """wgmma.mma_async.m64nNk16 for one warpgroup: d [128, n/2] accumulators, A from registers
    (a [128, 4, 2], low half first) or from shared memory (desc_a), B from shared memory.
    Descriptors are per-thread arrays and must agree across the warpgroup."""
    for desc in (desc_a, desc_b):
        if desc is not None:
            check(len(set(np.asarray(desc).ravel().tolist())) == 1,
                  "descriptor differs across the warpgroup")
    rows, cols = a_rowcol()
    if desc_a is None:
        A = np.full((64, 16), np.nan)
        A[rows, cols] = a
    else:
        A = cta.wgmma_read(operand_addresses(int(np.asarray(desc_a).ravel()[0]),
                                             "MN" if trans_a else "K", 64))
    Bt = cta.wgmma_read(operand_addresses(int(np.asarray(desc_b).ravel()[0]),
                                          "MN" if trans_b else "K", n))  # [n, 16] = B^T
    drow, dcol = d_rowcol(n)
    out = A @ Bt.T
    if scale_d:
        D = np.full((64, n), np.nan)
        D[drow, dcol] = d
        out = out + D
    return out[drow, dcol]


def doc_examples_match():
    """The worked examples of section 9.7.15.5.1.2.1.3 ("exact layout" in elements, LBO/SBO in
    bytes) against operand_addresses. (The K-major 32-byte tf32 example lists k = 2 atoms with
    stride T, overlapping the next row; only its first atom, k < 8, is checked.)"""
    def desc(lbo, sbo, mode):
        return ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | (mode << 62)
    examples = [  # (major, elem bytes, mode, LBO, SBO, mn size, k size, exact offset(mn, k))
        ("K", 4, 0, 64 * 4, 32 * 4, 16, 16,
         lambda m, k: (m % 8) * 4 + (m // 8) * 32 + (k % 4) + (k // 4) * 64),
        ("K", 4, 3, 16, 64 * 4, 16, 8,
         lambda m, k: (m % 8) * 8 + (m // 8) * 64 + (k % 4) + (k // 4) * 4),
        ("MN", 2, 0, 128 * 2, 64 * 2, 16, 16,
         lambda m, k: (m % 8) + (m // 8) * 64 + (k % 8) * 8 + (k // 8) * 128),
        ("MN", 2, 3, 128 * 2, 256 * 2, 32, 16,
         lambda m, k: (m % 8) + ((m // 8) % 2) * 8 + (m // 16) * 128 + (k % 8) * 16
         + (k // 8) * 256),
        ("MN", 2, 2, 256 * 2, 512 * 2, 64, 16,
         lambda m, k: (m % 8) + ((m // 8) % 4) * 8 + (m // 32) * 256 + (k % 8) * 32
         + (k // 8) * 512),
    ]
    for major, eb, mode, lbo, sbo, mn_size, k_size, exact in examples:
        m, k = np.arange(mn_size)[:, None], np.arange(k_size)[None, :]
        got = operand_addresses(desc(lbo, sbo, mode), major, mn_size, k_size, eb)
        want = swizzle(exact(m, k) * eb, mode)
        assert np.array_equal(got, want), f"doc example {major}-major mode {mode} differs"


def fragment_maps_are_bijective():
    for n in (64, 128):
        r, c = np.broadcast_arrays(*d_rowcol(n))
        assert len(set(zip(r.ravel(), c.ravel()))) == 64 * n == r.size
    r, c = np.broadcast_arrays(*a_rowcol())
    assert len(set(zip(r.ravel(), c.ravel()))) == 64 * 16 == r.size


# ==========================================================================================
# Transcription of joint_attention_wgmma.cu
# ==========================================================================================

K_WARPGROUPS, K_THREADS, K_BM, K_BN, K_STAGES = 2, 256, 128, 64, 4
K_SLICE, K_VHALF = 64 * 32, 64 * 128
K_SWIZZLE128, K_SWIZZLE32 = 1, 3
K_DESC_STEP = 2048 >> 4

MUTATIONS = {
    "kmajor tile stored without its swizzle": "kmajor_noswz",
    "V tile swizzled with the wrong row bits": "v_swz_rows",
    "V read K-major (imm-trans-b 0)": "v_trans0",
    "K-major SBO of 512 bytes": "k_sbo",
    "V SBO of 512 bytes": "v_sbo",
    "k16 step of 64 in the start-address field": "desc_step",
    "Q rows loaded with a linear row index": "q_rows",
    "S_{j+1} read from the stage of tile j": "s_stage",
    "P_j V_j read from the stage of tile j + 1": "v_stage",
    "both warpgroups read warpgroup 0's queries": "q_wg",
    "prefetch into the stage of tile j + 1": "prefetch_stage",
    "loop waits for all but 2 cp.async groups": "wait_count",
    "no fence.proxy.async before the barrier": "no_fence",
    "P fragments a1 and a2 swapped": "pack_swap",
    "mask column from register bit 1": "mask_col",
    "row max reduced over lane ^ 1 only": "quad",
    "O not rescaled by alpha": "no_alpha",
    "output column i + 2t": "out_col",
    "output row without the warpgroup offset": "out_row",
}
MUTATIONS_D128 = {
    "V LBO of 4 KB (second 64-column half)": "v_lbo",
}


class Kernel:
    def __init__(self, D, mutation=None):
        self.D = D
        self.mut = mutation
        self.q_wg = 64 * D * 2  # WgSmem<D>::kQWg
        self.q_bytes = K_WARPGROUPS * self.q_wg
        self.k_bytes = K_BN * D * 2
        self.v_bytes = K_BN * D * 2
        self.alloc = self.q_bytes + K_STAGES * (self.k_bytes + self.v_bytes) + 1024

    # ---- address and descriptor helpers ----
    def kmajor_offset(self, r, cc):
        D = self.D
        swz = 0 if self.mut == "kmajor_noswz" else ((cc & 1) ^ ((r >> 2) & 1)) << 4
        return (r >> 6) * (64 * D * 2) + (cc >> 1) * K_SLICE + (r & 63) * 32 + swz

    def v_offset(self, j, cc):
        rows = ((j >> 1) & 7) if self.mut == "v_swz_rows" else (j & 7)
        return (cc >> 3) * K_VHALF + j * 128 + (((cc & 7) ^ rows) << 4)

    @staticmethod
    def make_desc(start, lbo, sbo, swz):
        return (((start & 0x3FFFF) >> 4) | (((lbo & 0x3FFFF) >> 4) << 16)
                | (((sbo & 0x3FFFF) >> 4) << 32) | (swz << 62))

    def kmajor_desc(self, slice0):
        sbo = 512 if self.mut == "k_sbo" else 8 * 32
        return self.make_desc(slice0, 16, sbo, K_SWIZZLE32)

    def v_desc(self, tile):
        sbo = 512 if self.mut == "v_sbo" else 8 * 128
        lbo = 4096 if self.mut == "v_lbo" else K_VHALF
        return self.make_desc(tile, lbo, sbo, K_SWIZZLE128)

    def step(self):
        return 64 if self.mut == "desc_step" else K_DESC_STEP

    # ---- loaders (every thread, every chunk) ----
    def load_kmajor(self, cta, dst, g, base, ld, row0, L, rows):
        D = self.D
        chunks = rows * D // 8
        assert chunks % K_THREADS == 0
        for c in range(chunks // K_THREADS):
            for tid in range(K_THREADS):
                i = tid + c * K_THREADS
                r = (i % rows) if self.mut == "q_rows" and rows == K_BM else (i // D) * 8 + (i & 7)
                cc = (i >> 3) % (D // 8)
                row = row0 + r
                vals = g[base + row * ld + cc * 8: base + row * ld + cc * 8 + 8] if row < L \
                    else np.zeros(8)
                cta.cp_async16(dst + self.kmajor_offset(r, cc), vals)

    def load_v(self, cta, dst, g, base, ld, row0, L):
        D = self.D
        chunks = K_BN * D // 8
        for c in range(chunks // K_THREADS):
            for tid in range(K_THREADS):
                i = tid + c * K_THREADS
                j, cc = i // (D // 8), i % (D // 8)
                row = row0 + j
                vals = g[base + row * ld + cc * 8: base + row * ld + cc * 8 + 8] if row < L \
                    else np.zeros(8)
                cta.cp_async16(dst + self.v_offset(j, cc), vals)

    # ---- per-thread softmax and packing (arrays over the warpgroup's 128 threads) ----
    def softmax_tile(self, s, n0, Lk, scale_log2, t, st):
        s = s.copy()
        i = np.arange(32)[None, :]
        if n0 + K_BN > Lk:
            bit = ((i >> 1) & 1) if self.mut == "mask_col" else (i & 1)
            col = n0 + 8 * (i >> 2) + 2 * t[:, None] + bit
            s[col >= Lk] = -np.inf
        mx_a = np.maximum.reduce([s[:, 0::4], s[:, 1::4]]).max(axis=1)
        mx_b = np.maximum.reduce([s[:, 2::4], s[:, 3::4]]).max(axis=1)
        lanes = np.arange(128)
        shifts = (1,) if self.mut == "quad" else (1, 2)
        for x in shifts:  # __shfl_xor_sync within the warp
            mx_a = np.maximum(mx_a, mx_a[lanes ^ x])
            mx_b = np.maximum(mx_b, mx_b[lanes ^ x])
        new_a = np.maximum(st["m_a"], mx_a * scale_log2)
        new_b = np.maximum(st["m_b"], mx_b * scale_log2)
        alpha_a, alpha_b = np.exp2(st["m_a"] - new_a), np.exp2(st["m_b"] - new_b)
        st["m_a"], st["m_b"] = new_a, new_b
        s[:, 0::4] = np.exp2(s[:, 0::4] * scale_log2 - new_a[:, None])
        s[:, 1::4] = np.exp2(s[:, 1::4] * scale_log2 - new_a[:, None])
        s[:, 2::4] = np.exp2(s[:, 2::4] * scale_log2 - new_b[:, None])
        s[:, 3::4] = np.exp2(s[:, 3::4] * scale_log2 - new_b[:, None])
        st["l_a"] = st["l_a"] * alpha_a + (s[:, 0::4] + s[:, 1::4]).sum(axis=1)
        st["l_b"] = st["l_b"] * alpha_b + (s[:, 2::4] + s[:, 3::4]).sum(axis=1)
        if self.mut == "no_alpha":
            alpha_a, alpha_b = np.ones(128), np.ones(128)
        return s, alpha_a, alpha_b

    def pack_p(self, s):
        """pf [128, 4 (kk), 4 (reg), 2 (lo, hi)] from S registers 8 kk .. 8 kk + 7."""
        pf = np.empty((128, 4, 4, 2))
        order = (0, 2, 1, 3) if self.mut == "pack_swap" else (0, 1, 2, 3)
        for kk in range(4):
            for reg, src in enumerate(order):
                pf[:, kk, reg, 0] = s[:, 8 * kk + 2 * src]
                pf[:, kk, reg, 1] = s[:, 8 * kk + 2 * src + 1]
        return pf

    # ---- one CTA (blockIdx.x = bx) of one (batch, head) ----
    def run_cta(self, glob, p, bx, h, b, raw_base):
        D = self.D
        cta = Cta(raw_base, self.alloc)
        base = (raw_base + 1023) & ~1023
        sQ, sK = base, base + self.q_bytes
        sV = sK + K_STAGES * self.k_bytes
        m0 = bx * K_BM
        qb, kb, vb = (b * p["q_sb"] + h * D, b * p["k_sb"] + h * D, b * p["v_sb"] + h * D)
        Lq, Lk = p["Lq"], p["Lk"]
        n_tiles = (Lk + K_BN - 1) // K_BN
        tid = np.arange(K_THREADS)
        wg_of, warp_of, lane = tid >> 7, (tid >> 5) & 3, tid & 31
        g_of, t_of = lane >> 2, lane & 3

        def load_tile(j, st):
            self.load_kmajor(cta, sK + st * self.k_bytes, glob["k"], kb, p["k_sl"], j * K_BN, Lk,
                             K_BN)
            self.load_v(cta, sV + st * self.v_bytes, glob["v"], vb, p["v_sl"], j * K_BN, Lk)

        # Prologue
        self.load_kmajor(cta, sQ, glob["q"], qb, p["q_sl"], m0, Lq, K_BM)
        for st in range(K_STAGES - 1):
            if st < n_tiles:
                load_tile(st, st)
            cta.commit()
        cta.wait_group(K_STAGES - 2)
        cta.fence_proxy_async()
        cta.barrier()

        wgs = []
        for w in range(K_WARPGROUPS):
            sel = wg_of == w
            # The descriptor as every thread of the warpgroup computes it (Python ints).
            wq = 0 if self.mut == "q_wg" else 1
            dq = np.array([self.kmajor_desc(sQ + wq * int(wgi) * self.q_wg)
                           for wgi in wg_of[sel]], dtype=object)
            s = np.zeros((128, 32))
            for kk in range(D // 16):
                s = wgmma(cta, s, 64, None, self.kmajor_desc(sK) + kk * self.step(), kk > 0, 0,
                          desc_a=dq + kk * self.step())
            st = {"m_a": np.full(128, -np.inf), "m_b": np.full(128, -np.inf),
                  "l_a": np.zeros(128), "l_b": np.zeros(128)}
            s, _, _ = self.softmax_tile(s, 0, Lk, p["scale_log2"], t_of[sel], st)
            wgs.append({"dq": dq, "o": np.zeros((128, D // 2)), "pf": self.pack_p(s), "st": st,
                        "t": t_of[sel]})

        for j in range(n_tiles - 1):
            cta.wait_group(2 if self.mut == "wait_count" else K_STAGES - 3)
            if self.mut != "no_fence":
                cta.fence_proxy_async()
            cta.barrier()
            if j + K_STAGES - 1 < n_tiles:
                stg = (j + 1) % K_STAGES if self.mut == "prefetch_stage" else \
                    (j + K_STAGES - 1) % K_STAGES
                load_tile(j + K_STAGES - 1, stg)
            cta.commit()
            for w in wgs:
                k_stage = j % K_STAGES if self.mut == "s_stage" else (j + 1) % K_STAGES
                dk = self.kmajor_desc(sK + k_stage * self.k_bytes)
                s = np.zeros((128, 32))
                for kk in range(D // 16):
                    s = wgmma(cta, s, 64, None, dk + kk * self.step(), kk > 0, 0,
                              desc_a=w["dq"] + kk * self.step())
                v_stage = (j + 1) % K_STAGES if self.mut == "v_stage" else j % K_STAGES
                dv = self.v_desc(sV + v_stage * self.v_bytes)
                for kk in range(K_BN // 16):
                    w["o"] = wgmma(cta, w["o"], D, w["pf"][:, kk], dv + kk * self.step(), 1,
                                   0 if self.mut == "v_trans0" else 1)
                s, alpha_a, alpha_b = self.softmax_tile(s, (j + 1) * K_BN, Lk, p["scale_log2"],
                                                        w["t"], w["st"])
                i = np.arange(D // 2)
                w["o"] = w["o"] * np.where((i % 4) < 2, alpha_a[:, None], alpha_b[:, None])
                w["pf"] = self.pack_p(s)
        for w in wgs:  # P V of the last tile
            dv = self.v_desc(sV + ((n_tiles - 1) % K_STAGES) * self.v_bytes)
            for kk in range(K_BN // 16):
                w["o"] = wgmma(cta, w["o"], D, w["pf"][:, kk], dv + kk * self.step(), 1,
                               0 if self.mut == "v_trans0" else 1)

        # Epilogue: quad sums of l, O / l for rows < Lq.
        out = {}
        lanes = np.arange(128)
        for wi, w in enumerate(wgs):
            l_a, l_b = w["st"]["l_a"].copy(), w["st"]["l_b"].copy()
            for x in (1, 2):
                l_a = l_a + l_a[lanes ^ x]
                l_b = l_b + l_b[lanes ^ x]
            for th in range(128):
                ctid = wi * 128 + th
                wg, warp, g, t = wg_of[ctid], warp_of[ctid], g_of[ctid], t_of[ctid]
                row_a = m0 + (0 if self.mut == "out_row" else wg * 64) + warp * 16 + g
                row_b = row_a + 8
                for i in range(0, D // 2, 4):
                    col = i + 2 * t if self.mut == "out_col" else 2 * i + 2 * t
                    for row, lo, hi, l in ((row_a, i, i + 1, l_a[th]), (row_b, i + 2, i + 3, l_b[th])):
                        if row < Lq:
                            for c, e in ((col, lo), (col + 1, hi)):
                                key = (row, c)
                                check(key not in out, f"output {key} written twice")
                                out[key] = w["o"][th, e] / l
        return out


def reference(q, k, v, scale):
    s = q @ k.T * scale
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=1, keepdims=True)) @ v


def run(D, Lq, Lk, B=1, H=1, seed=0, mutation=None, fused_qkv=False, raw_base=0x410):
    """Emulates attention() for q [B, Lq, H D], k/v [B, Lk, H D] (or q, k, v as column slices
    of one [B, L, 3 H D] tensor); returns max |error| against float64 attention."""
    rng = np.random.default_rng(seed)
    C = H * D
    if fused_qkv:
        assert Lq == Lk
        qkv = rng.standard_normal((B, Lq, 3 * C))
        flat = qkv.ravel()
        glob = {"q": flat, "k": flat[C:], "v": flat[2 * C:]}
        sb, sl = Lq * 3 * C, 3 * C
        p = {"q_sb": sb, "q_sl": sl, "k_sb": sb, "k_sl": sl, "v_sb": sb, "v_sl": sl}
        q, k, v = qkv[:, :, :C], qkv[:, :, C:2 * C], qkv[:, :, 2 * C:]
    else:
        q = rng.standard_normal((B, Lq, C))
        k = rng.standard_normal((B, Lk, C))
        v = rng.standard_normal((B, Lk, C))
        glob = {"q": q.ravel(), "k": k.ravel(), "v": v.ravel()}
        p = {"q_sb": Lq * C, "q_sl": C, "k_sb": Lk * C, "k_sl": C, "v_sb": Lk * C, "v_sl": C}
    scale = 1 / math.sqrt(D)
    p.update(Lq=Lq, Lk=Lk, scale_log2=scale * math.log2(math.e))
    kern = Kernel(D, mutation)
    err = 0.0
    for b in range(B):
        for h in range(H):
            got = {}
            for bx in range((Lq + K_BM - 1) // K_BM):
                got.update(kern.run_cta(glob, p, bx, h, b, raw_base))
            want = reference(q[b, :, h * D:(h + 1) * D], k[b, :, h * D:(h + 1) * D],
                             v[b, :, h * D:(h + 1) * D], scale)
            check(len(got) == Lq * D, f"{Lq * D - len(got)} output elements not written")
            g = np.array([[got[(i, c)] for c in range(D)] for i in range(Lq)])
            e = np.abs(g - want)
            err = max(err, np.inf if np.isnan(e).any() else e.max())
    return err


CASES = [  # (D, Lq, Lk, B, H, fused_qkv)
    (64, 77, 154 + 256, 1, 1, False),  # partial query tile, 7 key tiles, partial last tile
    (64, 1, 1, 1, 1, False),           # one query, one key
    (64, 130, 64, 2, 2, False),        # two CTAs, one exact key tile, batch and head strides
    (64, 150, 150, 2, 2, True),        # q, k, v as column slices of one fused qkv tensor
    (64, 20, 65, 1, 2, False),         # last key tile holds one key
    (128, 77, 154 + 256, 1, 1, False),
    (128, 9, 200, 2, 1, False),
]


def main():
    fragment_maps_are_bijective()
    doc_examples_match()
    print("hardware model: fragment maps bijective, the PTX ISA's layout examples reproduced")
    for D, Lq, Lk, B, H, fused in CASES:
        err = run(D, Lq, Lk, B, H, seed=Lq * 1000 + Lk, fused_qkv=fused)
        print(f"D={D} Lq={Lq} Lk={Lk} B={B} H={H}{' fused-qkv' if fused else ''}: "
              f"max |err| = {err:.2e}")
        assert err < 1e-11, "index math error"
    # Every deliberately broken expression must be caught.
    for D, muts in ((64, MUTATIONS), (128, {**MUTATIONS, **MUTATIONS_D128})):
        for name, mut in muts.items():
            try:
                # 409 keys: 7 tiles (every ring stage reused), an odd number in the last tile
                # (a mask that pairs columns wrongly shows).
                err = run(D, 77, 409, 1, 1, seed=7, mutation=mut)
                caught = f"max |err| = {err:.2e}" if err > 1e-3 else None
            except HardwareError as e:
                caught = f"model: {e}"
            print(f"  broken (D={D}) {name}: {caught or 'NOT CAUGHT'}")
            assert caught, f"mutation '{name}' not caught"
    print("wgmma fragment layouts, descriptors and pipeline indices consistent")


if __name__ == "__main__":
    main()
