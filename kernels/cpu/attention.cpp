// Multi-head scaled-dot-product attention on the CPU.
//
// Note [CPU attention tiling]
// Work is split into tasks of (batch, head, tile of query rows). A task computes the score
// tile S = scale * Q_tile K^T with sgemm, adds the bias, masks (causal), takes the softmax of
// each row in place and writes O_tile = P V with a second sgemm straight into the output
// ([B, Lq, H*D], leading dimension H*D), so heads are never transposed in memory. A tile has
// about kScoreTileFloats scores (16 to 256 query rows): memory does not grow with Lq, only
// linearly with Lk. Each sgemm call repacks K (or V), so taller tiles amortise that better,
// while shorter ones keep the scores near the core; about 1 MiB measured best on Zen 4 for
// Lk = 1178 and 4250 (tq = 256 and 64; sgemm ~64% of the time, its packing ~15%, softmax ~15%).
// Tasks run one per OpenMP thread with single-threaded sgemm: the products are small (K = D
// = 64 for the first) and splitting each across threads would only add synchronisation.
#include <cmath>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

constexpr int64_t kScoreTileFloats = int64_t{1} << 18;  // 1 MiB of scores per thread

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
  const int64_t tq = std::clamp<int64_t>((kScoreTileFloats / lk + 8) / 16 * 16, 16, 256);
  const int64_t tiles = (lq + tq - 1) / tq;
  const int64_t tasks = nb * heads * tiles;
  const int nthreads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), tasks));
  std::vector<float> scores(static_cast<size_t>(nthreads) * (tq * lk + tq));
  detail::BlasSingleThread guard;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t tile = task % tiles, h = (task / tiles) % heads, b = task / (tiles * heads);
    const int64_t i0 = tile * tq, i1 = std::min(lq, i0 + tq), rows = i1 - i0;
    const int64_t kn = opt.causal ? std::min(lk, i1) : lk;  // keys any row of the tile sees
    float* s = scores.data() + static_cast<size_t>(omp_get_thread_num()) * (tq * lk + tq);
    float* inv_sum = s + tq * lk;
    detail::sgemm_serial(false, true, rows, kn, d, scale, qs.p + b * qs.sb + i0 * qs.sl + h * d,
                         qs.sl, ks.p + b * ks.sb + h * d, ks.sl, 0.0f, s, kn);
    for (int64_t i = i0; i < i1; ++i) {
      float* row = s + (i - i0) * kn;
      if (bp) {
        const float* br = bp + (((bias_batch == 1 ? 0 : b) * heads + h) * lq + i) * lk;
        for (int64_t j = 0; j < kn; ++j) row[j] += br[j];
      }
      const int64_t valid = opt.causal ? std::min(i + 1, kn) : kn;
      inv_sum[i - i0] = 1.0f / detail::exp_shifted_row(row, row, valid);
      std::fill(row + valid, row + kn, 0.0f);
    }
    // O = (P / rowsum) V, normalised after the product: D values per row instead of Lk.
    float* ot = o + (b * lq + i0) * width + h * d;
    detail::sgemm_serial(false, false, rows, d, kn, 1.0f, s, kn, vs.p + b * vs.sb + h * d, vs.sl,
                         0.0f, ot, width);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < d; ++e) ot[r * width + e] *= inv_sum[r];
  }
  return out.finish();
}

}  // namespace sd3::cpu
