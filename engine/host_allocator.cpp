#include "engine/host_allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/error.h"

namespace sd3::host {
namespace {

// The bytes actually reserved for a request: a multiple of the alignment, and for cached
// sizes the next size class (Note [Host block cache]).
size_t size_class(size_t bytes) {
  size_t n = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (n == 0) n = kAlignment;
  if (n < kMinCachedBytes) return n;
  size_t top = size_t{1} << (63 - __builtin_clzll(n));  // highest power of two <= n
  size_t step = top / 8;
  return (n + step - 1) / step * step;
}

size_t limit_from_env() {
  const char* env = std::getenv("SD3_HOST_CACHE_MB");
  if (!env || !*env) return size_t{2048} << 20;
  char* end = nullptr;
  unsigned long long mb = std::strtoull(env, &end, 10);
  if (*end != '\0') return size_t{2048} << 20;
  return static_cast<size_t>(mb) << 20;
}

struct Cache {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  size_t cached = 0;
  size_t current = 0;
  size_t peak = 0;
  size_t limit = limit_from_env();

  // Frees cached blocks until at most `keep` bytes remain; caller holds the mutex.
  void release_to(size_t keep) {
    for (auto it = free_blocks.begin(); it != free_blocks.end() && cached > keep;) {
      while (!it->second.empty() && cached > keep) {
        std::free(it->second.back());
        it->second.pop_back();
        cached -= it->first;
      }
      it = it->second.empty() ? free_blocks.erase(it) : std::next(it);
    }
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may outlive static destructors
  return *c;
}

}  // namespace

void* alloc(size_t bytes) {
  const size_t n = size_class(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    void* p = nullptr;
    if (n >= kMinCachedBytes) {
      auto it = c.free_blocks.find(n);
      if (it != c.free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        c.cached -= n;
      }
    }
    if (p) {
      c.current += n;
      if (c.current > c.peak) c.peak = c.current;
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlignment, n);
  if (!p) {
    // Cached blocks may be what stands in the way: give them back and try once more.
    trim();
    p = std::aligned_alloc(kAlignment, n);
  }
  SD3_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  std::lock_guard<std::mutex> lock(c.mutex);
  c.current += n;
  if (c.current > c.peak) c.peak = c.current;
  return p;
}

void free(void* ptr, size_t bytes) {
  if (!ptr) return;
  const size_t n = size_class(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.current -= n;
  if (n >= kMinCachedBytes && c.cached + n <= c.limit) {
    c.free_blocks[n].push_back(ptr);
    c.cached += n;
    return;
  }
  std::free(ptr);
}

MemoryStats stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  MemoryStats s;
  s.current = c.current;
  s.peak = c.peak;
  s.reserved = c.current + c.cached;
  return s;
}

void reset_peak() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.peak = c.current;
}

size_t cache_limit() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.limit;
}

void set_cache_limit(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.limit = bytes;
  c.release_to(bytes);
}

void trim() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.release_to(0);
}

}  // namespace sd3::host
