// Shared by the attention tests (attention_test.cpp, attention_wgmma_test.cpp): options with
// a head count, and one case's inputs drawn on the host and copied to the GPU, contiguous or
// as column slices of one fused [B, L, 3 H D] qkv tensor, with the CPU reference.
#pragma once

#include <string>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"

namespace sd3::cudatest {

inline ops::AttentionOptions heads(int64_t h) {
  ops::AttentionOptions o;
  o.heads = h;
  return o;
}

struct AttentionCase {
  Tensor q, k, v;     // host, in the test dtype
  Tensor gq, gk, gv;  // the same values on the GPU (views when strided)
  ops::AttentionOptions gpu_opt, ref_opt;
  Tensor ref;  // ops::attention on the CPU in f32

  // One scoped-trace line naming the case.
  static std::string name(int64_t B, int64_t H, int64_t D, int64_t Lq, int64_t Lk, DType dt,
                          const ops::AttentionOptions& opt, bool strided) {
    return std::string(dtype_name(dt)) + " B=" + std::to_string(B) + " H=" + std::to_string(H) +
           " D=" + std::to_string(D) + " Lq=" + std::to_string(Lq) + " Lk=" + std::to_string(Lk) +
           (opt.causal ? " causal" : "") + (opt.bias.defined() ? " bias" : "") +
           (strided ? " strided" : "");
  }
};

// Base fixture of the attention tests: draws a case with the fixture's generator. Strided
// cases need Lq == Lk (one fused tensor).
class AttentionTest : public CudaTest {
 protected:
  AttentionCase make_case(int64_t B, int64_t H, int64_t D, int64_t Lq, int64_t Lk, DType dt,
                          const ops::AttentionOptions& opt, bool strided) {
    AttentionCase c;
    if (strided) {
      Tensor qkv = randn({B, Lq, 3 * H * D}, dt);
      Tensor g = gpu(qkv);
      c.q = qkv.slice(2, 0, H * D);
      c.k = qkv.slice(2, H * D, 2 * H * D);
      c.v = qkv.slice(2, 2 * H * D, 3 * H * D);
      c.gq = g.slice(2, 0, H * D);
      c.gk = g.slice(2, H * D, 2 * H * D);
      c.gv = g.slice(2, 2 * H * D, 3 * H * D);
    } else {
      c.q = randn({B, Lq, H * D}, dt);
      c.k = randn({B, Lk, H * D}, dt);
      c.v = randn({B, Lk, H * D}, dt);
      c.gq = gpu(c.q);
      c.gk = gpu(c.k);
      c.gv = gpu(c.v);
    }
    c.gpu_opt = c.ref_opt = opt;
    if (opt.bias.defined()) {
      c.ref_opt.bias = f32(opt.bias);
      c.gpu_opt.bias = gpu(opt.bias);
    }
    c.ref = ops::attention(f32(c.q), f32(c.k), f32(c.v), c.ref_opt);
    return c;
  }
};

}  // namespace sd3::cudatest
