#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

namespace sd3 {

namespace {

constexpr uint64_t kMaxHeaderBytes = 256ull << 20;  // far above any real header (~2 MB)

struct StDTypeEntry {
  StDType dtype;
  const char* name;
  size_t size;
};
constexpr StDTypeEntry kStDTypes[] = {
    {StDType::F64, "F64", 8},         {StDType::F32, "F32", 4},   {StDType::F16, "F16", 2},
    {StDType::BF16, "BF16", 2},       {StDType::F8_E4M3, "F8_E4M3", 1},
    {StDType::F8_E5M2, "F8_E5M2", 1}, {StDType::I64, "I64", 8},   {StDType::I32, "I32", 4},
    {StDType::I16, "I16", 2},         {StDType::I8, "I8", 1},     {StDType::U64, "U64", 8},
    {StDType::U32, "U32", 4},         {StDType::U16, "U16", 2},   {StDType::U8, "U8", 1},
    {StDType::BOOL, "BOOL", 1},
};

std::string errno_str() { return std::strerror(errno); }

}  // namespace

const char* st_dtype_name(StDType dtype) {
  for (const auto& e : kStDTypes)
    if (e.dtype == dtype) return e.name;
  return "?";
}

size_t st_dtype_size(StDType dtype) {
  for (const auto& e : kStDTypes)
    if (e.dtype == dtype) return e.size;
  return 0;
}

std::optional<StDType> parse_st_dtype(const std::string& name) {
  for (const auto& e : kStDTypes)
    if (name == e.name) return e.dtype;
  return std::nullopt;
}

DType natural_dtype(StDType dtype) {
  switch (dtype) {
    case StDType::F64: return DType::F32;
    case StDType::F32: return DType::F32;
    case StDType::F16: return DType::F16;
    case StDType::BF16: return DType::BF16;
    case StDType::F8_E4M3: return DType::F16;
    case StDType::F8_E5M2: return DType::F16;
    case StDType::I64: return DType::I64;
    case StDType::U32: return DType::I64;
    case StDType::U64: return DType::I64;
    default: return DType::I32;
  }
}

StDType stored_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return StDType::F32;
    case DType::F16: return StDType::F16;
    case DType::BF16: return StDType::BF16;
    case DType::I32: return StDType::I32;
    case DType::I64: return StDType::I64;
  }
  return StDType::F32;
}

// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, S.1111.111 is NaN.
float f8e4m3_to_f32(uint8_t v) {
  const bool neg = v & 0x80;
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  float r;
  if (exp == 0xf && mant == 0x7) {
    r = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    r = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
  } else {
    r = std::ldexp(1.0f + mant / 8.0f, exp - 7);
  }
  return neg ? -r : r;
}

// e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa: the top byte of an IEEE binary16.
float f8e5m2_to_f32(uint8_t v) { return f16_bits_to_f32(static_cast<uint16_t>(v) << 8); }

