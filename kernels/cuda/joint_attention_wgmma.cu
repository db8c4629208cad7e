// joint_attention_wgmma: the flash-attention forward of joint_attention.cu for Hopper (sm_90a),
// with both products on warpgroup MMA (wgmma.mma_async) instead of warp-level mma.sync.
//
//   O[b, i, h, :] = sum_j P[i, j] V[b, j, h, :],  P = softmax_j(q_i . k_j * scale)
//
// Scope: bf16/f16, head dim 64 or 128, no causal mask, no bias, scale > 0: the MMDiT's joint
// attention over [context; image] tokens. Every other case stays on the mma.sync kernel.
// FLOPs 4 B H Lq Lk D; bytes at best 2 B (Lq + Lk) H D sizeof(T) x 2, as joint_attention.cu.
// Selected at run time (Note [Flash kernel selection]); the default stays mma.sync until a GPU
// session has measured this kernel. Status: compiled and emulated here, never run on a GPU.
//
// Note [Warpgroup flash attention]
// A CTA is two warpgroups (256 threads); warpgroup w owns query rows [64 w, 64 w + 64) of the
// CTA's 128 (wgmma's M is 64), so every K/V tile in shared memory serves 128 queries. Keys are
// walked in tiles of kBN = 64; K and V tiles live in a ring of kStages = 4 stages filled by all
// 256 threads with cp.async (16 bytes per instruction, rows past Lk zero-filled). Per tile a
// warpgroup computes
//   S = Q K^T    D/16 x wgmma m64n64k16, A = Q and B = K both from shared memory (K-major),
//                f32 accumulators in registers (32 per thread);
//   online softmax on S in registers (base 2, row max and sum over the 4 lanes of a row: a
//                warp's share of the m64nN accumulator is the m16n8 C layout of mma.sync
//                repeated along N, Note [wgmma fragments]);
//   O += P V     4 x wgmma m64nDk16, A = P from registers (the accumulator layout of two
//                adjacent 8-column blocks is the A register layout, so P never touches shared
//                memory), B = V from shared memory read N-major (imm-trans-b = 1).
// Pipelining inside a warpgroup: iteration j issues S_{j+1} = Q K_{j+1}^T, then P_j V_j, waits
// for S_{j+1} only (wgmma.wait_group 1), and runs the softmax of S_{j+1} on the CUDA cores while
// P_j V_j runs on the tensor cores; it then waits for P_j V_j, rescales O and packs P_{j+1}.
// Because K_{j+1} is consumed one iteration early, tile j + 1 must have landed at iteration j:
// with 4 stages, iteration j refills the stage of tile j - 1 with tile j + 3 and waits for tile
// j + 1, so each load has two iterations to arrive. At D = 64 a CTA needs <= 128 registers per
// thread and 81 KB of shared memory, so two CTAs share an SM and their softmax phases (the
// exp2 unit is about as busy as the tensor cores at D = 64) interleave with each other's MMAs.
// Not done (yet): TMA loads and a producer warpgroup, explicit ping-pong scheduling of the
// two warpgroups, a shared-memory-staged 16-byte output store.
//
// Note [wgmma shared-memory layouts]
// Facts from the PTX ISA 9.0 (sections 9.7.15.5.1.2 "Shared Memory Matrix Layout",
// 9.7.15.5.1.2.1.1-3 "Leading/Stride Dimension Byte Offset", "Canonical Layouts",
// 9.7.15.5.1.2.2 "Matrix Descriptor Format"):
//  - descriptor bits [0,14) = enc(start address), [16,30) = enc(leading dimension byte offset,
//    LBO), [32,46) = enc(stride dimension byte offset, SBO), [49,52) = base offset, [62,64) =
//    swizzle mode (0 none, 1 128-byte, 2 64-byte, 3 32-byte); enc(x) = (x & 0x3FFFF) >> 4.
//    The base offset is 0 when the swizzle pattern starts on a 1024 / 512 / 256-byte boundary
//    (128 / 64 / 32-byte modes). Start addresses must be 16-byte aligned.
//  - imm-trans-a / imm-trans-b = 0 means K-major A / B, 1 means M- / N-major (16-bit types only).
//  - canonical layouts, T = 8 elements (16 bytes) of a 16-bit type, as CuTe layouts
//    (mn, k) -> offset, the swizzle functor Swizzle<b,4,3> applied on top:
//      K-major,  32-byte swizzle: ((8,m),(T,2k)):((2T,SBO),(1,T))       Swizzle<1,4,3>
//      MN-major, 128-byte swizzle: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))  Swizzle<3,4,3>
//    K-major: LBO unused for swizzled layouts ("assumed to be 1"); SBO = offset from one group
//    of 8 rows to the next. MN-major swizzled: LBO = offset between groups of
//    (swizzle bytes / 16) 16-byte columns along MN, SBO = offset between groups of 8 along K.
// Read: Swizzle<b,4,3> XORs byte-address bits [7, 7 + b) into bits [4, 4 + b), i.e. the 16-byte
// chunk index within a swizzle row is XORed with the row index (mod 2^b) - the same pattern
// as TMA's swizzle modes (the table writes the functor next to element-unit layouts; taken in
// bytes, which is the only reading in which a 16-byte chunk stays whole).
// This kernel uses:
//  - Q and K tiles (K-major: d contiguous), 32-byte swizzle: each k16 slice of a 64-row tile is
//    its own 2 KB sub-tile of 64 rows x 32 bytes; SBO = 256 (8 rows x 32 B), LBO field 1. Chunk
//    (row r, half h) of a slice sits at r * 32 + ((h ^ ((r >> 2) & 1)) << 4).
//  - V tiles (N-major: d contiguous), 128-byte swizzle: key row j of each 64-column half holds
//    d values 64c .. 64c + 63 in 128 bytes, chunk ch at j * 128 + ((ch ^ (j & 7)) << 4); SBO =
//    1024 (8 keys), LBO = 8 KB (the second 64-column half when D = 128).
// Every descriptor's start address is on its swizzle pattern's boundary (2 KB slices, 2 KB
// k16 steps of V, all tile bases 1024-aligned), so the base offset is 0 and no question arises
// of whether the swizzle is taken from the absolute address or from the start address: both
// readings agree. (CuTe, for one, swizzles absolute byte addresses and sets base offset 0.) (The common alternative, 128-byte-swizzled K-major tiles with k16 steps 32
// bytes apart inside a swizzle row, depends on the absolute-address reading.)
//
// Note [wgmma fragments]
// PTX ISA 9.0 section 9.7.15.5.1.1.1, figures 148 (A) and 149 (D), for thread 32 w + l of the
// warpgroup (w = warp in the warpgroup, g = l / 4, t = l % 4):
//  - D (f32, m64nNk16): register i holds row 16 w + g + 8 ((i / 2) % 2), column
//    8 (i / 4) + 2 t + (i % 2).
//  - A (16-bit, registers): four b32 registers of two elements (low half = lower column):
//    a0 row 16 w + g, columns 2t, 2t+1; a1 row + 8; a2 row 16 w + g, columns 8 + 2t, 9 + 2t;
//    a3 row + 8, columns 8 + 2t, 9 + 2t.
// So S registers 8kk .. 8kk + 7 (key columns 16 kk .. 16 kk + 15) pack, in pairs, into the A
// fragment of the kk-th k16 step of P V.
// The whole index math is checked without a GPU by kernels/cuda/lab/wgmma_fragments.py.
//
// Resources (ptxas -v, sm_90a, nvcc 13.0, bf16 and f16 alike): D = 64: 124 registers, 82,944 B
// dynamic shared memory (WgSmem<64>::kAlloc), 2 CTAs per SM; D = 128: 191 registers, 164,864
// B, 1 CTA per SM. No spills, no stack frame, no C7520 "wgmma serialized" warning.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "engine/device.h"
#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kWarpgroups = 2;
constexpr int kThreads = 128 * kWarpgroups;
constexpr int kBM = 64 * kWarpgroups;  // queries per CTA
constexpr int kBN = 64;                // keys per tile
constexpr int kStages = 4;             // K/V ring (see Note [Warpgroup flash attention])

