// The CUDA runtime: caching allocator statistics and reuse, copies in every direction
// (including transfers larger than one pinned staging buffer), errors that name the call, and
// the op profile's CUDA events.
#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "cuda/cuda_test_util.h"
#include "engine/op_profile.h"
#include "engine/ops.h"

namespace sd3::cudatest {
namespace {

class CudaRuntime : public CudaTest {};

TEST(CudaRuntimeNoGpu, ReasonIsGivenWhenUnavailable) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_FALSE(cuda_unavailable_reason().empty());
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::cuda(0)), Error);
}

#ifdef SD3_HAVE_CUDA  // the allocator is only linked into CUDA builds
TEST_F(CudaRuntime, AllocatorReusesFreedBlocks) {
  cuda::set_alloc_poison(false);
  const MemoryStats before = memory_stats(DeviceType::CUDA);
  void* p = cuda::alloc(0, 3 << 20);
  const MemoryStats mid = memory_stats(DeviceType::CUDA);
  EXPECT_GE(mid.current, before.current + (3u << 20));
  EXPECT_GE(mid.reserved, mid.current);
  cuda::free(0, p, 3 << 20);
  const MemoryStats after_free = memory_stats(DeviceType::CUDA);
  EXPECT_EQ(after_free.current, before.current);
  EXPECT_EQ(after_free.reserved, mid.reserved);  // cached, not returned
  void* q = cuda::alloc(0, (3 << 20) - 100);     // same size class: a cached block, no new memory
  EXPECT_EQ(memory_stats(DeviceType::CUDA).reserved, mid.reserved);
  cuda::free(0, q, (3 << 20) - 100);
  reset_peak_memory(DeviceType::CUDA);
  EXPECT_EQ(memory_stats(DeviceType::CUDA).peak, memory_stats(DeviceType::CUDA).current);
}
#endif

TEST_F(CudaRuntime, SteadyStateLoopReservesNothingNew) {
  // Shapes repeated every "step" must be served from the cache after the first step.
  auto step = [] {
    Tensor a = Tensor::empty({2, 4250, 1536}, DType::BF16, Device::cuda(0));
    Tensor b = Tensor::empty({2, 16, 128, 128}, DType::BF16, Device::cuda(0));
    Tensor c = Tensor::empty({77}, DType::F32, Device::cuda(0));
  };
  step();
  const size_t reserved = memory_stats(DeviceType::CUDA).reserved;
  for (int i = 0; i < 5; ++i) step();
  EXPECT_EQ(memory_stats(DeviceType::CUDA).reserved, reserved);
}

TEST_F(CudaRuntime, CopiesRoundTripAcrossStagingChunks) {
  for (int64_t n : {int64_t{1}, int64_t{77}, int64_t{5} << 20, (int64_t{11} << 20) + 3}) {
    Tensor h = randn({n}, DType::F32);  // 11 Mi floats = 44 MB: three 16 MiB staging chunks
    Tensor d = gpu(h);
    Tensor d2 = d.clone();  // device to device
    Tensor back = d2.to(Device::cpu());
    ASSERT_EQ(std::memcmp(back.raw_data(), h.raw_data(), h.nbytes()), 0) << "n = " << n;
  }
}

TEST_F(CudaRuntime, FillAndCopyFromHostOfAnotherDtype) {
  Tensor d = Tensor::empty({3, 5}, DType::BF16, Device::cuda(0));
  d.fill(2.5f);
  for (float v : d.to_floats()) EXPECT_EQ(v, 2.5f);
  Tensor h = randn({3, 5}, DType::F32);
  d.copy_from(h);  // host f32 -> device bf16 converts on the host side
  const std::vector<float> got = d.to_floats(), want = h.to(DType::BF16).to_floats();
  EXPECT_EQ(got, want);
}

TEST_F(CudaRuntime, LibraryAndKernelErrorsNameTheOp) {
  Tensor a = gpu(randn({4, 8}, DType::BF16));
  Tensor w = gpu(randn({16, 9}, DType::BF16));
  try {
    ops::linear(a, w);
    FAIL() << "linear with mismatched widths did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::add(a, gpu(randn({5}, DType::BF16))), Error);
  EXPECT_THROW(ops::add(a, randn({4, 8}, DType::BF16)), Error);  // cpu + cuda
}

// The op profile on a device (Note [Op profile]): events around each outermost op, read after
// a synchronisation, slots reused after a read; a composed op (unfused adaln) counts once.
TEST_F(CudaRuntime, OpProfileTimesDeviceOpsWithEvents) {
  const Tensor a = gpu(randn({512, 512}, DType::F16));
  const Tensor mod = gpu(randn({1, 1024}, DType::F16));
  reset_op_profile();
  set_op_profile(true);
  for (int round = 0; round < 2; ++round) {  // round 2 reuses the slots freed by the first read
    ops::add(a, a);
    ops::matmul(a, a);
    Fusion f;
    f.adaln = false;
    FusionScope scope(f);
    ops::adaln_modulate(a.view({1, 512, 512}), mod.slice(1, 0, 512), mod.slice(1, 512, 1024),
                        1e-6f);
    std::map<std::string, OpStat> m;
    for (const OpStat& s : read_op_profile()) m[s.op] = s;
    EXPECT_EQ(m.size(), 3u) << "round " << round;
    for (const char* op : {"add", "matmul", "adaln_modulate"}) {
      ASSERT_EQ(m.count(op), 1u) << op << ", round " << round;
      EXPECT_EQ(m.at(op).calls, 1) << op;
      EXPECT_GT(m.at(op).ms, 0.0) << op;
    }
  }
  set_op_profile(false);
  reset_op_profile();
}

}  // namespace
}  // namespace sd3::cudatest
