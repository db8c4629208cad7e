#include "engine/tensor.h"

#include "engine/ops.h"

#include <algorithm>
#include <cstring>
#include <numeric>

namespace sd3 {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    SD3_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
              " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int64_t wrap_dim(int64_t d, int64_t rank, const char* what) {
  int64_t w = d < 0 ? d + rank : d;
  SD3_CHECK(w >= 0 && w < rank, what, " ", d, " out of range for a tensor of rank ", rank);
  return w;
}

// ---- Storage ----------------------------------------------------------------------------

Storage::Storage(size_t bytes, Device device)
    : data_(device_alloc(device, bytes)), bytes_(bytes), device_(device), owned_(true) {}

Storage::Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keepalive)
    : data_(data), bytes_(bytes), device_(device), owned_(false), keepalive_(std::move(keepalive)) {}

Storage::~Storage() {
  if (owned_) device_free(device_, data_, bytes_);
}

// ---- construction -----------------------------------------------------------------------

namespace {
void check_shape(const Shape& shape) {
  for (int64_t s : shape) SD3_CHECK(s >= 0, "negative dimension in shape ", shape_str(shape));
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_shape(shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(0.0f);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value);
  return t;
}

Tensor Tensor::from_floats(const std::vector<float>& values, const Shape& shape, DType dtype) {
  SD3_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_floats: ",
            values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, dtype);
  convert_elements(values.data(), DType::F32, t.raw_data(), dtype, values.size());
  return t;
}

Tensor Tensor::from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype) {
  SD3_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_ints: ",
            values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, dtype);
  convert_elements(values.data(), DType::I64, t.raw_data(), dtype, values.size());
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device,
                         std::shared_ptr<void> keepalive) {
  check_shape(shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(data, shape_numel(shape) * dtype_size(dtype), device,
                                         std::move(keepalive));
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

// ---- accessors --------------------------------------------------------------------------

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim())]; }
int64_t Tensor::stride(int64_t d) const { return strides_[wrap_dim(d, dim())]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  SD3_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

void Tensor::check_access(DType want) const {
  SD3_CHECK(defined(), "access to an undefined tensor");
  SD3_CHECK(dtype_ == want, "tensor ", str(), " accessed as ", dtype_name(want));
  SD3_CHECK(device().is_cpu(), "host access to device tensor ", str());
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return str_cat(dtype_name(dtype_), shape_str(shape_), " ", device().str());
}

// ---- views ------------------------------------------------------------------------------

Tensor Tensor::view(const Shape& shape) const {
  SD3_CHECK(is_contiguous(), "view", shape_str(shape), " of non-contiguous tensor ", str());
  Shape out = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      SD3_CHECK(infer < 0, "view", shape_str(shape), ": more than one -1");
      infer = static_cast<int>(i);
    } else {
      SD3_CHECK(out[i] >= 0, "view", shape_str(shape), ": negative size");
      known *= out[i];
    }
  }
  if (infer >= 0) {
    SD3_CHECK(known > 0 && numel() % known == 0, "view", shape_str(shape), " of ", str());
    out[infer] = numel() / known;
  }
  SD3_CHECK(shape_numel(out) == numel(), "view", shape_str(shape), " does not match ", str());
  Tensor t = *this;
  t.shape_ = out;
  t.strides_ = contiguous_strides(out);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : contiguous().view(shape);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim());
  SD3_CHECK(0 <= start && start <= end && end <= shape_[d], "slice [", start, ", ", end,
            ") of dimension ", d, " of ", str());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim());
  SD3_CHECK(0 <= index && index < shape_[d], "select ", index, " of dimension ", d, " of ",
            str());
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  SD3_CHECK(static_cast<int64_t>(order.size()) == dim(), "permute of ", str(), " with ",
            order.size(), " dimensions");
  std::vector<bool> seen(order.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t src = wrap_dim(order[i], dim());
    SD3_CHECK(!seen[src], "permute: dimension ", src, " repeated");
    seen[src] = true;
    t.shape_[i] = shape_[src];
    t.strides_[i] = strides_[src];
  }
  return t;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  a = wrap_dim(a, dim());
  b = wrap_dim(b, dim());
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1);
  Tensor t = *this;
  int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, stride);
  return t;
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim());
  SD3_CHECK(shape_[d] == 1, "squeeze of dimension ", d, " of ", str());
  Tensor t = *this;
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

// ---- copies -----------------------------------------------------------------------------

