#include "kernels/cpu/cpu_common.h"

#include <cblas.h>
#include <immintrin.h>

#include <cstring>
#include <memory>
#include <new>

#include "kernels/cpu/vec.h"

namespace sd3::cpu::detail {

// ---- argument checks ----------------------------------------------------------------------

void check_float(const Tensor& t, const char* op, const char* name) {
  SD3_CHECK(t.defined(), op, ": ", name, " is undefined");
  SD3_CHECK(is_float(t.dtype()), op, ": ", name, " must be f32, f16 or bf16, got ", t.str());
  SD3_CHECK(t.device().is_cpu(), op, ": ", name, " is not a CPU tensor: ", t.str());
}

void check_vector(const Tensor& t, int64_t n, const char* op, const char* name) {
  if (!t.defined()) return;
  check_float(t, op, name);
  SD3_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", name, " must be [", n, "], got ", t.str());
}

// ---- conversion ---------------------------------------------------------------------------

namespace {

bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return has;
}

__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(const uint16_t* src, float* dst,
                                                         int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = f16_bits_to_f32(src[i]);
}

__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(const float* src, uint16_t* dst,
                                                         int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = f32_to_f16_bits(src[i]);
}

SD3_CPU_SIMD void bf16_to_f32_rows(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

SD3_CPU_SIMD void f32_to_bf16_rows(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t x;
    std::memcpy(&x, src + i, 4);
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t nan = (x >> 16) | 0x0040u;
    dst[i] = static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

}  // namespace

void to_f32(const void* src, DType dtype, float* dst, int64_t n) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16:
      if (cpu_has_f16c()) {
        f16_to_f32_f16c(static_cast<const uint16_t*>(src), dst, n);
      } else {
        const uint16_t* s = static_cast<const uint16_t*>(src);
        for (int64_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32(s[i]);
      }
      return;
    case DType::BF16: bf16_to_f32_rows(static_cast<const uint16_t*>(src), dst, n); return;
    default: break;
  }
  convert_elements(src, dtype, dst, DType::F32, static_cast<size_t>(n));
}

void from_f32(const float* src, void* dst, DType dtype, int64_t n) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16:
      if (cpu_has_f16c()) {
        f32_to_f16_f16c(src, static_cast<uint16_t*>(dst), n);
      } else {
        uint16_t* d = static_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16_bits(src[i]);
      }
      return;
    case DType::BF16: f32_to_bf16_rows(src, static_cast<uint16_t*>(dst), n); return;
    default: break;
  }
  convert_elements(src, DType::F32, dst, dtype, static_cast<size_t>(n));
}

void to_f32_strided(const void* src, DType dtype, int64_t stride, float* dst, int64_t n) {
  if (stride == 1) return to_f32(src, dtype, dst, n);
  if (stride == 0) {
    float v;
    to_f32(src, dtype, &v, 1);
    std::fill_n(dst, n, v);
    return;
  }
  switch (dtype) {
    case DType::F32: {
      const float* s = static_cast<const float*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = s[i * stride];
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32(s[i * stride]);
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_f32(s[i * stride]);
      return;
    }
    default: break;
  }
  const size_t es = dtype_size(dtype);
  for (int64_t i = 0; i < n; ++i)
    convert_elements(static_cast<const char*>(src) + i * stride * static_cast<int64_t>(es), dtype,
                     dst + i, DType::F32, 1);
}

Tensor as_f32(const Tensor& t) {
  if (t.dtype() == DType::F32 && t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), DType::F32);
  copy_strided(t, out);
  return out;
}