// Shared memory (bytes from a 1024-aligned base): Q [kWarpgroups][D/16 slices], then K
// [kStages][D/16 slices], then V [kStages][D/64 halves].
template <int D>
struct WgSmem {
  static constexpr int kQWg = 64 * D * 2;  // one warpgroup's 64 x D queries
  static constexpr int kQ = kWarpgroups * kQWg;
  static constexpr int kK = kBN * D * 2;  // one K stage
  static constexpr int kV = kBN * D * 2;  // one V stage
  static constexpr int kBytes = kQ + kStages * (kK + kV);
  static constexpr int kAlloc = kBytes + 1024;  // the dynamic base is rounded up to 1024
};

// Device code exists only in sm_90a passes (wgmma.mma_async needs the arch-specific target);
// other passes compile the kernel with an empty body, never launched there (Note [Flash kernel
// selection]).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kSlice = 64 * 32;   // one k16 slice of a 64-row K-major tile, bytes
constexpr int kVHalf = 64 * 128;  // 64 keys x 64 d values of V, bytes
constexpr uint64_t kSwizzle128 = 1, kSwizzle32 = 3;

// Byte offset of 16-byte chunk cc (d values 8 cc .. 8 cc + 7) of row r in a K-major tile of
// 64-row blocks (Q: r < 128, K: r < 64), per Note [wgmma shared-memory layouts].
template <int D>
__device__ __forceinline__ uint32_t kmajor_offset(int r, int cc) {
  return (r >> 6) * (64 * D * 2) + (cc >> 1) * kSlice + (r & 63) * 32 +
         (((cc & 1) ^ ((r >> 2) & 1)) << 4);
}
// Byte offset of chunk cc of key row j in a V tile.
__device__ __forceinline__ uint32_t v_offset(int j, int cc) {
  return (cc >> 3) * kVHalf + j * 128 + (((cc & 7) ^ (j & 7)) << 4);
}

