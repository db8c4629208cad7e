// Tensor: a typed, strided view of reference-counted storage on one device.
//
// Shapes are int64 vectors; strides count elements. Views (view, slice, permute, transpose)
// share storage; contiguous() / clone() / to() copy. Element access through data<T>() is
// for CPU tensors only and checks the dtype.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"

namespace sd3 {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
// The numpy broadcast of two shapes; an error naming `op` and both shapes when they do not
// broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// A block of device memory. Owns it unless made from external memory (mmap, caller buffer),
// in which case `keepalive` holds whatever keeps that memory valid.
class Storage {
 public:
  Storage(size_t bytes, Device device);                                   // allocates
  Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keepalive);  // borrows
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  bool owned_ = false;
  std::shared_ptr<void> keepalive_;
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor full(const Shape& shape, float value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Copies host values into a new CPU tensor of `dtype` (converting from f32).
  static Tensor from_floats(const std::vector<float>& values, const Shape& shape,
                            DType dtype = DType::F32);
  static Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape,
                          DType dtype = DType::I64);
  // Wraps external memory without copying; `keepalive` keeps it valid.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                          std::shared_ptr<void> keepalive);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  // Size of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  int64_t offset() const { return offset_; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Pointer to the first element (device memory for CUDA tensors).
  void* raw_data() const;
  template <class T>
  T* data() const {
    check_access(DTypeOf<T>::value);
    return static_cast<T*>(raw_data());
  }

  // Views. view() needs a contiguous tensor; one dimension may be -1.
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;  // view if contiguous, else a contiguous copy
  Tensor slice(int64_t d, int64_t start, int64_t end) const;  // [start, end) along d
  Tensor select(int64_t d, int64_t index) const;              // drops dimension d
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor unsqueeze(int64_t d) const;
  Tensor squeeze(int64_t d) const;

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;     // same tensor if already that dtype
  Tensor to(Device device) const;   // same tensor if already there
  // Copies src (same shape, any dtype, any strides, same device or host<->device) into this.
  void copy_from(const Tensor& src);
  void fill(float value);

  // Host-side reading, for tests and small tensors: values converted to float / int64.
  std::vector<float> to_floats() const;
  std::vector<int64_t> to_ints() const;
  float item() const;

  // "f32[2, 3] cpu"
  std::string str() const;

 private:
  void check_access(DType want) const;

  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
};

// Normalises a possibly negative dimension index against `rank`, naming `what` on error.
int64_t wrap_dim(int64_t d, int64_t rank, const char* what = "dimension");

}  // namespace sd3
