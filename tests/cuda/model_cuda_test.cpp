// Tiny models on CUDA against the same models on the CPU: an MMDiT forward (2 joint blocks,
// hidden 128, two 64-wide heads) and a VAE decode (widths 32/64, one mid-block attention
// head of 64), with random weights at those shapes. This exercises the ops together as the
// models call them (views, casts, fused and unfused paths) rather than one by one.
//
// Model-level tolerance is norm-wise, ||out - ref|| / ||ref||: in f32 the GPU differs from
// the CPU only by summation order and library algorithms (bound 1e-4, far above the ~1e-6
// seen for single ops, far below any indexing error); in bf16 every stored activation and
// weight is rounded (u = 2^-8), and through a few dozen ops those roundings add up like a
// random walk: bound 8 u = 3.1e-2 against the f32 CPU result.
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#include "models/mmdit.h"
#include "models/random_weights.h"
#include "models/vae.h"

namespace sd3::cudatest {
namespace {

class CudaModel : public CudaTest {
 protected:
  static double rel_error(const Tensor& out, const Tensor& ref) {
    const std::vector<float> o = out.to(Device::cpu()).to_floats(), r = ref.to_floats();
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < r.size(); ++i) {
      if (!std::isfinite(o[i])) return INFINITY;
      num += (double(o[i]) - r[i]) * (double(o[i]) - r[i]);
      den += double(r[i]) * r[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  }
  static double bound(DType dt) { return dt == DType::F32 ? 1e-4 : 8.0 / 256.0; }
};

TEST_F(CudaModel, TinyMMDiTForwardMatchesCpu) {
  models::MMDiTConfig cfg;
  cfg.depth = 2;
  cfg.hidden_size = 128;
  cfg.num_heads = 2;
  cfg.pos_embed_max_size = 16;
  cfg.adm_in_channels = 32;
  cfg.context_in_features = 64;
  const models::RandomComponent comp{"mmdit", "", models::mmdit_weight_specs(cfg)};
  const auto w32 = models::random_weights(comp, DType::F32, 7);
  const models::MMDiT cpu = models::MMDiT::from_tensors(cfg, w32, Device::cpu());
  Tensor x = randn({2, 16, 8, 10}, DType::F32), y = randn({2, 32}, DType::F32),
         ctx = randn({2, 7, 64}, DType::F32);
  Tensor t = Tensor::from_floats({880.0f, 135.5f}, {2});
  const Tensor ref = cpu.forward(x, t, y, ctx);
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dname(dt));
    const models::MMDiT gpu_model = models::MMDiT::from_tensors(
        cfg, dt == DType::F32 ? w32 : models::random_weights(comp, dt, 7), Device::cuda(0));
    Tensor out = gpu_model.forward(gpu(x.to(dt)), gpu(t), gpu(y.to(dt)), gpu(ctx.to(dt)));
    EXPECT_EQ(out.dtype(), dt);
    EXPECT_LE(rel_error(out, ref), bound(dt));
    Fusion f = parse_unfused("all");
    FusionScope scope(f);
    Tensor unfused = gpu_model.forward(gpu(x.to(dt)), gpu(t), gpu(y.to(dt)), gpu(ctx.to(dt)));
    EXPECT_LE(rel_error(unfused, ref), bound(dt)) << "unfused";
  }
}

TEST_F(CudaModel, TinyVaeDecodeMatchesCpu) {
  models::VaeConfig cfg;
  cfg.ch = 32;
  cfg.ch_mult = {1, 2};
  cfg.num_res_blocks = 1;
  const models::RandomComponent comp{"vae", "", models::vae_decoder_weight_specs(cfg)};
  const auto w32 = models::random_weights(comp, DType::F32, 11);
  const models::Vae cpu = models::Vae::from_tensors(cfg, w32, Device::cpu());
  Tensor z = randn({1, 16, 6, 5}, DType::F32);
  const Tensor ref = cpu.decode(z);
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dname(dt));
    const models::Vae gpu_model = models::Vae::from_tensors(
        cfg, dt == DType::F32 ? w32 : models::random_weights(comp, dt, 11), Device::cuda(0));
    Tensor out = gpu_model.decode(gpu(z.to(dt)));
    EXPECT_LE(rel_error(out, ref), bound(dt));
    Fusion f = parse_unfused("all");
    FusionScope scope(f);
    EXPECT_LE(rel_error(gpu_model.decode(gpu(z.to(dt))), ref), bound(dt)) << "unfused";
  }
}

}  // namespace
}  // namespace sd3::cudatest
