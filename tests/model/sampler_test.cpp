// The flow-matching schedule, the samplers and guidance, without a network: the sigma schedule
// against the reference's float32 goldens and a float64 evaluation of the formula, the order
// of convergence of each sampler on an analytic flow (Gaussian data, whose probability-flow
// ODE has a closed-form solution), and the guidance plumbing (batching, CFG formula,
// skip-layer window, cancellation, fused Euler).
#include "models/sampler.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <iostream>

#include "common/golden.h"
#include "engine/ops.h"
#include "models/noise.h"

namespace sd3::models {
namespace {

// ---- schedule -----------------------------------------------------------------------------

// The float64 formula: sigma(t) = shift*s / (1 + (shift-1)*s), s = t/1000, at
// t = linspace(1000*sigma(1000), 1000*sigma(1), steps), then 0.
std::vector<double> sigmas_f64(double shift, int steps) {
  auto sig = [shift](double t) {
    const double s = t / 1000.0;
    return shift * s / (1.0 + (shift - 1.0) * s);
  };
  const double start = 1000.0 * sig(1000.0), end = 1000.0 * sig(1.0);
  std::vector<double> out;
  for (int i = 0; i < steps; ++i)
    out.push_back(sig(steps == 1 ? start : start + (end - start) * i / (steps - 1)));
  out.push_back(0.0);
  return out;
}

// Cases of a kind, or none when the fixture directory has no such case.
std::vector<test::GoldenCase> optional_cases(const std::string& kind) {
  for (const auto& c : test::manifest().at("cases"))
    if (c.value("kind", "") == kind) return test::cases_of_kind(kind);
  return {};
}

// The reference's float32 schedule is reproduced exactly: every sampler golden (and the
// end-to-end golden) holds it as output.sigmas.
TEST(FlowSchedule, MatchesGoldenSigmasExactly) {
  int checked = 0;
  for (const std::string kind : {"sampler", "e2e"}) {
    for (const test::GoldenCase& c : optional_cases(kind)) {
      SCOPED_TRACE(c.name);
      const int steps = c.params.at("steps").get<int>();
      FlowSchedule schedule{c.params.at("shift").get<float>()};
      std::vector<float> got = schedule.sigmas(steps);
      const double denoise = c.params.value("denoise", 1.0);
      if (denoise < 1.0) got = truncate_sigmas(got, steps, denoise);
      std::vector<float> want = test::golden_output(c, "sigmas").to_floats();
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_EQ(float_bits(got[i]), float_bits(want[i]))
            << "sigma " << i << ": " << got[i] << " vs golden " << want[i];
      // ...and the manifest's float64 evaluation of the formula is within float32 rounding.
      if (c.raw.contains("sigmas_float64_formula")) {
        auto f64 = c.raw["sigmas_float64_formula"].get<std::vector<double>>();
        ASSERT_EQ(f64.size(), got.size());
        for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], f64[i], 4 * FLT_EPSILON);
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// Against float64 for several shifts and step counts: the float32 path (t rounded to float32,
// then five float32 operations) stays within 4 float32 epsilons of the exact formula; the ends
// are exact (sigma_max = 1 for every shift, the last sigma 0); shift 1 is s = t/1000.
TEST(FlowSchedule, MatchesFloat64Formula) {
  double worst = 0.0;
  for (double shift : {1.0, 1.5, 2.0, 2.7, 3.0, 3.1, 4.5, 6.0}) {
    for (int steps : {1, 2, 3, 4, 10, 20, 28, 40, 50, 100}) {
      FlowSchedule schedule{shift};
      std::vector<float> got = schedule.sigmas(steps);
      std::vector<double> want = sigmas_f64(shift, steps);
      ASSERT_EQ(got.size(), static_cast<size_t>(steps) + 1);
      EXPECT_EQ(got.front(), 1.0f) << "shift " << shift << " steps " << steps;
      EXPECT_EQ(got.back(), 0.0f);
      for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::fabs(got[i] - want[i]);
        worst = std::max(worst, err);
        EXPECT_LE(err, 4 * FLT_EPSILON) << "shift " << shift << " steps " << steps << " i " << i;
        if (i + 1 < got.size()) {
          EXPECT_GT(got[i], got[i + 1]);
        }
      }
    }
  }
  std::cout << "  worst |sigma_f32 - sigma_f64| = " << worst << "\n";
  FlowSchedule identity{1.0f};
  for (float t : {1.0f, 3.0f, 333.0f, 999.0f}) EXPECT_EQ(identity.sigma(t), t / 1000.0f);
}

TEST(FlowSchedule, MatchesManifestExample) {
  // constants.md section 1: shift 3, 4 steps -> 1.0, 0.857692, 0.602151, 0.008929, 0.
  std::vector<float> s = FlowSchedule{3.0f}.sigmas(4);
  ASSERT_EQ(s.size(), 5u);
  EXPECT_NEAR(s[1], 0.857692, 1e-6);
  EXPECT_NEAR(s[2], 0.602151, 1e-6);
  EXPECT_NEAR(s[3], 0.008929, 1e-6);
  EXPECT_EQ(FlowSchedule{3.0f}.sigma_max(), 1.0f);
}

TEST(FlowSchedule, LinspaceEndsAreExact) {
  for (int n : {2, 3, 4, 7, 16, 33, 50}) {
    std::vector<float> v = linspace_f32(1000.0f, 2.9940119f, n);
    EXPECT_EQ(v.front(), 1000.0f);
    EXPECT_EQ(v.back(), 2.9940119f);
  }
  EXPECT_EQ(linspace_f32(5.0f, 1.0f, 1), std::vector<float>{5.0f});
  EXPECT_TRUE(linspace_f32(5.0f, 1.0f, 0).empty());
}

// img2img keeps sigmas[int(steps * (1 - denoise)):] with Python's double arithmetic.
TEST(FlowSchedule, Img2ImgTruncation) {
  const std::vector<float> s10 = FlowSchedule{3.0f}.sigmas(10);
  EXPECT_EQ(truncate_sigmas(s10, 10, 1.0), s10);
  EXPECT_EQ(truncate_sigmas(s10, 10, 0.6).size(), 7u);        // int(4.0) = 4
  EXPECT_EQ(truncate_sigmas(s10, 10, 0.3).size(), 4u);        // 10 * 0.7 = 7.0 in double (float: 6)
  EXPECT_EQ(truncate_sigmas(s10, 10, 0.25).front(), s10[7]);  // int(7.5) = 7
  EXPECT_EQ(truncate_sigmas(s10, 10, 0.01).size(), 2u);       // at least the last step
  const std::vector<float> s4 = FlowSchedule{3.0f}.sigmas(4);
  EXPECT_EQ(truncate_sigmas(s4, 4, 0.6).front(), s4[1]);  // int(1.6) = 1
  EXPECT_THROW(truncate_sigmas(s10, 10, 0.0), Error);
  EXPECT_THROW(truncate_sigmas(s10, 10, 1.5), Error);
  EXPECT_THROW(truncate_sigmas(s10, 9, 0.5), Error);
  EXPECT_THROW(FlowSchedule{3.0f}.sigmas(0), Error);
  EXPECT_THROW(FlowSchedule{-1.0f}.sigmas(4), Error);
}

TEST(FlowSchedule, NoiseScaling) {
  Tensor noise = torch_randn(1, {1, 16, 2, 2});
  Tensor latent = torch_randn(2, {1, 16, 2, 2});
  EXPECT_EQ(noise_scaling(1.0f, noise, latent).to_floats(), noise.to_floats());
  EXPECT_EQ(noise_scaling(1.0f, noise, Tensor()).to_floats(), noise.to_floats());
  std::vector<float> mixed = noise_scaling(0.25f, noise, latent).to_floats();
  std::vector<float> n = noise.to_floats(), l = latent.to_floats();
  for (size_t i = 0; i < n.size(); ++i) EXPECT_NEAR(mixed[i], 0.25f * n[i] + 0.75f * l[i], 1e-6);
  EXPECT_THROW(noise_scaling(0.5f, noise, torch_randn(2, {1, 16, 2, 3})), Error);
}

// ---- defaults -----------------------------------------------------------------------------

TEST(SamplerDefaults, PresetsAsTheReference) {
  SamplerDefaults d = defaults_for("", "sd3.5_large");
  EXPECT_EQ(d.steps, 40);
  EXPECT_EQ(d.cfg_scale, 4.5f);
  EXPECT_EQ(d.shift, 3.0f);
  EXPECT_EQ(d.sampler, SamplerKind::DpmPP2M);
  d = defaults_for("sd35_large_mmdit", "sd35-large-turbo");  // the preset wins over the keys
  EXPECT_EQ(d.steps, 4);
  EXPECT_EQ(d.cfg_scale, 1.0f);
  EXPECT_EQ(d.sampler, SamplerKind::Euler);
  d = defaults_for("sd35_medium_mmditx");
  EXPECT_EQ(d.preset, "sd35_medium");
  EXPECT_EQ(d.steps, 50);
  EXPECT_EQ(d.cfg_scale, 5.0f);
  EXPECT_EQ(d.slg.scale, 2.5f);
  EXPECT_EQ(d.slg.layers, (std::vector<int>{7, 8, 9}));
  EXPECT_EQ(d.slg.start, 0.01);
  EXPECT_EQ(d.slg.end, 0.20);
  d = defaults_for("sd3_medium_mmdit");
  EXPECT_EQ(d.preset, "sd3_medium");
  EXPECT_EQ(d.shift, 3.0f);  // our choice; the reference's CONFIGS says 1.0 (see sampler.cpp)
  EXPECT_EQ(d.steps, 50);
  EXPECT_FALSE(d.slg.enabled());
  d = defaults_for("something_else");
  EXPECT_EQ(d.steps, 50);
  EXPECT_EQ(d.sampler, SamplerKind::DpmPP2M);
  EXPECT_THROW(defaults_for("", "sdxl"), Error);
  for (const std::string& p : sampler_preset_names()) EXPECT_EQ(defaults_for("", p).preset, p);
}

TEST(SamplerDefaults, SamplerNames) {
  for (SamplerKind k : {SamplerKind::Euler, SamplerKind::DpmPP2M, SamplerKind::Heun})
    EXPECT_EQ(parse_sampler(sampler_name(k)), k);
  EXPECT_EQ(parse_sampler("DPM++2M"), SamplerKind::DpmPP2M);
  EXPECT_THROW(parse_sampler("ddim"), Error);
}

// ---- an analytic flow ---------------------------------------------------------------------

// Data x_0 ~ N(mu, c^2) per element, x_sigma = (1 - sigma) x_0 + sigma * noise. Its ideal
// denoiser is D(x, sigma) = mu + (1-sigma) c^2 / s(sigma)^2 * (x - (1-sigma) mu) with
// s(sigma)^2 = (1-sigma)^2 c^2 + sigma^2, and the probability-flow ODE dx/dsigma = (x - D)/sigma
// has the exact solution x(sigma) = (1-sigma) mu + s(sigma) z, z = x(1). The velocity the
// model returns is v = (x - D)/sigma, evaluated in double from sigma = timestep / 1000.
struct GaussianFlow {
  std::vector<double> mu, c;

  static GaussianFlow make(int64_t n, uint64_t seed, double mu_offset = 0.0) {
    GaussianFlow g;
    std::vector<float> a = torch_randn(seed, {n}).to_floats();
    std::vector<float> b = torch_randn(seed + 1000, {n}).to_floats();
    for (int64_t i = 0; i < n; ++i) {
      g.mu.push_back(0.7 * a[i] + mu_offset);
      g.c.push_back(0.25 + 1.5 * std::fabs(b[i]));
    }
    return g;
  }

  double stddev(size_t i, double sigma) const {
    const double a = (1.0 - sigma) * c[i];
    return std::sqrt(a * a + sigma * sigma);
  }
  double velocity(size_t i, double x, double sigma) const {
    const double s2 = stddev(i, sigma) * stddev(i, sigma);
    const double d = mu[i] + (1.0 - sigma) * c[i] * c[i] / s2 * (x - (1.0 - sigma) * mu[i]);
    return (x - d) / sigma;
  }
  double exact(size_t i, double z, double sigma) const {
    return (1.0 - sigma) * mu[i] + stddev(i, sigma) * z;
  }
};

// A model over per-row flows: row b of the batch uses flows[row_flow(context row b)], where
// the context's first value selects the flow (so cond and uncond can differ). Skipping layers
// adds `skip_bias` to v. Every call is recorded.
struct Call {
  int64_t batch;
  std::vector<float> timesteps;
  std::vector<float> context_tags;
  std::vector<int> skip_layers;
};

struct AnalyticModel {
  std::vector<GaussianFlow> flows;
  double skip_bias = 0.0;
  std::vector<Call>* calls = nullptr;

  DiffusionModel fn() const {
    return [this](const Tensor& x, const Tensor& t, const Tensor& ctx, const Tensor& y,
                  const std::vector<int>& skip) {
      EXPECT_EQ(ctx.size(0), x.size(0));
      EXPECT_EQ(y.size(0), x.size(0));
      EXPECT_EQ(t.dim(), 1);
      EXPECT_EQ(t.size(0), x.size(0));
      std::vector<float> xs = x.to_floats(), ts = t.to_floats(), cs = ctx.to_floats();
      const int64_t per = x.numel() / x.size(0), per_ctx = ctx.numel() / ctx.size(0);
      Call call{x.size(0), ts, {}, skip};
      std::vector<float> v(xs.size());
      for (int64_t b = 0; b < x.size(0); ++b) {
        const float tag = cs[b * per_ctx];
        call.context_tags.push_back(tag);
        const GaussianFlow& f = flows.at(static_cast<size_t>(tag));
        const double sigma = ts[b] / 1000.0;
        for (int64_t i = 0; i < per; ++i) {
          double vi = f.velocity(i, xs[b * per + i], sigma);
          if (!skip.empty()) vi += skip_bias;
          v[b * per + i] = static_cast<float>(vi);
        }
      }
      if (calls) calls->push_back(call);
      return Tensor::from_floats(v, x.shape());
    };
  }
};

// Conditioning whose context rows carry a flow index as their first value.
GuidanceInputs tagged_inputs(float cond_tag, float uncond_tag, int64_t cond_len = 5,
                             int64_t uncond_len = 5) {
  GuidanceInputs in;
  in.context_cond = Tensor::full({1, cond_len, 3}, cond_tag);
  in.context_uncond = Tensor::full({1, uncond_len, 3}, uncond_tag);
  in.y_cond = Tensor::full({1, 4}, 0.5f);
  in.y_uncond = Tensor::full({1, 4}, -0.5f);
  return in;
}

constexpr int64_t kChannels = 16, kSide = 2;  // a [1, 16, 2, 2] latent: 64 independent ODEs

// Max |x_N - x(sigma_end)| after sampling one flow over a uniform sigma grid 1 -> sigma_end.
double solve_error(SamplerKind kind, int steps, double sigma_end) {
  const int64_t n = kChannels * kSide * kSide;
  AnalyticModel m;
  m.flows = {GaussianFlow::make(n, 5)};
  std::vector<float> sigmas;
  for (int i = 0; i <= steps; ++i)
    sigmas.push_back(static_cast<float>(1.0 + (sigma_end - 1.0) * i / steps));
  Tensor z = torch_randn(9, {1, kChannels, kSide, kSide});
  SamplerOptions opt;
  opt.sampler = kind;
  opt.cfg_scale = 1.0f;
  DiffusionModel model = m.fn();
  std::vector<float> got = sample(model, z, sigmas, tagged_inputs(0, 0), opt).to_floats();
  std::vector<float> zs = z.to_floats();
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i)
    err = std::max(err, std::fabs(got[i] - m.flows[0].exact(i, zs[i], sigmas.back())));
  return err;
}

// Halving the step size divides the global error by 2^order. Measured on a uniform grid from
// sigma 1 to 0.05 (no final jump to 0, whose first-order step would dominate), at 16 -> 32 and
// 32 -> 64 steps. Thresholds: Euler order in [0.9, 1.1]; Heun in [1.9, 2.1]; DPM++(2M) (first
// step first-order, multistep in log-sigma) in [1.8, 2.3].
TEST(SamplerConvergence, OrdersOnAnalyticFlow) {
  struct Expect {
    SamplerKind kind;
    double lo, hi;
  };
  for (Expect e : {Expect{SamplerKind::Euler, 0.9, 1.1}, Expect{SamplerKind::Heun, 1.9, 2.1},
                   Expect{SamplerKind::DpmPP2M, 1.8, 2.3}}) {
    double e16 = solve_error(e.kind, 16, 0.05), e32 = solve_error(e.kind, 32, 0.05),
           e64 = solve_error(e.kind, 64, 0.05);
    double p1 = std::log2(e16 / e32), p2 = std::log2(e32 / e64);
    std::cout << "  " << sampler_name(e.kind) << ": max error " << e16 << " (16 steps), " << e32
              << " (32), " << e64 << " (64); observed order " << p1 << ", " << p2 << "\n";
    EXPECT_GE(p1, e.lo) << sampler_name(e.kind);
    EXPECT_LE(p1, e.hi) << sampler_name(e.kind);
    EXPECT_GE(p2, e.lo) << sampler_name(e.kind);
    EXPECT_LE(p2, e.hi) << sampler_name(e.kind);
  }
}

// The same on the real SD3 schedule (shift 3, ending with the first-order jump from
// sigma_min ~ 0.003 to 0), against the data-space solution x(0) = mu + c z, at 25 -> 50 -> 100
// steps (the shift crowds steps at high sigma, so the ratios settle later): Euler order in
// [0.9, 1.1], Heun and DPM++(2M) in [1.8, 2.4].
TEST(SamplerConvergence, OrdersOnSd3Schedule) {
  const int64_t n = kChannels * kSide * kSide;
  AnalyticModel m;
  m.flows = {GaussianFlow::make(n, 5)};
  Tensor z = torch_randn(9, {1, kChannels, kSide, kSide});
  std::vector<float> zs = z.to_floats();
  DiffusionModel model = m.fn();
  for (SamplerKind kind : {SamplerKind::Euler, SamplerKind::DpmPP2M, SamplerKind::Heun}) {
    SamplerOptions opt;
    opt.sampler = kind;
    opt.cfg_scale = 1.0f;
    std::vector<double> errs;
    for (int steps : {25, 50, 100}) {
      std::vector<float> got =
          sample(model, z, FlowSchedule{3.0f}.sigmas(steps), tagged_inputs(0, 0), opt).to_floats();
      double err = 0.0;
      for (int64_t i = 0; i < n; ++i)
        err = std::max(err, std::fabs(got[i] - m.flows[0].exact(i, zs[i], 0.0)));
      errs.push_back(err);
    }
    const double p1 = std::log2(errs[0] / errs[1]), p2 = std::log2(errs[1] / errs[2]);
    std::cout << "  " << sampler_name(kind) << " on the SD3 schedule: max error " << errs[0]
              << " (25 steps), " << errs[1] << " (50), " << errs[2] << " (100); observed order "
              << p1 << ", " << p2 << "\n";
    const double lo = kind == SamplerKind::Euler ? 0.9 : 1.8;
    const double hi = kind == SamplerKind::Euler ? 1.1 : 2.4;
    for (double p : {p1, p2}) {
      EXPECT_GE(p, lo) << sampler_name(kind);
      EXPECT_LE(p, hi) << sampler_name(kind);
    }
  }
}

// ---- guidance -----------------------------------------------------------------------------

// The guidance tests drive two analytic flows (context tag 0: conditional, 1: unconditional),
// record every model call, and start from the same latent.
class SamplerGuidance : public ::testing::Test {
 protected:
  SamplerGuidance() {
    m.flows = {GaussianFlow::make(n, 5), GaussianFlow::make(n, 6, 0.5)};
    m.calls = &calls;
  }

