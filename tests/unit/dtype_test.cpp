// The f32 <-> f16 / bf16 conversions of engine/dtype.h, checked against references computed a
// different way: bit fields decoded with ldexp, and rounding done in double with nearbyint
// (round half to even) at the target format's ulp.
#include "engine/dtype.h"

#include <gtest/gtest.h>

#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "engine/error.h"

namespace sd3 {
namespace {

// Value of a binary16 bit pattern: sign, 5 exponent bits (bias 15), 10 mantissa bits.
double f16_value(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -24);
  } else {
    v = std::ldexp(static_cast<double>(1024 + m), e - 25);
  }
  return sign ? -v : v;
}

// Value of a bfloat16 bit pattern: sign, 8 exponent bits (bias 127), 7 mantissa bits.
double bf16_value(uint16_t b) {
  const int sign = b >> 15, e = (b >> 7) & 255, m = b & 127;
  double v;
  if (e == 255) {
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -133);
  } else {
    v = std::ldexp(static_cast<double>(128 + m), e - 134);
  }
  return sign ? -v : v;
}

// The nearest value of a format with `mant_bits` stored mantissa bits, minimum normal
// exponent emin and largest finite value max_finite, ties to even, computed in double.
double round_to_format(double v, int mant_bits, int emin, double max_finite) {
  if (std::isnan(v) || std::isinf(v)) return v;
  const double a = std::fabs(v);
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): the leading bit has weight 2^(e-1)
  const int lead = std::max(e - 1, emin);
  const double ulp = std::ldexp(1.0, lead - mant_bits);
  const double q = std::nearbyint(a / ulp) * ulp;  // default rounding mode: half to even
  // Overflow: anything that rounds above max_finite (by RNE at max_finite's ulp) is Inf.
  const double r = q > max_finite ? std::numeric_limits<double>::infinity() : q;
  return std::signbit(v) ? -r : r;
}
double ref_f16(float f) {
  return round_to_format(f, 10, -14, 65504.0);
}
double ref_bf16(float f) {
  return round_to_format(f, 7, -126, std::ldexp(255.0, 120));  // (2 - 2^-7) * 2^127
}

bool same_value(double got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  return got == want && std::signbit(got) == std::signbit(want);
}

TEST(DType, F16ToF32IsExactForAllBitPatterns) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_bits_to_f32(static_cast<uint16_t>(h));
    ASSERT_TRUE(same_value(f, f16_value(static_cast<uint16_t>(h)))) << "half 0x" << std::hex << h;
    if (std::isnan(f)) {  // payload kept in the top mantissa bits
      ASSERT_EQ((float_bits(f) >> 13) & 0x3ffu, h & 0x3ffu) << std::hex << h;
    }
  }
}

TEST(DType, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = f32_to_f16_bits(f16_bits_to_f32(static_cast<uint16_t>(h)));
    if (std::isnan(f16_value(static_cast<uint16_t>(h)))) {
      ASSERT_EQ(back & 0x7c00u, 0x7c00u) << std::hex << h;
      ASSERT_NE(back & 0x03ffu, 0u) << std::hex << h;
      ASSERT_NE(back & 0x0200u, 0u) << "NaN must come back quiet: " << std::hex << h;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u);
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

TEST(DType, F16RoundsHalfwayCasesToEven) {
  // Every midpoint between two adjacent finite halves (including the subnormals, zero and the
  // step from 65504 to the overflow threshold 65520) is exact in f32.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = f16_value(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : f16_value(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    for (int sign : {0, 1}) {
      const float m = sign ? -mid : mid;
      const uint16_t s = sign ? 0x8000 : 0;
      ASSERT_EQ(f32_to_f16_bits(m), even | s) << "midpoint above half 0x" << std::hex << h;
      ASSERT_EQ(f32_to_f16_bits(std::nextafter(m, 0.0f)), h | s) << std::hex << h;
      ASSERT_EQ(f32_to_f16_bits(std::nextafter(m, sign ? -INFINITY : INFINITY)), (h + 1) | s)
          << std::hex << h;
    }
  }
}

TEST(DType, F16MatchesDoubleRoundingOnRandomFloats) {
  std::mt19937 gen(12345);
  for (int i = 0; i < 2000000; ++i) {
    const float f = bits_float(gen());
    const double want = ref_f16(f);
    const double got = f16_value(f32_to_f16_bits(f));
    ASSERT_TRUE(same_value(got, want)) << "f32 " << f << " (0x" << std::hex << float_bits(f) << ")";
  }
  // Values spread over the f16 range, where random bit patterns rarely land.
  std::uniform_real_distribution<double> exponent(-27.0, 17.0);
  for (int i = 0; i < 1000000; ++i) {
    const float f = static_cast<float>(std::exp2(exponent(gen))) * ((i & 1) ? -1.0f : 1.0f);
    ASSERT_TRUE(same_value(f16_value(f32_to_f16_bits(f)), ref_f16(f))) << f;
  }
}

