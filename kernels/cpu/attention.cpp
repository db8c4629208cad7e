// Multi-head scaled-dot-product attention on the CPU.
//
// Note [CPU attention tiling]
// Work is split into tasks of (batch, head, tile of kQueryTile query rows), one task per
// OpenMP thread at a time with single-threaded sgemm (Note [One thread pool]). A task walks
// the keys in blocks of kKeyBlock, flash-attention style: S = scale * Q_tile K_block^T
// (sgemm), bias and causal mask, then an online softmax per row (running max m and sum l;
// when a block raises m, the row's earlier sum and output are scaled by e^(m_old - m_new)),
// and O_tile += P V_block (sgemm with beta = 1, straight into the output [B, Lq, H*D] with
// leading dimension H*D, so heads are never transposed in memory). O is divided by l at the
// end, D values per row instead of Lk. Scratch is kQueryTile x kKeyBlock floats per thread
// (256 KiB) whatever the sequence length, and the score block, the K and V blocks stay in
// L2. Taller query tiles amortise sgemm's repacking of each K/V block; on Zen 4 with
// B=2, H=24, D=64 and L = 1178 or 4250, 256 x 256 measured best (about 74 GFLOP/s per core,
// against 67 for whole-row softmax over 64-row tiles and 95 for sgemm alone).
#include <cmath>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

constexpr int64_t kQueryTile = 256;  // query rows per task
constexpr int64_t kKeyBlock = 256;   // keys per score block

