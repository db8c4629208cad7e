// Where a tensor's bytes live, and the per-device hooks the CUDA backend fills in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sd3 {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return Device{DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return Device{DeviceType::CUDA, index}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:N".
Device parse_device(const std::string& name);

// True when this build has the CUDA backend and a usable GPU is present. Never throws:
// any failure of the CUDA runtime (no driver, no device) reads as "no GPU".
bool cuda_available();
// Why cuda_available() is false, in one line ("built without CUDA", the runtime's message, ...).
std::string cuda_unavailable_reason();

// Raw memory on a device. CPU memory is 64-byte aligned, with large blocks reused
// (engine/host_allocator.h); CUDA memory comes from the backend's caching allocator
// (kernels/cuda), so freeing inside a sampling loop never reaches cudaFree.
void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);
// Copies bytes between any two devices (host<->device, device<->device, host<->host).
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// Waits for all queued work on the device (no-op on the CPU).
void device_synchronize(Device device);

// Allocation statistics of one device type, in bytes.
struct MemoryStats {
  size_t current = 0;
  size_t peak = 0;
  size_t reserved = 0;  // held by a caching allocator, including free blocks
};
MemoryStats memory_stats(DeviceType type);
void reset_peak_memory(DeviceType type);

}  // namespace sd3
