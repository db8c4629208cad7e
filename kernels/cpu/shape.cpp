// Data movement: concat and embedding (row gather). permute/split/chunk/slice are views or a
// contiguous() copy (kernels/cpu/elementwise.cpp), composed in engine/ops.cpp.
#include <cstring>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  SD3_CHECK(!xs.empty(), "concat of no tensors");
  const Tensor& first = xs[0];
  SD3_CHECK(first.defined(), "concat: input 0 is undefined");
  const int64_t rank = first.dim();
  SD3_CHECK(rank >= 1, "concat of scalars");
  dim = wrap_dim(dim, rank, "concat dimension");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    SD3_CHECK(t.defined(), "concat: input ", i, " is undefined");
    bool ok = t.dim() == rank && (is_float(t.dtype()) == is_float(first.dtype()));
    for (int64_t d = 0; ok && d < rank; ++d) ok = d == dim || t.size(d) == first.size(d);
    SD3_CHECK(ok, "concat along ", dim, ": input ", i, " ", t.str(), " does not match input 0 ",
              first.str());
    shape[dim] += t.size(dim);
  }
  // The result has the first input's dtype; others are converted while copied.
  Tensor out = Tensor::empty(shape, first.dtype());
  int64_t start = 0;
  for (const Tensor& t : xs) {
    const int64_t n = t.size(dim);
    if (n > 0) detail::copy_strided(t, out.slice(dim, start, start + n));
    start += n;
  }
  return out;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  SD3_CHECK(ids.defined() && (ids.dtype() == DType::I32 || ids.dtype() == DType::I64),
            "embedding: ids must be i32 or i64, got ", ids.str());
  detail::check_float(table, "embedding", "table");
  SD3_CHECK(table.dim() == 2, "embedding: table must be [V, C], got ", table.str());
  const int64_t vocab = table.size(0), c = table.size(1);
  const std::vector<int64_t> idv = ids.to_ints();
  for (size_t i = 0; i < idv.size(); ++i)
    SD3_CHECK(idv[i] >= 0 && idv[i] < vocab, "embedding: id ", idv[i], " at position ", i,
              " of ids ", ids.str(), " out of range for a table of ", vocab, " rows");
  Shape shape = ids.shape();
  shape.push_back(c);
  // On the CPU activations are f32: rows of an f16/bf16 table are converted as gathered.
  Tensor out = Tensor::empty(shape, DType::F32);
  const int64_t n = static_cast<int64_t>(idv.size());
  if (n == 0 || c == 0) return out;
  float* y = out.data<float>();
  const char* base = static_cast<const char*>(table.raw_data());
  const int64_t es = static_cast<int64_t>(dtype_size(table.dtype()));
#pragma omp parallel for schedule(static) if (n * c >= detail::kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    detail::to_f32_strided(base + idv[i] * table.stride(0) * es, table.dtype(), table.stride(1),
                           y + i * c, c);
  return out;
}

}  // namespace sd3::cpu
