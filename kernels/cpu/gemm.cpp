// Matrix products on OpenBLAS sgemm: linear (x W^T + bias, activation) and batched matmul.
//
// Note [Weights of another dtype in linear]
// f16/bf16 weights are converted to f32 in blocks of output rows, each block small enough to
// stay in the last-level cache while sgemm reads it (about 8 MiB), so converting a weight
// per use costs one pass over it and never a full f32 copy in memory.
#include <cblas.h>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

constexpr int64_t kWeightBlockFloats = int64_t{2} << 20;  // 8 MiB of f32

// C[M, N] (ldc) = A[M, K] (lda) * W[N, K]^T for a weight tensor of any dtype and strides.
void gemm_xwt(const float* a, int64_t lda, const Tensor& w, float* c, int64_t ldc, int64_t m) {
  const int64_t n = w.size(0), k = w.size(1);
  const auto M = static_cast<blasint>(m), N = static_cast<blasint>(n), K = static_cast<blasint>(k);
  if (w.dtype() == DType::F32 && (w.stride(1) == 1 || k == 1) && (w.stride(0) >= k || n == 1)) {
    const auto ldw = static_cast<blasint>(n == 1 ? std::max<int64_t>(k, 1) : w.stride(0));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, lda, w.data<float>(),
                ldw, 0.0f, c, ldc);
    return;
  }
  if (w.dtype() == DType::F32 && (w.stride(0) == 1 || n == 1) && (w.stride(1) >= n || k == 1)) {
    // A transposed view of a [K, N] matrix: read it as is.
    const auto ldw = static_cast<blasint>(k == 1 ? std::max<int64_t>(n, 1) : w.stride(1));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, lda, w.data<float>(),
                ldw, 0.0f, c, ldc);
    return;
  }
  // Note [Weights of another dtype in linear]
  const int64_t rows_per_block =
      std::clamp<int64_t>(kWeightBlockFloats / std::max<int64_t>(k, 1) / 64 * 64, 64, n);
  Tensor block = Tensor::empty({rows_per_block, k}, DType::F32);
  for (int64_t n0 = 0; n0 < n; n0 += rows_per_block) {
    const int64_t nb = std::min(rows_per_block, n - n0);
    Tensor dst = block.slice(0, 0, nb);
    detail::copy_strided(w.slice(0, n0, n0 + nb), dst);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, static_cast<blasint>(nb), K, 1.0f, a,
                lda, block.data<float>(), static_cast<blasint>(std::max<int64_t>(k, 1)), 0.0f,
                c + n0, ldc);
  }
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
  if (k == 0) {
    std::fill_n(y, m * n, 0.0f);
  } else {
    const detail::RowsF32 a = detail::rows_f32(x);
    gemm_xwt(a.data, a.ld, w, y, n, m);
  }
  const std::vector<float> b = detail::vector_f32(bias);
  if (!b.empty() || act != Activation::None) {
    const float* bp = b.empty() ? nullptr : b.data();
#pragma omp parallel for schedule(static) if (m * n >= detail::kParallelGrain)
    for (int64_t r = 0; r < m; ++r) detail::bias_activation_row(y + r * n, bp, n, act);
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
  Shape shape = detail::broadcast_shapes(abatch, bbatch, "matmul");
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
  auto one = [&](int64_t i) {
    cblas_sgemm(CblasRowMajor, la.trans ? CblasTrans : CblasNoTrans,
                lb.trans ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, ap + aoff[i],
                static_cast<blasint>(la.ld), bp + boff[i], static_cast<blasint>(lb.ld), 0.0f,
                y + i * m * n, static_cast<blasint>(n));
  };
  // Many small products: one per thread with single-threaded BLAS; few large ones: let
  // BLAS split each.
  const int nthreads = omp_get_max_threads();
  if (nthreads > 1 && batch >= 2 * nthreads) {
    detail::BlasSingleThread guard;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t i = 0; i < batch; ++i) one(i);
  } else {
    for (int64_t i = 0; i < batch; ++i) one(i);
  }
  return out.finish();
}

}  // namespace sd3::cpu