RowsF32 rows_f32(const Tensor& t, bool need_uniform) {
  SD3_ASSERT(t.dim() >= 1);
  RowsF32 r;
  r.cols = t.size(-1);
  r.rows =
      r.cols == 0 ? shape_numel(Shape(t.shape().begin(), t.shape().end() - 1)) : t.numel() / r.cols;
  if (t.dtype() == DType::F32 && (t.stride(-1) == 1 || r.cols == 1)) {
    // Leading dimensions collapse into one row stride when each steps over the next.
    int64_t ld = -1, expect = -1;
    bool uniform = true;
    for (int64_t d = t.dim() - 2; d >= 0; --d) {
      if (t.size(d) == 1) continue;
      if (ld < 0) {
        ld = t.stride(d);
      } else if (t.stride(d) != expect) {
        uniform = false;
      }
      expect = t.stride(d) * t.size(d);
    }
    if (ld < 0) ld = r.cols;
    r.data = t.data<float>();
    if (uniform && ld >= r.cols) {
      r.ld = std::max<int64_t>(ld, 1);
      return r;
    }
    if (!need_uniform && t.dim() - 1 <= kMaxRank) {
      r.uniform = false;
      r.nlead = t.dim() - 1;
      for (int64_t d = 0; d < r.nlead; ++d) {
        r.lead_sizes[d] = t.size(d);
        r.lead_strides[d] = t.stride(d);
      }
      return r;
    }
  }
  r.keep = as_f32(t);
  r.data = r.keep.data<float>();
  r.ld = std::max<int64_t>(r.cols, 1);
  r.uniform = true;
  return r;
}

std::vector<float> vector_f32(const Tensor& t) {
  if (!t.defined()) return {};
  return t.to_floats();
}

OutF32::OutF32(const Shape& shape, DType dtype) : out_(Tensor::empty(shape, dtype)) {
  if (dtype == DType::F32) {
    ptr_ = out_.data<float>();
  } else {
    stage_ = Tensor::empty(shape, DType::F32);
    ptr_ = stage_.data<float>();
  }
}

Tensor OutF32::finish() {
  if (stage_.defined()) {
    const int64_t n = out_.numel();
    const float* src = stage_.data<float>();
    char* dst = static_cast<char*>(out_.raw_data());
    const int64_t es = static_cast<int64_t>(dtype_size(out_.dtype()));
    const int64_t blocks = (n + kMapChunk - 1) / kMapChunk;
#pragma omp parallel for schedule(static) if (n >= kParallelGrain)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kMapChunk;
      from_f32(src + i0, dst + i0 * es, out_.dtype(), std::min(kMapChunk, n - i0));
    }
    stage_ = Tensor();
  }
  return out_;
}

// ---- threading and sgemm ------------------------------------------------------------------

BlasSingleThread::BlasSingleThread() : saved_(openblas_get_num_threads()) {
  if (saved_ != 1) {
    // An OpenMP build of OpenBLAS would also change the OpenMP thread count here: keep ours.
    const int omp_threads = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(omp_threads);
  }
}

BlasSingleThread::~BlasSingleThread() {
  if (saved_ != 1) {
    const int omp_threads = omp_get_max_threads();
    openblas_set_num_threads(saved_);
    omp_set_num_threads(omp_threads);
  }
}

int gemm_threads(int64_t m, int64_t n, int64_t k) {
  if (omp_in_parallel()) return 1;
  const double flops =
      2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  return flops < 4e6 ? 1 : omp_get_max_threads();
}

std::pair<int64_t, int64_t> split_range(int64_t n, int parts, int index, int64_t align) {
  int64_t step = (n + parts - 1) / parts;
  step = (step + align - 1) / align * align;
  const int64_t begin = std::min(n, step * index);
  const int64_t end = index == parts - 1 ? n : std::min(n, begin + step);
  return {begin, end};
}

int band_count(int64_t extent, int64_t other, int nt) {
  if (nt <= 1) return 1;
  // Every band repacks the shared operand (other x K), so large products get 2 bands per
  // thread, small ones (memory-bound, e.g. M = 2) 4.
  const int per_thread = other > 64 ? 2 : 4;
  const int64_t width = std::max<int64_t>(64, (extent + per_thread * nt - 1) / (per_thread * nt));
  return static_cast<int>(std::max<int64_t>(1, (extent + width - 1) / width));
}

void sgemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), alpha, a, static_cast<blasint>(std::max<int64_t>(lda, 1)), b,
              static_cast<blasint>(std::max<int64_t>(ldb, 1)), beta, c,
              static_cast<blasint>(std::max<int64_t>(ldc, 1)));
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  BlasSingleThread guard;
  const int nt = gemm_threads(m, n, k);
  if (nt <= 1) return sgemm_serial(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const bool by_columns = n >= m;
  const int64_t extent = by_columns ? n : m;
  const int bands = band_count(extent, by_columns ? m : n, nt);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int band = 0; band < bands; ++band) {
    const auto [p0, p1] = split_range(extent, bands, band, 16);
    if (by_columns) {
      // Column j of op(B) starts at b + j * ldb when B is stored transposed (N x K), else b + j.
      sgemm_serial(trans_a, trans_b, m, p1 - p0, k, alpha, a, lda, b + (trans_b ? p0 * ldb : p0),
                   ldb, beta, c + p0, ldc);
    } else {
      sgemm_serial(trans_a, trans_b, p1 - p0, n, k, alpha, a + (trans_a ? p0 : p0 * lda), lda, b,
                   ldb, beta, c + p0 * ldc, ldc);
    }
  }
}

