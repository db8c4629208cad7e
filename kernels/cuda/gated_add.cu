// Gated residual add of the MMDiT blocks: out[b, l, c] = x[b, l, c] + gate[b, c] * y[b, l, c].
//
// x, y [B, L, C] (any strides: gathered if not contiguous), gate [B, C] with any row stride
// (the chunks of the adaLN modulation output are strided views). Math in f32, out in x's
// dtype. Bytes: 2 reads + 1 write of B L C elements (the gate, B C elements, stays in L2):
// 3 B L C sizeof(T). One thread per 16-byte vector of x; C % kVec == 0 keeps a vector inside
// one row, else a scalar kernel runs.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace sd3::cuda {

namespace {

template <class T, int E>
__global__ void gated_add_kernel(T* __restrict__ out, const T* __restrict__ x,
                                 const T* __restrict__ y, AnyPtr gate, int64_t gate_stride,
                                 int64_t n, int64_t LC, int C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * E;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * E; i < n;
       i += stride) {
    const int64_t b = i / LC;
    const int c = static_cast<int>(i % C);
    const int64_t g0 = b * gate_stride + c;
    if constexpr (E > 1) {
      Vec<T> vx, vy, vo;
      vx.load_nc(x + i);
      vy.load_nc(y + i);
#pragma unroll
      for (int k = 0; k < E; ++k)
        vo.v[k] = from_f32<T>(to_f32(vx.v[k]) + gate[g0 + k] * to_f32(vy.v[k]));
      vo.store(out + i);
    } else {
      out[i] = from_f32<T>(to_f32(x[i]) + gate[g0] * to_f32(y[i]));
    }
  }
}

}  // namespace

Tensor gated_add(const Tensor& x_in, const Tensor& gate_in, const Tensor& y_in) {
  check_float_input(x_in, "gated_add", "x");
  check_float_input(y_in, "gated_add", "y");
  check_float_input(gate_in, "gated_add", "gate");
  SD3_CHECK(x_in.dim() == 3 && x_in.shape() == y_in.shape(), "gated_add: x ", x_in.str(), " and y ",
            y_in.str(), " must be the same [B, L, C]");
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2);
  SD3_CHECK(gate_in.dim() == 2 && gate_in.size(0) == B && gate_in.size(1) == C, "gated_add: gate ",
            gate_in.str(), " must be [", B, ", ", C, "]");
  Tensor x = contiguous(x_in);
  Tensor y = y_in.dtype() == x.dtype() ? contiguous(y_in) : cast(y_in, x.dtype());
  Tensor gate = gate_in.stride(1) == 1 ? gate_in : contiguous(gate_in);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_float(x.dtype(), "gated_add", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kV = Vec<T>::kVec;
    const bool vec = C % kV == 0 && aligned16(x.raw_data()) && aligned16(y.raw_data());
    auto* o = static_cast<T*>(out.raw_data());
    auto* px = static_cast<const T*>(x.raw_data());
    auto* py = static_cast<const T*>(y.raw_data());
    if (vec) {
      gated_add_kernel<T, kV><<<grid_for(n / kV, 256, 8192), 256, 0, st>>>(
          o, px, py, any_ptr(gate), gate.stride(0), n, L * C, static_cast<int>(C));
    } else {
      gated_add_kernel<T, 1><<<grid_for(n, 256, 8192), 256, 0, st>>>(
          o, px, py, any_ptr(gate), gate.stride(0), n, L * C, static_cast<int>(C));
    }
    SD3_LAUNCH_CHECK("gated_add_kernel");
  });
  return out;
}

}  // namespace sd3::cuda
