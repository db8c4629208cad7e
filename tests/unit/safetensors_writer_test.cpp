// The safetensors writers (whole-file and streaming) round-trip every dtype and the metadata,
// write atomically, and refuse misuse; the fp8 decoders match values computed independently.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "common/files.h"
#include "common/test_data.h"
#include "engine/error.h"
#include "engine/safetensors.h"

namespace sd3 {
namespace {

// A tensor of `dtype` holding distinct values that every dtype represents exactly
// (small integers, halves and signed zero, plus infinities for the float types).
Tensor sample(DType dtype, const Shape& shape) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = (static_cast<float>(i % 17) - 8.0f) * 0.5f;
  if (is_float(dtype) && v.size() > 3) {
    v[1] = std::numeric_limits<float>::infinity();
    v[2] = -std::numeric_limits<float>::infinity();
    v[3] = -0.0f;
  }
  if (!is_float(dtype)) {
    std::vector<int64_t> ints(v.size());
    for (size_t i = 0; i < v.size(); ++i) ints[i] = static_cast<int64_t>(i) * 1000003 - 77;
    return Tensor::from_ints(ints, shape, dtype);
  }
  return Tensor::from_floats(v, shape, dtype);
}

std::string bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

const char* st_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64};

TEST(SafetensorsWriter, RoundTripsEveryDtypeAndMetadata) {
  const std::string dir = test::temp_dir();
  for (DType dt : kAllDTypes) {
    const std::string path = dir + "/rt_" + dtype_name(dt) + ".safetensors";
    const std::map<std::string, std::string> meta = {
        {"arch", "test"}, {"dtype", dtype_name(dt)}, {"empty", ""}};
    std::vector<std::pair<std::string, Tensor>> tensors = {
        {"z.last", sample(dt, {3, 5, 7})},
        {"a.first", sample(dt, {13})},
        {"m.scalar", sample(dt, {})},
        {"m.empty", Tensor::zeros({0, 4}, dt)},
        // A non-contiguous view is written as its logical contents.
        {"t.transposed", sample(dt, {4, 6}).transpose(0, 1)},
    };
    write_safetensors(path, tensors, meta);
    auto f = SafetensorsFile::open(path);
    EXPECT_EQ(f->metadata(), meta) << dtype_name(dt);
    ASSERT_EQ(f->tensors().size(), tensors.size());
    for (const auto& [key, t] : tensors) {
      const TensorInfo* info = f->find(key);
      ASSERT_NE(info, nullptr) << key;
      EXPECT_STREQ(st_dtype_name(info->dtype), st_name(dt)) << key;
      EXPECT_EQ(info->shape, t.shape()) << key;
      Tensor back = f->load(*info);
      EXPECT_EQ(back.dtype(), dt) << key;
      EXPECT_EQ(bytes_of(back), bytes_of(t)) << key << " " << dtype_name(dt);
    }
  }
}

TEST(SafetensorsWriter, StreamingWriterMatchesWholeFileWriter) {
  const std::string dir = test::temp_dir();
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a", sample(DType::F32, {4, 4})},
      {"b", sample(DType::F16, {3})},
      {"c", sample(DType::BF16, {2, 5})},
      {"d", sample(DType::I64, {2})},
  };
  const std::map<std::string, std::string> meta = {{"seed", "7"}};
  write_safetensors(dir + "/whole.safetensors", tensors, meta);

  std::vector<SafetensorsWriter::Entry> entries = {{"a", StDType::F32, {4, 4}},
                                                   {"b", StDType::F16, {3}},
                                                   {"c", StDType::BF16, {2, 5}},
                                                   {"d", StDType::I64, {2}}};
  SafetensorsWriter w(dir + "/stream.safetensors", entries, meta);
  w.write("a", tensors[0].second);
  // Bytes may arrive in any number of pieces.
  const std::string b = bytes_of(tensors[1].second);
  w.begin("b");
  w.append(b.data(), 1);
  w.append(b.data() + 1, b.size() - 1);
  w.write("c", tensors[2].second);
  w.write("d", tensors[3].second);
  w.commit();
  EXPECT_EQ(test::read_file(dir + "/stream.safetensors"),
            test::read_file(dir + "/whole.safetensors"));
}

