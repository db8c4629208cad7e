// The models on CUDA against the CPU on the golden fixtures (manifest cases by kind): the
// whole text-to-image pipeline (kind "e2e"), one MM-DiT forward with every traced intermediate
// (kind "mmdit"), and the fusion switches end to end.
//
// Note [CUDA model tolerances]
// The fixture weights are f32 and the pipeline and MMDiT::forward keep activations in the
// input's dtype, so the CUDA runs below compute in f32 throughout: cuBLASLt with
// CUBLAS_COMPUTE_32F (not CUBLAS_COMPUTE_32F_FAST_TF32: no TF32 tensor cores, whose 2^-11
// relative rounding of the operands would be ~sqrt(K) 2^-11 per product and fail these
// bounds by orders of magnitude), cuDNN with CUDNN_FMA_MATH for f32, the attention of f32
// inputs through library products, and f32 elementwise kernels. The CPU and the CUDA backend
// are then two float32 evaluations of the same network that differ only in summation order
// and in the last ulps of exp/sin/cos: the kind of difference the manifest measured between
// the reference's own float32 and float64 runs. The golden rule (Note [Golden tolerances],
// tests/common/golden.cpp: 8x the measured f32-vs-f64 error, a 32-ulp floor, and the t_freq
// sensitivity twice because either run may sit on either side) bounds the distance of two
// such evaluations, whichever they are, so it is used for CUDA vs CPU as it is for CPU vs
// golden. Images are uint8 of 255 * (decoded + 1) / 2, truncated: a float difference d moves a
// byte by at most floor(255 d / 2) + 1 levels (the +1 when a value straddles an integer),
// with d the rule's bound for `decoded`; for the fixture that is 1 level.
//
// Half precision (the fusion test's second dtype): there every stored activation is rounded
// to f16 instead of f32, in the same places, so to first order the rounding error scales by
// u_f16 / u_f32 = 2^13; the bound is the golden rule's 8x measured error scaled by that ratio,
// with the 32-ulp floor taken in f16 ulps. The fused kernels and their unfused compositions
// round different intermediates, so they are compared with each other under that bound.
#include "models/pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "common/golden.h"
#include "common/test_data.h"
#include "cuda/cuda_test_util.h"
#include "engine/ops.h"
#include "engine/weights.h"
#include "models/mmdit.h"

