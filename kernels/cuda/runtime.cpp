// The CUDA runtime of the backend: availability, per-device state (stream, library handles),
// the caching allocator, pinned staging for copies, and status checks.
//
// Note [Caching allocator]
// Requests are rounded up (512 B below 1 MiB, 128 KiB below 32 MiB, 2 MiB above) and served
// best-fit from a per-device free list of blocks keyed by size, accepting a block at most 1/8
// larger than the request. Only a miss reaches cudaMalloc; a cudaMalloc that fails returns
// every free block to the driver and tries once more before reporting out of memory. Blocks
// are never split, so a sampling loop that frees and re-requests the same shapes each step
// reaches a steady state after one step with no driver calls at all. Device state is never
// destroyed: tearing it down from static destructors races the driver's own shutdown.
#include "kernels/cuda/runtime.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/libraries.h"

namespace sd3::cuda {

[[noreturn]] void fail_cuda(int code, const char* name, const char* text, const char* call,
                            const char* file, int line) {
  fail("CUDA error ", name, " (", code, ": ", text, ") in ", call, " at ", file, ":", line);
}

[[noreturn]] void fail_library(const char* library, int code, const char* text, const char* call,
                               const char* file, int line) {
  fail(library, " error ", code, " (", text, ") in ", call, " at ", file, ":", line);
}

namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kStagingBytes = 16u << 20;  // per pinned staging buffer; two per device

struct Availability {
  bool ok = false;
  std::string reason;
};

const Availability& availability() {
  static const Availability a = [] {
    Availability r;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      r.reason =
          str_cat("the CUDA runtime reports ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
      cudaGetLastError();
    } else if (n <= 0) {
      r.reason = "the CUDA runtime reports no device";
    } else {
      r.ok = true;
    }
    return r;
  }();
  return a;
}

struct Staging {
  void* host = nullptr;
  cudaEvent_t done = nullptr;  // recorded after the copy that last read/wrote `host`
};

struct DeviceState {
  int index = 0;
  cudaStream_t stream = nullptr;
  cudaDeviceProp props{};
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  cudnnHandle_t dnn = nullptr;
  std::once_flag lt_once, blas_once, dnn_once;
  Staging staging[2];
  int next_staging = 0;
  std::mutex copy_mu;

  std::mutex mu;  // guards the allocator fields below
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> live;
  size_t current = 0, peak = 0, reserved = 0;

  std::mutex events_mu;  // the op profile's event pool (Note [Op profile]), reused per reset
  std::vector<cudaEvent_t> events;
  size_t next_event = 0;
};

std::mutex g_states_mu;
DeviceState* g_states[kMaxDevices] = {};

DeviceState& state(int device) {
  SD3_CHECK(device >= 0 && device < kMaxDevices, "CUDA device index ", device, " out of range");
  std::lock_guard<std::mutex> lock(g_states_mu);
  DeviceState*& s = g_states[device];
  if (!s) {
    const Availability& a = availability();
    SD3_CHECK(a.ok, "CUDA backend unavailable: ", a.reason);
    int n = 0;
    SD3_CUDA_CHECK(cudaGetDeviceCount(&n));
    SD3_CHECK(device < n, "cuda:", device, " requested but only ", n, " CUDA device(s) present");
    auto st = std::make_unique<DeviceState>();
    st->index = device;
    SD3_CUDA_CHECK(cudaSetDevice(device));
    SD3_CUDA_CHECK(cudaGetDeviceProperties(&st->props, device));
    SD3_CUDA_CHECK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    for (Staging& sg : st->staging) {
      SD3_CUDA_CHECK(cudaMallocHost(&sg.host, kStagingBytes));
      SD3_CUDA_CHECK(cudaEventCreateWithFlags(&sg.done, cudaEventDisableTiming));
    }
    s = st.release();  // never destroyed: Note [Caching allocator]
  }
  return *s;
}

size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  auto up = [](size_t n, size_t m) { return (n + m - 1) / m * m; };
  if (bytes <= (1u << 20)) return up(bytes, 512);
  if (bytes <= (32u << 20)) return up(bytes, 128u << 10);
  return up(bytes, 2u << 20);
}

