#include "engine/device.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/error.h"
#include "engine/host_allocator.h"

#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace sd3 {

namespace {
[[noreturn, maybe_unused]] void no_cuda() { fail("CUDA backend requested but ", cuda_unavailable_reason()); }
}  // namespace

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda" || name == "gpu") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) {
    const std::string idx = name.substr(5);
    char* end = nullptr;
    long v = std::strtol(idx.c_str(), &end, 10);
    if (!idx.empty() && *end == '\0' && v >= 0 && v < 64) return Device::cuda(static_cast<int>(v));
  }
  fail("unknown device '", name, "' (expected cpu, cuda or cuda:N)");
}

bool cuda_available() {
#ifdef SD3_HAVE_CUDA
  return cuda::runtime_available();
#else
  return false;
#endif
}

std::string cuda_unavailable_reason() {
#ifdef SD3_HAVE_CUDA
  return cuda::runtime_unavailable_reason();
#else
  return "this build has no CUDA backend (configured without nvcc or with SD3_CUDA=OFF)";
#endif
}

void* device_alloc(Device device, size_t bytes) {
  if (device.is_cpu()) return host::alloc(bytes);
#ifdef SD3_HAVE_CUDA
  return cuda::alloc(device.index, bytes);
#else
  no_cuda();
#endif
}

void device_free(Device device, void* ptr, size_t bytes) {
  if (!ptr) return;
  if (device.is_cpu()) {
    host::free(ptr, bytes);
    return;
  }
#ifdef SD3_HAVE_CUDA
  cuda::free(device.index, ptr, bytes);
#else
  (void)bytes;
#endif
}

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef SD3_HAVE_CUDA
  cuda::copy(dst, dst_device.is_cuda(), src, src_device.is_cuda(), bytes);
#else
  no_cuda();
#endif
}

void device_synchronize(Device device) {
  if (device.is_cpu()) return;
#ifdef SD3_HAVE_CUDA
  cuda::synchronize(device.index);
#endif
}

MemoryStats memory_stats(DeviceType type) {
  if (type == DeviceType::CPU) return host::stats();
#ifdef SD3_HAVE_CUDA
  return cuda::memory_stats();
#else
  return {};
#endif
}

void reset_peak_memory(DeviceType type) {
  if (type == DeviceType::CPU) {
    host::reset_peak();
    return;
  }
#ifdef SD3_HAVE_CUDA
  cuda::reset_peak_memory();
#endif
}

}  // namespace sd3