namespace sd3::cudatest {
namespace {

using models::GenerateParams;
using models::MMDiT;
using models::Pipeline;
using models::PipelineOptions;
using test::GoldenCase;

// ---- pipeline -------------------------------------------------------------------------------

PipelineOptions pipeline_options(const GoldenCase& c, Device device) {
  const auto& files = c.raw.at("checkpoint_files");
  auto file = [&](const char* component) {
    return test::fixture_path(files.at(component).get<std::string>());
  };
  PipelineOptions o;
  o.paths.models = {file("mmdit")};
  o.paths.clip_l = file("clip_l");
  o.paths.clip_g = file("clip_g");
  o.paths.t5xxl = file("t5");
  o.paths.vae = file("vae");
  o.clip_vocab = test::tokenizer_path("clip/bpe_simple_vocab_16e6.txt.gz");
  o.t5_model = test::tokenizer_path("t5/spiece.model");
  o.device = device;
  return o;
}

GenerateParams generate_params(const GoldenCase& c) {
  const auto& p = c.params;
  GenerateParams g;
  g.prompt = p.at("prompt").get<std::string>();
  g.negative_prompt = p.value("negative_prompt", "");
  g.seed = p.at("seed").get<uint64_t>();
  g.width = p.at("width").get<int64_t>();
  g.height = p.at("height").get<int64_t>();
  g.steps = p.at("steps").get<int>();
  g.cfg_scale = p.at("cfg_scale").get<float>();
  g.shift = p.at("shift").get<float>();
  g.sampler = models::parse_sampler(p.at("sampler").get<std::string>());
  return g;
}

// Byte levels two f32 runs may differ by (Note [CUDA model tolerances]).
int image_levels(const GoldenCase& c) {
  const double d = test::tolerance(c, "decoded");
  return static_cast<int>(std::floor(255.0 * d / 2.0)) + 1;
}

void expect_images_close(const models::Image& got, const models::Image& want, int levels,
                         const std::string& what) {
  ASSERT_EQ(got.width, want.width) << what;
  ASSERT_EQ(got.height, want.height) << what;
  ASSERT_EQ(got.pixels.size(), want.pixels.size()) << what;
  int worst = 0;
  size_t differing = 0, worst_at = 0;
  for (size_t i = 0; i < want.pixels.size(); ++i) {
    const int d = std::abs(static_cast<int>(got.pixels[i]) - static_cast<int>(want.pixels[i]));
    differing += d != 0;
    if (d > worst) {
      worst = d;
      worst_at = i;
    }
  }
  EXPECT_LE(worst, levels) << what << ": byte " << worst_at << " differs by " << worst << " ("
                           << differing << " of " << want.pixels.size() << " bytes differ)";
}

class CudaPipeline : public CudaTest {};

TEST_F(CudaPipeline, FixtureImageMatchesCpu) {
  for (const GoldenCase& c : test::cases_of_kind("e2e")) {
    SCOPED_TRACE(c.name);
    const GenerateParams params = generate_params(c);
    auto cpu = Pipeline::open(pipeline_options(c, Device::cpu()));
    const models::GenerateResult want = cpu->generate(params);
    auto gpu = Pipeline::open(pipeline_options(c, Device::cuda()));
    const models::GenerateResult got = gpu->generate(params);

    EXPECT_EQ(got.params.steps, want.params.steps);
    EXPECT_EQ(got.params.sampler, want.params.sampler);
    EXPECT_GT(got.peak_device_bytes, 0u) << "the CUDA run reports no device memory";
    expect_images_close(got.image, want.image, image_levels(c), "CUDA vs CPU image");
  }
}

// Each fusion switch changes only how an op is computed, so the CUDA pipeline's image stays
// within the same bound of the all-fused one (groupnorm acts in the VAE, euler in the
// sampler, adaln and attn in the encoders and the MM-DiT).
TEST_F(CudaPipeline, FusionSwitchesKeepTheImage) {
  for (const GoldenCase& c : test::cases_of_kind("e2e")) {
    SCOPED_TRACE(c.name);
    const GenerateParams params = generate_params(c);
    auto gpu = Pipeline::open(pipeline_options(c, Device::cuda()));
    fusion() = Fusion{};
    const models::Image fused = gpu->generate(params).image;
    for (const char* off : {"adaln", "attn", "groupnorm", "euler", "all"}) {
      SCOPED_TRACE(std::string("unfused ") + off);
      fusion() = parse_unfused(off);
      expect_images_close(gpu->generate(params).image, fused, image_levels(c),
                          std::string("unfused ") + off + " vs fused");
    }
  }
}

// ---- MM-DiT ---------------------------------------------------------------------------------

WeightStore store_of(const GoldenCase& c) {
  const auto& cp = test::checkpoint_entry(c.checkpoint);
  return WeightStore::open({test::checkpoint_file(c.checkpoint)})
      .with_prefix(cp.value("key_prefix", std::string()));
}

models::MMDiTForwardOptions options_of(const GoldenCase& c, models::MMDiTTrace* trace) {
  models::MMDiTForwardOptions opt;
  if (c.params.contains("skip_layers"))
    opt.skip_layers = c.params["skip_layers"].get<std::vector<int64_t>>();
  opt.trace = trace;
  return opt;
}

struct Inputs {
  Tensor x, t, y, context;

