#include "models/noise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/dtype.h"
#include "engine/error.h"

namespace sd3::models {

// Note [PyTorch CPU randn]
// The reference draws its initial latent with `torch.manual_seed(seed); torch.randn(shape)`
// (float32, CPU, torch 1.13). Its behaviour, established against the noise goldens:
//
//  * Engine: the standard 32-bit Mersenne Twister, mt19937, seeded with the low 32 bits of
//    the seed (std::mt19937's seeding is the same), so std::mt19937 reproduces its stream.
//  * Float uniforms take one 32-bit draw each: u = (draw & (2^24 - 1)) * 2^-24, in [0, 1).
//    Double uniforms take two draws, the first as the high word of a 64-bit value, and keep
//    its low 53 bits: u = (v & (2^53 - 1)) * 2^-53.
//  * Tensors with >= 16 elements (contiguous float32) take the vectorised path: first the
//    whole tensor is filled with float uniforms, in order; then each full block of 16 is
//    transformed in place by Box-Muller with u1 = 1 - d[j] (in (0, 1], safe for log) and
//    u2 = d[j + 8] for j < 8: r = sqrt(-2 log u1), theta = 2*pi*u2 (2*pi rounded to float),
//    d[j] = r cos(theta), d[j + 8] = r sin(theta). When the size is not a multiple of 16,
//    16 fresh uniforms overwrite the last 16 entries (which overlaps the last full block)
//    and that window is transformed again.
//  * The transform runs on 8-wide AVX2 vectors with Cephes-style single-precision log and
//    sincos (Julien Pommier's avx_mathfun polynomials: log on [sqrt(1/2), sqrt(2)) with a
//    degree-8 polynomial, sincos with a three-part Cody-Waite reduction by pi/4 and the
//    Cephes minimax polynomials), compiled with multiply-add contraction into FMA. Which
//    products were fused matters for the last bit; the fused set below is the one a compiler
//    forms by fusing each product into its single additive use, and it matches all goldens
//    bit for bit (libm's logf/cosf/sinf, or no fusion, differ in about 1% of values).
//  * Tensors with < 16 elements take the scalar path: per element a double-precision normal
//    from Box-Muller on two double uniforms (u1 for the angle, u2 for the radius:
//    r = sqrt(-2 log(1 - u2)), theta = 2*pi*u1), returning r cos(theta) and caching
//    r sin(theta) in the generator for the next scalar draw; each value is rounded to float.
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int64_t kVectorBlock = 16;  // the vectorised path's Box-Muller block
constexpr int kHalfBlock = 8;

float uniform_float(std::mt19937& engine) {
  const uint32_t draw = engine();
  return static_cast<float>(static_cast<double>(draw & ((1u << 24) - 1u)) * (1.0 / (1u << 24)));
}

double uniform_double(std::mt19937& engine) {
  const uint64_t hi = engine();
  const uint64_t lo = engine();
  const uint64_t v = (hi << 32) | lo;
  return static_cast<double>(v & ((uint64_t{1} << 53) - 1u)) * (1.0 / (uint64_t{1} << 53));
}

// Cephes-style natural log in float for x in (0, 1] (the Box-Muller radius argument).
// x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log x = log1p(m - 1) + e*ln2, the log1p from
// a degree-8 polynomial and ln2 split in two parts (0.693359375 exact, -2.12194440e-4).
float cephes_logf(float x) {
  constexpr float kPoly[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                             -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                             2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  x = std::max(x, bits_float(0x00800000u));  // smallest normal: no subnormal exponents
  const uint32_t bits = float_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 0x7f) + 1.0f;
  float m = bits_float((bits & ~0x7f800000u) | float_bits(0.5f));  // mantissa in [0.5, 1)
  // Move m below sqrt(1/2) up to [sqrt(1/2), 1.414) by doubling (one less in the exponent).
  const bool small = m < 0.707106781186547524f;
  const float extra = small ? m : 0.0f;
  m = m - 1.0f;
  e = e - (small ? 1.0f : 0.0f);
  m = m + extra;
  const float z = m * m;
  float y = kPoly[0];
  for (int i = 1; i < 9; ++i) y = std::fma(y, m, kPoly[i]);
  y = y * m;
  y = std::fma(y, z, e * -2.12194440e-4f);
  y = std::fma(-z, 0.5f, y);
  m = m + y;
  return std::fma(e, 0.693359375f, m);
}

// Cephes-style sine and cosine in float for theta in [0, 2*pi): reduce by multiples of pi/4
// (pi/4 in three parts for an exact-ish remainder), then the Cephes minimax polynomials for
// sin and cos on [-pi/4, pi/4], with the octant choosing which polynomial and sign.
void cephes_sincosf(float x, float* sin_out, float* cos_out) {
  uint32_t sin_sign = float_bits(x) & 0x80000000u;
  x = std::fabs(x);
  const int32_t octant = (static_cast<int32_t>(x * 1.27323954473516f) + 1) & ~1;  // 4/pi
  const float q = static_cast<float>(octant);
  sin_sign ^= static_cast<uint32_t>(octant & 4) << 29;
  const uint32_t cos_sign = static_cast<uint32_t>(~(octant - 2) & 4) << 29;
  const bool sin_uses_sin_poly = (octant & 2) == 0;
  x = std::fma(q, -0.78515625f, x);
  x = std::fma(q, -2.4187564849853515625e-4f, x);
  x = std::fma(q, -3.77489497744594108e-8f, x);
  const float z = x * x;
  // cos(x) ~ 1 - z/2 + z^2 (c0 z^2 + c1 z + c2)
  float c = 2.443315711809948e-5f;
  c = std::fma(c, z, -1.388731625493765e-3f);
  c = std::fma(c, z, 4.166664568298827e-2f);
  c = c * z;
  c = std::fma(c, z, -(z * 0.5f));
  c = c + 1.0f;
  // sin(x) ~ x + x z (s0 z^2 + s1 z + s2)
  float s = -1.9515295891e-4f;
  s = std::fma(s, z, 8.3321608736e-3f);
  s = std::fma(s, z, -1.6666654611e-1f);
  s = s * z;
  s = std::fma(s, x, x);
  const float sin_val = sin_uses_sin_poly ? s : c;
  const float cos_val = sin_uses_sin_poly ? c : s;
  *sin_out = bits_float(float_bits(sin_val) ^ sin_sign);
  *cos_out = bits_float(float_bits(cos_val) ^ cos_sign);
}

// In-place Box-Muller over one block of 16 uniforms (Note [PyTorch CPU randn]).
void box_muller_16(float* d) {
  const float two_pi = static_cast<float>(2.0 * kPi);
  for (int j = 0; j < kHalfBlock; ++j) {
    const float u1 = 1.0f - d[j];
    const float u2 = d[j + kHalfBlock];
    const float radius = std::sqrt(-2.0f * cephes_logf(u1));
    float sin_t, cos_t;
    cephes_sincosf(two_pi * u2, &sin_t, &cos_t);
    d[j] = radius * cos_t;
    d[j + kHalfBlock] = radius * sin_t;
  }
}

}  // namespace

