// Matrix products through cuBLASLt: linear (x W^T + bias, optional GELU epilogue) and matmul.
//
// Math: f32 accumulation (CUBLAS_COMPUTE_32F) on f16/bf16 tensor cores, or plain f32; the
// bias add and the GELU (tanh form, the MMDiT MLP's) run in cuBLASLt's epilogue, so the
// product is written once. Other activations (erf GELU, SiLU, quick GELU) follow as a
// separate elementwise kernel. FLOPs: 2 M N K.
//
// Row-major to cuBLASLt's column-major: C = A op(B) is computed as C^T = op(B)^T A^T, whose
// column-major operands are B (transposed when stored [N, K]) and A as stored.
//
// Note [cuBLASLt algorithm cache]
// The heuristic query costs tens of microseconds, so its answer is cached per shape, dtype,
// epilogue and operand alignment (cuBLASLt assumes 256-byte aligned operands unless told;
// the real alignment of each operand is passed as a preference and is part of the key). The
// workspace (32 MiB per device) comes once from the caching allocator. A half-precision
// shape cuBLASLt has no algorithm for (odd leading dimensions) is computed in f32 and rounded.
//
// Note [Batched operand alignment]
// In a strided batch, matrix i of an operand starts at ptr + i * stride * element size, so the
// alignment every matrix keeps is the largest power of two dividing both the base address and
// the stride in bytes: attention's per-head output stride of D = 80 bf16 elements is 160 B,
// only 32-byte aligned even when the base is 256-byte aligned. That minimum is what is
// declared for A, B and C/D when batch > 1. The bias vector of an epilogue is read with wide
// loads too: one not 16-byte aligned (a slice of a larger tensor) is first copied into a
// fresh block, which the allocator hands out 256-byte aligned.
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/libraries.h"

namespace sd3::cuda {

namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("gemm: unsupported dtype ", dtype_name(t));
  }
}

uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

// The alignment every matrix of a strided batch keeps: Note [Batched operand alignment]. A
// stride of 0 (one matrix shared by the whole batch) costs nothing.
uint32_t batch_alignment(const void* p, int64_t batch, int64_t stride, DType dt) {
  uint32_t al = alignment(p);
  if (batch <= 1 || stride == 0) return al;
  const uint64_t bytes = static_cast<uint64_t>(stride < 0 ? -stride : stride) * dtype_size(dt);
  while (al > 1 && (bytes % al) != 0) al >>= 1;
  return al;
}

using AlgoKey =
    std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
               int64_t, int, int, int, int, int, uint32_t, uint32_t, uint32_t, uint32_t>;

struct LtCache {
  std::mutex mu;
  std::map<AlgoKey, cublasLtMatmulAlgo_t> algos;
  Scratch workspace[64];
};
LtCache& lt_cache() {
  static LtCache* c = new LtCache();  // never destroyed: Note [Caching allocator]
  return *c;
}

// RAII holders for the cuBLASLt descriptors of one call.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

void set_batch(cublasLtMatrixLayout_t l, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  const int32_t count = static_cast<int32_t>(batch);
  SD3_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                    sizeof count));
  SD3_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                    &stride, sizeof stride));
}

}  // namespace

void gemm(const GemmDesc& d) {
  SD3_CHECK(try_gemm(d), "gemm: cuBLASLt has no algorithm for ", d.M, "x", d.N, "x", d.K,
            " (batch ", d.batch, ") in ", dtype_name(d.ab), " -> ", dtype_name(d.cd),
            d.bias ? " with bias" : "", d.gelu_tanh ? " with GELU" : "");
}