namespace {

// Copies a strided CPU tensor into a contiguous buffer of dst_dtype, converting per row.
void gather_cpu(const Tensor& src, void* dst, DType dst_dtype) {
  const int64_t rank = src.dim();
  const int64_t n = src.numel();
  if (n == 0) return;
  const size_t ssize = dtype_size(src.dtype());
  const size_t dsize = dtype_size(dst_dtype);
  const char* base = static_cast<const char*>(src.raw_data());
  if (src.is_contiguous()) {
    convert_elements(base, src.dtype(), dst, dst_dtype, static_cast<size_t>(n));
    return;
  }
  // Iterate over rows of the innermost dimension.
  const int64_t inner = rank ? src.shape().back() : 1;
  const int64_t inner_stride = rank ? src.strides().back() : 1;
  const int64_t rows = n / inner;
  std::vector<char> row_buf;
  if (inner_stride != 1) row_buf.resize(static_cast<size_t>(inner) * ssize);
#pragma omp parallel for if (rows > 64 && n > (1 << 15)) schedule(static) firstprivate(row_buf)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r;
    int64_t off = 0;
    for (int64_t d = rank - 2; d >= 0; --d) {
      off += (rem % src.shape()[d]) * src.strides()[d];
      rem /= src.shape()[d];
    }
    const char* row = base + off * static_cast<int64_t>(ssize);
    char* out = static_cast<char*>(dst) + r * inner * static_cast<int64_t>(dsize);
    if (inner_stride == 1) {
      convert_elements(row, src.dtype(), out, dst_dtype, static_cast<size_t>(inner));
    } else {
      for (int64_t i = 0; i < inner; ++i)
        std::memcpy(row_buf.data() + i * ssize, row + i * inner_stride * static_cast<int64_t>(ssize),
                    ssize);
      convert_elements(row_buf.data(), src.dtype(), out, dst_dtype, static_cast<size_t>(inner));
    }
  }
}

}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  // Gathering a strided view on a device is a kernel: the op API owns it.
  if (!device().is_cpu()) return ops::contiguous(*this);
  Tensor out = empty(shape_, dtype_, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  if (!device().is_cpu()) return ops::cast(*this, dtype);
  Tensor out = empty(shape_, dtype, device());
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device device_to) const {
  if (device_to == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, device_to);
  device_copy(out.raw_data(), device_to, src.raw_data(), src.device(), nbytes());
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  SD3_CHECK(src.shape() == shape_, "copy of ", src.str(), " into ", str());
  if (numel() == 0) return;
  if (device().is_cpu() && src.device().is_cpu()) {
    if (is_contiguous()) {
      gather_cpu(src, raw_data(), dtype_);
      return;
    }
    // Strided destination: gather into a contiguous buffer, then scatter row by row.
    Tensor tmp = empty(shape_, dtype_);
    gather_cpu(src, tmp.raw_data(), dtype_);
    const size_t esize = dtype_size(dtype_);
    const int64_t rank = dim();
    const int64_t n = numel();
    const char* in = static_cast<const char*>(tmp.raw_data());
    char* base = static_cast<char*>(raw_data());
    for (int64_t i = 0; i < n; ++i) {
      int64_t rem = i;
      int64_t off = 0;
      for (int64_t d = rank - 1; d >= 0; --d) {
        off += (rem % shape_[d]) * strides_[d];
        rem /= shape_[d];
      }
      std::memcpy(base + off * static_cast<int64_t>(esize), in + i * static_cast<int64_t>(esize),
                  esize);
    }
    return;
  }
  // Involving a device: stage through contiguous tensors of the destination dtype.
  SD3_CHECK(is_contiguous(), "copy into a strided device tensor ", str());
  if (src.device() == device()) {
    Tensor packed = ops::cast(ops::contiguous(src), dtype_);  // gathered and converted there
    device_copy(raw_data(), device(), packed.raw_data(), packed.device(), nbytes());
    return;
  }
  Tensor host_src = src.device().is_cpu() ? src.to(dtype_).contiguous() : src.contiguous();
  if (!host_src.device().is_cpu() && host_src.dtype() != dtype_) {
    host_src = host_src.to(Device::cpu()).to(dtype_);
  }
  device_copy(raw_data(), device(), host_src.raw_data(), host_src.device(), nbytes());
}

void Tensor::fill(float value) {
  SD3_CHECK(defined(), "fill of an undefined tensor");
  if (numel() == 0) return;
  if (device().is_cpu() && is_contiguous()) {
    const int64_t n = numel();
    switch (dtype_) {
      case DType::F32: std::fill_n(static_cast<float*>(raw_data()), n, value); return;
      case DType::F16: std::fill_n(static_cast<Half*>(raw_data()), n, Half{f32_to_f16_bits(value)}); return;
      case DType::BF16:
        std::fill_n(static_cast<BFloat16*>(raw_data()), n, BFloat16{f32_to_bf16_bits(value)});
        return;
      case DType::I32: std::fill_n(static_cast<int32_t*>(raw_data()), n, static_cast<int32_t>(value)); return;
      case DType::I64: std::fill_n(static_cast<int64_t*>(raw_data()), n, static_cast<int64_t>(value)); return;
    }
  }
  Tensor host = Tensor::full(shape_, value, dtype_);
  copy_from(host);
}

std::vector<float> Tensor::to_floats() const {
  Tensor host = to(Device::cpu());
  std::vector<float> out(static_cast<size_t>(numel()));
  gather_cpu(host, out.data(), DType::F32);
  return out;
}

std::vector<int64_t> Tensor::to_ints() const {
  Tensor host = to(Device::cpu());
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  gather_cpu(host, out.data(), DType::I64);
  return out;
}

float Tensor::item() const {
  SD3_CHECK(numel() == 1, "item() of ", str());
  return to_floats()[0];
}

}  // namespace sd3
