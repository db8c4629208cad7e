// Private helpers of the CPU kernels: argument checks, f32 staging of inputs and outputs,
// fast dtype conversion of rows, a strided copy, and the broadcasting elementwise driver.
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"

namespace sd3::cpu::detail {

// Dimensions the iteration helpers track (after merging; tensors here have rank <= 6).
constexpr int kMaxRank = 16;

// ---- argument checks ----------------------------------------------------------------------

// Throws unless t is defined and has a float dtype (f32, f16, bf16).
void check_float(const Tensor& t, const char* op, const char* name);
// Throws unless t is undefined or a vector of n elements (weight/bias of n channels).
void check_vector(const Tensor& t, int64_t n, const char* op, const char* name);

// ---- conversion ---------------------------------------------------------------------------

// n elements of dtype `dtype` (float) at src -> f32, vectorised (F16C when the CPU has it).
void to_f32(const void* src, DType dtype, float* dst, int64_t n);
// n f32 -> float dtype `dtype`, round to nearest even.
void from_f32(const float* src, void* dst, DType dtype, int64_t n);
// Same, for strided elements of a float dtype (stride in elements; 0 broadcasts one value).
void to_f32_strided(const void* src, DType dtype, int64_t stride, float* dst, int64_t n);

// t as a contiguous f32 tensor: t itself when it already is one, else a converted copy.
Tensor as_f32(const Tensor& t);
// t [..., cols] as f32 rows with unit column stride, read in place when t is f32 with unit
// stride along the last dimension (else a converted contiguous copy). When the leading
// dimensions collapse into one row stride (contiguous tensors, slices along the last
// dimension), `uniform` is set and row r starts at data + r * ld, so BLAS can read it as a
// matrix; otherwise (e.g. one head of a [B, L, 3, H, D] view) row() walks the strides.
struct RowsF32 {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  bool uniform = true;
  int64_t nlead = 0;
  int64_t lead_sizes[kMaxRank] = {}, lead_strides[kMaxRank] = {};
  Tensor keep;  // owns a converted copy when one was needed
  const float* row(int64_t r) const {
    if (uniform) return data + r * ld;
    int64_t off = 0;
    for (int64_t d = nlead - 1; d >= 0; --d) {
      off += (r % lead_sizes[d]) * lead_strides[d];
      r /= lead_sizes[d];
    }
    return data + off;
  }
};
// need_uniform: copy rather than return non-uniform rows (for BLAS).
RowsF32 rows_f32(const Tensor& t, bool need_uniform = false);

// A float vector (weight/bias [n]) as contiguous f32 values; empty when t is undefined.
std::vector<float> vector_f32(const Tensor& t);

// An output of `shape` and float `dtype` computed in f32: ptr() is the output itself when
// dtype is f32, else an f32 staging buffer converted by finish().
class OutF32 {
 public:
  OutF32(const Shape& shape, DType dtype);
  float* ptr() { return ptr_; }
  Tensor finish();

