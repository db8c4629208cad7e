// Image resampling and padding for the VAE ([B, C, H, W], any float dtype):
//   upsample_nearest2x: out[b, c, y, x] = in[b, c, y/2, x/2]
//   pad2d:              out = in shifted by (top, left), `value` outside (pads >= 0).
// Bytes: one read of the input and one write of the output. One thread per output element.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T>
__global__ void upsample2x_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, int H,
                                  int W) {
  const int W2 = 2 * W, H2 = 2 * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int xx = static_cast<int>(i % W2);
    const int y = static_cast<int>((i / W2) % H2);
    const int64_t plane = i / (static_cast<int64_t>(W2) * H2);
    out[i] = x[(plane * H + y / 2) * W + xx / 2];
  }
}

template <class T>
__global__ void pad2d_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, int H, int W,
                             int Ho, int Wo, int top, int left, float value) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int xo = static_cast<int>(i % Wo);
    const int yo = static_cast<int>((i / Wo) % Ho);
    const int64_t plane = i / (static_cast<int64_t>(Wo) * Ho);
    const int y = yo - top, xx = xo - left;
    out[i] =
        (y >= 0 && y < H && xx >= 0 && xx < W) ? x[(plane * H + y) * W + xx] : from_f32<T>(value);
  }
}

}  // namespace

Tensor upsample_nearest2x(const Tensor& x_in) {
  check_float_input(x_in, "upsample_nearest2x", "x");
  SD3_CHECK(x_in.dim() == 4, "upsample_nearest2x: x ", x_in.str(), " must be [B, C, H, W]");
  Tensor x = contiguous(x_in);
  const int64_t H = x.size(2), W = x.size(3);
  Tensor out = Tensor::empty({x.size(0), x.size(1), 2 * H, 2 * W}, x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "upsample_nearest2x", [&](auto tag) {
    using T = decltype(tag);
    upsample2x_kernel<T><<<grid_for(n, 256, 8192), 256, 0, st>>>(
        static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), n,
        static_cast<int>(H), static_cast<int>(W));
    SD3_LAUNCH_CHECK("upsample2x_kernel");
  });
  return out;
}

Tensor pad2d(const Tensor& x_in, int64_t left, int64_t right, int64_t top, int64_t bottom,
             float value) {
  check_float_input(x_in, "pad2d", "x");
  SD3_CHECK(x_in.dim() >= 2, "pad2d: x ", x_in.str(), " needs at least 2 dimensions");
  Tensor x = contiguous(x_in);
  const int64_t H = x.size(-2), W = x.size(-1);
  SD3_CHECK(left >= 0 && right >= 0 && top >= 0 && bottom >= 0, "pad2d: negative padding (", left,
            ", ", right, ", ", top, ", ", bottom, ") of ", x.str());
  const int64_t Ho = H + top + bottom, Wo = W + left + right;
  Shape shape = x.shape();
  shape[shape.size() - 2] = Ho;
  shape[shape.size() - 1] = Wo;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "pad2d", [&](auto tag) {
    using T = decltype(tag);
    pad2d_kernel<T><<<grid_for(n, 256, 8192), 256, 0, st>>>(
        static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), n,
        static_cast<int>(H), static_cast<int>(W), static_cast<int>(Ho), static_cast<int>(Wo),
        static_cast<int>(top), static_cast<int>(left), value);
    SD3_LAUNCH_CHECK("pad2d_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