// Matrix descriptor (Note [wgmma shared-memory layouts]); addresses and offsets in bytes.
__device__ __forceinline__ uint64_t make_desc(uint32_t start, uint32_t lbo, uint32_t sbo,
                                              uint64_t swizzle) {
  return static_cast<uint64_t>((start & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (swizzle << 62);
}
// Descriptors of K-major (Q, K) slices and V tiles; consecutive k16 steps add kSlice >> 4 =
// 128 (Q, K) or 2048 >> 4 = 128 (V: 16 keys x 128 B) to the start-address field.
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t slice0) {
  return make_desc(slice0, 16, 8 * 32, kSwizzle32);
}
__device__ __forceinline__ uint64_t v_desc(uint32_t tile) {
  return make_desc(tile, kVHalf, 8 * 128, kSwizzle128);
}
constexpr uint64_t kDescStep = 2048 >> 4;


// Makes this thread's generic-proxy shared-memory writes (cp.async) visible to the async proxy
// that wgmma reads shared memory through; executed by the writers before the barrier.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Orders this warpgroup's register accesses before the wgmma.mma_async that follow.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The compiler sees a wgmma asm statement as finished when it returns; these empty statements
// pin accumulator and fragment registers in place around wgmma.fence and wgmma.wait_group so no
// read or write of them moves across (the async MMAs own them in between).
template <int N>
__device__ __forceinline__ void pin(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void pin(uint32_t (&r)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

#define SD3_ACC8(d, i)                                                                        \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define SD3_REGS32                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SD3_REGS64                                                                             \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
  "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
  "%55, %56, %57, %58, %59, %60, %61, %62, %63}"

// S (64 x 64 f32) = (accumulate ? S : 0) + A B: A = 64 x 16 K-major, B = 16 x 64 K-major,
// both from shared memory.
#define SD3_WGMMA_SS_N64(TY)                                                 \
  asm volatile(                                                              \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                           \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " SD3_REGS32 \
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"                                      \
      : SD3_ACC8(d, 0), SD3_ACC8(d, 8), SD3_ACC8(d, 16), SD3_ACC8(d, 24)     \
      : "l"(da), "l"(db), "r"(accumulate))
template <class T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db,
                                             int accumulate) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    SD3_WGMMA_SS_N64("bf16");
  } else {
    SD3_WGMMA_SS_N64("f16");
  }
}