  const int64_t n = kChannels * kSide * kSide;
  AnalyticModel m;
  std::vector<Call> calls;
  Tensor x0 = torch_randn(3, {1, kChannels, kSide, kSide});
};

// One batched forward of batch 2 per step ([cond; uncond], timesteps 1000*sigma), and the
// guided prediction uncond + (cond - uncond) * cfg with each half x - v*sigma.
TEST_F(SamplerGuidance, BatchedCfgFormula) {
  std::vector<float> sigmas = FlowSchedule{3.0f}.sigmas(5);
  SamplerOptions opt;
  opt.sampler = SamplerKind::DpmPP2M;
  opt.cfg_scale = 4.0f;
  SamplerTrace trace;
  DiffusionModel model = m.fn();
  sample(model, x0, sigmas, tagged_inputs(0, 1), opt, {}, &trace);
  ASSERT_EQ(calls.size(), 5u);
  ASSERT_EQ(trace.x.size(), 5u);
  ASSERT_EQ(trace.denoised_uncond.size(), 5u);
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].batch, 2);
    EXPECT_EQ(calls[i].context_tags, (std::vector<float>{0, 1}));  // [cond; uncond]
    EXPECT_EQ(calls[i].timesteps, (std::vector<float>(2, sigmas[i] * 1000.0f)));
    EXPECT_TRUE(calls[i].skip_layers.empty());
    std::vector<float> x = trace.x[i].to_floats(), d = trace.denoised[i].to_floats(),
                       dc = trace.denoised_cond[i].to_floats(),
                       du = trace.denoised_uncond[i].to_floats();
    for (int64_t k = 0; k < n; ++k) {
      const double vc = m.flows[0].velocity(k, x[k], sigmas[i] * 1000.0f / 1000.0);
      const double vu = m.flows[1].velocity(k, x[k], sigmas[i] * 1000.0f / 1000.0);
      const double want_c = x[k] - vc * sigmas[i], want_u = x[k] - vu * sigmas[i];
      EXPECT_NEAR(dc[k], want_c, 1e-5 * (1 + std::fabs(want_c)));
      EXPECT_NEAR(du[k], want_u, 1e-5 * (1 + std::fabs(want_u)));
      EXPECT_NEAR(d[k], want_u + (want_c - want_u) * 4.0, 1e-4 * (1 + std::fabs(want_c)));
    }
  }
}

