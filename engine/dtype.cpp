#include "engine/dtype.h"

#include "engine/error.h"

namespace sd3 {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
  }
  return "?";
}

bool is_float(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "fp32" || name == "float32") return DType::F32;
  if (name == "f16" || name == "fp16" || name == "float16") return DType::F16;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "i32" || name == "int32") return DType::I32;
  if (name == "i64" || name == "int64") return DType::I64;
  fail("unknown dtype '", name, "' (expected f32, f16, bf16, i32 or i64)");
}

namespace {

template <class T>
inline float load_f(const T& v) {
  return static_cast<float>(v);
}
template <>
inline float load_f(const Half& v) {
  return f16_bits_to_f32(v.bits);
}
template <>
inline float load_f(const BFloat16& v) {
  return bf16_bits_to_f32(v.bits);
}

template <class T>
inline T store_f(float f) {
  return static_cast<T>(f);
}
template <>
inline Half store_f(float f) {
  return Half{f32_to_f16_bits(f)};
}
template <>
inline BFloat16 store_f(float f) {
  return BFloat16{f32_to_bf16_bits(f)};
}

template <class S, class D>
void convert_typed(const S* src, D* dst, size_t n) {
  constexpr bool src_int = std::is_integral<S>::value;
  constexpr bool dst_int = std::is_integral<D>::value;
  if constexpr (src_int && dst_int) {
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<D>(src[i]);
  } else if constexpr (src_int) {
    for (size_t i = 0; i < n; ++i) dst[i] = store_f<D>(static_cast<float>(src[i]));
  } else if constexpr (dst_int) {
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<D>(load_f(src[i]));
  } else {
#pragma omp parallel for if (n > (1u << 16)) schedule(static)
    for (size_t i = 0; i < n; ++i) dst[i] = store_f<D>(load_f(src[i]));
  }
}

template <class S>
void convert_from(const S* src, void* dst, DType dst_dtype, size_t n) {
  switch (dst_dtype) {
    case DType::F32: return convert_typed(src, static_cast<float*>(dst), n);
    case DType::F16: return convert_typed(src, static_cast<Half*>(dst), n);
    case DType::BF16: return convert_typed(src, static_cast<BFloat16*>(dst), n);
    case DType::I32: return convert_typed(src, static_cast<int32_t*>(dst), n);
    case DType::I64: return convert_typed(src, static_cast<int64_t*>(dst), n);
  }
}

}  // namespace

void convert_elements(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * dtype_size(src_dtype));
    return;
  }
  switch (src_dtype) {
    case DType::F32: return convert_from(static_cast<const float*>(src), dst, dst_dtype, n);
    case DType::F16: return convert_from(static_cast<const Half*>(src), dst, dst_dtype, n);
    case DType::BF16: return convert_from(static_cast<const BFloat16*>(src), dst, dst_dtype, n);
    case DType::I32: return convert_from(static_cast<const int32_t*>(src), dst, dst_dtype, n);
    case DType::I64: return convert_from(static_cast<const int64_t*>(src), dst, dst_dtype, n);
  }
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace sd3