// ---- broadcasting and iteration ------------------------------------------------------------

MapPlan plan_map(const Shape& out_shape, const std::vector<const Tensor*>& ops) {
  MapPlan plan;
  plan.nops = static_cast<int>(ops.size());
  SD3_ASSERT(plan.nops <= kMaxMapInputs + 1);
  const int64_t r = static_cast<int64_t>(out_shape.size());
  // Groups of merged dimensions, innermost first: size and per-operand stride of one step.
  struct Group {
    int64_t size;
    int64_t stride[kMaxMapInputs + 1];
  };
  std::vector<Group> groups;
  for (int64_t d = r - 1; d >= 0; --d) {
    if (out_shape[d] == 1) continue;
    Group g{out_shape[d], {}};
    for (int k = 0; k < plan.nops; ++k) {
      const Tensor& t = *ops[k];
      const int64_t dk = d - (r - t.dim());
      g.stride[k] = (dk < 0 || t.size(dk) == 1) ? 0 : t.stride(dk);
    }
    if (!groups.empty()) {
      Group& last = groups.back();
      bool merge = true;
      for (int k = 0; k < plan.nops; ++k)
        if (g.stride[k] != last.stride[k] * last.size) merge = false;
      if (merge) {
        last.size *= g.size;
        continue;
      }
    }
    groups.push_back(g);
  }
  SD3_CHECK(static_cast<int64_t>(groups.size()) <= kMaxRank + 1, "tensor of rank ", r,
            " has too many non-mergeable dimensions for the CPU kernels");
  if (!groups.empty()) {
    plan.inner = groups[0].size;
    for (int k = 0; k < plan.nops; ++k) plan.inner_strides[k] = groups[0].stride[k];
  }
  plan.outer_rank = static_cast<int64_t>(groups.size()) - (groups.empty() ? 0 : 1);
  for (int64_t i = 0; i < plan.outer_rank; ++i) {
    const Group& g = groups[groups.size() - 1 - i];  // outermost first
    plan.outer_shape[i] = g.size;
    plan.rows *= g.size;
    for (int k = 0; k < plan.nops; ++k) plan.outer_strides[k][i] = g.stride[k];
  }
  plan.chunks_per_row = std::max<int64_t>(1, (plan.inner + kMapChunk - 1) / kMapChunk);
  return plan;
}

RowWalker::RowWalker(const MapPlan& plan, int64_t row) : plan_(plan) {
  int64_t rem = row;
  for (int64_t d = plan.outer_rank - 1; d >= 0; --d) {
    idx_[d] = rem % plan.outer_shape[d];
    rem /= plan.outer_shape[d];
    for (int k = 0; k < plan.nops; ++k) off_[k] += idx_[d] * plan.outer_strides[k][d];
  }
}

void RowWalker::next() {
  for (int64_t d = plan_.outer_rank - 1; d >= 0; --d) {
    ++idx_[d];
    for (int k = 0; k < plan_.nops; ++k) off_[k] += plan_.outer_strides[k][d];
    if (idx_[d] < plan_.outer_shape[d]) return;
    for (int k = 0; k < plan_.nops; ++k) off_[k] -= plan_.outer_strides[k][d] * idx_[d];
    idx_[d] = 0;
  }
}

// ---- scratch ------------------------------------------------------------------------------

float* team_scratch(ScratchSlot slot, int threads, size_t floats) {
  struct Buffer {
    std::unique_ptr<float[]> data;
    size_t capacity = 0;
  };
  // Note [CPU scratch]: per calling thread, so concurrent callers never share.
  thread_local Buffer buffers[static_cast<int>(ScratchSlot::kCount)];
  Buffer& b = buffers[static_cast<int>(slot)];
  const size_t need = static_cast<size_t>(std::max(threads, 1)) * std::max<size_t>(floats, 1);
  if (b.capacity < need) {
    b.data.reset();
    b.capacity = 0;
    float* p = new (std::nothrow) float[need];
    SD3_CHECK(p != nullptr, "out of host memory allocating ", need * sizeof(float),
              " bytes of CPU kernel scratch");
    b.data.reset(p);
    b.capacity = need;
  }
  return b.data.get();
}