// cfg 1 skips the unconditional half (batch 1) unless asked not to; contexts of different
// lengths take two forwards; a batch-2 latent repeats batch-1 conditioning.
TEST_F(SamplerGuidance, BatchShapes) {
  DiffusionModel model = m.fn();
  std::vector<float> sigmas = FlowSchedule{3.0f}.sigmas(3);
  SamplerOptions opt;
  opt.cfg_scale = 1.0f;
  Tensor a = sample(model, x0, sigmas, tagged_inputs(0, 1), opt);
  ASSERT_EQ(calls.size(), 3u);
  for (const Call& c : calls) EXPECT_EQ(c.context_tags, std::vector<float>{0});
  calls.clear();
  opt.skip_uncond_at_cfg_one = false;
  Tensor b = sample(model, x0, sigmas, tagged_inputs(0, 1), opt);
  ASSERT_EQ(calls.size(), 3u);
  for (const Call& c : calls) EXPECT_EQ(c.batch, 2);
  EXPECT_TRUE(test::all_close(a, b, 1e-5, "cfg 1 with and without the uncond half"));
  calls.clear();
  opt.cfg_scale = 3.0f;
  Tensor c1 = sample(model, x0, sigmas, tagged_inputs(0, 1, 5, 9), opt);  // lengths differ
  ASSERT_EQ(calls.size(), 6u);
  for (const Call& c : calls) EXPECT_EQ(c.batch, 1);
  calls.clear();
  Tensor c2 = sample(model, x0, sigmas, tagged_inputs(0, 1), opt);
  EXPECT_TRUE(test::all_close(c1, c2, 1e-5, "two forwards vs one batched forward"));
  calls.clear();
  Tensor x2 = ops::concat({x0, torch_randn(4, {1, kChannels, kSide, kSide})}, 0);
  Tensor r2 = sample(model, x2, sigmas, tagged_inputs(0, 1), opt);
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].context_tags, (std::vector<float>{0, 0, 1, 1}));
  EXPECT_TRUE(test::all_close(r2.slice(0, 0, 1), c2, 1e-6, "batch row 0 alone"));
  // Conditioning with a batch that is neither 1 nor the latent's is refused.
  GuidanceInputs bad = tagged_inputs(0, 1);
  bad.context_cond = Tensor::full({3, 5, 3}, 0.0f);
  EXPECT_THROW(sample(model, x2, sigmas, bad, opt), Error);
}

