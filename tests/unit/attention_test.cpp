// Multi-head attention against a float64 reference, fused and unfused
// (Note [Op test tolerances]).
//
// Note [Attention tolerance]
// Scores s = scale q.k are f32 dot products of D terms: |ds| <= (D + 2) u scale sum|q||k|
// (+ u |bias| for the bias add). A softmax weight p_j = e^(s_j - max) / sum moves by at most
// p_j (2 max|ds| + (Lk + 10) u) (both the numerator and the normaliser see the score errors;
// the f32 sum of Lk terms and exp's 2 ulp add the rest), and o = sum_j p_j v_j adds the
// gamma_Lk bound of that product. So per output element
//   tol = (2 max|ds| + (2 Lk + 12) u) sum_j p_j |v_j| + out_round |o|.
#include <gtest/gtest.h>

#include "engine/ops.h"
#include "op_test_util.h"

namespace sd3::test {
namespace {

struct AttnRef {
  std::vector<double> ref, tol;
  // The unfused composition stores scores (after the product, the scale and the bias add)
  // and probabilities in the activation dtype: 3 roundings of each score move p_j by up to
  // 6 u' max|s| relative, the rounding of p_j adds u', so o gains
  // (6 max|s| + 2) u' sum_j p_j |v_j| with u' the dtype's unit roundoff.
  std::vector<double> unfused_extra;
};

AttnRef ref_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                      const ops::AttentionOptions& opt, DType out) {
  const int64_t nb = q.size(0), lq = q.size(1), w = q.size(2), lk = k.size(1);
  const int64_t h = opt.heads, d = w / h;
  const double scale = opt.scale != 0.0f ? opt.scale : 1.0 / std::sqrt(double(d));
  const std::vector<double> qv = values(q), kv = values(k), vv = values(v);
  const std::vector<double> bv = opt.bias.defined() ? values(opt.bias) : std::vector<double>();
  const bool bias_batched = opt.bias.defined() && opt.bias.dim() == 4 && opt.bias.size(0) > 1;
  AttnRef r;
  r.ref.assign(static_cast<size_t>(nb * lq * w), 0.0);
  r.tol.assign(r.ref.size(), 0.0);
  r.unfused_extra.assign(r.ref.size(), 0.0);
  std::vector<double> s(static_cast<size_t>(lk)), ds(s.size());
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t i = 0; i < lq; ++i) {
        double mx = -INFINITY, max_ds = 0.0, max_abs_s = 0.0;
        for (int64_t j = 0; j < lk; ++j) {
          double dot = 0.0, mag = 0.0;
          for (int64_t e = 0; e < d; ++e) {
            const double a = qv[(b * lq + i) * w + hh * d + e] * kv[(b * lk + j) * w + hh * d + e];
            dot += a;
            mag += std::fabs(a);
          }
          s[j] = dot * scale;
          ds[j] = (d + 2) * kU32 * scale * mag;
          if (!bv.empty()) {
            const double bias = bv[(((bias_batched ? b : 0) * h + hh) * lq + i) * lk + j];
            s[j] += bias;
            ds[j] += kU32 * (std::fabs(bias) + std::fabs(s[j]));
          }
          if (opt.causal && j > i) s[j] = -INFINITY;
          mx = std::max(mx, s[j]);
          if (!(opt.causal && j > i)) {
            max_ds = std::max(max_ds, ds[j]);
            max_abs_s = std::max(max_abs_s, std::fabs(s[j]));
          }
        }
        double sum = 0.0;
        for (int64_t j = 0; j < lk; ++j) sum += std::exp(s[j] - mx);
        for (int64_t e = 0; e < d; ++e) {
          double o = 0.0, mag = 0.0;
          for (int64_t j = 0; j < lk; ++j) {
            const double p = std::exp(s[j] - mx) / sum;
            const double val = vv[(b * lk + j) * w + hh * d + e];
            o += p * val;
            mag += p * std::fabs(val);
          }
          const size_t idx = static_cast<size_t>((b * lq + i) * w + hh * d + e);
          r.ref[idx] = o;
          r.tol[idx] = (2 * max_ds + (2.0 * lk + 12) * kU32) * mag +
                       unit_roundoff(out) * std::fabs(o) + tiny(out);
          r.unfused_extra[idx] = (6 * max_abs_s + 2) * unit_roundoff(out) * mag;
        }
      }
  return r;
}

