// Elementwise ops: add/sub/mul with numpy broadcasting, scale, add_scalar, axpby, cast, and
// contiguous (a strided gather), plus the host helpers of common.cuh.
//
// Math: out[i] = f(a[i'], b[i'']) in f32, stored in a's dtype (the activation input).
// Bytes: each input element read once (broadcast inputs once per use, from cache), each
// output element written once: (|a| + |b| + |out|) * element size for same-shape inputs.
//
// Two paths. Same-shape contiguous inputs of the output's dtype take a vectorised kernel
// (16-byte loads and stores, grid-stride). Everything else (broadcasting, strided views,
// mixed dtypes) takes a strided kernel that decomposes the flat output index over up to 8
// dimensions and reads the inputs through run-time dtypes.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/elementwise.cuh"

namespace sd3::cuda {

// ---- host helpers of common.cuh -------------------------------------------------------------

AnyPtr any_ptr(const Tensor& t) {
  AnyPtr p;
  if (!t.defined()) return p;
  p.p = t.raw_data();
  p.dtype = t.dtype() == DType::F16 ? 1 : t.dtype() == DType::BF16 ? 2 : 0;
  return p;
}

void check_float_input(const Tensor& t, const char* op, const char* arg) {
  SD3_CHECK(t.defined(), op, ": ", arg, " is undefined");
  SD3_CHECK(t.device().is_cuda(), op, ": ", arg, " ", t.str(), " is not on a CUDA device");
  SD3_CHECK(is_float(t.dtype()), op, ": ", arg, " ", t.str(), " must be f32, f16 or bf16");
}

Tensor param_vector(const Tensor& t, int64_t n, const char* op, const char* arg) {
  if (!t.defined()) return t;
  check_float_input(t, op, arg);
  SD3_CHECK(t.numel() == n, op, ": ", arg, " ", t.str(), " must have ", n, " elements");
  return t.is_contiguous() ? t : contiguous(t);
}

namespace {

// ---- gather (contiguous) and cast ------------------------------------------------------------

template <class E>
__global__ void gather_kernel(E* __restrict__ out, const E* __restrict__ in, StridedArgs args,
                              int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    int64_t rem = i, off = 0;
    for (int d = args.rank - 1; d >= 0; --d) {
      off += (rem % args.size[d]) * args.stride[0][d];
      rem /= args.size[d];
    }
    out[i] = in[off];
  }
}

template <class TI, class TO>
__device__ __forceinline__ TO convert_one(TI v) {
  constexpr bool in_int = std::is_integral<TI>::value, out_int = std::is_integral<TO>::value;
  if constexpr (in_int && out_int) {
    return static_cast<TO>(v);
  } else if constexpr (in_int) {
    return from_f32<TO>(static_cast<float>(v));
  } else if constexpr (out_int) {
    return static_cast<TO>(to_f32(v));
  } else {
    return from_f32<TO>(to_f32(v));
  }
}

template <class TI, class TO>
__global__ void cast_kernel(TO* __restrict__ out, const TI* __restrict__ in, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = convert_one<TI, TO>(in[i]);
}

template <class F>
void dispatch_any(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::F16: f(__half{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    case DType::I32: f(int32_t{}); return;
    case DType::I64: f(int64_t{}); return;
  }
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return map2(a, b, "add", AddOp{});
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return map2(a, b, "sub", SubOp{});
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return map2(a, b, "mul", MulOp{});
}
Tensor scale(const Tensor& x, float s) {
  return map2(x, Tensor(), "scale", AffineOp{s, 0.0f});
}
Tensor add_scalar(const Tensor& x, float s) {
  return map2(x, Tensor(), "add_scalar", AffineOp{1.0f, s});
}
Tensor axpby(const Tensor& x, float a, const Tensor& y, float b) {
  SD3_CHECK(x.shape() == y.shape(), "axpby: shapes ", shape_str(x.shape()), " and ",
            shape_str(y.shape()), " differ");
  return map2(x, y, "axpby", AxpbyOp{a, b});
}

Tensor contiguous(const Tensor& x) {
  SD3_CHECK(x.defined() && x.device().is_cuda(), "contiguous: ", x.str(), " is not a CUDA tensor");
  if (x.is_contiguous()) return x;
  SD3_CHECK(x.dim() <= kMaxStridedRank, "contiguous: rank ", x.dim(), " above ", kMaxStridedRank);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  StridedArgs args{};
  args.rank = static_cast<int>(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) {
    args.size[i] = x.shape()[i];
    args.stride[0][i] = x.strides()[i];
  }
  cudaStream_t st = stream_for(x);
  auto launch = [&](auto tag) {
    using E = decltype(tag);
    gather_kernel<E><<<grid_for(n, 256, 4096), 256, 0, st>>>(
        static_cast<E*>(out.raw_data()), static_cast<const E*>(x.raw_data()), args, n);
    SD3_LAUNCH_CHECK("gather_kernel");
  };
  switch (dtype_size(x.dtype())) {
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: fail("contiguous: unsupported element size of ", x.str());
  }
  return out;
}

Tensor cast(const Tensor& x, DType dtype) {
  SD3_CHECK(x.defined() && x.device().is_cuda(), "cast: ", x.str(), " is not a CUDA tensor");
  if (x.dtype() == dtype) return x.is_contiguous() ? x : contiguous(x);
  Tensor in = x.is_contiguous() ? x : contiguous(x);
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(x);
  dispatch_any(in.dtype(), [&](auto ti) {
    using TI = decltype(ti);
    dispatch_any(dtype, [&](auto to) {
      using TO = decltype(to);
      cast_kernel<TI, TO><<<grid_for(n, 256, 4096), 256, 0, st>>>(
          static_cast<TO*>(out.raw_data()), static_cast<const TI*>(in.raw_data()), n);
      SD3_LAUNCH_CHECK("cast_kernel");
    });
  });
  return out;
}

}  // namespace sd3::cuda