// A [B, L, W] sequence as f32 with unit stride along W: in place when it already is one.
struct Seq {
  const float* p = nullptr;
  int64_t sb = 0, sl = 0;  // strides of batch and position, in elements
  Tensor keep;
};
Seq seq_f32(const Tensor& t) {
  const int64_t width = t.size(2);
  const bool direct = t.dtype() == DType::F32 && (t.stride(2) == 1 || width <= 1) &&
                      (t.size(1) <= 1 || t.stride(1) >= width);
  Seq s;
  s.keep = direct ? t : detail::as_f32(t);
  s.p = s.keep.data<float>();
  s.sb = s.keep.stride(0);
  s.sl = s.keep.size(1) > 1 ? s.keep.stride(1) : std::max<int64_t>(width, 1);
  return s;
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  detail::check_float(q, "attention", "q");
  detail::check_float(k, "attention", "k");
  detail::check_float(v, "attention", "v");
  SD3_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention: q ", q.str(), ", k ", k.str(),
            ", v ", v.str(), " must be [B, L, H*D]");
  const int64_t nb = q.size(0), lq = q.size(1), width = q.size(2), lk = k.size(1);
  const int64_t heads = opt.heads;
  SD3_CHECK(k.shape() == v.shape() && k.size(0) == nb && k.size(2) == width, "attention: q ",
            q.str(), ", k ", k.str(), ", v ", v.str(), " do not match (k and v [B, Lk, H*D])");
  SD3_CHECK(heads > 0 && width % heads == 0, "attention: width ", width, " of q ", q.str(),
            " not divisible by ", heads, " heads");
  SD3_CHECK(lk > 0 || nb * lq == 0, "attention: no keys (k ", k.str(), ")");
  const int64_t d = width / heads;
  const Tensor& bias = opt.bias;
  int64_t bias_batch = 0;
  if (bias.defined()) {
    detail::check_float(bias, "attention", "bias");
    const bool ok3 = bias.dim() == 3 && bias.shape() == Shape({heads, lq, lk});
    const bool ok4 = bias.dim() == 4 && (bias.size(0) == nb || bias.size(0) == 1) &&
                     bias.size(1) == heads && bias.size(2) == lq && bias.size(3) == lk;
    SD3_CHECK(ok3 || ok4, "attention: bias ", bias.str(), " must be [", heads, ", ", lq, ", ", lk,
              "] or [", nb, ", ", heads, ", ", lq, ", ", lk, "]");
    bias_batch = ok4 ? bias.size(0) : 1;
  }
  const float scale = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(d));

  detail::OutF32 out({nb, lq, width}, q.dtype());
  if (nb * lq * width == 0) return out.finish();
  const Seq qs = seq_f32(q), ks = seq_f32(k), vs = seq_f32(v);
  const Tensor bf = bias.defined() ? detail::as_f32(bias) : Tensor();
  const float* bp = bf.defined() ? bf.data<float>() : nullptr;
  float* o = out.ptr();

  // Note [CPU attention tiling]
  const int64_t tq = std::min<int64_t>(kQueryTile, (lq + 15) / 16 * 16);
  const int64_t kb = std::min<int64_t>(kKeyBlock, lk);
  const int64_t tiles = (lq + tq - 1) / tq;
  const int64_t tasks = nb * heads * tiles;
  const int nthreads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), tasks));
  const int64_t per_thread = tq * kb + 3 * tq;  // scores, then running max, sum, rescale
  float* scratch =
      detail::team_scratch(detail::ScratchSlot::Scores, nthreads, static_cast<size_t>(per_thread));
  detail::BlasSingleThread guard;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t tile = task % tiles, h = (task / tiles) % heads, b = task / (tiles * heads);
    const int64_t i0 = tile * tq, i1 = std::min(lq, i0 + tq), rows = i1 - i0;
    const int64_t kn = opt.causal ? std::min(lk, i1) : lk;  // keys any row of the tile sees
    float* s = scratch + static_cast<size_t>(omp_get_thread_num()) * per_thread;
    float* mx = s + tq * kb;  // running max of each row's scores
    float* sum = mx + tq;     // running sum of exp(score - max)
    float* rescale = sum + tq;
    const float* qt = qs.p + b * qs.sb + i0 * qs.sl + h * d;
    float* ot = o + (b * lq + i0) * width + h * d;
    std::fill_n(mx, rows, -INFINITY);
    std::fill_n(sum, rows, 0.0f);
    for (int64_t j0 = 0; j0 < kn; j0 += kb) {
      const int64_t n = std::min(kb, kn - j0);
      detail::sgemm_serial(false, true, rows, n, d, scale, qt, qs.sl,
                           ks.p + b * ks.sb + j0 * ks.sl + h * d, ks.sl, 0.0f, s, n);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        float* row = s + r * n;
        if (bp) {
          const float* br = bp + (((bias_batch == 1 ? 0 : b) * heads + h) * lq + i) * lk + j0;
          for (int64_t j = 0; j < n; ++j) row[j] += br[j];
        }
        const int64_t valid = opt.causal ? std::clamp<int64_t>(i + 1 - j0, 0, n) : n;
        const float m_new = std::max(mx[r], detail::row_max(row, valid));
        // Online softmax: earlier sums and outputs were relative to the old maximum. While a
        // row has seen only -inf (masked) scores, its weights are 0 and nothing rescales.
        const bool none = m_new == -INFINITY;
        rescale[r] = none ? 1.0f : std::exp(mx[r] - m_new);
        const float block_sum = none ? 0.0f : detail::exp_sub_row(row, row, valid, m_new);
        std::fill(row + (none ? 0 : valid), row + n, 0.0f);
        sum[r] = sum[r] * rescale[r] + block_sum;
        mx[r] = m_new;
      }
      if (j0 > 0) {
        for (int64_t r = 0; r < rows; ++r)
          if (rescale[r] != 1.0f)
            for (int64_t e = 0; e < d; ++e) ot[r * width + e] *= rescale[r];
      }
      detail::sgemm_serial(false, false, rows, d, n, 1.0f, s, n,
                           vs.p + b * vs.sb + j0 * vs.sl + h * d, vs.sl, j0 > 0 ? 1.0f : 0.0f, ot,
                           width);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = 1.0f / sum[r];
      for (int64_t e = 0; e < d; ++e) ot[r * width + e] *= inv;
    }
  }
  return out.finish();
}

}  // namespace sd3::cpu