struct GlobalStats {
  std::mutex mu;
  size_t current = 0, peak = 0, reserved = 0;
} g_stats;

void note_stats(long long d_current, long long d_reserved) {
  std::lock_guard<std::mutex> lock(g_stats.mu);
  g_stats.current = static_cast<size_t>(static_cast<long long>(g_stats.current) + d_current);
  g_stats.reserved = static_cast<size_t>(static_cast<long long>(g_stats.reserved) + d_reserved);
  if (g_stats.current > g_stats.peak) g_stats.peak = g_stats.current;
}

// Returns every free block of `s` to the driver. Caller holds s.mu.
void release_free_blocks(DeviceState& s) {
  size_t released = 0;
  for (auto& kv : s.free_blocks) {
    SD3_CUDA_CHECK(cudaFree(kv.second));
    released += kv.first;
  }
  s.free_blocks.clear();
  s.reserved -= released;
  note_stats(0, -static_cast<long long>(released));
}

int device_of(const void* p) {
  cudaPointerAttributes attr{};
  SD3_CUDA_CHECK(cudaPointerGetAttributes(&attr, p));
  SD3_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
            "CUDA copy: pointer ", p, " is not device memory");
  return attr.device;
}

std::atomic<bool>& poison_flag() {
  static std::atomic<bool> f{[] {
    const char* e = std::getenv("SD3_CUDA_POISON");
    return e && e[0] == '1';
  }()};
  return f;
}

// SD3_CUDA_ALLOC=direct: every alloc is its own exact-size cudaMalloc and every free a cudaFree
// (no caching, no rounding), so compute-sanitizer memcheck sees each tensor's true bounds.
bool direct_alloc() {
  static const bool d = [] {
    const char* e = std::getenv("SD3_CUDA_ALLOC");
    return e && std::string(e) == "direct";
  }();
  return d;
}

}  // namespace

void set_alloc_poison(bool on) {
  poison_flag().store(on);
}

bool runtime_available() {
  return availability().ok;
}
std::string runtime_unavailable_reason() {
  return availability().reason;
}

cudaStream_t stream(int device) {
  DeviceState& s = state(device);
  int cur = -1;
  SD3_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) SD3_CUDA_CHECK(cudaSetDevice(device));
  return s.stream;
}

cudaStream_t stream_for(const Tensor& t) {
  SD3_CHECK(t.defined() && t.device().is_cuda(), "CUDA kernel given ", t.str());
  return stream(t.device().index);
}

const cudaDeviceProp& device_props(int device) {
  return state(device).props;
}

std::string device_name(int device) {
  return device_props(device).name;
}

cublasLtContext* cublaslt_handle(int device) {
  DeviceState& s = state(device);
  std::call_once(s.lt_once, [&] { SD3_CUBLAS_CHECK(cublasLtCreate(&s.lt)); });
  return s.lt;
}

cublasContext* cublas_handle(int device) {
  DeviceState& s = state(device);
  std::call_once(s.blas_once, [&] {
    SD3_CUDA_CHECK(cudaSetDevice(device));
    SD3_CUBLAS_CHECK(cublasCreate(&s.blas));
    SD3_CUBLAS_CHECK(cublasSetStream(s.blas, s.stream));
    SD3_CUBLAS_CHECK(cublasSetMathMode(s.blas, CUBLAS_DEFAULT_MATH));
  });
  return s.blas;
}

cudnnContext* cudnn_handle(int device) {
  DeviceState& s = state(device);
  std::call_once(s.dnn_once, [&] {
    SD3_CUDA_CHECK(cudaSetDevice(device));
    SD3_CUDNN_CHECK(cudnnCreate(&s.dnn));
    SD3_CUDNN_CHECK(cudnnSetStream(s.dnn, s.stream));
  });
  return s.dnn;
}

