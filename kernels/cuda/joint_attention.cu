// joint_attention: flash-attention forward for bf16/f16 with f32 softmax and accumulation.
//
//   O[b, i, h, :] = sum_j P[i, j] V[b, j, h, :],  P = softmax_j(q_i . k_j * scale + bias[h, i, j])
//   (keys j > i masked when causal; bias optional, [H, Lq, Lk] or [B, H, Lq, Lk])
//
// Serves the MMDiT's joint attention over [context; x] tokens (no mask, any token count, e.g.
// 154 + 4096), CLIP (causal) and T5 (additive relative-position bias, scale 1).
// FLOPs: 4 B H Lq Lk D (two products; causal about half). Bytes at best: q, k, v read and o
// written once, 2 B (Lq + Lk) H D sizeof(T) x 2 - no Lq x Lk matrix ever reaches memory.
//
// Note [Flash attention tiling]
// A block of kWarps = 4 warps owns kBlockM = 64 kMT queries of one (batch, head); each warp
// owns kMT m-tiles of 16 query rows (kMT = 2 at D = 64, 1 at D = 128), so softmax statistics
// never cross warps and every K/V fragment a warp loads feeds kMT MMAs. The block walks the keys in
// tiles of kBlockN = 64: K and V tiles are brought into shared memory by cp.async, double-buffered
// (tile t + 1 loads while tile t is used). Per tile each warp computes S = Q K^T (16 x 64) with
// mma.sync m16n8k16 (Q's fragments stay in registers for the whole loop; K fragments come
// from ldmatrix), applies scale, bias and masks in f32, updates the running row maximum m and
// sum l (online softmax, in base 2: exp2 of log2(e)-scaled scores), rescales its O
// accumulators, and adds P V with P taken straight from the S accumulators: the m16n8 C
// fragment layout of two adjacent 8-key tiles is exactly the m16k16 A fragment layout, so P
// never leaves registers. V fragments come from ldmatrix.trans. Shared rows are padded by 16
// bytes so the eight 16-byte rows an ldmatrix phase reads fall in distinct banks.
// Shared memory: (kBlockM + 4 kBlockN) (D + 8) 2 bytes: 55 KB at D = 64 (kMT 2), 87 KB at
// D = 128. Registers per thread: kMT (S 32 + O D/2 + Q fragments D/4 + P 16) floats/words.
// The index math is checked without a GPU by kernels/cuda/lab/flash_fragments.py.
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockN = 64;
constexpr float kLog2e = 1.4426950408889634f;

struct FlashParams : AttnOperands {
  int Lq = 0, Lk = 0, H = 0;
  float scale_log2 = 0.0f;  // scale * log2(e)
  float scale = 0.0f;
  bool causal = false;
  AnyPtr bias;
  int64_t bias_sb = 0, bias_sh = 0, bias_sq = 0;
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// D (16x8 f32) += A (16x16) * B (16x8), A row-major and B column-major fragments.
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Loads rows [row0, row0 + kRows) of a [L, D] slice (token stride `ld` elements) into a
// shared tile with row pitch D + 8; rows at or past L are zero-filled.
template <class T, int D, int kRows>
__device__ __forceinline__ void load_tile(T* smem, const T* g, int64_t ld, int row0, int L) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const int row = row0 + r;
    const bool ok = row < L;
    const T* src = ok ? g + static_cast<int64_t>(row) * ld + col : g;
    cp_async16(smem + r * (D + 8) + col, src, ok ? 16 : 0);
  }
}