namespace {

// Converts `n` stored elements to an engine dtype.
void decode_elements(const uint8_t* src, StDType st, void* dst, DType dt, size_t n) {
  switch (st) {
    case StDType::F32: return convert_elements(src, DType::F32, dst, dt, n);
    case StDType::F16: return convert_elements(src, DType::F16, dst, dt, n);
    case StDType::BF16: return convert_elements(src, DType::BF16, dst, dt, n);
    case StDType::I32: return convert_elements(src, DType::I32, dst, dt, n);
    case StDType::I64: return convert_elements(src, DType::I64, dst, dt, n);
    default: break;
  }
  const bool to_float = is_float(dt);
  std::vector<float> fbuf;
  std::vector<int64_t> ibuf;
  if (to_float) fbuf.resize(n); else ibuf.resize(n);
  auto put = [&](size_t i, double value) {
    if (to_float) fbuf[i] = static_cast<float>(value); else ibuf[i] = static_cast<int64_t>(value);
  };
  for (size_t i = 0; i < n; ++i) {
    switch (st) {
      case StDType::F64: { double d; std::memcpy(&d, src + 8 * i, 8); put(i, d); break; }
      case StDType::F8_E4M3: put(i, f8e4m3_to_f32(src[i])); break;
      case StDType::F8_E5M2: put(i, f8e5m2_to_f32(src[i])); break;
      case StDType::I16: { int16_t x; std::memcpy(&x, src + 2 * i, 2); put(i, x); break; }
      case StDType::I8: put(i, static_cast<int8_t>(src[i])); break;
      case StDType::U64: { uint64_t x; std::memcpy(&x, src + 8 * i, 8); put(i, static_cast<double>(x)); break; }
      case StDType::U32: { uint32_t x; std::memcpy(&x, src + 4 * i, 4); put(i, x); break; }
      case StDType::U16: { uint16_t x; std::memcpy(&x, src + 2 * i, 2); put(i, x); break; }
      case StDType::U8: put(i, src[i]); break;
      case StDType::BOOL: put(i, src[i] ? 1 : 0); break;
      default: break;
    }
  }
  if (to_float) convert_elements(fbuf.data(), DType::F32, dst, dt, n);
  else convert_elements(ibuf.data(), DType::I64, dst, dt, n);
}

std::optional<DType> direct_dtype(StDType st) {
  switch (st) {
    case StDType::F32: return DType::F32;
    case StDType::F16: return DType::F16;
    case StDType::BF16: return DType::BF16;
    case StDType::I32: return DType::I32;
    case StDType::I64: return DType::I64;
    default: return std::nullopt;
  }
}

}  // namespace

// ---- reader -----------------------------------------------------------------------------

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const std::string where = "safetensors file '" + path + "'";

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SD3_CHECK(fd >= 0, "cannot open ", where, ": ", errno_str());
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", where, ": ", errno_str());
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(where, " is not a regular file");
  }
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ < 8) {
    ::close(fd);
    fail(where, " is truncated: ", f->file_size_, " bytes, shorter than the 8-byte header length");
  }
  void* map = mmap(nullptr, f->file_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  SD3_CHECK(map != MAP_FAILED, "cannot map ", where, ": ", errno_str());
  f->map_ = map;
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(base[i]) << (8 * i);
  SD3_CHECK(header_len <= f->file_size_ - 8, where, ": header length ", header_len,
            " exceeds the file size ", f->file_size_, " (truncated or not a safetensors file)");
  SD3_CHECK(header_len <= kMaxHeaderBytes, where, ": header length ", header_len,
            " is implausibly large");
  SD3_CHECK(header_len >= 2, where, ": header of ", header_len, " bytes cannot hold a JSON object");
  f->data_ = base + 8 + header_len;
  const uint64_t data_size = f->file_size_ - 8 - header_len;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8),
                                   reinterpret_cast<const char*>(base + 8 + header_len));
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": malformed header JSON (", e.what(), ")");
  }
  SD3_CHECK(header.is_object(), where, ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "__metadata__") {
      SD3_CHECK(v.is_object(), where, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        SD3_CHECK(m.value().is_string(), where, ": __metadata__ value of '", m.key(),
                  "' is not a string");
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string ctx = where + ", tensor '" + key + "'";
    SD3_CHECK(v.is_object(), ctx, ": entry is not an object");
    SD3_CHECK(v.contains("dtype") && v["dtype"].is_string(), ctx, ": missing dtype");
    SD3_CHECK(v.contains("shape") && v["shape"].is_array(), ctx, ": missing shape");
    SD3_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() &&
                  v["data_offsets"].size() == 2,
              ctx, ": missing or malformed data_offsets");
    TensorInfo info;
    info.key = key;
    const std::string dt = v["dtype"].get<std::string>();
    auto parsed = parse_st_dtype(dt);
    SD3_CHECK(parsed.has_value(), ctx, ": unknown dtype '", dt, "'");
    info.dtype = *parsed;
    // numel * size must not overflow: bound every factor by the data size.
    unsigned __int128 bytes = st_dtype_size(info.dtype);
    for (const auto& d : v["shape"]) {
      SD3_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), ctx,
                ": shape entry ", d.dump(), " is not a non-negative integer");
      uint64_t dim = d.get<uint64_t>();
      SD3_CHECK(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), ctx,
                ": dimension ", dim, " too large");
      info.shape.push_back(static_cast<int64_t>(dim));
      bytes *= dim;
      if (bytes > (static_cast<unsigned __int128>(1) << 80)) bytes = static_cast<unsigned __int128>(1) << 80;
    }
    for (const auto& o : v["data_offsets"])
      SD3_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), ctx,
                ": data_offsets entry ", o.dump(), " is not a non-negative integer");
    info.begin = v["data_offsets"][0].get<uint64_t>();
    info.end = v["data_offsets"][1].get<uint64_t>();
    SD3_CHECK(info.begin <= info.end, ctx, ": data_offsets [", info.begin, ", ", info.end,
              "] are reversed");
    SD3_CHECK(info.end <= data_size, ctx, ": data_offsets [", info.begin, ", ", info.end,
              "] run past the data section of ", data_size, " bytes (truncated file?)");
    SD3_CHECK(bytes == info.end - info.begin, ctx, ": ", info.end - info.begin,
              " bytes stored but shape ", shape_str(info.shape), " x ", dt, " needs ",
              static_cast<uint64_t>(bytes));
    f->tensors_.push_back(std::move(info));
  }

  // No two tensors may share bytes.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : f->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->nbytes() == 0) continue;
    if (prev) {
      SD3_CHECK(t->begin >= prev->end, where, ": tensors '", prev->key, "' [", prev->begin, ", ",
                prev->end, ") and '", t->key, "' [", t->begin, ", ", t->end, ") overlap");
    }
    prev = t;
  }
  std::sort(f->tensors_.begin(), f->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.key < b.key; });
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, file_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& key) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), key,
                             [](const TensorInfo& t, const std::string& k) { return t.key < k; });
  return (it != tensors_.end() && it->key == key) ? &*it : nullptr;
}

