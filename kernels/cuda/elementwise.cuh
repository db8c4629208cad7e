// Internal: the elementwise machinery shared by elementwise.cu, activation.cu and others:
// map2(a, b, op) runs out = op(a, b) with broadcasting (b may be undefined for unary maps),
// vectorised when both inputs are contiguous, same-shape and of the output dtype.
#pragma once

#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace sd3::cuda {

constexpr int kMaxStridedRank = 8;

// Sizes of the output and element strides of up to two inputs (0 along broadcast dims).
struct StridedArgs {
  int rank;
  int64_t size[kMaxStridedRank];
  int64_t stride[2][kMaxStridedRank];
  AnyPtr in[2];
};

// ---- two-input map with broadcasting -------------------------------------------------------

// ---- the vectorised same-shape path ---------------------------------------------------------

template <class T, class Op>
__global__ void map2_contig_kernel(T* __restrict__ out, const T* __restrict__ a,
                                   const T* __restrict__ b, int64_t n, Op op) {
  constexpr int kV = Vec<T>::kVec;
  const int64_t nvec = n / kV;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += stride) {
    Vec<T> va, vb, vo;
    va.load_nc(a + i * kV);
    if (b) vb.load_nc(b + i * kV);
#pragma unroll
    for (int k = 0; k < kV; ++k)
      vo.v[k] = from_f32<T>(op(to_f32(va.v[k]), b ? to_f32(vb.v[k]) : 0.0f));
    vo.store(out + i * kV);
  }
  for (int64_t i = nvec * kV + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride)
    out[i] = from_f32<T>(op(to_f32(a[i]), b ? to_f32(b[i]) : 0.0f));
}

// ---- the strided path -----------------------------------------------------------------------

template <class TO, class Op>
__global__ void map2_strided_kernel(TO* __restrict__ out, StridedArgs args, int64_t n, Op op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int d = args.rank - 1; d >= 0; --d) {
      const int64_t c = rem % args.size[d];
      rem /= args.size[d];
      oa += c * args.stride[0][d];
      ob += c * args.stride[1][d];
    }
    const float vb = args.in[1].p ? args.in[1][ob] : 0.0f;
    out[i] = from_f32<TO>(op(args.in[0][oa], vb));
  }
}

struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SubOp {
  __device__ float operator()(float a, float b) const { return a - b; }
};
struct MulOp {
  __device__ float operator()(float a, float b) const { return a * b; }
};
struct AxpbyOp {
  float alpha, beta;
  __device__ float operator()(float a, float b) const { return alpha * a + beta * b; }
};
struct AffineOp {  // x * s + t
  float s, t;
  __device__ float operator()(float a, float) const { return a * s + t; }
};

// Element strides of t viewed with `out` shape (0 along broadcast dimensions).
inline void fill_strides(const Tensor& t, const Shape& out, int64_t* stride) {
  const size_t r = out.size(), off = r - t.shape().size();
  for (size_t i = 0; i < r; ++i)
    stride[i] = (i < off || t.shape()[i - off] == 1) ? 0 : t.strides()[i - off];
}

template <class Op>
Tensor map2(const Tensor& a, const Tensor& b, const char* name, Op op) {
  check_float_input(a, name, "first input");
  if (b.defined()) {
    check_float_input(b, name, "second input");
    SD3_CHECK(a.device() == b.device(), name, ": inputs on different devices");
  }
  const Shape shape = b.defined() ? broadcast_shapes(a.shape(), b.shape(), name) : a.shape();
  SD3_CHECK(shape.size() <= static_cast<size_t>(kMaxStridedRank), name, ": rank ", shape.size(),
            " above ", kMaxStridedRank);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t st = stream_for(a);
  const bool fast =
      a.is_contiguous() && a.shape() == shape &&
      (!b.defined() || (b.is_contiguous() && b.shape() == shape && b.dtype() == a.dtype())) &&
      aligned16(a.raw_data()) && (!b.defined() || aligned16(b.raw_data()));
  dispatch_float(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.raw_data());
    if (fast) {
      const T* pa = static_cast<const T*>(a.raw_data());
      const T* pb = b.defined() ? static_cast<const T*>(b.raw_data()) : nullptr;
      map2_contig_kernel<T, Op>
          <<<grid_for(n / Vec<T>::kVec + 1, 256, 4096), 256, 0, st>>>(o, pa, pb, n, op);
      SD3_LAUNCH_CHECK("map2_contig_kernel");
    } else {
      StridedArgs args{};
      args.rank = static_cast<int>(shape.size());
      for (size_t i = 0; i < shape.size(); ++i) args.size[i] = shape[i];
      args.in[0] = any_ptr(a);
      fill_strides(a, shape, args.stride[0]);
      if (b.defined()) {
        args.in[1] = any_ptr(b);
        fill_strides(b, shape, args.stride[1]);
      }
      map2_strided_kernel<T, Op><<<grid_for(n, 256, 4096), 256, 0, st>>>(o, args, n, op);
      SD3_LAUNCH_CHECK("map2_strided_kernel");
    }
  });
  return out;
}

}  // namespace sd3::cuda