bool try_gemm(const GemmDesc& d) {
  SD3_CHECK(d.M > 0 && d.N > 0 && d.K > 0 && d.batch > 0, "gemm: empty product ", d.M, "x", d.N,
            "x", d.K);
  SD3_CHECK(d.batch < (1LL << 31), "gemm: batch ", d.batch, " too large");
  cublasLtHandle_t h = lt_handle(d.device);
  cudaStream_t st = stream(d.device);
  const cudaDataType_t ab = cuda_type(d.ab), cd = cuda_type(d.cd);
  // Column-major view: D^T[N, M] = opA(B-operand)[N, K] * A^T[K, M].
  LtDescs ds;
  SD3_CUBLAS_CHECK(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = d.b_is_nk ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  SD3_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  SD3_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (d.bias && d.gelu_tanh) {
    epi = CUBLASLT_EPILOGUE_GELU_BIAS;
  } else if (d.bias) {
    epi = CUBLASLT_EPILOGUE_BIAS;
  } else if (d.gelu_tanh) {
    epi = CUBLASLT_EPILOGUE_GELU;
  }
  SD3_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  // A bias not 16-byte aligned is read from an aligned copy: Note [Batched operand alignment].
  const void* bias = d.bias;
  Scratch bias_copy;
  if (bias && alignment(bias) < 16) {
    const size_t bytes = static_cast<size_t>(d.N) * dtype_size(d.cd);
    bias_copy = Scratch(d.device, bytes);
    SD3_CUDA_CHECK(cudaMemcpyAsync(bias_copy.get(), bias, bytes, cudaMemcpyDeviceToDevice, st));
    bias = bias_copy.get();
  }
  if (bias) {
    SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof bias));
  }
  // Operand "A" of cuBLASLt is our B: stored [N, K] (col-major K x N, ld ldb, transposed)
  // or [K, N] (col-major N x K, ld ldb).
  if (d.b_is_nk) {
    SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.a, ab, d.K, d.N, d.ldb));
  } else {
    SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.a, ab, d.N, d.K, d.ldb));
  }
  SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.b, ab, d.K, d.M, d.lda));
  SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ds.c, cd, d.N, d.M, d.ldc));
  set_batch(ds.a, d.batch, d.stride_b);
  set_batch(ds.b, d.batch, d.stride_a);
  set_batch(ds.c, d.batch, d.stride_c);

  LtCache& cache = lt_cache();
  // cuBLASLt's "A" is our B and its "B" our A (see the top of the file).
  const uint32_t al_a = batch_alignment(d.b, d.batch, d.stride_b, d.ab),
                 al_b = batch_alignment(d.a, d.batch, d.stride_a, d.ab),
                 al_c = batch_alignment(d.c, d.batch, d.stride_c, d.cd),
                 al_bias = bias ? alignment(bias) : 256;
  const AlgoKey key{d.device,
                    d.M,
                    d.N,
                    d.K,
                    d.batch,
                    d.lda,
                    d.ldb,
                    d.ldc,
                    d.stride_a,
                    d.stride_b,
                    d.stride_c,
                    static_cast<int>(d.ab),
                    static_cast<int>(d.cd),
                    d.b_is_nk ? 1 : 0,
                    static_cast<int>(epi),
                    0,
                    al_a,
                    al_b,
                    al_c,
                    al_bias};
  cublasLtMatmulAlgo_t algo;
  void* workspace = nullptr;
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    Scratch& ws = cache.workspace[d.device];
    if (!ws.get()) ws = Scratch(d.device, kWorkspaceBytes);
    workspace = ws.get();
    auto it = cache.algos.find(key);
    if (it != cache.algos.end()) {
      algo = it->second;
    } else {
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&ds.pref));
      const uint64_t wsb = kWorkspaceBytes;
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
      SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
      cublasLtMatmulHeuristicResult_t res{};
      int found = 0;
      const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(h, ds.op, ds.a, ds.b, ds.c, ds.c,
                                                               ds.pref, 1, &res, &found);
      if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && found == 0) ||
          (hs == CUBLAS_STATUS_SUCCESS && res.state != CUBLAS_STATUS_SUCCESS))
        return false;
      SD3_CUBLAS_CHECK(hs);
      algo = res.algo;
      cache.algos.emplace(key, algo);
    }
  }
  const float alpha = d.alpha, beta = 0.0f;
  SD3_CUBLAS_CHECK(cublasLtMatmul(h, ds.op, &alpha, d.b, ds.a, d.a, ds.b, &beta, d.c, ds.c, d.c,
                                  ds.c, &algo, workspace, kWorkspaceBytes, st));
  return true;
}

// ---- ops --------------------------------------------------------------------------------------