 private:
  Tensor out_, stage_;
  float* ptr_ = nullptr;
};

// ---- scratch ------------------------------------------------------------------------------

// Note [CPU scratch]
// Temporaries (im2col bands, converted weight blocks, attention score blocks, staging rows)
// are reused across calls instead of allocated per call: a fresh multi-megabyte buffer costs
// page faults and zero-filling on every op (an 8 MiB weight block per linear call showed as
// several milliseconds of kernel time).
enum class ScratchSlot { Rows, Weights, Scores, Columns, kCount };
// `threads` uninitialised buffers of `floats` f32 each, one allocation owned by the calling
// thread (grow-only, kept across calls): thread t of the team uses result + t * floats.
// Valid until the calling thread asks for the same slot again; call it outside parallel
// regions (it may throw when memory runs out).
float* team_scratch(ScratchSlot slot, int threads, size_t floats);

// ---- copies -------------------------------------------------------------------------------

// Copies src into dst (same shape, any dtypes, any strides; dst may be a view of a larger
// tensor). Dimensions are coalesced and rows copied in parallel.
void copy_strided(const Tensor& src, const Tensor& dst);

// ---- threading and sgemm ------------------------------------------------------------------
//
// Note [One thread pool]
// OpenBLAS (the pthreads build Debian ships) has its own worker threads, and they busy-wait
// (sched_yield) for a while after each call; OpenMP workers spin after each region too. Mixing
// multi-threaded sgemm with OpenMP loops on a machine with as many cores as threads makes the
// two pools fight: a 2 x 1536 x 9216 f16 linear took 12x longer on 2 threads than on 1. So
// the CPU kernels never let OpenBLAS thread: every sgemm runs single-threaded inside an
// OpenMP region that splits the product into bands (detail::sgemm), and all parallelism
// comes from the one OpenMP pool.

// Keeps OpenBLAS single-threaded for the guard's lifetime (nests; restores the setting).
class BlasSingleThread {
 public:
  BlasSingleThread();
  ~BlasSingleThread();
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  int saved_;
};

// Threads worth using for an m x n x k product: 1 for small ones (under ~4 MFLOP) and inside
// an enclosing parallel region, else all OpenMP threads.
int gemm_threads(int64_t m, int64_t n, int64_t k);

// [begin, end) of part `index` when [0, n) is cut into `parts` pieces whose boundaries are
// multiples of `align` (the last piece takes the remainder; trailing pieces may be empty).
std::pair<int64_t, int64_t> split_range(int64_t n, int parts, int index, int64_t align);
// How many bands to cut an extent (of C's columns, or rows) into for nt threads, handed out
// dynamically so that a thread delayed by the OS does not leave the others waiting at the end
// of the region: 2 per thread, or 4 when the other extent is at most 64 (sgemm repacks the
// shared operand for every band, which only small products can afford).
int band_count(int64_t extent, int64_t other, int nt);

// Row-major C = alpha op(A) op(B) + beta C (op = transpose when the flag is set), on the
// calling thread. The caller holds a BlasSingleThread.
void sgemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);
// The same product split over the OpenMP threads in bands of columns of C (or of rows when C
// is taller than wide), see band_count; Note [One thread pool].
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Below this many elements an elementwise loop stays on one thread.
constexpr int64_t kParallelGrain = 1 << 15;

// ---- row kernels shared by several ops (activation.cpp) ------------------------------------

// y[i] = act(x[i]) for n elements (y may equal x).
void activation_row(float* y, const float* x, int64_t n, ops::Activation act);
// y[i] = act(y[i] + bias[i]) in place; bias may be null.
void bias_activation_row(float* y, const float* bias, int64_t n, ops::Activation act);
// Softmax of n values, x -> y (may alias). Returns nothing; a row of all -inf gives NaN.
void softmax_row(float* y, const float* x, int64_t n);
// The softmax numerators y = exp(x - max x) (x -> y, may alias); returns their sum.
float exp_shifted_row(float* y, const float* x, int64_t n);
// max of n values (-inf for n = 0; NaN is skipped).
float row_max(const float* x, int64_t n);
// y = exp(x - shift) (may alias); returns the sum of y.
float exp_sub_row(float* y, const float* x, int64_t n, float shift);

// Elements per chunk handed to a row function; fixed so results do not depend on threads.
constexpr int64_t kMapChunk = 4096;
constexpr int kMaxMapInputs = 4;

// Iteration plan of an elementwise loop over a (broadcast) output: dimensions of size 1
// dropped, neighbours merged where every operand steps through them as one, the innermost
// one cut into chunks of at most kMapChunk elements.
struct MapPlan {
  int64_t inner = 1, rows = 1, chunks_per_row = 1;
  int64_t outer_rank = 0;
  int64_t outer_shape[kMaxRank] = {};
  int64_t outer_strides[kMaxMapInputs + 1][kMaxRank] = {};  // per operand, in elements
  int64_t inner_strides[kMaxMapInputs + 1] = {};
  int nops = 0;
};
// Plans the loop for operands (at most kMaxMapInputs + 1) broadcast to out_shape: their
// missing or size-1 dimensions get stride 0.
MapPlan plan_map(const Shape& out_shape, const std::vector<const Tensor*>& ops);