template <class T, int D, bool kHasBias, int kMT>
__global__ void __launch_bounds__(kThreads) flash_attention_kernel(const FlashParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kPitch = D + 8;
  constexpr int kBlockM = 16 * kWarps * kMT;  // queries per block
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * kPitch;      // [2][kBlockN][kPitch]
  T* sV = sK + 2 * kBlockN * kPitch;  // [2][kBlockN][kPitch]

  const int m0 = blockIdx.x * kBlockM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;

  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + static_cast<int64_t>(h) * D;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + static_cast<int64_t>(h) * D;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + static_cast<int64_t>(h) * D;

  // Keys this block needs: all, or up to its last query when causal.
  int kv_end = p.Lk;
  if (p.causal) kv_end = min(p.Lk, m0 + kBlockM);
  const int n_tiles = (kv_end + kBlockN - 1) / kBlockN;

  load_tile<T, D, kBlockM>(sQ, q, p.q_sl, m0, p.Lq);
  if (n_tiles > 0) {
    load_tile<T, D, kBlockN>(sK, k, p.k_sl, 0, p.Lk);
    load_tile<T, D, kBlockN>(sV, v, p.v_sl, 0, p.Lk);
  }
  cp_async_commit();

  // The warp owns rows [warp 16 kMT, (warp + 1) 16 kMT) of the block, as kMT m-tiles of 16;
  // in m-tile mt this thread holds rows g and g + 8.
  const int warp_row0 = m0 + warp * 16 * kMT;

  uint32_t qf[kMT][D / 16][4];
  float o[kMT][D / 8][4];
  float m_a[kMT], m_b[kMT], l_a[kMT], l_b[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    m_a[mt] = m_b[mt] = -INFINITY;
    l_a[mt] = l_b[mt] = 0.0f;
  }

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int n0 = tile * kBlockN;
    const int stage = tile & 1;
    if (tile + 1 < n_tiles) {
      load_tile<T, D, kBlockN>(sK + (stage ^ 1) * kBlockN * kPitch, k, p.k_sl, n0 + kBlockN, p.Lk);
      load_tile<T, D, kBlockN>(sV + (stage ^ 1) * kBlockN * kPitch, v, p.v_sl, n0 + kBlockN, p.Lk);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          ldmatrix_x4(qf[mt][kk], sQ + (warp * 16 * kMT + mt * 16 + (lane & 15)) * kPitch +
                                      kk * 16 + (lane >> 4) * 8);
    }
    const T* cK = sK + stage * kBlockN * kPitch;
    const T* cV = sV + stage * kBlockN * kPitch;

    // S = Q K^T for the warp's rows and the tile's 64 keys; each K fragment serves kMT m-tiles.
    float s[kMT][kBlockN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
        s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int jp = 0; jp < kBlockN / 16; ++jp) {
        uint32_t kf[4];
        ldmatrix_x4(kf, cK + (jp * 16 + (lane & 7) + ((lane >> 4) << 3)) * kPitch + kk * 16 +
                            ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(s[mt][2 * jp], qf[mt][kk], kf[0], kf[1]);
          mma16816<T>(s[mt][2 * jp + 1], qf[mt][kk], kf[2], kf[3]);
        }
      }
    }

    const bool edge = n0 + kBlockN > p.Lk || (p.causal && n0 + kBlockN - 1 > m0);
    uint32_t pf[kMT][kBlockN / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row_a = warp_row0 + mt * 16 + g, row_b = row_a + 8;
      // Scale (+ bias) into the log2 domain; mask keys past the end and, if causal, above
      // the diagonal.
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + j * 8 + 2 * t + (e & 1);
          const int row = e < 2 ? row_a : row_b;
          float x;
          if constexpr (kHasBias) {
            float bv = 0.0f;
            if (row < p.Lq && col < p.Lk)
              bv = p.bias[b * p.bias_sb + h * p.bias_sh + static_cast<int64_t>(row) * p.bias_sq +
                          col];
            x = (s[mt][j][e] * p.scale + bv) * kLog2e;
          } else {
            x = s[mt][j][e] * p.scale_log2;
          }
          if (edge && (col >= p.Lk || (p.causal && col > row))) x = -INFINITY;
          s[mt][j][e] = x;
        }
      }

      // Online softmax: new row maxima over the quad that shares each row.
      float mx_a = m_a[mt], mx_b = m_b[mt];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        mx_a = fmaxf(mx_a, fmaxf(s[mt][j][0], s[mt][j][1]));
        mx_b = fmaxf(mx_b, fmaxf(s[mt][j][2], s[mt][j][3]));
      }
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
      // A row with every key masked so far keeps max -inf; subtract 0 instead (exp2 -> 0).
      const float ref_a = mx_a == -INFINITY ? 0.0f : mx_a;
      const float ref_b = mx_b == -INFINITY ? 0.0f : mx_b;
      const float alpha_a = exp2f(m_a[mt] - ref_a), alpha_b = exp2f(m_b[mt] - ref_b);
      m_a[mt] = mx_a;
      m_b[mt] = mx_b;
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        s[mt][j][0] = exp2f(s[mt][j][0] - ref_a);
        s[mt][j][1] = exp2f(s[mt][j][1] - ref_a);
        s[mt][j][2] = exp2f(s[mt][j][2] - ref_b);
        s[mt][j][3] = exp2f(s[mt][j][3] - ref_b);
        sum_a += s[mt][j][0] + s[mt][j][1];
        sum_b += s[mt][j][2] + s[mt][j][3];
      }
      l_a[mt] = l_a[mt] * alpha_a + sum_a;
      l_b[mt] = l_b[mt] * alpha_b + sum_b;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[mt][i][0] *= alpha_a;
        o[mt][i][1] *= alpha_a;
        o[mt][i][2] *= alpha_b;
        o[mt][i][3] *= alpha_b;
      }
      // P's A fragments are the S accumulators of key tiles 2kk and 2kk + 1.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        pf[mt][kk][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pf[mt][kk][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pf[mt][kk][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pf[mt][kk][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
    }

    // O += P V; each V fragment serves kMT m-tiles.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, cV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kPitch +
                                  dp * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma16816<T>(o[mt][2 * dp], pf[mt][kk], vf[0], vf[1]);
          mma16816<T>(o[mt][2 * dp + 1], pf[mt][kk], vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // Finish the row sums across the quad and write O / l.
  T* out = static_cast<T*>(p.o);
  const int64_t ld_o = static_cast<int64_t>(p.H) * D;
  const int64_t base = static_cast<int64_t>(b) * p.Lq * ld_o + static_cast<int64_t>(h) * D;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float la = l_a[mt], lb = l_b[mt];
    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float inv_a = la > 0.0f ? 1.0f / la : 0.0f;
    const float inv_b = lb > 0.0f ? 1.0f / lb : 0.0f;
    const int row_a = warp_row0 + mt * 16 + g, row_b = row_a + 8;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      const int col = i * 8 + 2 * t;
      if (row_a < p.Lq)
        *reinterpret_cast<uint32_t*>(out + base + row_a * ld_o + col) =
            pack2<T>(o[mt][i][0] * inv_a, o[mt][i][1] * inv_a);
      if (row_b < p.Lq)
        *reinterpret_cast<uint32_t*>(out + base + row_b * ld_o + col) =
            pack2<T>(o[mt][i][2] * inv_b, o[mt][i][3] * inv_b);
    }
  }
}