// Skip-layer guidance: with 50 steps, start 0.01 and end 0.2 the extra conditional forward
// (batch 1, skip_layers) runs on model calls 1..9 and adds (cond - cond_skip) * scale.
TEST_F(SamplerGuidance, SkipLayerWindow) {
  m.skip_bias = 0.25;
  DiffusionModel model = m.fn();
  const int steps = 50;
  std::vector<float> sigmas = FlowSchedule{3.0f}.sigmas(steps);
  SamplerOptions opt;
  opt.sampler = SamplerKind::DpmPP2M;
  opt.cfg_scale = 5.0f;
  opt.slg = defaults_for("", "sd35_medium").slg;
  SamplerTrace trace;
  sample(model, x0, sigmas, tagged_inputs(0, 1), opt, {}, &trace);
  std::vector<int> skip_steps;
  int step = -1;
  for (const Call& c : calls) {
    if (c.skip_layers.empty()) {
      ++step;
      continue;
    }
    skip_steps.push_back(step);
    EXPECT_EQ(c.batch, 1);
    EXPECT_EQ(c.context_tags, std::vector<float>{0});
    EXPECT_EQ(c.skip_layers, (std::vector<int>{7, 8, 9}));
  }
  EXPECT_EQ(skip_steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  // At a step inside the window: denoised = cfg result + (cond - skip) * 2.5, where
  // cond - skip = -(v_c - v_skip) * sigma = 0.25 * sigma.
  for (int i : {0, 3}) {
    std::vector<float> d = trace.denoised[i].to_floats(), dc = trace.denoised_cond[i].to_floats(),
                       du = trace.denoised_uncond[i].to_floats();
    const double extra = i >= 1 && i <= 9 ? 0.25 * sigmas[i] * 2.5 : 0.0;
    for (int64_t k = 0; k < n; ++k)
      EXPECT_NEAR(d[k], du[k] + (dc[k] - du[k]) * 5.0 + extra, 1e-4) << "step " << i;
  }
  // img2img: the window is measured against the full step count, counting from the first
  // truncated step.
  calls.clear();
  opt.total_steps = steps;
  sample(model, x0, truncate_sigmas(sigmas, steps, 0.5), tagged_inputs(0, 1), opt);
  int skips = 0;
  for (const Call& c : calls) skips += !c.skip_layers.empty();
  EXPECT_EQ(skips, 9);
}

TEST_F(SamplerGuidance, ProgressAndCancellation) {
  DiffusionModel model = m.fn();
  std::vector<float> sigmas = FlowSchedule{3.0f}.sigmas(6);
  SamplerOptions opt;
  std::vector<int> seen;
  std::vector<float> seen_sigma;
  StepCallback record = [&](int step, int total, float sigma) {
    EXPECT_EQ(total, 6);
    seen.push_back(step);
    seen_sigma.push_back(sigma);
    return true;
  };
  sample(model, x0, sigmas, tagged_inputs(0, 1), opt, record);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(seen_sigma, std::vector<float>(sigmas.begin(), sigmas.end() - 1));
  calls.clear();
  StepCallback cancel = [](int step, int, float) { return step < 1; };
  try {
    sample(model, x0, sigmas, tagged_inputs(0, 1), opt, cancel);
    ADD_FAILURE() << "no cancellation";
  } catch (const SamplingCancelled& e) {
    EXPECT_EQ(e.step(), 1);
    EXPECT_EQ(std::string(e.what()), "sampling cancelled after step 2 of 6");
  }
  EXPECT_EQ(calls.size(), 2u);  // no model call after the cancelling step
}

// Heun evaluates twice per step except on the last (Euler) step to sigma 0.
TEST_F(SamplerGuidance, HeunCallCount) {
  DiffusionModel model = m.fn();
  SamplerOptions opt;
  opt.sampler = SamplerKind::Heun;
  sample(model, x0, FlowSchedule{3.0f}.sigmas(5), tagged_inputs(0, 1), opt);
  EXPECT_EQ(calls.size(), 9u);
}

// The fused Euler update (no trace: ops::cfg_euler_step on the raw velocities) equals the
// reference-order path (trace: denoised, then d = (x - denoised)/sigma) up to float rounding,
// with the fused kernel on and off.
TEST_F(SamplerGuidance, FusedEulerMatchesUnfused) {
  DiffusionModel model = m.fn();
  std::vector<float> sigmas = FlowSchedule{3.0f}.sigmas(8);
  SamplerOptions opt;
  opt.sampler = SamplerKind::Euler;
  opt.cfg_scale = 4.5f;
  SamplerTrace trace;
  Tensor unfused = sample(model, x0, sigmas, tagged_inputs(0, 1), opt, {}, &trace);
  Tensor fused = sample(model, x0, sigmas, tagged_inputs(0, 1), opt);
  const bool saved = fusion().euler;
  fusion().euler = false;
  Tensor composed = sample(model, x0, sigmas, tagged_inputs(0, 1), opt);
  fusion().euler = saved;
  double mag = 0.0;
  for (float v : unfused.to_floats()) mag = std::max(mag, static_cast<double>(std::fabs(v)));
  // A few float32 roundings per step, each magnified by at most cfg: 64 ulps of the magnitude.
  const double tol = 64 * FLT_EPSILON * mag;
  EXPECT_TRUE(test::all_close(fused, unfused, tol, "fused vs reference-order Euler"));
  EXPECT_TRUE(test::all_close(composed, unfused, tol, "unfused kernel vs reference-order Euler"));
}

TEST_F(SamplerGuidance, RejectsBadInput) {
  m.flows = {GaussianFlow::make(64, 5)};
  DiffusionModel model = m.fn();
  SamplerOptions opt;
  EXPECT_THROW(sample(model, x0, {1.0f}, tagged_inputs(0, 0), opt), Error);
  EXPECT_THROW(sample(model, x0, {0.5f, 0.7f, 0.0f}, tagged_inputs(0, 0), opt), Error);
  EXPECT_THROW(sample(model, x0, {1.0f, 0.0f, 0.0f}, tagged_inputs(0, 0), opt), Error);
  EXPECT_THROW(sample(model, torch_randn(3, {16, 2, 2}), {1.0f, 0.0f}, tagged_inputs(0, 0), opt),
               Error);
  EXPECT_THROW(sample(DiffusionModel(), x0, {1.0f, 0.0f}, tagged_inputs(0, 0), opt), Error);
  DiffusionModel wrong = [](const Tensor& x, const Tensor&, const Tensor&, const Tensor&,
                            const std::vector<int>&) { return x.slice(1, 0, 8).contiguous(); };
  EXPECT_THROW(sample(wrong, x0, {1.0f, 0.0f}, tagged_inputs(0, 1), opt), Error);
}

}  // namespace
}  // namespace sd3::models
