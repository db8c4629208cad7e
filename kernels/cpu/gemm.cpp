// Matrix products on OpenBLAS sgemm: linear (x W^T + bias, activation) and batched matmul.
//
// Note [Weights of another dtype in linear]
// f16/bf16 weights are converted to f32 per use, by each thread for the band of output
// columns it computes, so a weight is converted once per call and never held in f32 as a
// whole. Every sgemm call repacks x (M x K), so for large M a band's rows are converted in
// one block (one sgemm per band, as with f32 weights: smaller blocks cost 8% at M = 2356);
// for small M (memory-bound, x is tiny) blocks of about 8 MiB over all threads stay in cache.
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

constexpr int64_t kWeightBlockFloats = int64_t{2} << 20;  // 8 MiB of f32, all threads together

// How sgemm reads W [N, K] as op(B) in C = A op(B): in place (f32 with unit stride along K,
// or a transposed view of a [K, N] matrix), or through conversion of blocks of rows.
struct WeightLayout {
  bool direct = false;
  bool trans = true;  // op(B) = W^T, W stored row-major [N, K]
  int64_t ld = 0;
};
WeightLayout weight_layout(const Tensor& w) {
  const int64_t n = w.size(0), k = w.size(1);
  if (w.dtype() != DType::F32) return {};
  if ((w.stride(1) == 1 || k == 1) && (w.stride(0) >= k || n == 1))
    return {true, true, n == 1 ? std::max<int64_t>(k, 1) : w.stride(0)};
  if ((w.stride(0) == 1 || n == 1) && (w.stride(1) >= n || k == 1))
    return {true, false, k == 1 ? std::max<int64_t>(n, 1) : w.stride(1)};
  return {};
}

