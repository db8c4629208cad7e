// Classifier-free guidance fused with the Euler step of the flow-matching sampler:
//
//   v   = v_uncond + s (v_cond - v_uncond)              (cfg_combine)
//   out = x + v (sigma_next - sigma)                     (Euler update with denoised = x - v sigma)
//
// Bytes: three reads and one write of the latent, 4 n sizeof(T); the unfused composition
// (axpby for the combine, axpby for the update) moves 3 + 3 = 6 passes and one launch more.
// One thread per 16-byte vector, grid-stride; inputs of other dtypes or strides are cast /
// gathered to x's dtype first.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T, int E>
__global__ void cfg_euler_kernel(T* __restrict__ out, const T* __restrict__ x,
                                 const T* __restrict__ vc, const T* __restrict__ vu, int64_t n,
                                 float s, float dt) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * E;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * E; i < n;
       i += stride) {
    if constexpr (E > 1) {
      Vec<T> a, b, c, o;
      a.load_nc(x + i);
      b.load_nc(vc + i);
      c.load_nc(vu + i);
#pragma unroll
      for (int k = 0; k < E; ++k) {
        const float u = to_f32(c.v[k]);
        const float v = u + s * (to_f32(b.v[k]) - u);
        o.v[k] = from_f32<T>(to_f32(a.v[k]) + v * dt);
      }
      o.store(out + i);
    } else {
      const float u = to_f32(vu[i]);
      const float v = u + s * (to_f32(vc[i]) - u);
      out[i] = from_f32<T>(to_f32(x[i]) + v * dt);
    }
  }
}

}  // namespace

Tensor cfg_euler_step(const Tensor& x_in, const Tensor& v_cond_in, const Tensor& v_uncond_in,
                      float s, float sigma, float sigma_next) {
  check_float_input(x_in, "cfg_euler_step", "x");
  check_float_input(v_cond_in, "cfg_euler_step", "v_cond");
  check_float_input(v_uncond_in, "cfg_euler_step", "v_uncond");
  SD3_CHECK(x_in.shape() == v_cond_in.shape() && x_in.shape() == v_uncond_in.shape(),
            "cfg_euler_step: shapes ", x_in.str(), ", ", v_cond_in.str(), ", ", v_uncond_in.str(),
            " differ");
  Tensor x = contiguous(x_in);
  Tensor vc = cast(v_cond_in, x.dtype());  // contiguous, x's dtype
  Tensor vu = cast(v_uncond_in, x.dtype());
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "cfg_euler_step", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kV = Vec<T>::kVec;
    auto* o = static_cast<T*>(out.raw_data());
    auto* px = static_cast<const T*>(x.raw_data());
    auto* pc = static_cast<const T*>(vc.raw_data());
    auto* pu = static_cast<const T*>(vu.raw_data());
    const bool vec = n % kV == 0 && aligned16(px) && aligned16(pc) && aligned16(pu);
    if (vec) {
      cfg_euler_kernel<T, kV>
          <<<grid_for(n / kV, 256, 8192), 256, 0, st>>>(o, px, pc, pu, n, s, sigma_next - sigma);
    } else {
      cfg_euler_kernel<T, 1>
          <<<grid_for(n, 256, 8192), 256, 0, st>>>(o, px, pc, pu, n, s, sigma_next - sigma);
    }
    SD3_LAUNCH_CHECK("cfg_euler_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