template <class T, int D, bool kHasBias, int kMT>
void launch_flash(const FlashParams& p, int64_t B, int64_t H, int64_t Lq, cudaStream_t st) {
  constexpr int kBlockM = 16 * kWarps * kMT;
  constexpr size_t kSmem = sizeof(T) * (kBlockM + 4 * kBlockN) * (D + 8);
  auto kernel = flash_attention_kernel<T, D, kHasBias, kMT>;
  if constexpr (kSmem > 48 * 1024) {
    static std::atomic<uint64_t> raised{0};
    raise_smem_limit(reinterpret_cast<const void*>(kernel), kSmem, raised);
  }
  const dim3 grid(static_cast<unsigned>((Lq + kBlockM - 1) / kBlockM), static_cast<unsigned>(H),
                  static_cast<unsigned>(B));
  kernel<<<grid, kThreads, kSmem, st>>>(p);
  SD3_LAUNCH_CHECK("flash_attention_kernel");
}

// m-tiles (16 query rows) per warp: 2 halves the shared-memory traffic per MMA (each K and V
// fragment feeds two MMAs) at the cost of registers (242-252 instead of 130); D = 128 keeps 1
// to stay unspilled. set_flash_mtiles / SD3_FLASH_MTILES=1|2 override the D = 64 choice for
// lab comparisons (kernels_bench times both).
std::atomic<int> g_mtiles_override{-1};

int flash_mtiles(int64_t D) {
  if (D != 64) return 1;
  int v = g_mtiles_override.load();
  if (v < 0) {
    const char* e = std::getenv("SD3_FLASH_MTILES");
    v = e ? std::atoi(e) : 0;
  }
  return v == 1 ? 1 : 2;
}

bool flash_ok(const AttnShape& s, DType dt) {
  return (dt == DType::BF16 || dt == DType::F16) && (s.D == 64 || s.D == 128);
}

}  // namespace

void set_flash_mtiles(int mtiles) {
  g_mtiles_override.store(mtiles == 1 || mtiles == 2 ? mtiles : -1);
}