// How sgemm can read the last two dimensions of t as a rows x cols matrix in place.
struct MatLayout {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};
MatLayout mat_layout(const Tensor& t) {
  const int64_t rows = t.size(-2), cols = t.size(-1);
  const int64_t rs = t.stride(-2), cs = t.stride(-1);
  if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= std::max<int64_t>(cols, 1)))
    return {true, false, rows <= 1 ? std::max<int64_t>(cols, 1) : rs};
  if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= std::max<int64_t>(rows, 1)))
    return {true, true, cols <= 1 ? std::max<int64_t>(rows, 1) : cs};
  return {};
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act) {
  detail::check_float(x, "linear", "x");
  detail::check_float(w, "linear", "weight");
  SD3_CHECK(x.dim() >= 1, "linear: x must have at least one dimension, got ", x.str());
  SD3_CHECK(w.dim() == 2 && w.size(1) == x.size(-1), "linear: x ", x.str(), " and weight ", w.str(),
            " (expected weight [out, ", x.size(-1), "])");
  const int64_t n = w.size(0), k = w.size(1);
  detail::check_vector(bias, n, "linear", "bias");
  Shape shape = x.shape();
  shape.back() = n;
  detail::OutF32 out(shape, x.dtype());
  const int64_t m = shape_numel(shape) / std::max<int64_t>(n, 1);
  if (m == 0 || n == 0) return out.finish();
  float* y = out.ptr();
  const std::vector<float> b = detail::vector_f32(bias);
  const float* bp = b.empty() ? nullptr : b.data();
  // Bias and activation over rows [i0, i1) x columns [j0, j1) of y, right after its product.
  auto epilogue = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (!bp && act == Activation::None) return;
    for (int64_t r = i0; r < i1; ++r)
      detail::bias_activation_row(y + r * n + j0, bp ? bp + j0 : nullptr, j1 - j0, act);
  };
  if (k == 0) {
    std::fill_n(y, m * n, 0.0f);
    epilogue(0, m, 0, n);
    return out.finish();
  }

  const detail::RowsF32 a = detail::rows_f32(x, /*need_uniform=*/true);
  const WeightLayout wl = weight_layout(w);
  const int nt = detail::gemm_threads(m, n, k);
  // Note [One thread pool]: threads take bands of output columns (of rows when there are too
  // few columns) dynamically, multiply each with single-threaded sgemm and finish it with the
  // epilogue while it is recent in cache.
  const bool by_columns = n >= 16 * nt || !wl.direct;
  const int bands = detail::band_count(by_columns ? n : m, by_columns ? m : n, nt);
  // Note [Weights of another dtype in linear]: each thread converts its own blocks of rows.
  int64_t block_rows = 0;
  if (!wl.direct) {
    block_rows = m > 64 ? (n + bands - 1) / bands + 16  // a whole band: one sgemm per band
                        : std::max<int64_t>(16, kWeightBlockFloats / nt / k / 16 * 16);
  }
  float* blocks = wl.direct ? nullptr
                            : detail::team_scratch(detail::ScratchSlot::Weights, nt,
                                                   static_cast<size_t>(block_rows * k));
  const char* wbase = static_cast<const char*>(w.raw_data());
  const int64_t wes = static_cast<int64_t>(dtype_size(w.dtype()));
  detail::BlasSingleThread guard;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int band = 0; band < bands; ++band) {
    if (!by_columns) {
      const auto [i0, i1] = detail::split_range(m, bands, band, 16);
      detail::sgemm_serial(false, wl.trans, i1 - i0, n, k, 1.0f, a.data + i0 * a.ld, a.ld,
                           w.data<float>(), wl.ld, 0.0f, y + i0 * n, n);
      epilogue(i0, i1, 0, n);
      continue;
    }
    const auto [j0, j1] = detail::split_range(n, bands, band, 16);
    if (wl.direct) {
      const float* wp = w.data<float>() + (wl.trans ? j0 * wl.ld : j0);
      detail::sgemm_serial(false, wl.trans, m, j1 - j0, k, 1.0f, a.data, a.ld, wp, wl.ld, 0.0f,
                           y + j0, n);
    } else {
      float* buf = blocks + static_cast<size_t>(omp_get_thread_num()) * block_rows * k;
      // Blocks of equal size (at most block_rows) so no sgemm call gets a thin remainder.
      const int64_t nblocks = (j1 - j0 + block_rows - 1) / block_rows;
      const int64_t step = nblocks ? (j1 - j0 + nblocks - 1) / nblocks : 0;
      for (int64_t jb = j0; jb < j1; jb += step) {
        const int64_t nb = std::min(step, j1 - jb);
        for (int64_t r = 0; r < nb; ++r)
          detail::to_f32_strided(wbase + (jb + r) * w.stride(0) * wes, w.dtype(), w.stride(1),
                                 buf + r * k, k);
        detail::sgemm_serial(false, true, m, nb, k, 1.0f, a.data, a.ld, buf, k, 0.0f, y + jb, n);
      }
    }
    epilogue(0, m, j0, j1);
  }
  return out.finish();
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_float(a, "matmul", "a");
  detail::check_float(b, "matmul", "b");
  SD3_CHECK(a.dim() >= 2 && b.dim() >= 2 && a.size(-1) == b.size(-2), "matmul: ", a.str(), " @ ",
            b.str(), " (expected [..., M, K] @ [..., K, N])");
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const Shape abatch(a.shape().begin(), a.shape().end() - 2);
  const Shape bbatch(b.shape().begin(), b.shape().end() - 2);
  Shape shape = broadcast_shapes(abatch, bbatch, "matmul");
  const int64_t batch = shape_numel(shape);
  shape.push_back(m);
  shape.push_back(n);
  detail::OutF32 out(shape, a.dtype());
  if (batch == 0 || m == 0 || n == 0) return out.finish();
  float* y = out.ptr();
  if (k == 0) {
    std::fill_n(y, batch * m * n, 0.0f);
    return out.finish();
  }

  // Operands in f32 with an sgemm-readable layout (copies only when they have neither).
  Tensor af = a, bf = b;
  MatLayout la = mat_layout(a), lb = mat_layout(b);
  if (a.dtype() != DType::F32 || !la.ok) {
    af = detail::as_f32(a);
    la = mat_layout(af);
  }
  if (b.dtype() != DType::F32 || !lb.ok) {
    bf = detail::as_f32(b);
    lb = mat_layout(bf);
  }
  // Element offsets of each batch's matrix, broadcasting batch dimensions.
  auto batch_offsets = [&](const Tensor& t) {
    std::vector<int64_t> offs(static_cast<size_t>(batch), 0);
    const int64_t r = static_cast<int64_t>(shape.size()) - 2;
    const int64_t tr = t.dim() - 2;
    for (int64_t i = 0; i < batch; ++i) {
      int64_t rem = i, off = 0;
      for (int64_t d = r - 1; d >= 0; --d) {
        const int64_t idx = rem % shape[d];
        rem /= shape[d];
        const int64_t td = d - (r - tr);
        if (td >= 0 && t.size(td) != 1) off += idx * t.stride(td);
      }
      offs[static_cast<size_t>(i)] = off;
    }
    return offs;
  };
  const std::vector<int64_t> aoff = batch_offsets(af), boff = batch_offsets(bf);
  const float* ap = af.data<float>();
  const float* bp = bf.data<float>();
  // Many products: one per thread at a time; few: each split over the threads
  // (Note [One thread pool]).
  const int nthreads = omp_get_max_threads();
  if (nthreads > 1 && batch >= 2 * nthreads) {
    detail::BlasSingleThread guard;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t i = 0; i < batch; ++i)
      detail::sgemm_serial(la.trans, lb.trans, m, n, k, 1.0f, ap + aoff[i], la.ld, bp + boff[i],
                           lb.ld, 0.0f, y + i * m * n, n);
  } else {
    for (int64_t i = 0; i < batch; ++i)
      detail::sgemm(la.trans, lb.trans, m, n, k, 1.0f, ap + aoff[i], la.ld, bp + boff[i], lb.ld,
                    0.0f, y + i * m * n, n);
  }
  return out.finish();
}

}  // namespace sd3::cpu
