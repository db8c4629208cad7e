// Patch embedding layout changes of the MMDiT (pure data movement, one pass each):
//
//   patchify:   x [B, C, H, W] -> [B, (H/p)(W/p), C p p], feature f = (c p + py) p + px,
//               out[b, hy w + wx, f] = x[b, c, hy p + py, wx p + px]   (a p x p, stride-p conv's
//               weight order, so patchify + linear == that conv)
//   unpatchify: x [B, h w, p p C], feature f = (py p + px) C + c ->
//               out[b, c, y, X] = x[b, (y/p) w + X/p, ((y%p) p + X%p) C + c]
//
// Bytes: one read and one write of the tensor, 2 n sizeof(T). One thread per output element
// (writes coalesced; reads stride through the source, which for these small latents stays
// in L2).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T>
__global__ void patchify_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, int C,
                                int H, int W, int p) {
  const int w = W / p, h = H / p, F = C * p * p;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const int f = static_cast<int>(i % F);
    const int64_t bt = i / F;
    const int t = static_cast<int>(bt % (static_cast<int64_t>(h) * w));
    const int64_t b = bt / (static_cast<int64_t>(h) * w);
    const int c = f / (p * p), py = (f / p) % p, px = f % p;
    const int y = (t / w) * p + py, xx = (t % w) * p + px;
    out[i] = x[((b * C + c) * H + y) * W + xx];
  }
}

template <class T>
__global__ void unpatchify_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, int C,
                                  int h, int w, int p) {
  const int H = h * p, W = w * p;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const int X = static_cast<int>(i % W);
    const int Y = static_cast<int>((i / W) % H);
    const int64_t bc = i / (static_cast<int64_t>(W) * H);
    const int c = static_cast<int>(bc % C);
    const int64_t b = bc / C;
    const int64_t t = static_cast<int64_t>(Y / p) * w + X / p;
    const int f = ((Y % p) * p + X % p) * C + c;
    out[i] = x[(b * h * w + t) * (static_cast<int64_t>(p) * p * C) + f];
  }
}

}  // namespace

Tensor patchify(const Tensor& x_in, int64_t p) {
  check_float_input(x_in, "patchify", "x");
  SD3_CHECK(x_in.dim() == 4, "patchify: x ", x_in.str(), " must be [B, C, H, W]");
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  SD3_CHECK(p > 0 && H % p == 0 && W % p == 0, "patchify: ", H, "x", W,
            " is not a multiple of the patch size ", p);
  Tensor x = contiguous(x_in);
  Tensor out = Tensor::empty({B, (H / p) * (W / p), C * p * p}, x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "patchify", [&](auto tag) {
    using T = decltype(tag);
    patchify_kernel<T><<<grid_for(n, 256, 8192), 256, 0, st>>>(
        static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), n,
        static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), static_cast<int>(p));
    SD3_LAUNCH_CHECK("patchify_kernel");
  });
  return out;
}

Tensor unpatchify(const Tensor& x_in, int64_t h, int64_t w, int64_t p, int64_t c) {
  check_float_input(x_in, "unpatchify", "x");
  SD3_CHECK(x_in.dim() == 3 && h > 0 && w > 0 && p > 0 && c > 0 && x_in.size(1) == h * w &&
                x_in.size(2) == p * p * c,
            "unpatchify: x ", x_in.str(), " is not [B, ", h, "*", w, ", ", p, "*", p, "*", c, "]");
  Tensor x = contiguous(x_in);
  const int64_t B = x.size(0);
  Tensor out = Tensor::empty({B, c, h * p, w * p}, x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "unpatchify", [&](auto tag) {
    using T = decltype(tag);
    unpatchify_kernel<T><<<grid_for(n, 256, 8192), 256, 0, st>>>(
        static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), n,
        static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), static_cast<int>(p));
    SD3_LAUNCH_CHECK("unpatchify_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