TEST(DType, F16SpecialValues) {
  EXPECT_EQ(f32_to_f16_bits(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16_bits(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7c00);  // tie between 65504 (odd) and 2^16: Inf
  EXPECT_EQ(f32_to_f16_bits(1e9f), 0x7c00);
  EXPECT_EQ(f32_to_f16_bits(-1e30f), 0xfc00);
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0: even
  EXPECT_EQ(f32_to_f16_bits(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(3.0f, -25)), 0x0002);     // 1.5 ulp: tie to even (2)
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(5.0f, -25)), 0x0002);     // 2.5 ulp: tie to even (2)
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(3.0f, -26)), 0x0001);     // 0.75 ulp
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1023.0f, -24)), 0x03ff);  // largest subnormal
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(2047.0f, -25)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(f32_to_f16_bits(1e-10f), 0x0000);
  EXPECT_EQ(f32_to_f16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  const uint16_t nan = f32_to_f16_bits(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
  const uint16_t snan = f32_to_f16_bits(bits_float(0x7f800001u));  // payload only in low bits
  EXPECT_TRUE((snan & 0x7c00) == 0x7c00 && (snan & 0x200) != 0) << std::hex << snan;
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(0x7e00)));
  EXPECT_EQ(f16_bits_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_bits_to_f32(0xc000), -2.0f);
}

TEST(DType, BF16ExhaustiveDecodeRoundTripAndTies) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const double want = bf16_value(static_cast<uint16_t>(b));
    const float f = bf16_bits_to_f32(static_cast<uint16_t>(b));
    ASSERT_TRUE(same_value(f, want)) << "bf16 0x" << std::hex << b;
    const uint16_t back = f32_to_bf16_bits(f);
    if (std::isnan(want)) {
      ASSERT_TRUE((back & 0x7f80) == 0x7f80 && (back & 0x7f) != 0 && (back & 0x40) != 0)
          << std::hex << b;
    } else {
      ASSERT_EQ(back, b) << std::hex << b;
    }
  }
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    const double lo = bf16_value(static_cast<uint16_t>(b));
    const double hi =
        b + 1 == 0x7f80 ? std::ldexp(1.0, 128) : bf16_value(static_cast<uint16_t>(b + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = (b & 1) ? static_cast<uint16_t>(b + 1) : static_cast<uint16_t>(b);
    ASSERT_EQ(f32_to_bf16_bits(mid), even) << std::hex << b;
    ASSERT_EQ(f32_to_bf16_bits(-mid), even | 0x8000) << std::hex << b;
    ASSERT_EQ(f32_to_bf16_bits(std::nextafter(mid, 0.0f)), b) << std::hex << b;
    ASSERT_EQ(f32_to_bf16_bits(std::nextafter(mid, INFINITY)), b + 1) << std::hex << b;
  }
}

TEST(DType, BF16MatchesDoubleRoundingOnRandomFloats) {
  std::mt19937 gen(777);
  for (int i = 0; i < 2000000; ++i) {
    const float f = bits_float(gen());
    ASSERT_TRUE(same_value(bf16_value(f32_to_bf16_bits(f)), ref_bf16(f)))
        << "f32 " << f << " (0x" << std::hex << float_bits(f) << ")";
  }
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);  // rounds to Inf
  EXPECT_EQ(f32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16_bits(-INFINITY), 0xff80);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(DType, ConvertElementsBetweenAllTypes) {
  const float src[] = {1.5f, -2.75f, 65504.0f, 1e-3f, -0.0f, 100000.0f};
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64};
  for (DType to : all) {
    std::vector<char> buf(6 * dtype_size(to));
    convert_elements(src, DType::F32, buf.data(), to, 6);
    std::vector<float> back(6);
    convert_elements(buf.data(), to, back.data(), DType::F32, 6);
    for (int i = 0; i < 6; ++i) {
      double want = src[i];
      if (to == DType::F16) want = ref_f16(src[i]);
      if (to == DType::BF16) want = ref_bf16(src[i]);
      if (to == DType::I32 || to == DType::I64) want = std::trunc(src[i]);
      EXPECT_TRUE(same_value(back[i], want) || (want == 0 && back[i] == 0))
          << dtype_name(to) << " element " << i << ": " << back[i] << " vs " << want;
    }
  }
  // Integer to integer keeps all 64 bits; f16 <-> bf16 goes through f32.
  const int64_t big[] = {(int64_t{1} << 40) + 3, -7};
  int64_t out[2];
  convert_elements(big, DType::I64, out, DType::I64, 2);
  EXPECT_EQ(out[0], big[0]);
  int32_t small[2];
  convert_elements(big + 1, DType::I64, small, DType::I32, 1);
  EXPECT_EQ(small[0], -7);
  const uint16_t h = f32_to_f16_bits(1.0f / 3.0f);
  uint16_t b;
  convert_elements(&h, DType::F16, &b, DType::BF16, 1);
  EXPECT_EQ(b, f32_to_bf16_bits(f16_bits_to_f32(h)));
}

TEST(DType, NamesSizesAndParsing) {
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_STREQ(dtype_name(DType::F16), "f16");
  EXPECT_TRUE(is_float(DType::BF16));
  EXPECT_FALSE(is_float(DType::I32));
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::F16);
  EXPECT_EQ(parse_dtype("int64"), DType::I64);
  EXPECT_THROW(parse_dtype("f8"), Error);
}

}  // namespace
}  // namespace sd3
