// Elementwise arithmetic with numpy broadcasting, scalar ops, casts and copies. Every op runs
// through detail::map_f32 (kernels/cpu/cpu_common.h): f32 rows in, f32 rows out.
#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/vec.h"

namespace sd3::cpu {

namespace {

enum class Binary { Add, Sub, Mul };

SD3_CPU_SIMD void binary_row(float* out, const float* a, const float* b, int64_t n, Binary op) {
  switch (op) {
    case Binary::Add:
      for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
      return;
    case Binary::Sub:
      for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
      return;
    case Binary::Mul:
      for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
      return;
  }
}

SD3_CPU_SIMD void scale_row(float* out, const float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * s;
}

SD3_CPU_SIMD void add_scalar_row(float* out, const float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + s;
}

SD3_CPU_SIMD void axpby_row(float* out, const float* x, float a, const float* y, float b,
                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a * x[i] + b * y[i];
}

Tensor binary(const Tensor& a, const Tensor& b, Binary op, const char* name) {
  detail::check_float(a, name, "a");
  detail::check_float(b, name, "b");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  return detail::map_f32(shape, a.dtype(), {&a, &b},
                         [op](float* out, const float* const* in, int64_t n) {
                           binary_row(out, in[0], in[1], n, op);
                         });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(a, b, Binary::Add, "add");
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary(a, b, Binary::Sub, "sub");
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(a, b, Binary::Mul, "mul");
}

Tensor scale(const Tensor& x, float s) {
  detail::check_float(x, "scale", "x");
  return detail::map_f32(
      x.shape(), x.dtype(), {&x},
      [s](float* out, const float* const* in, int64_t n) { scale_row(out, in[0], s, n); });
}

Tensor add_scalar(const Tensor& x, float s) {
  detail::check_float(x, "add_scalar", "x");
  return detail::map_f32(
      x.shape(), x.dtype(), {&x},
      [s](float* out, const float* const* in, int64_t n) { add_scalar_row(out, in[0], s, n); });
}

Tensor axpby(const Tensor& x, float a, const Tensor& y, float b) {
  detail::check_float(x, "axpby", "x");
  detail::check_float(y, "axpby", "y");
  SD3_CHECK(x.shape() == y.shape(), "axpby: shapes ", shape_str(x.shape()), " and ",
            shape_str(y.shape()), " differ");
  return detail::map_f32(x.shape(), x.dtype(), {&x, &y},
                         [a, b](float* out, const float* const* in, int64_t n) {
                           axpby_row(out, in[0], a, in[1], b, n);
                         });
}

Tensor cast(const Tensor& x, DType dtype) {
  SD3_CHECK(x.defined(), "cast of an undefined tensor");
  Tensor out = Tensor::empty(x.shape(), dtype);
  detail::copy_strided(x, out);
  return out;
}

Tensor contiguous(const Tensor& x) {
  SD3_CHECK(x.defined(), "contiguous of an undefined tensor");
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  detail::copy_strided(x, out);
  return out;
}

}  // namespace sd3::cpu