struct Case {
  int64_t nb, lq, lk, heads, d;
  bool causal;
  int bias;  // 0 none, 3 [H, Lq, Lk], 4 [B, H, Lq, Lk], 1 [1, H, Lq, Lk]
  float scale;
};

const Case kCases[] = {
    {1, 1, 1, 1, 1, false, 0, 0.0f},      {2, 7, 13, 3, 5, false, 0, 0.0f},
    {1, 77, 77, 2, 16, true, 0, 0.0f},    {2, 33, 154, 4, 8, false, 3, 0.0f},
    {2, 17, 19, 2, 6, false, 4, 1.0f},    {1, 29, 11, 1, 4, true, 1, 0.0f},  // Lq > Lk, causal
    {1, 600, 600, 1, 12, true, 0, 0.0f},                                     // several query tiles
    {2, 300, 257, 2, 64, false, 0, 0.0f},
};

Tensor run_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                     const ops::AttentionOptions& opt, bool fused) {
  Fusion saved = fusion();
  fusion().attn = fused;
  Tensor o = ops::attention(q, k, v, opt);
  fusion() = saved;
  return o;
}

TEST(Attention, FusedAndUnfusedMatchFloat64) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const Case& c : kCases) {
    const int64_t w = c.heads * c.d;
    for (DType dt : {DType::F32, DType::F16}) {
      if (dt == DType::F16 && c.lq * c.lk > 100000) continue;  // one dtype is enough when big
      Tensor q = randn(rng, {c.nb, c.lq, w}, dt, 1.0), k = randn(rng, {c.nb, c.lk, w}, dt, 1.0);
      Tensor v = randn(rng, {c.nb, c.lk, w}, dt);
      ops::AttentionOptions opt;
      opt.heads = c.heads;
      opt.causal = c.causal;
      opt.scale = c.scale;
      if (c.bias == 3) opt.bias = randn(rng, {c.heads, c.lq, c.lk}, DType::F32, 2.0);
      if (c.bias == 4) opt.bias = randn(rng, {c.nb, c.heads, c.lq, c.lk}, DType::BF16, 2.0);
      if (c.bias == 1) opt.bias = randn(rng, {1, c.heads, c.lq, c.lk}, DType::F32, 2.0);
      const AttnRef r = ref_attention(q, k, v, opt, dt);
      for (bool fused : {true, false}) {
        Tensor o = run_attention(q, k, v, opt, fused);
        ASSERT_EQ(o.shape(), q.shape());
        ASSERT_EQ(o.dtype(), dt);
        std::vector<double> tol = r.tol;
        if (!fused)
          for (size_t i = 0; i < tol.size(); ++i) tol[i] += r.unfused_extra[i];
        expect_close(o, r.ref, tol,
                     "attention " + q.str() + " k " + k.str() + " heads " +
                         std::to_string(c.heads) + " causal " + std::to_string(c.causal) +
                         " bias " + std::to_string(c.bias) + " fused " + std::to_string(fused));
      }
    }
  }
}

