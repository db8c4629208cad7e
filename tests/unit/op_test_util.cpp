#include "op_test_util.h"

#include <cstdlib>
#include <sstream>

namespace sd3::test {

namespace {
uint64_t initial_seed() {
  if (const char* env = std::getenv("SD3_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}
}  // namespace

Rng::Rng() : seed_(initial_seed()), gen_(seed_) {
  ::testing::Test::RecordProperty("seed", std::to_string(seed_));
}

Tensor randn(Rng& rng, const Shape& shape, DType dtype, double scale, double shift) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(rng.normal() * scale + shift);
  return Tensor::from_floats(v, shape, dtype);
}

Tensor randint_float(Rng& rng, const Shape& shape, int64_t lo, int64_t hi, DType dtype) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(rng.integer(lo, hi));
  return Tensor::from_floats(v, shape, dtype);
}

std::vector<double> values(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}

Tensor noncontiguous(const Tensor& t, int kind) {
  const int64_t r = t.dim();
  if (kind == 0 && r >= 1) {
    Shape wide = t.shape();
    wide.back() += 3;
    Tensor big = Tensor::full(wide, 12345.0f, t.dtype());
    Tensor view = big.slice(r - 1, 1, 1 + t.size(-1));
    view.copy_from(t);
    return view;
  }
  if (kind == 1 && r >= 2) {
    Tensor stored = t.transpose(r - 2, r - 1).contiguous();  // last two dims swapped in memory
    return stored.transpose(r - 2, r - 1);
  }
  if (kind == 3 && r >= 2) {
    Shape wide = t.shape();
    wide.insert(wide.begin() + 1, 2);
    Tensor big = Tensor::full(wide, 54321.0f, t.dtype());
    Tensor view = big.select(1, 1);
    view.copy_from(t);
    return view;
  }
  Shape doubled = t.shape();
  for (int64_t& s : doubled) s *= 2;
  Tensor big = Tensor::full(doubled, -777.0f, t.dtype());
  // Tensor has no strided slice: view the buffer as [s0, 2, s1, 2, ...] and select index 0
  // of every inserted 2.
  Shape inter;
  for (int64_t d = 0; d < r; ++d) {
    inter.push_back(t.size(d));
    inter.push_back(2);
  }
  Tensor view = big.view(inter);
  for (int64_t d = r - 1; d >= 0; --d) view = view.select(2 * d + 1, 0);
  view.copy_from(t);
  return view;
}

void expect_close(const Tensor& got, const std::vector<double>& ref, const std::vector<double>& tol,
                  const std::string& what) {
  const std::vector<double> g = values(got);
  ASSERT_EQ(g.size(), ref.size()) << what << ": " << got.str();
  ASSERT_EQ(tol.size(), ref.size()) << what;
  int64_t bad = 0, worst = -1;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok;
    double ratio = 0.0;
    if (std::isnan(ref[i]) || std::isnan(g[i])) {
      ok = std::isnan(ref[i]) && std::isnan(g[i]);
      ratio = ok ? 0.0 : INFINITY;
    } else if (std::isinf(ref[i]) || std::isinf(g[i])) {
      ok = ref[i] == g[i];
      ratio = ok ? 0.0 : INFINITY;
    } else {
      const double err = std::fabs(g[i] - ref[i]);
      ok = err <= tol[i];
      ratio = tol[i] > 0 ? err / tol[i] : (err > 0 ? INFINITY : 0.0);
    }
    if (!ok) ++bad;
    if (!ok && (worst < 0 || ratio > worst_ratio)) {
      worst = static_cast<int64_t>(i);
      worst_ratio = ratio;
    }
  }
  if (bad) {
    ADD_FAILURE() << what << ": " << bad << " of " << g.size() << " elements out of tolerance; "
                  << "worst at flat index " << worst << ": got " << g[worst] << ", want "
                  << ref[worst] << ", tolerance " << tol[worst] << " (" << got.str() << ")";
  }
}

void expect_close(const Tensor& got, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  expect_close(got, ref, std::vector<double>(ref.size(), tol), what);
}

void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  expect_close(got, values(want), 0.0, what);
}

ThreadCount::ThreadCount(int n) : saved_(num_threads()) {
  set_num_threads(n);
}
ThreadCount::~ThreadCount() {
  set_num_threads(saved_);
}

std::pair<Tensor, Tensor> run_1_and_2_threads(const std::function<Tensor()>& f) {
  Tensor one, two;
  {
    ThreadCount tc(1);
    one = f();
  }
  {
    ThreadCount tc(2);
    two = f();
  }
  return {one, two};
}

double ref_activation(double x, ops::Activation act) {
  switch (act) {
    case ops::Activation::None: return x;
    case ops::Activation::Silu: return x / (1.0 + std::exp(-x));
    case ops::Activation::QuickGelu: return x / (1.0 + std::exp(-1.702 * x));
    // 1 + erf(z) = erfc(-z), and 1 + tanh(u) = 2 / (1 + e^(-2u)), without the cancellation
    // of the textbook forms for negative x.
    case ops::Activation::Gelu: return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
    case ops::Activation::GeluTanh: {
      const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
      return x / (1.0 + std::exp(-2.0 * u));
    }
  }
  return x;
}

double act_tolerance(double z, double y, ops::Activation act) {
  const double az = std::fabs(z), ay = std::fabs(y);
  switch (act) {
    case ops::Activation::None: return 0.0;
    case ops::Activation::Silu: return (10.0 + az) * kU32 * ay;
    case ops::Activation::QuickGelu: return (10.0 + 1.702 * az) * kU32 * ay;
    case ops::Activation::GeluTanh: return (10.0 + 8.0 * az * (1.0 + 0.045 * z * z)) * kU32 * ay;
    case ops::Activation::Gelu: return 0.5 * az * (1.5e-7 + 10.0 * kU32) + 4.0 * kU32 * ay;
  }
  return 0.0;
}

}  // namespace sd3::test
