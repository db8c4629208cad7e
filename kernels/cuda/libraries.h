// Internal: status checks for cuBLAS(Lt) and cuDNN calls. Only gemm.cu, conv.cu and
// attention_gemm.cu include the library headers.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cudnn.h>

#include "kernels/cuda/context.h"

namespace sd3::cuda {

[[noreturn]] void fail_library(const char* library, int code, const char* text, const char* call,
                               const char* file, int line);

inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail_library("cuBLAS", static_cast<int>(s), cublasGetStatusString(s), call, file, line);
}
inline void check_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  if (s != CUDNN_STATUS_SUCCESS)
    fail_library("cuDNN", static_cast<int>(s), cudnnGetErrorString(s), call, file, line);
}

inline cublasLtHandle_t lt_handle(int device) {
  return cublaslt_handle(device);
}
inline cublasHandle_t blas_handle(int device) {
  return cublas_handle(device);
}
inline cudnnHandle_t dnn_handle(int device) {
  return cudnn_handle(device);
}

}  // namespace sd3::cuda

#define SD3_CUBLAS_CHECK(call) ::sd3::cuda::check_cublas((call), #call, __FILE__, __LINE__)
#define SD3_CUDNN_CHECK(call) ::sd3::cuda::check_cudnn((call), #call, __FILE__, __LINE__)