// O (64 x N f32) += A B: A = 64 x 16 from registers, B = 16 x N from shared memory, N-major.
#define SD3_WGMMA_RS_N64(TY)                                                 \
  asm volatile(                                                              \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                           \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " SD3_REGS32 \
      ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                        \
      : SD3_ACC8(d, 0), SD3_ACC8(d, 8), SD3_ACC8(d, 16), SD3_ACC8(d, 24)     \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
#define SD3_WGMMA_RS_N128(TY)                                                              \
  asm volatile(                                                                            \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                         \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " SD3_REGS64              \
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                      \
      : SD3_ACC8(d, 0), SD3_ACC8(d, 8), SD3_ACC8(d, 16), SD3_ACC8(d, 24), SD3_ACC8(d, 32), \
        SD3_ACC8(d, 40), SD3_ACC8(d, 48), SD3_ACC8(d, 56)                                  \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))
template <class T>
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    SD3_WGMMA_RS_N64("bf16");
  } else {
    SD3_WGMMA_RS_N64("f16");
  }
}
template <class T>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    SD3_WGMMA_RS_N128("bf16");
  } else {
    SD3_WGMMA_RS_N128("f16");
  }
}

// Rows [row0, row0 + kRows) of a [L, D] slice (token stride ld elements) into a K-major tile
// at smem byte address dst; rows at or past L are zero-filled. Chunk i of the tile is row
// 8 (i / D) + i % 8, chunk column (i / 8) % (D / 8): eight consecutive threads write one chunk
// column of eight rows (eight distinct bank groups after the swizzle) and a warp reads 64
// contiguous bytes from each of eight rows.
template <class T, int D, int kRows>
__device__ __forceinline__ void load_kmajor(uint32_t dst, const T* g, int64_t ld, int row0, int L) {
  constexpr int kChunks = kRows * D / 8;
  static_assert(kChunks % kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int c = 0; c < kChunks / kThreads; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    const int r = (i / D) * 8 + (i & 7), cc = (i >> 3) % (D / 8);
    const int row = row0 + r;
    const bool ok = row < L;
    cp_async16(dst + kmajor_offset<D>(r, cc), ok ? g + static_cast<int64_t>(row) * ld + cc * 8 : g,
               ok ? 16 : 0);
  }
}
// Keys [row0, row0 + kBN) of V into a V tile: eight consecutive threads write one 128-byte
// swizzle row (distinct banks) from 128 contiguous bytes.
template <class T, int D>
__device__ __forceinline__ void load_v(uint32_t dst, const T* g, int64_t ld, int row0, int L) {
  constexpr int kChunks = kBN * D / 8;
  static_assert(kChunks % kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int c = 0; c < kChunks / kThreads; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    const int j = i / (D / 8), cc = i % (D / 8);
    const int row = row0 + j;
    const bool ok = row < L;
    cp_async16(dst + v_offset(j, cc), ok ? g + static_cast<int64_t>(row) * ld + cc * 8 : g,
               ok ? 16 : 0);
  }
}