bool flash_attention_supported(const Tensor& q, const AttentionOptions& opt) {
  if (!q.defined() || q.dim() != 3 || opt.heads <= 0 || q.size(2) % opt.heads) return false;
  AttnShape s;
  s.D = q.size(2) / opt.heads;
  return flash_ok(s, q.dtype());
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                 const AttentionOptions& opt) {
  Tensor q, k, v, bias;
  const AttnShape s = attention_shape(q_in, k_in, v_in, opt, &q, &k, &v, &bias);
  if (!flash_ok(s, q.dtype())) return attention_gemm(q_in, k_in, v_in, opt);
  const size_t es = dtype_size(q.dtype());
  auto al = [&](const Tensor& t) {
    return aligned16(t.raw_data()) && (t.stride(0) * es) % 16 == 0 && (t.stride(1) * es) % 16 == 0;
  };
  // A view whose rows are not 16-byte aligned (an odd offset) is copied once.
  auto realign = [&](Tensor& t) {
    if (!al(t)) t = t.is_contiguous() ? t.clone() : contiguous(t);
  };
  realign(q);
  realign(k);
  realign(v);
  SD3_CHECK(al(q) && al(k) && al(v), "attention: q/k/v rows not 16-byte aligned after a copy");
  SD3_CHECK(s.Lq < (1LL << 31) && s.Lk < (1LL << 31) && s.H < 65536 && s.B < 65536,
            "attention: shape too large for one launch");
  Tensor out = Tensor::empty({s.B, s.Lq, s.H * s.D}, q.dtype(), q.device());
  if (out.numel() == 0) return out;
  if (s.Lk == 0) {
    out.fill(0.0f);
    return out;
  }
  cudaStream_t st = stream_for(q);
  if (use_wgmma_attention(s, q.dtype(), bias.defined(), q.device().index)) {
    WgmmaAttnParams w;
    set_operands(w, q, k, v, out);
    w.B = static_cast<int>(s.B);
    w.H = static_cast<int>(s.H);
    w.D = static_cast<int>(s.D);
    w.Lq = static_cast<int>(s.Lq);
    w.Lk = static_cast<int>(s.Lk);
    w.scale_log2 = s.scale * kLog2e;
    wgmma_attention(w, q.dtype(), st);
    return out;
  }
  FlashParams p{};
  set_operands(p, q, k, v, out);
  p.Lq = static_cast<int>(s.Lq);
  p.Lk = static_cast<int>(s.Lk);
  p.H = static_cast<int>(s.H);
  p.scale = s.scale;
  p.scale_log2 = s.scale * kLog2e;
  p.causal = s.causal;
  p.bias = any_ptr(bias);
  p.bias_sb = s.bias_sb;
  p.bias_sh = s.bias_sh;
  p.bias_sq = s.bias_sq;
  const bool has_bias = bias.defined();
  auto go = [&](auto tag) {
    using T = decltype(tag);
    if (s.D == 64 && flash_mtiles(64) == 2) {
      has_bias ? launch_flash<T, 64, true, 2>(p, s.B, s.H, s.Lq, st)
               : launch_flash<T, 64, false, 2>(p, s.B, s.H, s.Lq, st);
    } else if (s.D == 64) {
      has_bias ? launch_flash<T, 64, true, 1>(p, s.B, s.H, s.Lq, st)
               : launch_flash<T, 64, false, 1>(p, s.B, s.H, s.Lq, st);
    } else {
      has_bias ? launch_flash<T, 128, true, 1>(p, s.B, s.H, s.Lq, st)
               : launch_flash<T, 128, false, 1>(p, s.B, s.H, s.Lq, st);
    }
  };
  if (q.dtype() == DType::BF16) {
    go(__nv_bfloat16{});
  } else {
    go(__half{});
  }
  return out;
}

Tensor attention_qk_norm(const Tensor& q, const Tensor& k, const Tensor& v,
                         const AttentionOptions& opt, const Tensor& q_weight,
                         const Tensor& k_weight, float eps) {
  check_float_input(q, "attention_qk_norm", "q");
  check_float_input(k, "attention_qk_norm", "k");
  SD3_CHECK(q.dim() == 3 && k.dim() == 3 && opt.heads > 0 && q.size(2) % opt.heads == 0,
            "attention_qk_norm: q ", q.str(), " is not [B, L, H*D] for ", opt.heads, " heads");
  const int64_t H = opt.heads, D = q.size(2) / H;
  // RMSNorm over each head's D features: view [B, L, H, D] and normalise the last dimension.
  Tensor qn = rms_norm(contiguous(q).view({q.size(0), q.size(1), H, D}), q_weight, eps);
  Tensor kn = rms_norm(contiguous(k).view({k.size(0), k.size(1), H, D}), k_weight, eps);
  return cuda::attention(qn.view({q.size(0), q.size(1), H * D}),
                         kn.view({k.size(0), k.size(1), H * D}), v, opt);
}

}  // namespace sd3::cuda
