// Activations (silu, gelu erf/tanh, quick_gelu) and softmax: vectorised rows (kernels/cpu/vec.h)
// driven by the elementwise machinery.
#include <cmath>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/vec.h"

namespace sd3::cpu {

namespace detail {

namespace {

template <class F>
SD3_INLINE void map_row(float* y, const float* x, const float* bias, int64_t n, F f) {
  int64_t i = 0;
  if (bias) {
    for (; i + vec::kLanes <= n; i += vec::kLanes)
      vec::store(y + i, f(vec::load(x + i) + vec::load(bias + i)));
    if (i < n) {
      const int64_t m = n - i;
      vec::store_partial(y + i, f(vec::load_partial(x + i, m) + vec::load_partial(bias + i, m)), m);
    }
  } else {
    for (; i + vec::kLanes <= n; i += vec::kLanes) vec::store(y + i, f(vec::load(x + i)));
    if (i < n) vec::store_partial(y + i, f(vec::load_partial(x + i, n - i)), n - i);
  }
}

// Activations as functors with always_inline calls, so each is compiled inside every clone of
// act_row_impl for that clone's instruction set (Note [CPU SIMD dispatch]).
struct Identity {
  SD3_INLINE vec::VF operator()(vec::VF v) const { return v; }
};
struct Silu {
  SD3_INLINE vec::VF operator()(vec::VF v) const { return vec::x_sigmoid(v, 1.0f); }
};
struct QuickGelu {
  SD3_INLINE vec::VF operator()(vec::VF v) const { return vec::x_sigmoid(v, 1.702f); }
};
struct GeluTanh {
  SD3_INLINE vec::VF operator()(vec::VF v) const { return vec::gelu_tanh(v); }
};
struct GeluErf {
  SD3_INLINE vec::VF operator()(vec::VF v) const { return vec::gelu_erf(v); }
};

SD3_CPU_SIMD void act_row_impl(float* y, const float* x, const float* bias, int64_t n,
                               Activation act) {
  switch (act) {
    case Activation::None: return map_row(y, x, bias, n, Identity{});
    case Activation::Silu: return map_row(y, x, bias, n, Silu{});
    case Activation::QuickGelu: return map_row(y, x, bias, n, QuickGelu{});
    case Activation::GeluTanh: return map_row(y, x, bias, n, GeluTanh{});
    case Activation::Gelu: return map_row(y, x, bias, n, GeluErf{});
  }
}

// y = exp(x - max x), returning the sum of y; normalises y by it when asked.
SD3_CPU_SIMD float softmax_row_impl(float* y, const float* x, int64_t n, bool normalize) {
  using vec::VF;
  const int64_t nv = n / vec::kLanes * vec::kLanes;
  const int64_t m = n - nv;
  VF vmax = vec::splat(-INFINITY);
  for (int64_t i = 0; i < nv; i += vec::kLanes) vmax = vec::vmax(vmax, vec::load(x + i));
  if (m) vmax = vec::vmax(vmax, vec::load_partial(x + nv, m, -INFINITY));
  const float mx = vec::hmax(vmax);
  VF vsum = vec::splat(0.0f);
  for (int64_t i = 0; i < nv; i += vec::kLanes) {
    VF e = vec::exp(vec::load(x + i) - mx);
    vec::store(y + i, e);
    vsum += e;
  }
  if (m) {
    VF e = vec::exp(vec::load_partial(x + nv, m, -INFINITY) - mx);  // padding lanes give 0
    vec::store_partial(y + nv, e, m);
    vsum += e;
  }
  const float sum = vec::hsum(vsum);
  if (!normalize) return sum;
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < nv; i += vec::kLanes) vec::store(y + i, vec::load(y + i) * inv);
  for (int64_t i = nv; i < n; ++i) y[i] *= inv;
  return sum;
}

SD3_CPU_SIMD float row_max_impl(const float* x, int64_t n) {
  using vec::VF;
  const int64_t nv = n / vec::kLanes * vec::kLanes;
  VF vmax = vec::splat(-INFINITY);
  for (int64_t i = 0; i < nv; i += vec::kLanes) vmax = vec::vmax(vmax, vec::load(x + i));
  if (n > nv) vmax = vec::vmax(vmax, vec::load_partial(x + nv, n - nv, -INFINITY));
  return vec::hmax(vmax);
}

SD3_CPU_SIMD float exp_sub_row_impl(float* y, const float* x, int64_t n, float shift) {
  using vec::VF;
  const int64_t nv = n / vec::kLanes * vec::kLanes;
  VF vsum = vec::splat(0.0f);
  for (int64_t i = 0; i < nv; i += vec::kLanes) {
    VF e = vec::exp(vec::load(x + i) - shift);
    vec::store(y + i, e);
    vsum += e;
  }
  if (n > nv) {
    VF e = vec::exp(vec::load_partial(x + nv, n - nv, -INFINITY) - shift);
    vec::store_partial(y + nv, e, n - nv);
    vsum += e;
  }
  return vec::hsum(vsum);
}

}  // namespace

float row_max(const float* x, int64_t n) {
  return row_max_impl(x, n);
}
float exp_sub_row(float* y, const float* x, int64_t n, float shift) {
  return exp_sub_row_impl(y, x, n, shift);
}

void activation_row(float* y, const float* x, int64_t n, Activation act) {
  act_row_impl(y, x, nullptr, n, act);
}

void bias_activation_row(float* y, const float* bias, int64_t n, Activation act) {
  if (!bias && act == Activation::None) return;
  act_row_impl(y, y, bias, n, act);
}

void softmax_row(float* y, const float* x, int64_t n) {
  softmax_row_impl(y, x, n, true);
}

float exp_shifted_row(float* y, const float* x, int64_t n) {
  return softmax_row_impl(y, x, n, false);
}

}  // namespace detail

Tensor activation(const Tensor& x, Activation act) {
  detail::check_float(x, "activation", "x");
  return detail::map_f32(x.shape(), x.dtype(), {&x},
                         [act](float* out, const float* const* in, int64_t n) {
                           detail::activation_row(out, in[0], n, act);
                         });
}

Tensor softmax(const Tensor& x) {
  detail::check_float(x, "softmax", "x");
  SD3_CHECK(x.dim() >= 1, "softmax of a scalar ", x.str());
  detail::OutF32 out(x.shape(), x.dtype());
  if (x.numel() == 0) return out.finish();
  const detail::RowsF32 in = detail::rows_f32(x);
  float* y = out.ptr();
#pragma omp parallel for schedule(static) if (x.numel() >= detail::kParallelGrain)
  for (int64_t r = 0; r < in.rows; ++r) detail::softmax_row(y + r * in.cols, in.row(r), in.cols);
  return out.finish();
}

}  // namespace sd3::cpu