// Walks the rows of a MapPlan: offsets (in elements) of every operand at the current row.
class RowWalker {
 public:
  RowWalker(const MapPlan& plan, int64_t row);
  const int64_t* offsets() const { return off_; }
  void next();

 private:
  const MapPlan& plan_;
  int64_t idx_[kMaxRank] = {};
  int64_t off_[kMaxMapInputs + 1] = {};
};

// Computes out = fn(ins...) elementwise with numpy broadcasting of `ins` to `out_shape`.
// fn(float* out, const float* const* in, int64_t n) gets f32 rows (inputs converted and
// broadcast values expanded as needed) of at most kMapChunk elements. Each thread takes one
// contiguous range of chunks, so the split never changes a value.
template <class Fn>
Tensor map_f32(const Shape& out_shape, DType out_dtype, const std::vector<const Tensor*>& ins,
               Fn fn) {
  Tensor out = Tensor::empty(out_shape, out_dtype);
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int nin = static_cast<int>(ins.size());
  SD3_ASSERT(nin <= kMaxMapInputs);
  const MapPlan plan = plan_map(out_shape, ins);
  const char* bases[kMaxMapInputs];
  DType dtypes[kMaxMapInputs];
  for (int k = 0; k < nin; ++k) {
    bases[k] = static_cast<const char*>(ins[k]->raw_data());
    dtypes[k] = ins[k]->dtype();
  }
  const int64_t tasks = plan.rows * plan.chunks_per_row;
  const int64_t chunk = std::min(plan.inner, kMapChunk);
  const bool parallel = total >= kParallelGrain && tasks > 1;
  const int nthreads = parallel ? omp_get_max_threads() : 1;
  float* buffers =
      team_scratch(ScratchSlot::Rows, nthreads, static_cast<size_t>((nin + 1) * chunk));
  char* out_base = static_cast<char*>(out.raw_data());
  const int64_t out_esize = static_cast<int64_t>(dtype_size(out_dtype));

#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t t0 = tasks * tid / nt, t1 = tasks * (tid + 1) / nt;
    float* buf = buffers + static_cast<size_t>(tid) * (nin + 1) * chunk;
    const float* in_ptrs[kMaxMapInputs];
    RowWalker walk(plan, t0 / plan.chunks_per_row);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t row = task / plan.chunks_per_row;
      const int64_t ci = task % plan.chunks_per_row;
      if (ci == 0 && task != t0) walk.next();
      const int64_t c0 = ci * chunk;
      const int64_t n = std::min(chunk, plan.inner - c0);
      for (int k = 0; k < nin; ++k) {
        const int64_t off = walk.offsets()[k] + c0 * plan.inner_strides[k];
        const char* p = bases[k] + off * static_cast<int64_t>(dtype_size(dtypes[k]));
        if (dtypes[k] == DType::F32 && plan.inner_strides[k] == 1) {
          in_ptrs[k] = reinterpret_cast<const float*>(p);
        } else {
          float* dst = buf + (k + 1) * chunk;
          to_f32_strided(p, dtypes[k], plan.inner_strides[k], dst, n);
          in_ptrs[k] = dst;
        }
      }
      char* out_row = out_base + (row * plan.inner + c0) * out_esize;
      if (out_dtype == DType::F32) {
        fn(reinterpret_cast<float*>(out_row), in_ptrs, n);
      } else {
        fn(buf, in_ptrs, n);
        from_f32(buf, out_row, out_dtype, n);
      }
    }
  }
  return out;
}

}  // namespace sd3::cpu::detail