// ---- copies -------------------------------------------------------------------------------

namespace {

template <class T>
void copy_elems(const char* src, int64_t ss, char* dst, int64_t ds, int64_t n) {
  const T* s = reinterpret_cast<const T*>(src);
  T* d = reinterpret_cast<T*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i * ds] = s[i * ss];
}

void copy_same_dtype(const char* src, int64_t ss, char* dst, int64_t ds, int64_t n, size_t es) {
  if (ss == 1 && ds == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n) * es);
    return;
  }
  switch (es) {
    case 2: return copy_elems<uint16_t>(src, ss, dst, ds, n);
    case 4: return copy_elems<uint32_t>(src, ss, dst, ds, n);
    case 8: return copy_elems<uint64_t>(src, ss, dst, ds, n);
    default:
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(dst + i * ds * static_cast<int64_t>(es),
                    src + i * ss * static_cast<int64_t>(es), es);
  }
}

}  // namespace

void copy_strided(const Tensor& src, const Tensor& dst) {
  SD3_ASSERT(src.shape() == dst.shape(), src.str(), " -> ", dst.str());
  SD3_ASSERT(src.device().is_cpu() && dst.device().is_cpu());
  const int64_t total = src.numel();
  if (total == 0) return;
  const MapPlan plan = plan_map(src.shape(), {&src, &dst});
  const DType sd = src.dtype(), dd = dst.dtype();
  const size_t ses = dtype_size(sd), des = dtype_size(dd);
  const char* sbase = static_cast<const char*>(src.raw_data());
  char* dbase = static_cast<char*>(dst.raw_data());
  const int64_t tasks = plan.rows * plan.chunks_per_row;
  const int64_t chunk = std::min(plan.inner, kMapChunk);
  const int64_t ss = plan.inner_strides[0], ds = plan.inner_strides[1];
  const bool parallel = total >= kParallelGrain && tasks > 1;
  const int nthreads = parallel ? omp_get_max_threads() : 1;
  // Staging for conversions between strided rows: one chunk in each dtype per thread.
  const bool staged = sd != dd;
  // Floats enough for one chunk in each dtype (element sizes are at most 8 bytes).
  char* stage = staged ? reinterpret_cast<char*>(team_scratch(ScratchSlot::Rows, nthreads,
                                                              static_cast<size_t>(chunk) * 4))
                       : nullptr;

#pragma omp parallel num_threads(nthreads) if (parallel)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t t0 = tasks * tid / nt, t1 = tasks * (tid + 1) / nt;
    char* sbuf = staged ? stage + static_cast<size_t>(tid) * chunk * 16 : nullptr;
    char* dbuf = staged ? sbuf + chunk * ses : nullptr;
    RowWalker walk(plan, t0 / plan.chunks_per_row);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t ci = task % plan.chunks_per_row;
      if (ci == 0 && task != t0) walk.next();
      const int64_t c0 = ci * chunk;
      const int64_t n = std::min(chunk, plan.inner - c0);
      const char* s = sbase + (walk.offsets()[0] + c0 * ss) * static_cast<int64_t>(ses);
      char* d = dbase + (walk.offsets()[1] + c0 * ds) * static_cast<int64_t>(des);
      if (!staged) {
        copy_same_dtype(s, ss, d, ds, n, ses);
      } else if (dd == DType::F32 && ds == 1 && is_float(sd)) {
        to_f32_strided(s, sd, ss, reinterpret_cast<float*>(d), n);
      } else if (sd == DType::F32 && ss == 1 && ds == 1 && is_float(dd)) {
        from_f32(reinterpret_cast<const float*>(s), d, dd, n);
      } else {
        copy_same_dtype(s, ss, sbuf, 1, n, ses);
        convert_elements(sbuf, sd, dbuf, dd, static_cast<size_t>(n));
        copy_same_dtype(dbuf, 1, d, ds, n, des);
      }
    }
  }
}

}  // namespace sd3::cpu::detail