TEST(SafetensorsWriter, StreamingWriterKeepsDeclaredOrderAndFp8) {
  const std::string path = test::temp_dir() + "/order.safetensors";
  const uint8_t fp8[4] = {0x38, 0xb8, 0x7e, 0x01};  // e4m3fn: 1, -1, 448, 2^-9
  SafetensorsWriter w(path, {{"z", StDType::F32, {2}}, {"a", StDType::F8_E4M3, {4}}});
  w.write("z", Tensor::from_floats({1.5f, -2.0f}, {2}));
  w.begin("a");
  w.append(fp8, 4);
  w.commit();
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->find("z")->begin, 0u);  // data in declared order, header sorted
  EXPECT_EQ(f->load("z").to_floats(), (std::vector<float>{1.5f, -2.0f}));
  Tensor a = f->load("a");
  EXPECT_EQ(a.dtype(), DType::F16);  // fp8 loads upcast to f16, exactly
  EXPECT_EQ(a.to_floats(), (std::vector<float>{1.0f, -1.0f, 448.0f, 0.001953125f}));
}

TEST(SafetensorsWriter, StreamingWriterRefusesMisuseAndLeavesNoFile) {
  const std::string dir = test::temp_dir();
  const std::string path = dir + "/misuse.safetensors";
  const std::vector<SafetensorsWriter::Entry> entries = {{"a", StDType::F32, {2}},
                                                         {"b", StDType::F32, {2}}};
  {
    SafetensorsWriter w(path, entries);
    EXPECT_THROW(w.begin("b"), Error);  // out of order
    w.begin("a");
    const float v[3] = {1, 2, 3};
    EXPECT_THROW(w.append(v, sizeof v), Error);  // more than the tensor holds
    w.append(v, 4);
    EXPECT_THROW(w.begin("b"), Error);  // "a" is 4 bytes short
    EXPECT_THROW(w.commit(), Error);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  {
    SafetensorsWriter w(path, entries);
    EXPECT_THROW(w.write("a", Tensor::from_floats({1, 2}, {2}, DType::F16)), Error);  // dtype
  }
  {
    SafetensorsWriter w(path, entries);
    w.write("a", Tensor::from_floats({1, 2}, {2}));
    // Destroyed without commit: nothing appears.
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_THROW(SafetensorsWriter(path, {{"a", StDType::F32, {1}}, {"a", StDType::F32, {1}}}),
               Error);
  EXPECT_THROW(SafetensorsWriter(path, {{"__metadata__", StDType::F32, {1}}}), Error);
  EXPECT_THROW(SafetensorsWriter(path, {{"a", StDType::F32, {-1}}}), Error);
  for (const auto& e : std::filesystem::directory_iterator(dir))
    ADD_FAILURE() << "left behind: " << e.path();
}

// e4m3fn built from the bit fields by IEEE f32 bit assembly (normals: rebias the exponent from
// 7 to 127; subnormals: normalise first), independent of the decoder's ldexp arithmetic.
float e4m3_reference(uint8_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t e = (v >> 3) & 0xf, m = v & 7u;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0 && m == 0) {
    float z;
    std::memcpy(&z, &sign, 4);
    return z;
  }
  uint32_t exp = e, mant = m;
  if (e == 0) {  // subnormal m/8 * 2^-6: shift the mantissa up until its leading 1 is implicit
    exp = 1;
    while (!(mant & 8u)) {
      mant <<= 1;
      --exp;
    }
    mant &= 7u;
  }
  const uint32_t bits = sign | ((exp - 7 + 127) << 23) | (mant << 20);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// e5m2 from the bit fields the same way (bias 15), with IEEE infinities and NaNs.
float e5m2_reference(uint8_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t e = (v >> 2) & 0x1f, m = v & 3u;
  if (e == 31) {
    if (m) return std::numeric_limits<float>::quiet_NaN();
    return sign ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  }
  if (e == 0 && m == 0) {
    float z;
    std::memcpy(&z, &sign, 4);
    return z;
  }
  uint32_t exp = e, mant = m;
  if (e == 0) {
    exp = 1;
    while (!(mant & 4u)) {
      mant <<= 1;
      --exp;
    }
    mant &= 3u;
  }
  const uint32_t bits = sign | ((exp - 15 + 127) << 23) | (mant << 21);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void expect_same_float(float got, float want, int code, const char* what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << " 0x" << std::hex << code;
    return;
  }
  EXPECT_EQ(got, want) << what << " 0x" << std::hex << code;
  EXPECT_EQ(std::signbit(got), std::signbit(want)) << what << " 0x" << std::hex << code;
}

TEST(Fp8, E4m3fnDecodesEveryCode) {
  for (int v = 0; v < 256; ++v)
    expect_same_float(f8e4m3_to_f32(static_cast<uint8_t>(v)), e4m3_reference(v), v, "e4m3fn");
  // Landmarks of the OCP FP8 spec.
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);  // largest finite
  EXPECT_EQ(f8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xff)));
  EXPECT_EQ(f8e4m3_to_f32(0x78), 256.0f);  // exponent 15 is finite in the fn variant
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x08), 0.015625f);     // smallest normal 2^-6
  EXPECT_EQ(f8e4m3_to_f32(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_EQ(f8e4m3_to_f32(0x07), 0.013671875f);  // 7 * 2^-9
  EXPECT_EQ(f8e4m3_to_f32(0x3f), 1.875f);
}

TEST(Fp8, E5m2DecodesEveryCode) {
  for (int v = 0; v < 256; ++v)
    expect_same_float(f8e5m2_to_f32(static_cast<uint8_t>(v)), e5m2_reference(v), v, "e5m2");
  EXPECT_EQ(f8e5m2_to_f32(0x7b), 57344.0f);  // largest finite
  EXPECT_EQ(f8e5m2_to_f32(0x7c), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f8e5m2_to_f32(0xfc), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f8e5m2_to_f32(0x7d)));
  EXPECT_EQ(f8e5m2_to_f32(0x3c), 1.0f);
  EXPECT_EQ(f8e5m2_to_f32(0x04), 6.103515625e-05f);    // smallest normal 2^-14
  EXPECT_EQ(f8e5m2_to_f32(0x01), 1.52587890625e-05f);  // smallest subnormal 2^-16
}

// Loading an fp8 tensor converts every code exactly (to f16 by default, or to f32).
TEST(Fp8, FilesLoadEveryCodeExactly) {
  for (StDType st : {StDType::F8_E4M3, StDType::F8_E5M2}) {
    const std::string path = test::temp_dir() + "/fp8_" + st_dtype_name(st) + ".safetensors";
    std::vector<uint8_t> codes(256);
    for (int i = 0; i < 256; ++i) codes[i] = static_cast<uint8_t>(i);
    SafetensorsWriter w(path, {{"w", st, {16, 16}}});
    w.begin("w");
    w.append(codes.data(), codes.size());
    w.commit();
    auto f = SafetensorsFile::open(path);
    const std::vector<float> as_f16 = f->load("w").to_floats();
    const std::vector<float> as_f32 = f->load("w", DType::F32).to_floats();
    for (int i = 0; i < 256; ++i) {
      const float want = st == StDType::F8_E4M3 ? e4m3_reference(i) : e5m2_reference(i);
      expect_same_float(as_f16[i], want, i, "f16 load");
      expect_same_float(as_f32[i], want, i, "f32 load");
    }
  }
}

}  // namespace
}  // namespace sd3
