// Internal: row-major matrix products through cuBLASLt, for linear, matmul and
// attention_gemm. See gemm.cu.
#pragma once

#include <cstdint>

#include "engine/dtype.h"

namespace sd3::cuda {

// C[M, N] (row stride ldc) = alpha * A[M, K] (row stride lda) * op(B) (+ bias[N]) (then GELU),
// `batch` times with element offsets stride_a/b/c between consecutive products.
// B is stored [N, K] (b_is_nk, as linear weights: op(B) = B^T) or [K, N] (row stride ldb).
// A and B have dtype ab (f32, f16, bf16); C has dtype c (ab's dtype, or f32 for f16/bf16 A/B);
// bias has C's dtype. Math is f32 (CUBLAS_COMPUTE_32F).
struct GemmDesc {
  int device = 0;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  bool b_is_nk = true;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  DType ab = DType::BF16, cd = DType::BF16;
  const void* bias = nullptr;
  bool gelu_tanh = false;  // GELU (tanh form) epilogue after the bias
  float alpha = 1.0f;
};

void gemm(const GemmDesc& d);
// As gemm, but returns false (running nothing) when cuBLASLt offers no algorithm for the
// descriptor (odd shapes or alignments in f16/bf16); callers then fall back to f32.
bool try_gemm(const GemmDesc& d);

}  // namespace sd3::cuda
