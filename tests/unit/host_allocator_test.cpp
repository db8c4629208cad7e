// The host block cache (engine/host_allocator.h, Note [Host block cache]).
#include "engine/host_allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "engine/tensor.h"

namespace sd3 {
namespace {

// Restores the cache limit a test changed.
struct LimitGuard {
  size_t saved = host::cache_limit();
  ~LimitGuard() { host::set_cache_limit(saved); }
};

TEST(HostAllocator, AlignedAndWritable) {
  for (size_t n : {size_t{1}, size_t{63}, size_t{65}, size_t{4097}, size_t{3} << 20}) {
    void* p = host::alloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % host::kAlignment, 0u) << n;
    std::memset(p, 0xab, n);
    host::free(p, n);
  }
}

TEST(HostAllocator, LargeBlocksAreReusedSmallOnesAreNot) {
  LimitGuard guard;
  host::set_cache_limit(size_t{64} << 20);
  host::trim();
  const size_t big = (size_t{5} << 20) + 123;
  void* a = host::alloc(big);
  host::free(a, big);
  const MemoryStats cached = host::stats();
  EXPECT_GE(cached.reserved - cached.current, big);  // kept, not returned
  void* b = host::alloc(big);                        // the same size class: the same block
  EXPECT_EQ(a, b);
  // A size in the same class (within 1/8 of the power of two) reuses it too.
  host::free(b, big);
  void* c = host::alloc(big + 1000);
  EXPECT_EQ(a, c);
  host::free(c, big + 1000);
  host::trim();
  const MemoryStats after = host::stats();
  EXPECT_EQ(after.reserved, after.current);
}

TEST(HostAllocator, LimitZeroTurnsCachingOff) {
  LimitGuard guard;
  host::set_cache_limit(0);
  const size_t big = size_t{4} << 20;
  void* a = host::alloc(big);
  host::free(a, big);
  const MemoryStats s = host::stats();
  EXPECT_EQ(s.reserved, s.current);
}

TEST(HostAllocator, StatsCountLiveBytesAndPeak) {
  LimitGuard guard;
  host::set_cache_limit(size_t{64} << 20);
  host::reset_peak();
  const MemoryStats before = host::stats();
  {
    Tensor t = Tensor::empty({1024, 1024}, DType::F32);  // 4 MiB
    const MemoryStats during = host::stats();
    EXPECT_GE(during.current, before.current + (size_t{4} << 20));
    EXPECT_GE(during.peak, during.current);
  }
  const MemoryStats after = host::stats();
  EXPECT_EQ(after.current, before.current);
  EXPECT_GE(after.peak, before.current + (size_t{4} << 20));
  // A fresh tensor of the same shape takes the cached block (no new memory reserved).
  Tensor t2 = Tensor::empty({1024, 1024}, DType::F32);
  EXPECT_EQ(host::stats().reserved, after.reserved);
}

}  // namespace
}  // namespace sd3
