// Activations, elementwise in f32: GELU (erf), GELU (tanh), SiLU, quick GELU.
//
//   gelu(x)       = 0.5 x (1 + erf(x / sqrt 2))
//   gelu_tanh(x)  = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   silu(x)       = x / (1 + exp(-x))
//   quick_gelu(x) = x / (1 + exp(-1.702 x))
//
// Bytes: n elements read and written once: 2 n sizeof(T). Contiguous inputs take the
// vectorised kernel of elementwise.cuh (16-byte accesses); strided ones the gather path.
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/elementwise.cuh"

namespace sd3::cuda {

namespace {
template <Activation A>
struct ActOp {
  __device__ float operator()(float x, float) const { return apply_activation<A>(x); }
};
}  // namespace

Tensor activation(const Tensor& x, Activation act) {
  switch (act) {
    case Activation::None: return x;
    case Activation::Gelu: return map2(x, Tensor(), "gelu", ActOp<Activation::Gelu>{});
    case Activation::GeluTanh: return map2(x, Tensor(), "gelu_tanh", ActOp<Activation::GeluTanh>{});
    case Activation::Silu: return map2(x, Tensor(), "silu", ActOp<Activation::Silu>{});
    case Activation::QuickGelu:
      return map2(x, Tensor(), "quick_gelu", ActOp<Activation::QuickGelu>{});
  }
  fail("activation: unknown activation ", static_cast<int>(act));
}

}  // namespace sd3::cuda
