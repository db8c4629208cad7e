#!/usr/bin/env python3
"""Lab check of joint_attention.cu's fragment index math, runnable without a GPU.

Emulates flash_attention_kernel's block (4 warps x 32 lanes) in plain Python float64: shared
tiles, ldmatrix (.x4 and .x4.trans) and mma.sync.m16n8k16 follow the PTX ISA's fragment
layouts, and the per-lane code transcribes the kernel's index expressions (tile loads, Q/K/V
fragment addresses, score masking, online softmax, P-as-A-operand packing, output rows and
columns). Without rounding, the result must equal plain softmax attention to ~1e-12; a wrong
lane->row or register->column mapping shows as an O(1) error. Usage:
    python3 kernels/cuda/lab/flash_fragments.py
"""
import math
import random

K_WARPS, BLOCK_M, BLOCK_N = 4, 64, 64
LOG2E = 1.4426950408889634


def ldmatrix_x4(smem, addr_of_lane, trans=False):
    """Returns regs[lane][i] = (lo, hi) for matrices i = 0..3 (rows from lanes 8i..8i+7)."""
    regs = [[None] * 4 for _ in range(32)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            if not trans:
                row = addr_of_lane(8 * i + g)
                regs[lane][i] = (smem[row + 2 * t], smem[row + 2 * t + 1])
            else:
                r0, r1 = addr_of_lane(8 * i + 2 * t), addr_of_lane(8 * i + 2 * t + 1)
                regs[lane][i] = (smem[r0 + g], smem[r1 + g])
    return regs


def mma16816(d, a, b0, b1):
    """d[lane] = 4 floats, a[lane] = 4 pairs, b0/b1[lane] = pairs: D += A B (warp-wide)."""
    A = [[0.0] * 16 for _ in range(16)]
    B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        A[g][2 * t], A[g][2 * t + 1] = a[lane][0]
        A[g + 8][2 * t], A[g + 8][2 * t + 1] = a[lane][1]
        A[g][2 * t + 8], A[g][2 * t + 9] = a[lane][2]
        A[g + 8][2 * t + 8], A[g + 8][2 * t + 9] = a[lane][3]
        B[2 * t][g], B[2 * t + 1][g] = b0[lane]
        B[2 * t + 8][g], B[2 * t + 9][g] = b1[lane]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for e in range(4):
            r = g + (8 if e >= 2 else 0)
            c = 2 * t + (e & 1)
            d[lane][e] += sum(A[r][k] * B[k][c] for k in range(16))


def flash_block(q, k, v, m0, D, Lq, Lk, scale, causal, bias, MT):
    """One block of the kernel (kMT = MT m-tiles per warp) for queries [m0, m0 + 64 MT);
    returns {(row, col): value}. Each (warp, m-tile) is emulated in turn: the K and V
    fragments it uses are the same for every m-tile, as in the kernel."""
    pitch = D + 8
    block_m = BLOCK_M * MT

    def load_tile(src, row0, L, rows):
        tile = [0.0] * (rows * pitch)
        for c in range(rows * D // 8):  # 16-byte chunks, as load_tile<T, D, kRows>
            r, col = c // (D // 8), (c % (D // 8)) * 8
            if row0 + r < L:
                for e in range(8):
                    tile[r * pitch + col + e] = src[row0 + r][col + e]
        return tile

    sQ = load_tile(q, m0, Lq, block_m)
    kv_end = min(Lk, m0 + block_m) if causal else Lk
    n_tiles = (kv_end + BLOCK_N - 1) // BLOCK_N
    out = {}
    for warp, mt in [(w, m) for w in range(K_WARPS) for m in range(MT)]:
        rbase = warp * 16 * MT + mt * 16  # the kernel's warp_row0 - m0 + mt * 16
        qf = [ldmatrix_x4(sQ, lambda l, kk=kk: (warp * 16 * MT + mt * 16 + (l & 15)) * pitch
                          + kk * 16 + (l >> 4) * 8) for kk in range(D // 16)]
        o = [[[0.0] * 4 for _ in range(D // 8)] for _ in range(32)]  # [lane][i][e]
        m_a, m_b = [-math.inf] * 32, [-math.inf] * 32
        l_a, l_b = [0.0] * 32, [0.0] * 32
        for tile in range(n_tiles):
            n0 = tile * BLOCK_N
            cK, cV = load_tile(k, n0, Lk, BLOCK_N), load_tile(v, n0, Lk, BLOCK_N)
            s = [[[0.0] * 4 for _ in range(BLOCK_N // 8)] for _ in range(32)]
            for kk in range(D // 16):
                for jp in range(BLOCK_N // 16):
                    kf = ldmatrix_x4(cK, lambda l: (jp * 16 + (l & 7) + ((l >> 4) << 3)) * pitch
                                     + kk * 16 + ((l >> 3) & 1) * 8)
                    for j, (r0, r1) in ((2 * jp, (0, 1)), (2 * jp + 1, (2, 3))):
                        d = [s[l][j] for l in range(32)]
                        mma16816(d, [qf[kk][l] for l in range(32)],
                                 [kf[l][r0] for l in range(32)], [kf[l][r1] for l in range(32)])
            edge = n0 + BLOCK_N > Lk or (causal and n0 + BLOCK_N - 1 > m0)
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                row_a = m0 + rbase + g
                row_b = row_a + 8
                for j in range(BLOCK_N // 8):
                    for e in range(4):
                        col = n0 + j * 8 + 2 * t + (e & 1)
                        row = row_a if e < 2 else row_b
                        if bias is not None:
                            bv = bias[row][col] if row < Lq and col < Lk else 0.0
                            x = (s[lane][j][e] * scale + bv) * LOG2E
                        else:
                            x = s[lane][j][e] * scale * LOG2E
                        if edge and (col >= Lk or (causal and col > row)):
                            x = -math.inf
                        s[lane][j][e] = x
            # Quad reductions: lanes 4g..4g+3 share rows.
            mx_a = [max([m_a[l]] + [max(s[l][j][0], s[l][j][1]) for j in range(8)]) for l in range(32)]
            mx_b = [max([m_b[l]] + [max(s[l][j][2], s[l][j][3]) for j in range(8)]) for l in range(32)]
            mx_a = [max(mx_a[(l & ~3) + i] for i in range(4)) for l in range(32)]
            mx_b = [max(mx_b[(l & ~3) + i] for i in range(4)) for l in range(32)]
            for lane in range(32):
                ref_a = 0.0 if mx_a[lane] == -math.inf else mx_a[lane]
                ref_b = 0.0 if mx_b[lane] == -math.inf else mx_b[lane]
                alpha_a, alpha_b = 2 ** (m_a[lane] - ref_a), 2 ** (m_b[lane] - ref_b)
                m_a[lane], m_b[lane] = mx_a[lane], mx_b[lane]
                sa = sb = 0.0
                for j in range(8):
                    for e in range(4):
                        s[lane][j][e] = 2 ** (s[lane][j][e] - (ref_a if e < 2 else ref_b))
                    sa += s[lane][j][0] + s[lane][j][1]
                    sb += s[lane][j][2] + s[lane][j][3]
                l_a[lane] = l_a[lane] * alpha_a + sa
                l_b[lane] = l_b[lane] * alpha_b + sb
                for i in range(D // 8):
                    o[lane][i] = [o[lane][i][0] * alpha_a, o[lane][i][1] * alpha_a,
                                  o[lane][i][2] * alpha_b, o[lane][i][3] * alpha_b]
            for kk in range(BLOCK_N // 16):
                pf = [((s[l][2 * kk][0], s[l][2 * kk][1]), (s[l][2 * kk][2], s[l][2 * kk][3]),
                       (s[l][2 * kk + 1][0], s[l][2 * kk + 1][1]),
                       (s[l][2 * kk + 1][2], s[l][2 * kk + 1][3])) for l in range(32)]
                for dp in range(D // 16):
                    vf = ldmatrix_x4(cV, lambda l: (kk * 16 + (l & 7) + ((l >> 3) & 1) * 8) * pitch
                                     + dp * 16 + (l >> 4) * 8, trans=True)
                    for i, (r0, r1) in ((2 * dp, (0, 1)), (2 * dp + 1, (2, 3))):
                        d = [o[l][i] for l in range(32)]
                        mma16816(d, pf, [vf[l][r0] for l in range(32)], [vf[l][r1] for l in range(32)])
        la = [sum(l_a[(l & ~3) + i] for i in range(4)) for l in range(32)]
        lb = [sum(l_b[(l & ~3) + i] for i in range(4)) for l in range(32)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            row_a = m0 + rbase + g
            row_b = row_a + 8
            for i in range(D // 8):
                col = i * 8 + 2 * t
                if row_a < Lq:
                    out[(row_a, col)] = o[lane][i][0] / la[lane]
                    out[(row_a, col + 1)] = o[lane][i][1] / la[lane]
                if row_b < Lq:
                    out[(row_b, col)] = o[lane][i][2] / lb[lane]
                    out[(row_b, col + 1)] = o[lane][i][3] / lb[lane]
    return out


def reference(q, k, v, D, Lq, Lk, scale, causal, bias):
    out = {}
    for i in range(Lq):
        xs = []
        for j in range(Lk):
            x = sum(q[i][c] * k[j][c] for c in range(D)) * scale
            if bias is not None:
                x += bias[i][j]
            xs.append(-math.inf if causal and j > i else x)
        m = max(xs)
        p = [math.exp(x - m) for x in xs]
        z = sum(p)
        for c in range(D):
            out[(i, c)] = sum(p[j] * v[j][c] for j in range(Lk)) / z
    return out


def check(D, Lq, Lk, causal, with_bias, seed, MT=1):
    rnd = random.Random(seed)
    mat = lambda r, c: [[rnd.gauss(0, 1) for _ in range(c)] for _ in range(r)]
    q, k, v = mat(Lq, D), mat(Lk, D), mat(Lk, D)
    bias = mat(Lq, Lk) if with_bias else None
    scale = 1 / math.sqrt(D)
    got = {}
    for m0 in range(0, Lq, BLOCK_M * MT):
        got.update(flash_block(q, k, v, m0, D, Lq, Lk, scale, causal, bias, MT))
    want = reference(q, k, v, D, Lq, Lk, scale, causal, bias)
    assert set(got) == set(want), "unwritten or extra output elements"
    err = max(abs(got[x] - want[x]) for x in want)
    print(f"D={D} kMT={MT} Lq={Lq} Lk={Lk} causal={causal} bias={with_bias}: max |err| = {err:.2e}")
    assert err < 1e-9, "fragment mapping error"


if __name__ == "__main__":
    check(64, 20, 77, False, False, 1)
    check(64, 70, 70, True, False, 2)
    check(64, 5, 130, False, True, 3)
    check(128, 17, 65, False, False, 4)
    check(64, 150, 150, True, False, 5, MT=2)
    check(64, 40, 77, False, True, 6, MT=2)
    print("fragment layouts consistent")