TEST(Attention, NonContiguousInputsAndThreads) {
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  // q, k, v as slices of one fused qkv projection [B, L, 3W], the layout of the models.
  const int64_t nb = 2, l = 45, heads = 3, d = 8, w = heads * d;
  Tensor qkv = randn(rng, {nb, l, 3 * w});
  Tensor q = qkv.slice(2, 0, w), k = qkv.slice(2, w, 2 * w), v = qkv.slice(2, 2 * w, 3 * w);
  ops::AttentionOptions opt;
  opt.heads = heads;
  opt.causal = true;
  const AttnRef r = ref_attention(q.contiguous(), k.contiguous(), v.contiguous(), opt, DType::F32);
  auto [one, two] = run_1_and_2_threads([&] { return run_attention(q, k, v, opt, true); });
  expect_close(one, r.ref, r.tol, "attention on qkv slices, 1 thread");
  expect_close(two, r.ref, r.tol, "attention on qkv slices, 2 threads");
  for (int layout = 0; layout < kLayouts; ++layout)
    expect_close(run_attention(noncontiguous(q.contiguous(), layout), k,
                               noncontiguous(v.contiguous(), (layout + 2) % kLayouts), opt, true),
                 r.ref, r.tol, "attention layout " + std::to_string(layout));
}

TEST(Attention, MaskedKeyBlocksAndFullyMaskedRows) {
  // -inf bias over whole key blocks (the kernel walks 256 keys at a time): rows whose first
  // blocks are all masked, and one row masked everywhere (NaN, as softmax of all -inf gives).
  Rng rng;
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const int64_t nb = 1, lq = 9, lk = 600, heads = 2, d = 8;
  Tensor q = randn(rng, {nb, lq, heads * d}), k = randn(rng, {nb, lk, heads * d});
  Tensor v = randn(rng, {nb, lk, heads * d});
  std::vector<float> bias(static_cast<size_t>(heads * lq * lk));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < lq; ++i)
      for (int64_t j = 0; j < lk; ++j) {
        float bv = static_cast<float>(rng.normal());
        if (i % 2 == 0 && j < 300 + 20 * i) bv = -INFINITY;  // first block(s) fully masked
        if (i == 5) bv = -INFINITY;                          // the whole row
        bias[static_cast<size_t>((h * lq + i) * lk + j)] = bv;
      }
  ops::AttentionOptions opt;
  opt.heads = heads;
  opt.bias = Tensor::from_floats(bias, {heads, lq, lk});
  const AttnRef r = ref_attention(q, k, v, opt, DType::F32);
  for (bool fused : {true, false}) {
    Tensor o = run_attention(q, k, v, opt, fused);
    std::vector<double> tol = r.tol;
    if (!fused)
      for (size_t i = 0; i < tol.size(); ++i) tol[i] += r.unfused_extra[i];
    expect_close(o, r.ref, tol, "masked attention, fused " + std::to_string(fused));
    const std::vector<double> got = values(o);
    EXPECT_TRUE(std::isnan(got[5 * heads * d])) << "fully masked row, fused " << fused;
    EXPECT_FALSE(std::isnan(got[4 * heads * d])) << "partly masked row, fused " << fused;
  }
}

TEST(Attention, RejectsBadArguments) {
  Rng rng;
  Tensor q = randn(rng, {2, 5, 12}), k = randn(rng, {2, 7, 12}), v = randn(rng, {2, 7, 12});
  ops::AttentionOptions opt;
  opt.heads = 5;  // 12 % 5
  EXPECT_THROW(ops::attention(q, k, v, opt), Error);
  opt.heads = 0;
  EXPECT_THROW(ops::attention(q, k, v, opt), Error);
  opt.heads = 3;
  EXPECT_THROW(ops::attention(q, k, randn(rng, {2, 6, 12}), opt), Error);
  EXPECT_THROW(ops::attention(q, randn(rng, {1, 7, 12}), randn(rng, {1, 7, 12}), opt), Error);
  EXPECT_THROW(ops::attention(randn(rng, {5, 12}), k, v, opt), Error);
  opt.bias = randn(rng, {3, 5, 6});
  EXPECT_THROW(ops::attention(q, k, v, opt), Error);
  opt.bias = randn(rng, {3, 2, 5, 7});
  EXPECT_THROW(ops::attention(q, k, v, opt), Error);
}

}  // namespace
}  // namespace sd3::test