namespace {

Tensor as_dtype(const Tensor& t, DType dt) {
  return t.dtype() == dt ? contiguous(t) : cast(t, dt);
}

}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, Activation act) {
  check_float_input(x_in, "linear", "x");
  check_float_input(w_in, "linear", "weight");
  SD3_CHECK(w_in.dim() == 2, "linear: weight ", w_in.str(), " must be [out, in]");
  SD3_CHECK(x_in.dim() >= 1 && x_in.size(-1) == w_in.size(1), "linear: x ", x_in.str(),
            " does not match weight ", w_in.str());
  const int64_t N = w_in.size(0), K = w_in.size(1);
  SD3_CHECK(!bias_in.defined() || bias_in.numel() == N, "linear: bias ", bias_in.str(), " for ", N,
            " outputs");
  Tensor x = contiguous(x_in);
  const DType dt = x.dtype();
  Tensor w = as_dtype(w_in, dt);
  Tensor bias = bias_in.defined() ? as_dtype(bias_in, dt) : Tensor();
  Shape shape = x.shape();
  shape.back() = N;
  Tensor out = Tensor::empty(shape, dt, x.device());
  const int64_t M = K ? x.numel() / K : 0;
  if (out.numel() == 0) return out;
  SD3_CHECK(K > 0, "linear: zero-width input ", x.str());
  GemmDesc d;
  d.device = x.device().index;
  d.M = M;
  d.N = N;
  d.K = K;
  d.a = x.raw_data();
  d.lda = K;
  d.b = w.raw_data();
  d.ldb = K;
  d.b_is_nk = true;
  d.c = out.raw_data();
  d.ldc = N;
  d.ab = d.cd = dt;
  d.bias = bias.defined() ? bias.raw_data() : nullptr;
  d.gelu_tanh = act == Activation::GeluTanh;
  if (!try_gemm(d)) {
    SD3_CHECK(dt != DType::F32, "linear: cuBLASLt has no f32 algorithm for ", x.str(), " x ",
              w.str());
    // No half-precision algorithm for this shape: compute in f32 and round once.
    return cast(cuda::linear(cast(x, DType::F32), cast(w, DType::F32),
                             bias.defined() ? cast(bias, DType::F32) : Tensor(), act),
                dt);
  }
  if (act != Activation::None && act != Activation::GeluTanh) return cuda::activation(out, act);
  return out;
}

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  check_float_input(a_in, "matmul", "a");
  check_float_input(b_in, "matmul", "b");
  SD3_CHECK(a_in.dim() >= 2 && a_in.dim() == b_in.dim(), "matmul: ", a_in.str(), " @ ", b_in.str(),
            " need equal ranks >= 2");
  const int64_t r = a_in.dim();
  const int64_t M = a_in.size(r - 2), K = a_in.size(r - 1), N = b_in.size(r - 1);
  SD3_CHECK(b_in.size(r - 2) == K, "matmul: inner sizes of ", a_in.str(), " @ ", b_in.str(),
            " differ");
  int64_t batch = 1;
  Shape shape = a_in.shape();
  for (int64_t i = 0; i < r - 2; ++i) {
    SD3_CHECK(a_in.size(i) == b_in.size(i), "matmul: leading dimensions of ", a_in.str(), " @ ",
              b_in.str(), " differ");
    batch *= a_in.size(i);
  }
  shape[r - 1] = N;
  Tensor a = contiguous(a_in);
  const DType dt = a.dtype();
  Tensor b = as_dtype(b_in, dt);
  Tensor out = Tensor::empty(shape, dt, a.device());
  if (out.numel() == 0) return out;
  if (K == 0) {
    out.fill(0.0f);
    return out;
  }
  GemmDesc d;
  d.device = a.device().index;
  d.M = M;
  d.N = N;
  d.K = K;
  d.batch = batch;
  d.a = a.raw_data();
  d.lda = K;
  d.stride_a = M * K;
  d.b = b.raw_data();
  d.ldb = N;
  d.stride_b = K * N;
  d.b_is_nk = false;
  d.c = out.raw_data();
  d.ldc = N;
  d.stride_c = M * N;
  d.ab = d.cd = dt;
  if (!try_gemm(d)) {
    SD3_CHECK(dt != DType::F32, "matmul: cuBLASLt has no f32 algorithm for ", a.str(), " @ ",
              b.str());
    return cast(cuda::matmul(cast(a, DType::F32), cast(b, DType::F32)), dt);
  }
  return out;
}

}  // namespace sd3::cuda
