// Internal to the CUDA backend: status checks, the per-device stream and library handles,
// and scratch memory. Kernel files include this; the engine includes only runtime.h.
//
// Note [One stream per device]
// Every kernel, library call and copy of a device runs on that device's one stream, made on
// first use. Work is therefore ordered without events, and a block freed to the caching
// allocator may be handed out again at once: the next user is queued after the last one.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "engine/tensor.h"

// Forward declarations so that files which need no library headers stay light.
struct cublasLtContext;
struct cublasContext;
struct cudnnContext;

namespace sd3::cuda {

[[noreturn]] void fail_cuda(int code, const char* name, const char* text, const char* call,
                            const char* file, int line);

inline void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess)
    fail_cuda(static_cast<int>(e), cudaGetErrorName(e), cudaGetErrorString(e), call, file, line);
}

// Sets `device` current and returns its stream (created on first use).
cudaStream_t stream(int device);
// stream(t.device().index), checking that t lives on a CUDA device.
cudaStream_t stream_for(const Tensor& t);
const cudaDeviceProp& device_props(int device);

cublasLtContext* cublaslt_handle(int device);  // cublasLtHandle_t, bound to stream(device)
cublasContext* cublas_handle(int device);      // cublasHandle_t, bound to stream(device)
cudnnContext* cudnn_handle(int device);        // cudnnHandle_t, bound to stream(device)

// Device scratch memory from the caching allocator, returned when the handle goes away
// (stream-ordered: see Note [One stream per device]).
class Scratch {
 public:
  Scratch() = default;
  Scratch(int device, size_t bytes);
  ~Scratch();
  Scratch(Scratch&& o) noexcept;
  Scratch& operator=(Scratch&& o) noexcept;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  int device_ = 0;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace sd3::cuda

// Checks a CUDA runtime call; a failure throws sd3::Error naming the call, file and line.
#define SD3_CUDA_CHECK(call) ::sd3::cuda::check_cuda((call), #call, __FILE__, __LINE__)
// After every kernel launch: reports a bad launch configuration at the launch site.
#define SD3_LAUNCH_CHECK(kernel_name) \
  ::sd3::cuda::check_cuda(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
