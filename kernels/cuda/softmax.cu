// Softmax over the last dimension: y_j = exp(x_j - max) / sum_k exp(x_k - max), in f32.
//
// Bytes: the row is read twice (the second read mostly from L2) and written once:
// about 2 N C sizeof(T) from memory. One block per row; the first pass keeps a running
// (max, sum) pair per thread (online softmax), merged across the block; the second pass
// writes. Used by the unfused attention path and attention_gemm's scores (which also apply
// scale, bias and the causal mask: see attention_gemm.cu).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T>
__global__ void softmax_kernel(T* __restrict__ out, const T* __restrict__ x, int C) {
  __shared__ float red[32];
  const T* xr = x + static_cast<int64_t>(blockIdx.x) * C;
  T* orow = out + static_cast<int64_t>(blockIdx.x) * C;
  float m = -INFINITY, s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = to_f32(xr[c]);
    if (v == -INFINITY) continue;  // masked: contributes nothing (and exp(-inf - -inf) is NaN)
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  const float row_max = block_max(m, red);
  s = m == -INFINITY ? 0.0f : s * expf(m - row_max);
  const float row_sum = block_sum(s, red);
  const float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    orow[c] = from_f32<T>(row_max == -INFINITY ? 0.0f : expf(to_f32(xr[c]) - row_max) * inv);
}

}  // namespace

Tensor softmax(const Tensor& x_in) {
  check_float_input(x_in, "softmax", "x");
  SD3_CHECK(x_in.dim() >= 1, "softmax of a scalar");
  Tensor x = contiguous(x_in);
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (rows == 0) return out;
  SD3_CHECK(rows < (1LL << 31) && C < (1LL << 31), "softmax: ", x.str(), " too large");
  cudaStream_t st = stream_for(x);
  const int threads = C >= 1024 ? 512 : C >= 256 ? 256 : 128;
  dispatch_float(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T><<<static_cast<unsigned>(rows), threads, 0, st>>>(
        static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), static_cast<int>(C));
    SD3_LAUNCH_CHECK("softmax_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
