// Sinusoidal timestep embedding: t [B] -> [B, dim] f32,
//   out[b, i] = cos(t_b f_i), out[b, half + i] = sin(t_b f_i), f_i = exp(-ln(max_period) i / half)
// with half = dim / 2 (an odd dim's last column is 0). Tiny (B x dim values); one thread
// per output. sincosf/expf at full precision: t reaches 1000, so t f_i needs an accurate
// argument reduction.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {
__global__ void timestep_embedding_kernel(float* __restrict__ out, AnyPtr t, int B, int dim,
                                          float neg_log_period) {
  const int half = dim / 2;
  const int64_t n = static_cast<int64_t>(B) * dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(i / dim), j = static_cast<int>(i % dim);
    float v = 0.0f;
    if (j < 2 * half) {
      const int k = j < half ? j : j - half;
      // The reference's f32 roundings: f32(-ln P) * i, / half, exp, then t * freq.
      const float f = expf(neg_log_period * static_cast<float>(k) / static_cast<float>(half));
      const float arg = t[b] * f;
      v = j < half ? cosf(arg) : sinf(arg);
    }
    out[i] = v;
  }
}
}  // namespace

Tensor timestep_embedding(const Tensor& t_in, int64_t dim, float max_period) {
  SD3_CHECK(t_in.defined() && t_in.device().is_cuda(), "timestep_embedding: t ", t_in.str(),
            " is not a CUDA tensor");
  SD3_CHECK(t_in.dim() == 1, "timestep_embedding: t ", t_in.str(), " must be [B]");
  SD3_CHECK(dim > 0 && dim < (1 << 24), "timestep_embedding: bad dim ", dim);
  SD3_CHECK(max_period > 0.0f, "timestep_embedding: max_period must be positive");
  Tensor t = is_float(t_in.dtype()) ? contiguous(t_in) : cast(t_in, DType::F32);
  const int64_t B = t.size(0);
  Tensor out = Tensor::empty({B, dim}, DType::F32, t.device());
  if (out.numel() == 0) return out;
  cudaStream_t st = stream_for(t);
  timestep_embedding_kernel<<<grid_for(out.numel(), 256), 256, 0, st>>>(
      static_cast<float*>(out.raw_data()), any_ptr(t), static_cast<int>(B), static_cast<int>(dim),
      static_cast<float>(-std::log(static_cast<double>(max_period))));
  SD3_LAUNCH_CHECK("timestep_embedding_kernel");
  return out;
}

}  // namespace sd3::cuda