void* alloc(int device, size_t bytes) {
  DeviceState& s = state(device);
  const size_t size = direct_alloc() ? (bytes ? bytes : 1) : round_size(bytes);
  std::lock_guard<std::mutex> lock(s.mu);
  void* p = nullptr;
  auto it = direct_alloc() ? s.free_blocks.end() : s.free_blocks.lower_bound(size);
  size_t block = size;
  if (it != s.free_blocks.end() && it->first <= size + size / 8) {
    block = it->first;
    p = it->second;
    s.free_blocks.erase(it);
  } else {
    SD3_CUDA_CHECK(cudaSetDevice(device));
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_free_blocks(s);
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("CUDA out of memory: cudaMalloc of ", size, " bytes on cuda:", device, " failed (",
           cudaGetErrorString(e), "); in use ", s.current, " bytes, device free ", free_b, " of ",
           total_b);
    }
    s.reserved += size;
    note_stats(0, static_cast<long long>(size));
  }
  if (poison_flag().load()) {
    SD3_CUDA_CHECK(cudaSetDevice(device));
    SD3_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, block, s.stream));
  }
  s.live.emplace(p, block);
  s.current += block;
  if (s.current > s.peak) s.peak = s.current;
  note_stats(static_cast<long long>(block), 0);
  return p;
}

void free(int device, void* p, size_t bytes) {
  (void)bytes;
  if (!p) return;
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.live.find(p);
  SD3_ASSERT(it != s.live.end(), "CUDA free of a pointer the allocator did not hand out");
  const size_t block = it->second;
  s.live.erase(it);
  s.current -= block;
  note_stats(-static_cast<long long>(block), 0);
  if (direct_alloc()) {
    // free() runs from destructors (~Storage, ~Scratch), often while an exception from a
    // faulting kernel unwinds: after a device fault every call returns the sticky error, and a
    // throw here would end the process in std::terminate before the fault is reported (a
    // sanitizer run would stop at its first faulty kernel). So codes are reported, not thrown:
    // one line for the first failure; the later ones are the same fault.
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s.stream);
    const cudaError_t ef = cudaFree(p);
    if (e == cudaSuccess) e = ef;
    if (e != cudaSuccess) {
      static std::atomic<bool> reported{false};
      if (!reported.exchange(true))
        std::fprintf(stderr,
                     "sd3: CUDA error %s (%s) freeing %zu bytes on cuda:%d "
                     "(SD3_CUDA_ALLOC=direct); further free errors are not reported\n",
                     cudaGetErrorName(e), cudaGetErrorString(e), block, device);
    }
    s.reserved -= block;
    note_stats(0, -static_cast<long long>(block));
    return;
  }
  s.free_blocks.emplace(block, p);
}

namespace {
// Runs f(device, state) for every device whose state exists.
template <class F>
void for_each_state(F&& f) {
  for (int d = 0; d < kMaxDevices; ++d) {
    DeviceState* s = nullptr;
    {
      std::lock_guard<std::mutex> lock(g_states_mu);
      s = g_states[d];
    }
    if (s) f(d, *s);
  }
}
}  // namespace

void empty_cache() {
  for_each_state([](int d, DeviceState& s) {
    SD3_CUDA_CHECK(cudaSetDevice(d));
    SD3_CUDA_CHECK(cudaStreamSynchronize(s.stream));
    std::lock_guard<std::mutex> lock(s.mu);
    release_free_blocks(s);
  });
}