  Inputs to(Device d, DType dt) const {
    return {x.to(dt).to(d), t.to(d), y.to(dt).to(d), context.to(dt).to(d)};
  }
};

Inputs inputs_of(const GoldenCase& c) {
  return {test::golden_input(c, "x"), test::golden_input(c, "t"), test::golden_input(c, "y"),
          test::golden_input(c, "context")};
}

Tensor forward(const MMDiT& m, const Inputs& in, const GoldenCase& c,
               models::MMDiTTrace* trace = nullptr) {
  return m.forward(in.x, in.t, in.y, in.context, options_of(c, trace));
}

class CudaMMDiT : public CudaTest {};

// One forward per case on each backend, traced: the output and every intermediate the
// manifest lists, CUDA vs CPU (and the CUDA output vs the golden itself).
TEST_F(CudaMMDiT, ForwardMatchesCpu) {
  for (const GoldenCase& c : test::cases_of_kind("mmdit")) {
    SCOPED_TRACE(c.name);
    const WeightStore store = store_of(c);
    const MMDiT cpu = MMDiT::load(store);
    const MMDiT gpu = MMDiT::load(store, Device::cuda());
    const Inputs in = inputs_of(c);
    models::MMDiTTrace cpu_trace, gpu_trace;
    const Tensor want = forward(cpu, in, c, &cpu_trace);
    const Tensor got = forward(gpu, in.to(Device::cuda(), DType::F32), c, &gpu_trace);
    ASSERT_TRUE(got.device().is_cuda());
    EXPECT_TRUE(test::all_close(got, want, test::tolerance(c, "out"), c.name + "/out CUDA vs CPU"));
    EXPECT_TRUE(test::matches_golden(got, c, "out"));
    for (const std::string& name : c.outputs) {
      if (name == "out" || !cpu_trace.has(name)) continue;
      ASSERT_TRUE(gpu_trace.has(name)) << "the CUDA forward records no '" << name << "'";
      EXPECT_TRUE(test::all_close(gpu_trace.at(name), cpu_trace.at(name), test::tolerance(c, name),
                                  c.name + "/" + name + " CUDA vs CPU"));
    }
  }
}

// Bound for fused vs unfused CUDA forwards in `dt` (Note [CUDA model tolerances]).
double fusion_tolerance(const GoldenCase& c, DType dt) {
  if (dt == DType::F32) return test::tolerance(c, "out");
  const auto& e = c.raw.at("errors_f32_vs_f64").at("out");
  const double ratio = unit_roundoff(dt) / unit_roundoff(DType::F32);
  const double eps = 2.0 * unit_roundoff(dt);  // the dtype's machine epsilon
  return 8.0 * e.at("max_abs").get<double>() * ratio +
         32.0 * eps * e.at("ref_max_abs").get<double>();
}

// Every switch of sd3::fusion() (the SD3_UNFUSED names) against the all-fused forward, in f32
// (the fixture's dtype) and in f16, where the MM-DiT's attention takes the flash kernel.
TEST_F(CudaMMDiT, FusionSwitchesAgree) {
  for (const GoldenCase& c : test::cases_of_kind("mmdit")) {
    const WeightStore store = store_of(c);
    const models::MMDiTConfig cfg = models::mmdit_config_from_weights(store);
    for (DType dt : {DType::F32, DType::F16}) {
      SCOPED_TRACE(c.name + " " + dname(dt));
      std::map<std::string, Tensor> weights = store.load_all(models::mmdit_weight_specs(cfg));
      for (auto& [key, t] : weights) t = t.to(dt);
      const MMDiT gpu = MMDiT::from_tensors(cfg, weights, Device::cuda());
      const Inputs in = inputs_of(c).to(Device::cuda(), dt);
      fusion() = Fusion{};
      const Tensor fused = forward(gpu, in, c);
      ASSERT_EQ(fused.dtype(), dt);
      for (const char* off : {"adaln", "attn", "groupnorm", "euler", "all"}) {
        fusion() = parse_unfused(off);
        EXPECT_TRUE(test::all_close(forward(gpu, in, c), fused, fusion_tolerance(c, dt),
                                    c.name + " " + dname(dt) + ": unfused " + off + " vs fused"));
      }
    }
  }
}

}  // namespace
}  // namespace sd3::cudatest