Tensor SafetensorsFile::load(const std::string& key, std::optional<DType> dtype) const {
  const TensorInfo* info = find(key);
  SD3_CHECK(info != nullptr, "safetensors file '", path_, "' has no tensor '", key, "'");
  return load(*info, dtype);
}

Tensor SafetensorsFile::load(const TensorInfo& info, std::optional<DType> dtype) const {
  const DType want = dtype.value_or(natural_dtype(info.dtype));
  const uint8_t* src = bytes(info);
  auto direct = direct_dtype(info.dtype);
  if (direct && *direct == want &&
      reinterpret_cast<uintptr_t>(src) % dtype_size(want) == 0) {
    auto self = std::const_pointer_cast<SafetensorsFile>(shared_from_this());
    return Tensor::from_blob(const_cast<uint8_t*>(src), info.shape, want, Device::cpu(), self);
  }
  SD3_CHECK(is_float(want) || !(info.dtype == StDType::F64 || info.dtype == StDType::F32 ||
                                info.dtype == StDType::F16 || info.dtype == StDType::BF16 ||
                                info.dtype == StDType::F8_E4M3 || info.dtype == StDType::F8_E5M2),
            "tensor '", info.key, "' in '", path_, "' is ", st_dtype_name(info.dtype),
            " and cannot be loaded as ", dtype_name(want));
  Tensor out = Tensor::empty(info.shape, want);
  decode_elements(src, info.dtype, out.raw_data(), want, static_cast<size_t>(info.numel()));
  return out;
}

// ---- writer -----------------------------------------------------------------------------

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string templ = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  std::vector<char> name(templ.begin(), templ.end());
  name.push_back('\0');
  fd_ = mkstemp(name.data());
  SD3_CHECK(fd_ >= 0, "cannot create a temporary file next to '", path, "': ", errno_str());
  temp_ = name.data();
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  SD3_CHECK(fd_ >= 0, "write to '", path_, "' after commit");
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd_, p + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    SD3_CHECK(w > 0, "cannot write '", path_, "': ", errno_str());
    done += static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  SD3_CHECK(fd_ >= 0, "commit of '", path_, "' twice");
  fchmod(fd_, 0644);
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::string why = errno_str();
    ::unlink(temp_.c_str());
    fail("cannot write '", path_, "': ", why);
  }
  if (std::rename(temp_.c_str(), path_.c_str()) != 0) {
    std::string why = errno_str();
    ::unlink(temp_.c_str());
    fail("cannot rename the temporary file onto '", path_, "': ", why);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<SafetensorsWriter::Entry> entries;
  entries.reserve(sorted.size());
  for (const auto& [key, t] : sorted) entries.push_back({key, stored_dtype(t.dtype()), t.shape()});
  SafetensorsWriter writer(path, std::move(entries), metadata);
  for (const auto& [key, t] : sorted) writer.write(key, t);
  writer.commit();
}

