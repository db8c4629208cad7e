// conv2d through cuDNN (VAE convolutions, patch embedding): NCHW tensors, cross-correlation,
// f32 accumulation; the bias is added in place afterwards (add_channel_bias_kernel).
//
// FLOPs: 2 B Cout Ho Wo Cin kh kw. Bytes: x, w and y once each at best.
//
// Note [cuDNN algorithm cache]
// The first call for a shape (dtype, sizes, stride, padding) runs cudnnFindConvolutionForward-
// AlgorithmEx on the real buffers with a workspace of at most kFindWorkspace bytes and caches
// the fastest algorithm that succeeded, with its workspace size. Later calls take the cached
// algorithm and a workspace from the caching allocator.
//
// Math: the search runs with tensor-op math allowed for f16/bf16 and FMA math for f32. Each
// result names the math type it was timed with (perf.mathType), and the workspace it reports
// (perf.memory) is that variant's, so the plan stores the math type and every later call sets
// it on the descriptor before cudnnConvolutionForward: the kernel that runs is the one timed.
// f32 takes only results timed with CUDNN_FMA_MATH. CUDNN_DEFAULT_MATH is not enough: on
// Ampere and later it lets cuDNN run f32 data through TF32 tensor cores (10-bit mantissa),
// while FMA math is restricted to FMA instructions, i.e. true f32 (this is why frameworks that
// disable TF32 set FMA math for f32 convolutions). No dtype takes
// CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, which may down-convert operands to f16 (bf16's range
// would be lost).
//
// When cuDNN has no algorithm for a half-precision shape (bf16 NCHW support varies by
// version), the shape is cached as "compute in f32" and runs on f32 copies, converted back:
// slower, never wrong. Asymmetric padding (which cuDNN does not take) is applied by pad2d
// first. The bias is added in place by a small kernel of
// ours (one pass over y) rather than cudnnAddTensor, whose bf16 support is not documented.
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/libraries.h"

