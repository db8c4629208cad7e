// safetensors files: a validating mmap reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {key: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data section. The reader
// checks everything before trusting it (header inside the file, well-formed JSON, known dtypes,
// offsets inside the data section, byte sizes equal to shape x dtype, no overlaps) and names
// the file and key in every error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace sd3 {

// Every dtype of the safetensors format.
enum class StDType : uint8_t {
  F64, F32, F16, BF16, F8_E4M3, F8_E5M2,
  I64, I32, I16, I8, U64, U32, U16, U8, BOOL
};
const char* st_dtype_name(StDType dtype);  // as spelled in files: "F32", "F8_E4M3", ...
size_t st_dtype_size(StDType dtype);
std::optional<StDType> parse_st_dtype(const std::string& name);
// The engine dtype a stored dtype loads as by default: F32/F16/BF16/I32/I64 as themselves,
// F64 -> F32, fp8 -> F16 (exact), small integers and BOOL -> I32, U32/U64 -> I64.
DType natural_dtype(StDType dtype);
// The stored dtype an engine dtype is written as (the same format).
StDType stored_dtype(DType dtype);
// Decoders for the 8-bit float formats (exact in f32).
float f8e4m3_to_f32(uint8_t v);
float f8e5m2_to_f32(uint8_t v);

struct TensorInfo {
  std::string key;
  StDType dtype;
  Shape shape;
  uint64_t begin = 0;  // byte offsets inside the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const { return shape_numel(shape); }
};

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  // Maps and validates the file; throws sd3::Error naming the file (and key) on any problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  // Tensors sorted by key.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& key) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Raw bytes of a tensor inside the mapping.
  const uint8_t* bytes(const TensorInfo& info) const { return data_ + info.begin; }
  // Loads a tensor as `dtype` (default: natural_dtype). Zero-copy (a view of the mapping kept
  // alive by the tensor) when no conversion is needed and the data is suitably aligned.
  Tensor load(const TensorInfo& info, std::optional<DType> dtype = std::nullopt) const;
  Tensor load(const std::string& key, std::optional<DType> dtype = std::nullopt) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  uint64_t file_size_ = 0;
  void* map_ = nullptr;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (any engine dtype, any device) and metadata to `path` atomically (a temporary
// file in the same directory, then rename), keys sorted, data 8-byte aligned.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

class AtomicFile;

// Writes a safetensors file tensor by tensor, so files larger than memory (SD3.5-large is
// ~16 GB in f16) can be produced: every tensor is declared up front (key, stored dtype, shape),
// the header is written, then each tensor's bytes follow in the declared order, in as many
// pieces as the caller likes. Atomic like write_safetensors: nothing appears at `path` unless
// commit() succeeds after every declared byte was written.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string key;
    StDType dtype;
    Shape shape;
    uint64_t nbytes() const;
  };
  SafetensorsWriter(const std::string& path, std::vector<Entry> entries,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The declared tensors, in the order their bytes must be written.
  const std::vector<Entry>& entries() const { return entries_; }
  // Starts the next tensor; `key` must be the next declared key (the previous one complete).
  void begin(const std::string& key);
  // Appends bytes of the current tensor; more than it holds is an error.
  void append(const void* data, size_t n);
  // begin(key) + all of `tensor`'s bytes; its dtype must be the declared one.
  void write(const std::string& key, const Tensor& tensor);
  // Checks every tensor was written in full, then renames the file into place.
  void commit();

 private:
  std::string path_;
  std::vector<Entry> entries_;
  std::unique_ptr<AtomicFile> file_;
  size_t next_ = 0;         // index of the next entry to begin
  uint64_t remaining_ = 0;  // bytes still owed to the current entry
};

// A file written atomically: bytes go to a temporary file in the same directory, and
// commit() renames it onto the target; destroyed without commit, the temporary is removed,
// so a failed or interrupted write never leaves a half-written target.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void commit();

 private:
  std::string path_;
  std::string temp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` atomically (temp file + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace sd3