void copy(void* dst, bool dst_is_device, const void* src, bool src_is_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_is_device && src_is_device) {
    const int dd = device_of(dst), sd = device_of(src);
    if (sd != dd) synchronize(sd);
    SD3_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream(dd)));
    return;
  }
  SD3_CHECK(dst_is_device || src_is_device, "cuda::copy between two host buffers");
  const int dev = dst_is_device ? device_of(dst) : device_of(src);
  DeviceState& s = state(dev);
  cudaStream_t st = stream(dev);
  std::lock_guard<std::mutex> lock(s.copy_mu);
  if (dst_is_device) {
    // Host -> device: fill one pinned buffer while the other one's copy runs.
    const char* in = static_cast<const char*>(src);
    char* out = static_cast<char*>(dst);
    for (size_t done = 0; done < bytes;) {
      const size_t n = std::min(kStagingBytes, bytes - done);
      Staging& sg = s.staging[s.next_staging];
      s.next_staging ^= 1;
      SD3_CUDA_CHECK(cudaEventSynchronize(sg.done));
      std::memcpy(sg.host, in + done, n);
      SD3_CUDA_CHECK(cudaMemcpyAsync(out + done, sg.host, n, cudaMemcpyHostToDevice, st));
      SD3_CUDA_CHECK(cudaEventRecord(sg.done, st));
      done += n;
    }
    return;
  }
  // Device -> host: the host buffer is pageable, so each chunk lands in pinned memory first.
  const char* in = static_cast<const char*>(src);
  char* out = static_cast<char*>(dst);
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(kStagingBytes, bytes - done);
    Staging& sg = s.staging[s.next_staging];
    s.next_staging ^= 1;
    SD3_CUDA_CHECK(cudaEventSynchronize(sg.done));
    SD3_CUDA_CHECK(cudaMemcpyAsync(sg.host, in + done, n, cudaMemcpyDeviceToHost, st));
    SD3_CUDA_CHECK(cudaEventRecord(sg.done, st));
    SD3_CUDA_CHECK(cudaEventSynchronize(sg.done));
    std::memcpy(out + done, sg.host, n);
    done += n;
  }
}

int64_t profile_mark(int device) {
  DeviceState& s = state(device);
  cudaStream_t st = stream(device);
  std::lock_guard<std::mutex> lock(s.events_mu);
  if (s.next_event == s.events.size()) {
    cudaEvent_t e = nullptr;
    SD3_CUDA_CHECK(cudaEventCreate(&e));
    s.events.push_back(e);
  }
  SD3_CUDA_CHECK(cudaEventRecord(s.events[s.next_event], st));
  return static_cast<int64_t>(s.next_event++);
}

double profile_elapsed_ms(int device, int64_t from, int64_t to) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.events_mu);
  SD3_CHECK(from >= 0 && to >= 0 && static_cast<size_t>(std::max(from, to)) < s.next_event,
            "op profile: event slots ", from, " / ", to, " were not recorded on cuda:", device);
  float ms = 0.0f;
  SD3_CUDA_CHECK(cudaEventElapsedTime(&ms, s.events[static_cast<size_t>(from)],
                                      s.events[static_cast<size_t>(to)]));
  return ms;
}

void profile_reset_events() {
  for_each_state([](int, DeviceState& s) {
    std::lock_guard<std::mutex> lock(s.events_mu);
    s.next_event = 0;
  });
}

void synchronize(int device) {
  SD3_CUDA_CHECK(cudaStreamSynchronize(stream(device)));
}

MemoryStats memory_stats() {
  std::lock_guard<std::mutex> lock(g_stats.mu);
  MemoryStats m;
  m.current = g_stats.current;
  m.peak = g_stats.peak;
  m.reserved = g_stats.reserved;
  return m;
}

void reset_peak_memory() {
  std::lock_guard<std::mutex> lock(g_stats.mu);
  g_stats.peak = g_stats.current;
}

Scratch::Scratch(int device, size_t bytes) : device_(device), bytes_(bytes) {
  if (bytes) ptr_ = alloc(device, bytes);
}
Scratch::~Scratch() {
  if (ptr_) free(device_, ptr_, bytes_);
}
Scratch::Scratch(Scratch&& o) noexcept : device_(o.device_), ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
}
Scratch& Scratch::operator=(Scratch&& o) noexcept {
  if (this != &o) {
    if (ptr_) free(device_, ptr_, bytes_);
    device_ = o.device_;
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
  }
  return *this;
}

}  // namespace sd3::cuda