// ---- streaming writer ---------------------------------------------------------------------

uint64_t SafetensorsWriter::Entry::nbytes() const {
  return static_cast<uint64_t>(shape_numel(shape)) * st_dtype_size(dtype);
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Entry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), entries_(std::move(entries)) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    SD3_CHECK(e.key != "__metadata__" && !e.key.empty(), "invalid tensor name '", e.key,
              "' for '", path, "'");
    SD3_CHECK(!header.contains(e.key), "duplicate tensor name '", e.key, "' for '", path, "'");
    for (int64_t d : e.shape)
      SD3_CHECK(d >= 0, "tensor '", e.key, "' for '", path, "' has a negative dimension in ",
                shape_str(e.shape));
    nlohmann::json j;
    j["dtype"] = st_dtype_name(e.dtype);
    j["shape"] = e.shape;
    j["data_offsets"] = {offset, offset + e.nbytes()};
    header[e.key] = j;
    offset += e.nbytes();
  }
  std::string json = header.dump();
  while ((json.size() + 8) % 8 != 0) json.push_back(' ');
  file_ = std::make_unique<AtomicFile>(path);
  char len[8];
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  file_->write(len, 8);
  file_->write(json.data(), json.size());
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::begin(const std::string& key) {
  SD3_CHECK(file_ != nullptr, "writing tensor '", key, "' to '", path_, "' after commit");
  SD3_CHECK(remaining_ == 0, "tensor '", entries_[next_ - 1].key, "' for '", path_, "' is ",
            remaining_, " bytes short when '", key, "' begins");
  SD3_CHECK(next_ < entries_.size(), "tensor '", key, "' for '", path_,
            "' was not declared (all declared tensors are written)");
  SD3_CHECK(entries_[next_].key == key, "tensor '", key, "' for '", path_,
            "' written out of order: expected '", entries_[next_].key, "'");
  remaining_ = entries_[next_].nbytes();
  ++next_;
}

void SafetensorsWriter::append(const void* data, size_t n) {
  SD3_CHECK(file_ != nullptr, "writing to '", path_, "' after commit");
  SD3_CHECK(next_ > 0 && n <= remaining_, "too many bytes for tensor '",
            next_ > 0 ? entries_[next_ - 1].key : std::string("(none begun)"), "' of '", path_,
            "'");
  file_->write(data, n);
  remaining_ -= n;
}

void SafetensorsWriter::write(const std::string& key, const Tensor& tensor) {
  begin(key);
  const Entry& e = entries_[next_ - 1];
  SD3_CHECK(stored_dtype(tensor.dtype()) == e.dtype && tensor.shape() == e.shape,
            "tensor '", key, "' for '", path_, "' is ", tensor.str(), ", declared ",
            st_dtype_name(e.dtype), " ", shape_str(e.shape));
  Tensor host = tensor.to(Device::cpu()).contiguous();
  append(host.raw_data(), host.nbytes());
}

void SafetensorsWriter::commit() {
  SD3_CHECK(file_ != nullptr, "commit of '", path_, "' twice");
  SD3_CHECK(remaining_ == 0 && next_ == entries_.size(), "'", path_, "' is incomplete: ",
            entries_.size() - next_, " declared tensors not written",
            remaining_ ? str_cat(", '", entries_[next_ - 1].key, "' ", remaining_, " bytes short")
                       : std::string());
  file_->commit();
  file_.reset();
}

}  // namespace sd3
