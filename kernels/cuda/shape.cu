// Shape ops: concat along any dimension (strided 2-D copies on the stream) and embedding
// (row gather of a [V, C] table by integer ids).
//
// concat: out viewed as [outer, total * inner]; input i fills columns [off_i, off_i + n_i)
//   of every outer row: one cudaMemcpy2DAsync per input (a cudaMemcpyAsync when outer = 1).
//   Bytes: read + write of every input.
// embedding: out[b, l, :] = table[ids[b, l], :]. Bytes: B L C reads of the table and writes.
//   The ids (a prompt's tokens: tiny) are checked on the host first, as the CPU op does, so an
//   id outside [0, V) is an error naming it; the kernel still writes NaN rather than read out
//   of bounds should one slip through.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T, class I>
__global__ void embedding_kernel(T* __restrict__ out, const I* __restrict__ ids,
                                 const T* __restrict__ table, int64_t n, int64_t C, int64_t V) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tok = i / C, c = i % C;
    const int64_t id = static_cast<int64_t>(ids[tok]);
    out[i] = (id >= 0 && id < V) ? table[id * C + c] : from_f32<T>(NAN);
  }
}

}  // namespace

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  SD3_CHECK(!xs.empty(), "concat of no tensors");
  const Tensor& first = xs[0];
  SD3_CHECK(first.defined() && first.device().is_cuda(), "concat: ", first.str(),
            " is not a CUDA tensor");
  dim = wrap_dim(dim, first.dim());
  Shape shape = first.shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    SD3_CHECK(t.defined() && t.dim() == first.dim(), "concat: ", t.str(), " and ", first.str(),
              " differ in rank");
    for (int64_t d = 0; d < first.dim(); ++d)
      SD3_CHECK(d == dim || t.size(d) == first.size(d), "concat along ", dim, ": ", t.str(),
                " and ", first.str(), " differ in dimension ", d);
    total += t.size(dim);
  }
  shape[dim] = total;
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  if (out.numel() == 0) return out;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < first.dim(); ++d) inner *= shape[d];
  const size_t es = dtype_size(first.dtype());
  cudaStream_t st = stream_for(first);
  int64_t off = 0;
  for (const Tensor& t : xs) {
    const int64_t n = t.size(dim);
    if (n > 0 && outer > 0 && inner > 0) {
      Tensor in = t.dtype() == first.dtype() ? contiguous(t) : cast(t, first.dtype());
      char* dst = static_cast<char*>(out.raw_data()) + off * inner * es;
      if (outer == 1) {
        // One row: a plain copy. cudaMemcpy2DAsync would reject a row wider than the device's
        // maximum pitch (cudaDevAttrMaxPitch, about 2 GiB), which a flat concat can exceed.
        SD3_CUDA_CHECK(
            cudaMemcpyAsync(dst, in.raw_data(), n * inner * es, cudaMemcpyDeviceToDevice, st));
      } else {
        SD3_CUDA_CHECK(cudaMemcpy2DAsync(dst, total * inner * es, in.raw_data(), n * inner * es,
                                         n * inner * es, outer, cudaMemcpyDeviceToDevice, st));
      }
    }
    off += n;
  }
  return out;
}

Tensor embedding(const Tensor& ids_in, const Tensor& table_in) {
  SD3_CHECK(ids_in.defined() && (ids_in.dtype() == DType::I32 || ids_in.dtype() == DType::I64),
            "embedding: ids ", ids_in.str(), " must be i32 or i64");
  check_float_input(table_in, "embedding", "table");
  SD3_CHECK(table_in.dim() == 2, "embedding: table ", table_in.str(), " must be [V, C]");
  Tensor ids = contiguous(ids_in);
  Tensor table = contiguous(table_in);
  const int64_t V = table.size(0), C = table.size(1);
  const std::vector<int64_t> idv = ids.to_ints();  // synchronises: a once-per-prompt op
  for (size_t i = 0; i < idv.size(); ++i)
    SD3_CHECK(idv[i] >= 0 && idv[i] < V, "embedding: id ", idv[i], " at position ", i, " of ids ",
              ids.str(), " out of range for a table of ", V, " rows");
  Shape shape = ids.shape();
  shape.push_back(C);
  Tensor out = Tensor::empty(shape, table.dtype(), table.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(table);
  dispatch_float(table.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    auto* o = static_cast<T*>(out.raw_data());
    auto* tb = static_cast<const T*>(table.raw_data());
    if (ids.dtype() == DType::I32) {
      embedding_kernel<T, int32_t><<<grid_for(n, 256, 8192), 256, 0, st>>>(
          o, static_cast<const int32_t*>(ids.raw_data()), tb, n, C, V);
    } else {
      embedding_kernel<T, int64_t><<<grid_for(n, 256, 8192), 256, 0, st>>>(
          o, static_cast<const int64_t*>(ids.raw_data()), tb, n, C, V);
    }
    SD3_LAUNCH_CHECK("embedding_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