// Online softmax of one S tile (keys n0 .. n0 + 63) for this thread's rows a = g and b = g + 8
// of its warp: masks keys >= Lk, updates the running maxima m (log2 units, scaled) and partial
// sums l, overwrites s with exp2(s * scale_log2 - m), returns the rescale factors of O.
// m starts at -inf; tile 0 always holds key 0, so after it every row maximum is finite.
__device__ __forceinline__ void softmax_tile(float (&s)[32], int n0, int Lk, float scale_log2,
                                             int t, float& m_a, float& m_b, float& l_a, float& l_b,
                                             float& alpha_a, float& alpha_b) {
  if (n0 + kBN > Lk) {
#pragma unroll
    for (int i = 0; i < 32; ++i)
      if (n0 + 8 * (i >> 2) + 2 * t + (i & 1) >= Lk) s[i] = -INFINITY;
  }
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int i = 0; i < 32; i += 4) {
    mx_a = fmaxf(mx_a, fmaxf(s[i], s[i + 1]));
    mx_b = fmaxf(mx_b, fmaxf(s[i + 2], s[i + 3]));
  }
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  // scale_log2 > 0, so the maximum of the scaled scores is the scaled maximum.
  const float new_a = fmaxf(m_a, mx_a * scale_log2), new_b = fmaxf(m_b, mx_b * scale_log2);
  alpha_a = exp2f(m_a - new_a);
  alpha_b = exp2f(m_b - new_b);
  m_a = new_a;
  m_b = new_b;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int i = 0; i < 32; i += 4) {
    s[i] = exp2f(fmaf(s[i], scale_log2, -new_a));
    s[i + 1] = exp2f(fmaf(s[i + 1], scale_log2, -new_a));
    s[i + 2] = exp2f(fmaf(s[i + 2], scale_log2, -new_b));
    s[i + 3] = exp2f(fmaf(s[i + 3], scale_log2, -new_b));
    sum_a += s[i] + s[i + 1];
    sum_b += s[i + 2] + s[i + 3];
  }
  l_a = l_a * alpha_a + sum_a;
  l_b = l_b * alpha_b + sum_b;
}

