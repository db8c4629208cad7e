#include "cuda/cuda_test_util.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "engine/op_profile.h"

#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/runtime.h"
#endif

namespace sd3::cudatest {

void CudaTest::require_gpu() {
  SD3_REQUIRE_GPU();
}

void CudaTest::SetUp() {
  saved_fusion_ = fusion();
  require_gpu();
  if (IsSkipped()) return;
#ifdef SD3_HAVE_CUDA
  cuda::set_alloc_poison(true);
#endif
  const char* env = std::getenv("SD3_TEST_SEED");
  seed_ = env ? std::strtoull(env, nullptr, 10) : std::random_device{}() * 2654435761ULL + 1;
  rng_.seed(seed_);
  RecordProperty("seed", std::to_string(seed_));
}

void CudaTest::TearDown() {
  fusion() = saved_fusion_;
  if (HasFailure())
    std::fprintf(stderr, "[ seed     ] %llu (rerun with SD3_TEST_SEED=%llu)\n",
                 static_cast<unsigned long long>(seed_), static_cast<unsigned long long>(seed_));
#ifdef SD3_HAVE_CUDA
  if (cuda_available()) cuda::set_alloc_poison(false);
  cuda::reset_lab_switches();  // also after a test that threw mid-way
#endif
  set_op_profile(false);
}

Tensor CudaTest::randn(const Shape& shape, DType dtype, float sigma, float mean) {
  // Blocks of kBlock values, block b drawn from its own generator seeded by the b-th draw of
  // rng_: the result depends on SD3_TEST_SEED and the call sequence only, not on the thread
  // count, and a large draw (the VAE-sized inputs) uses every core.
  constexpr size_t kBlock = size_t{1} << 16;
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  const size_t blocks = (v.size() + kBlock - 1) / kBlock;
  std::vector<uint64_t> seeds(blocks);
  for (uint64_t& s : seeds) s = rng_();
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < static_cast<int64_t>(blocks); ++b) {
    std::mt19937_64 g(seeds[static_cast<size_t>(b)]);
    std::normal_distribution<float> d(mean, sigma);
    const size_t lo = static_cast<size_t>(b) * kBlock, hi = std::min(v.size(), lo + kBlock);
    for (size_t i = lo; i < hi; ++i) v[i] = d(g);
  }
  return Tensor::from_floats(v, shape, dtype);
}

Tensor CudaTest::uniform(const Shape& shape, DType dtype, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = d(rng_);
  return Tensor::from_floats(v, shape, dtype);
}

double unit_roundoff(DType dt) {
  switch (dt) {
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::BF16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -24);
  }
}

void expect_close(const Tensor& out, const Tensor& ref, DType dt, const Tol& tol,
                  const std::string& what) {
  ASSERT_EQ(shape_str(out.shape()), shape_str(ref.shape())) << what << ": shapes differ";
  EXPECT_EQ(out.dtype(), dt) << what << ": output dtype";
  const std::vector<float> o = out.to(Device::cpu()).to_floats();
  const std::vector<float> r = ref.to_floats();
  double s = tol.scale;  // Note [CUDA test tolerances]: s = max(max |ref|, scale)
  for (float x : r)
    if (std::isfinite(x)) s = std::max(s, static_cast<double>(std::fabs(x)));
  const double u = unit_roundoff(dt);
  const double abs_term =
      (tol.k * u + (std::sqrt(static_cast<double>(tol.n)) + 4.0) * std::ldexp(1.0, -23) +
       tol.extra) *
      s;
  size_t bad = 0, worst = 0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < r.size(); ++i) {
    const double ref_i = r[i], out_i = o[i];
    double ratio;
    if (!std::isfinite(ref_i)) {
      ratio = (std::isnan(ref_i) ? std::isnan(out_i) : out_i == ref_i) ? 0.0 : INFINITY;
    } else if (!std::isfinite(out_i)) {
      ratio = INFINITY;
    } else {
      const double bound = (1 + tol.k) * u * std::fabs(ref_i) + abs_term + 1e-30;
      ratio = std::fabs(out_i - ref_i) / bound;
    }
    if (ratio > 1.0) ++bad;
    if (ratio > worst_ratio || (bad == 1 && ratio > 1.0 && worst_ratio <= 1.0)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (bad) {
    std::ostringstream os;
    os << what << ": " << bad << " of " << r.size() << " elements outside tolerance (k=" << tol.k
       << ", n=" << tol.n << ", extra=" << tol.extra << ", scale=" << tol.scale << ", dtype "
       << dtype_name(dt) << ", s " << s << "); worst at flat index " << worst << ": got "
       << o[worst] << ", want " << r[worst] << " (" << worst_ratio << "x the bound)";
    ADD_FAILURE() << os.str();
  }
}

}  // namespace sd3::cudatest
