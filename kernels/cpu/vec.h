// Portable 8-wide float vectors (GCC vector extensions) and the vector math the CPU kernels
// share: exp, sigmoid-based activations, erf, horizontal sums.
//
// Note [CPU SIMD dispatch]
// The engine is compiled for x86-64-v2 so the binary runs anywhere, but the hot row kernels
// run several times faster with AVX2+FMA (silu: about 5x on Zen 4). Functions marked SD3_CPU_SIMD
// are compiled twice (x86-64-v3 and the baseline) and picked once at load time by an ifunc (GCC
// target_clones). Their bodies are written with 8-float vectors: one AVX register on v3, two SSE
// registers on the baseline, so one source serves both. 8 lanes rather than 16 because on the
// machines we target (Zen 4 executes 512-bit ops as two 256-bit halves) AVX-512 adds nothing for
// these memory- or latency-bound loops, and 256-bit code also runs on AVX2-only CPUs. Every helper
// here is always_inline so it is compiled inside each clone for that clone's ISA. Tails (n % 8
// elements) go through the same vector code on a padded copy, so a value's result never depends on
// its position in a row (and so not on how rows are split among threads).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
// 32-byte vectors passed between always_inline helpers in the baseline clone would change the
// ABI of out-of-line calls; none are out of line, so the warning is noise.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SD3_CPU_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SD3_CPU_SIMD
#endif

#define SD3_INLINE inline __attribute__((always_inline))

namespace sd3::cpu::vec {

constexpr int64_t kLanes = 8;
typedef float VF __attribute__((vector_size(32)));
typedef int32_t VI __attribute__((vector_size(32)));
typedef uint32_t VU __attribute__((vector_size(32)));

SD3_INLINE VF splat(float x) {
  return VF{} + x;
}
SD3_INLINE VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
SD3_INLINE void store(float* p, VF v) {
  std::memcpy(p, &v, sizeof v);
}
// The first m (< kLanes) elements; the rest are `fill`.
SD3_INLINE VF load_partial(const float* p, int64_t m, float fill = 0.0f) {
  float tmp[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) tmp[i] = i < m ? p[i] : fill;
  return load(tmp);
}
SD3_INLINE void store_partial(float* p, VF v, int64_t m) {
  float tmp[kLanes];
  store(tmp, v);
  for (int64_t i = 0; i < m; ++i) p[i] = tmp[i];
}
// Selects b where mask (a comparison result) is set, else a. Written with bit operations:
// GCC may reorder the operands of a vector ?: comparison, which changes what a NaN selects.
SD3_INLINE VF select(VI mask, VF b, VF a) {
  return (VF)(((VI)b & mask) | ((VI)a & ~mask));
}
// max/min that return a when the comparison fails, so a NaN in a propagates.
SD3_INLINE VF vmax(VF a, VF b) {
  return select(a < b, b, a);
}
SD3_INLINE VF vmin(VF a, VF b) {
  return select(b < a, b, a);
}
SD3_INLINE VF vabs(VF a) {
  return (VF)((VU)a & 0x7fffffffu);
}

SD3_INLINE float hsum(VF v) {
  // Pairwise, so the result does not depend on the lane order of accumulation.
  float t[kLanes];
  store(t, v);
  return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}
SD3_INLINE float hmax(VF v) {
  float t[kLanes];
  store(t, v);
  float m = t[0];
  for (int i = 1; i < kLanes; ++i) m = t[i] > m ? t[i] : m;
  return m;
}

// e^x with a relative error below 2 ulp where the result is a normal float above 2^-125
// (measured against double in tests/unit/elementwise_test.cpp). Smaller results (x below
// about -87) flush to 0, x above ln(FLT_MAX) gives +Inf, NaN stays NaN.
// Method: n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2] (ln2 split in a 9-bit-exact
// high part and the remainder, so n*hi is exact), e^r by its degree-7 Taylor polynomial
// (truncation error r^8/8! < 6e-9 relative, under f32 rounding), times 2^n. The rounding of
// x / ln2 uses the 1.5*2^23 trick: adding it leaves n in the low mantissa bits, read back
// without a float->int conversion. 2^n is built as 2 * 2^(n-1) so that n = 128 (x just
// below ln(FLT_MAX)) still has an exponent field; with x clamped to [-87.5, 88.75], n - 1
// spans [-127, 127] and the field n + 126 spans [0, 254]: 0 reads as the value 0, the flush.
SD3_INLINE VF exp(VF x) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23
  const uint32_t kRoundBits = 0x4b400000u;
  const float kLn2Hi = 0.693359375f;              // 355/512
  const float kLn2Lo = -2.12194440054690583e-4f;  // ln2 - 355/512
  VF xc = vmax(x, splat(-87.5f));                 // NaN passes through both clamps
  xc = vmin(xc, splat(88.75f));
  VF nb = xc * 1.44269504088896341f + kRound;
  VF n = nb - kRound;
  VF r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  VF p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  VU scale_bits = ((VU)nb - kRoundBits + 126u) << 23;  // 2^(n-1)
  return (p * 2.0f) * (VF)scale_bits;  // doubling p first keeps n = -125 out of subnormals
}

// x * sigmoid(k x) = x / (1 + e^(-k x)): silu (k = 1), quick_gelu (k = 1.702).
SD3_INLINE VF x_sigmoid(VF x, float k) {
  return x / (1.0f + exp(x * -k));
}

// gelu with the tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
// rewritten as x * sigmoid(2u) = x / (1 + e^(-2u)), which needs only exp.
SD3_INLINE VF gelu_tanh(VF x) {
  const float kTwoSqrt2OverPi = 1.5957691216057308f;  // 2 * sqrt(2 / pi)
  VF u2 = x * (1.0f + 0.044715f * x * x) * kTwoSqrt2OverPi;
  return x / (1.0f + exp(-u2));
}

// erf(x), absolute error below 1.5e-7 (Abramowitz & Stegun 7.1.26): for z = |x|,
// erf(z) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-z^2), t = 1 / (1 + p z).
SD3_INLINE VF erf(VF x) {
  VF z = vabs(x);
  VF t = 1.0f / (1.0f + 0.3275911f * z);
  VF poly = splat(1.061405429f);
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  VF e = 1.0f - poly * t * exp(-(z * z));
  return select(x < 0.0f, -e, e);
}

// Exact gelu 0.5 x (1 + erf(x / sqrt 2)).
SD3_INLINE VF gelu_erf(VF x) {
  return 0.5f * x * (1.0f + erf(x * 0.70710678118654752f));
}

}  // namespace sd3::cpu::vec