namespace sd3::cuda {

namespace {

constexpr size_t kFindWorkspace = 256u << 20;

cudnnDataType_t dnn_type(DType t) {
  switch (t) {
    case DType::F32: return CUDNN_DATA_FLOAT;
    case DType::F16: return CUDNN_DATA_HALF;
    case DType::BF16: return CUDNN_DATA_BFLOAT16;
    default: fail("conv2d: unsupported dtype ", dtype_name(t));
  }
}

struct ConvPlan {
  bool use_f32 = false;  // no algorithm in the tensor's own dtype: compute on f32 copies
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  cudnnMathType_t math = CUDNN_FMA_MATH;  // the math type `algo` was timed with
  size_t workspace = 0;                   // bytes `algo` needs under `math`
};

using ConvKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int64_t>;

struct ConvCache {
  std::mutex mu;
  std::map<ConvKey, ConvPlan> plans;
};
ConvCache& conv_cache() {
  static ConvCache* c = new ConvCache();  // never destroyed: Note [Caching allocator]
  return *c;
}

struct DnnDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, b = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  DnnDescs() {
    SD3_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    SD3_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    SD3_CUDNN_CHECK(cudnnCreateTensorDescriptor(&b));
    SD3_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    SD3_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
  }
  ~DnnDescs() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(b);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  DnnDescs(const DnnDescs&) = delete;
  DnnDescs& operator=(const DnnDescs&) = delete;
};

int as_int(int64_t v, const char* what) {
  SD3_CHECK(v >= 0 && v < (1LL << 31), "conv2d: ", what, " ", v, " exceeds cuDNN's int range");
  return static_cast<int>(v);
}

void set_descs(DnnDescs& d, DType dt, const Tensor& x, const Tensor& w, int64_t pad_h,
               int64_t pad_w, int64_t stride, const Shape& yshape) {
  const cudnnDataType_t t = dnn_type(dt);
  SD3_CUDNN_CHECK(cudnnSetTensor4dDescriptor(
      d.x, CUDNN_TENSOR_NCHW, t, as_int(x.size(0), "batch"), as_int(x.size(1), "channels"),
      as_int(x.size(2), "height"), as_int(x.size(3), "width")));
  SD3_CUDNN_CHECK(cudnnSetFilter4dDescriptor(
      d.w, t, CUDNN_TENSOR_NCHW, as_int(w.size(0), "out channels"),
      as_int(w.size(1), "in channels"), as_int(w.size(2), "kernel height"),
      as_int(w.size(3), "kernel width")));
  SD3_CUDNN_CHECK(cudnnSetTensor4dDescriptor(
      d.y, CUDNN_TENSOR_NCHW, t, as_int(yshape[0], "batch"), as_int(yshape[1], "channels"),
      as_int(yshape[2], "height"), as_int(yshape[3], "width")));
  SD3_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.b, CUDNN_TENSOR_NCHW, t, 1,
                                             as_int(yshape[1], "channels"), 1, 1));
  SD3_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
      d.conv, as_int(pad_h, "padding"), as_int(pad_w, "padding"), as_int(stride, "stride"),
      as_int(stride, "stride"), 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  // The math types the search may try; the one that runs is the plan's (Note [cuDNN algorithm
  // cache]).
  SD3_CUDNN_CHECK(cudnnSetConvolutionMathType(
      d.conv, dt == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
}

// Whether a search result timed with math type `m` may run on `dt` data: true f32 only for f32
// (Note [cuDNN algorithm cache]), and never a conversion of the operands.
bool math_allowed(DType dt, cudnnMathType_t m) {
  if (dt == DType::F32) return m == CUDNN_FMA_MATH;
  return m != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

// Finds the fastest algorithm for these descriptors; false when none works.
bool find_algo(int dev, DnnDescs& d, const Tensor& x, const Tensor& w, Tensor& y, ConvPlan* plan) {
  cudnnHandle_t h = dnn_handle(dev);
  Scratch ws(dev, kFindWorkspace);
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int found = 0;
  const cudnnStatus_t s = cudnnFindConvolutionForwardAlgorithmEx(
      h, d.x, x.raw_data(), d.w, w.raw_data(), d.conv, d.y, y.raw_data(),
      CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf, ws.get(), kFindWorkspace);
  // Half precision: any refusal means "no algorithm for this dtype" (the f32 fallback).
  if (s != CUDNN_STATUS_SUCCESS && (s == CUDNN_STATUS_NOT_SUPPORTED || x.dtype() != DType::F32))
    return false;
  SD3_CUDNN_CHECK(s);
  for (int i = 0; i < found; ++i) {  // sorted fastest first
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= kFindWorkspace &&
        math_allowed(x.dtype(), perf[i].mathType)) {
      plan->algo = perf[i].algo;
      plan->math = perf[i].mathType;
      plan->workspace = perf[i].memory;
      return true;
    }
  }
  return false;
}

template <class T>
__global__ void add_channel_bias_kernel(T* __restrict__ y, AnyPtr bias, int64_t n, int64_t S,
                                        int C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>((i / S) % C);
    y[i] = from_f32<T>(to_f32(y[i]) + bias[c]);
  }
}

}  // namespace

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in,
              const Conv2dOptions& opt) {
  check_float_input(x_in, "conv2d", "x");
  check_float_input(w_in, "conv2d", "weight");
  SD3_CHECK(x_in.dim() == 4 && w_in.dim() == 4, "conv2d: x ", x_in.str(), " and weight ",
            w_in.str(), " must be 4-D");
  SD3_CHECK(x_in.size(1) == w_in.size(1), "conv2d: x ", x_in.str(), " has ", x_in.size(1),
            " channels, weight ", w_in.str(), " expects ", w_in.size(1));
  SD3_CHECK(opt.stride >= 1, "conv2d: stride ", opt.stride);
  SD3_CHECK(opt.pad_top >= 0 && opt.pad_bottom >= 0 && opt.pad_left >= 0 && opt.pad_right >= 0,
            "conv2d: negative padding");
  const int64_t Cout = w_in.size(0);
  SD3_CHECK(!bias_in.defined() || bias_in.numel() == Cout, "conv2d: bias ", bias_in.str(), " for ",
            Cout, " output channels");
  const DType dt = x_in.dtype();
  Tensor x = contiguous(x_in);
  int64_t ph = opt.pad_top, pw = opt.pad_left;
  if (opt.pad_top != opt.pad_bottom || opt.pad_left != opt.pad_right) {
    x = pad2d(x, opt.pad_left, opt.pad_right, opt.pad_top, opt.pad_bottom, 0.0f);
    ph = pw = 0;
  }
  Tensor w = w_in.dtype() == dt ? contiguous(w_in) : cast(w_in, dt);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), kh = w.size(2), kw = w.size(3);
  SD3_CHECK(H + 2 * ph >= kh && W + 2 * pw >= kw, "conv2d: kernel ", kh, "x", kw,
            " larger than the padded input ", x.str());
  const Shape yshape{B, Cout, (H + 2 * ph - kh) / opt.stride + 1,
                     (W + 2 * pw - kw) / opt.stride + 1};
  Tensor y = Tensor::empty(yshape, dt, x.device());
  if (y.numel() == 0) return y;
  const int dev = x.device().index;
  cudnnHandle_t h = dnn_handle(dev);
  stream(dev);

  const ConvKey key{dev,        static_cast<int>(dt), B, x.size(1), H, W, Cout, kh, kw,
                    opt.stride, ph * 4096 + pw};
  ConvCache& cache = conv_cache();
  ConvPlan plan;
  bool have = false;
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.plans.find(key);
    if (it != cache.plans.end()) {
      plan = it->second;
      have = true;
    }
  }
  DnnDescs d;
  if (!have) {
    set_descs(d, dt, x, w, ph, pw, opt.stride, yshape);
    if (!find_algo(dev, d, x, w, y, &plan)) {
      SD3_CHECK(dt != DType::F32,
                "conv2d: cuDNN has no f32 algorithm with FMA math (TF32 excluded) for ", x.str(),
                " * ", w.str());
      plan.use_f32 = true;
    }
    std::lock_guard<std::mutex> lock(cache.mu);
    cache.plans.emplace(key, plan);
  }
  if (plan.use_f32) {
    Tensor y32 = cuda::conv2d(cast(x, DType::F32), cast(w, DType::F32),
                              bias_in.defined() ? cast(bias_in, DType::F32) : Tensor(),
                              Conv2dOptions{opt.stride, ph, ph, pw, pw});
    return cast(y32, dt);
  }
  set_descs(d, dt, x, w, ph, pw, opt.stride, yshape);
  // Run the variant that was timed: its math type, with the workspace it reported.
  SD3_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, plan.math));
  Scratch ws(dev, plan.workspace);
  const float one = 1.0f, zero = 0.0f;
  SD3_CUDNN_CHECK(cudnnConvolutionForward(h, &one, d.x, x.raw_data(), d.w, w.raw_data(), d.conv,
                                          plan.algo, ws.get(), plan.workspace, &zero, d.y,
                                          y.raw_data()));
  if (bias_in.defined()) {
    Tensor b = contiguous(bias_in);
    const int64_t n = y.numel(), S = yshape[2] * yshape[3];
    dispatch_float(dt, "conv2d", [&](auto tag) {
      using T = decltype(tag);
      add_channel_bias_kernel<T><<<grid_for(n, 256, 8192), 256, 0, stream(dev)>>>(
          static_cast<T*>(y.raw_data()), any_ptr(b), n, S, static_cast<int>(Cout));
      SD3_LAUNCH_CHECK("add_channel_bias_kernel");
    });
  }
  return y;
}

}  // namespace sd3::cuda