// P's A fragments for the four k16 steps of P V: registers 8 kk .. 8 kk + 7 of S.
template <class T>
__device__ __forceinline__ void pack_p(uint32_t (&pf)[4][4], const float (&s)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    pf[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
    pf[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
    pf[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
    pf[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
  }
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <class T, int D>
__global__ void __launch_bounds__(kThreads, D == 64 ? 2 : 1)
    wgmma_attention_kernel(const WgmmaAttnParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = WgSmem<D>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = base, sK = base + S::kQ, sV = sK + kStages * S::kK;

  const int m0 = blockIdx.x * kBM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + static_cast<int64_t>(h) * D;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + static_cast<int64_t>(h) * D;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + static_cast<int64_t>(h) * D;
  const int n_tiles = (p.Lk + kBN - 1) / kBN;

  // Prologue: Q with tile 0 as one cp.async group, tiles 1 and 2 as one group each.
  load_kmajor<T, D, kBM>(sQ, q, p.q_sl, m0, p.Lq);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles) {
      load_kmajor<T, D, kBN>(sK + st * S::kK, k, p.k_sl, st * kBN, p.Lk);
      load_v<T, D>(sV + st * S::kV, v, p.v_sl, st * kBN, p.Lk);
    }
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();  // Q and tile 0 have landed
  fence_proxy_async();
  __syncthreads();

  const uint64_t dq = kmajor_desc(sQ + wg * S::kQWg);
  float s[32], o[D / 2];
  uint32_t pf[4][4];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;  // read by the asm, ignored by scale-d = 0
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f, alpha_a, alpha_b;

  // S_0, its softmax and P_0 (O is still zero: no rescale).
  pin(s);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    wgmma_ss_n64<T>(s, dq + kk * kDescStep, kmajor_desc(sK) + kk * kDescStep, kk > 0);
  wgmma_commit();
  wgmma_wait<0>();
  pin(s);
  softmax_tile(s, 0, p.Lk, p.scale_log2, t, m_a, m_b, l_a, l_b, alpha_a, alpha_b);
  pack_p<T>(pf, s);

  // Every iteration but the last has a next tile; the last P V is peeled off below, so no
  // wgmma sits in a conditional branch (ptxas serializes wgmma it cannot prove uniform).
  for (int j = 0; j + 1 < n_tiles; ++j) {
    // Tile j + 1 has landed (tile j + 2 may be in flight), and every warpgroup has finished
    // P_{j-1} V_{j-1}, so the stage of tile j - 1 may be refilled.
    cp_async_wait<kStages - 3>();
    fence_proxy_async();
    __syncthreads();
    if (j + kStages - 1 < n_tiles) {
      const int st = (j + kStages - 1) % kStages;
      load_kmajor<T, D, kBN>(sK + st * S::kK, k, p.k_sl, (j + kStages - 1) * kBN, p.Lk);
      load_v<T, D>(sV + st * S::kV, v, p.v_sl, (j + kStages - 1) * kBN, p.Lk);
    }
    cp_async_commit();  // possibly empty: keeps one group per iteration

    pin(s);
    pin(o);
    pin(pf);
    wgmma_fence();
    const uint64_t dk = kmajor_desc(sK + ((j + 1) % kStages) * S::kK);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss_n64<T>(s, dq + kk * kDescStep, dk + kk * kDescStep, kk > 0);
    wgmma_commit();
    const uint64_t dv = v_desc(sV + (j % kStages) * S::kV);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T>(o, pf[kk], dv + kk * kDescStep);
    wgmma_commit();

    wgmma_wait<1>();  // S_{j+1} is done; P_j V_j may still run
    pin(s);
    softmax_tile(s, (j + 1) * kBN, p.Lk, p.scale_log2, t, m_a, m_b, l_a, l_b, alpha_a, alpha_b);
    wgmma_wait<0>();
    pin(o);
    pin(pf);
#pragma unroll
    for (int i = 0; i < D / 2; i += 4) {
      o[i] *= alpha_a;
      o[i + 1] *= alpha_a;
      o[i + 2] *= alpha_b;
      o[i + 3] *= alpha_b;
    }
    pack_p<T>(pf, s);
  }
  {  // P V of the last tile
    const uint64_t dv = v_desc(sV + ((n_tiles - 1) % kStages) * S::kV);
    pin(o);
    pin(pf);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T>(o, pf[kk], dv + kk * kDescStep);
    wgmma_commit();
    wgmma_wait<0>();
    pin(o);
  }

  // Row sums across the quad, then O / l for rows < Lq.
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
  const int row_a = m0 + wg * 64 + warp * 16 + g, row_b = row_a + 8;
  T* out = static_cast<T*>(p.o);
  const int64_t ld_o = static_cast<int64_t>(p.H) * D;
  const int64_t ob = static_cast<int64_t>(b) * p.Lq * ld_o + static_cast<int64_t>(h) * D;
#pragma unroll
  for (int i = 0; i < D / 2; i += 4) {
    const int col = 2 * i + 2 * t;  // 8 (i / 4) + 2 t
    if (row_a < p.Lq)
      *reinterpret_cast<uint32_t*>(out + ob + row_a * ld_o + col) =
          pack2<T>(o[i] * inv_a, o[i + 1] * inv_a);
    if (row_b < p.Lq)
      *reinterpret_cast<uint32_t*>(out + ob + row_b * ld_o + col) =
          pack2<T>(o[i + 2] * inv_b, o[i + 3] * inv_b);
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// 1 in device code compiled for sm_90a (the wgmma body above exists), 0 otherwise.
__device__ int g_wgmma_compiled =
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    1;
#else
    0;
#endif

template <class T, int D>
void launch_wgmma(const WgmmaAttnParams& p, cudaStream_t st) {
  constexpr size_t kSmem = WgSmem<D>::kAlloc;
  auto kernel = wgmma_attention_kernel<T, D>;
  // Once per device, as the mma.sync kernel.
  static std::atomic<uint64_t> configured{0};
  if (raise_smem_limit(reinterpret_cast<const void*>(kernel), kSmem, configured)) {
    SD3_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared));
  }
  const dim3 grid(static_cast<unsigned>((p.Lq + kBM - 1) / kBM), static_cast<unsigned>(p.H),
                  static_cast<unsigned>(p.B));
  kernel<<<grid, kThreads, kSmem, st>>>(p);
  SD3_LAUNCH_CHECK("wgmma_attention_kernel");
}

// Note [Flash kernel selection]
// attention() runs the wgmma kernel when it is selected, available and in scope; otherwise the
// mma.sync kernel. Selected: set_flash_kernel(kWgmma), or with kDefault the environment
// variable SD3_FLASH_KERNEL=wgmma; the default is mma.sync until a GPU session has measured
// both (the session that finds the wgmma kernel correct and faster flips kDefault here).
// Available: a compute capability 9.0 device and device code built for sm_90a (the flag above,
// read once per device: one synchronous 4-byte copy). In scope: bf16/f16, D 64 or 128, no
// causal mask, no bias, scale > 0.
std::atomic<int> g_kernel_override{static_cast<int>(FlashKernel::kDefault)};
constexpr int kMaxDevices = 64;

// Per device: -1 not yet known, 0 no, 1 yes.
std::atomic<int>* available_cache() {
  static std::atomic<int>* cache = [] {
    auto* c = new std::atomic<int>[kMaxDevices];
    for (int i = 0; i < kMaxDevices; ++i) c[i].store(-1);
    return c;
  }();
  return cache;
}

FlashKernel selected_kernel() {
  const auto k = static_cast<FlashKernel>(g_kernel_override.load());
  if (k != FlashKernel::kDefault) return k;
  const char* e = std::getenv("SD3_FLASH_KERNEL");
  if (e && std::strcmp(e, "wgmma") == 0) return FlashKernel::kWgmma;
  return FlashKernel::kMma;
}

bool in_scope(const AttnShape& s, DType dt, bool has_bias) {
  return (dt == DType::BF16 || dt == DType::F16) && (s.D == 64 || s.D == 128) && !s.causal &&
         !has_bias && s.scale > 0.0f;
}

}  // namespace

void set_flash_kernel(FlashKernel k) {
  g_kernel_override.store(static_cast<int>(k));
}

bool wgmma_attention_available(int device) {
  if (!cuda_available() || device < 0 || device >= kMaxDevices) return false;
  std::atomic<int>& cached = available_cache()[device];
  int v = cached.load();
  if (v < 0) {
    const cudaDeviceProp& props = device_props(device);
    v = 0;
    if (props.major == 9 && props.minor == 0) {
      stream(device);  // makes `device` current
      int flag = 0;
      const cudaError_t e = cudaMemcpyFromSymbol(&flag, g_wgmma_compiled, sizeof(flag));
      if (e == cudaSuccess) {
        v = flag == 1 ? 1 : 0;
      } else {
        (void)cudaGetLastError();  // no image for this device: not available
      }
    }
    cached.store(v);
  }
  return v == 1;
}

bool use_wgmma_attention(const AttnShape& s, DType dt, bool has_bias, int device) {
  return in_scope(s, dt, has_bias) && selected_kernel() == FlashKernel::kWgmma &&
         wgmma_attention_available(device);
}

FlashKernel flash_kernel_for(const Tensor& q, const AttentionOptions& opt) {
  if (!flash_attention_supported(q, opt)) return FlashKernel::kDefault;
  AttnShape s;
  s.D = q.size(2) / opt.heads;
  s.causal = opt.causal;
  s.scale = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(s.D));
  const int device = q.device().is_cuda() ? q.device().index : 0;
  return use_wgmma_attention(s, q.dtype(), opt.bias.defined(), device) ? FlashKernel::kWgmma
                                                                       : FlashKernel::kMma;
}

void wgmma_attention(const WgmmaAttnParams& p, DType dt, cudaStream_t st) {
  SD3_CHECK((p.D == 64 || p.D == 128) && (dt == DType::BF16 || dt == DType::F16),
            "wgmma_attention: head dim ", p.D, " / ", dtype_name(dt), " not served");
  if (dt == DType::BF16) {
    p.D == 64 ? launch_wgmma<__nv_bfloat16, 64>(p, st) : launch_wgmma<__nv_bfloat16, 128>(p, st);
  } else {
    p.D == 64 ? launch_wgmma<__half, 64>(p, st) : launch_wgmma<__half, 128>(p, st);
  }
}

}  // namespace sd3::cuda