TorchGenerator::TorchGenerator(uint64_t seed)
    : engine_(static_cast<std::mt19937::result_type>(seed & 0xffffffffu)) {}

void TorchGenerator::fill_normal_vectorised(float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) data[i] = uniform_float(engine_);
  for (int64_t i = 0; i + kVectorBlock <= n; i += kVectorBlock) box_muller_16(data + i);
  if (n % kVectorBlock != 0) {
    float* tail = data + n - kVectorBlock;
    for (int64_t i = 0; i < kVectorBlock; ++i) tail[i] = uniform_float(engine_);
    box_muller_16(tail);
  }
}

float TorchGenerator::next_scalar_normal() {
  if (has_cached_normal_) {
    has_cached_normal_ = false;
    return static_cast<float>(cached_normal_);
  }
  const double u1 = uniform_double(engine_);
  const double u2 = uniform_double(engine_);
  const double radius = std::sqrt(-2.0 * std::log(1.0 - u2));
  const double theta = 2.0 * kPi * u1;
  cached_normal_ = radius * std::sin(theta);
  has_cached_normal_ = true;
  return static_cast<float>(radius * std::cos(theta));
}

Tensor TorchGenerator::randn(const Shape& shape) {
  for (int64_t d : shape)
    SD3_CHECK(d >= 0, "randn: negative dimension in shape ", shape_str(shape));
  Tensor out = Tensor::empty(shape, DType::F32);
  const int64_t n = out.numel();
  float* data = out.data<float>();
  if (n >= kVectorBlock) {
    fill_normal_vectorised(data, n);
  } else {
    for (int64_t i = 0; i < n; ++i) data[i] = next_scalar_normal();
  }
  return out;
}

Tensor torch_randn(uint64_t seed, const Shape& shape) {
  TorchGenerator gen(seed);
  return gen.randn(shape);
}

}  // namespace sd3::models
