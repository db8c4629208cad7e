#include "common/golden.h"

#include <cfloat>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>

#include "common/test_data.h"
#include "engine/error.h"
#include "engine/safetensors.h"

namespace sd3::test {

const nlohmann::json& manifest() {
  static std::once_flag once;
  static nlohmann::json m;
  std::call_once(once, [] {
    std::string path = fixture_path("manifest.json");
    std::ifstream in(path);
    SD3_CHECK(in.good(), "cannot read ", path);
    try {
      m = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("malformed ", path, ": ", e.what());
    }
  });
  return m;
}

std::vector<GoldenCase> cases_of_kind(const std::string& kind) {
  std::vector<GoldenCase> out;
  for (const auto& c : manifest().at("cases")) {
    if (c.value("kind", "") != kind) continue;
    GoldenCase g;
    g.name = c.at("name").get<std::string>();
    g.kind = kind;
    if (c.contains("checkpoint") && c["checkpoint"].is_string())
      g.checkpoint = c["checkpoint"].get<std::string>();
    if (c.contains("golden_file") && c["golden_file"].is_string())
      g.golden_file = fixture_path(c["golden_file"].get<std::string>());
    if (c.contains("inputs") && c["inputs"].is_array())
      g.inputs = c["inputs"].get<std::vector<std::string>>();
    if (c.contains("outputs") && c["outputs"].is_array())
      g.outputs = c["outputs"].get<std::vector<std::string>>();
    if (c.contains("params")) g.params = c["params"];
    g.raw = c;
    out.push_back(std::move(g));
  }
  SD3_CHECK(!out.empty(), "manifest ", fixtures_dir(), "/manifest.json has no case of kind '", kind,
            "'");
  return out;
}

const nlohmann::json& checkpoint_entry(const std::string& checkpoint) {
  const auto& cps = manifest().at("checkpoints");
  SD3_CHECK(cps.contains(checkpoint), "manifest has no checkpoint '", checkpoint, "'");
  return cps.at(checkpoint);
}

std::string checkpoint_file(const std::string& checkpoint) {
  return fixture_path(checkpoint_entry(checkpoint).at("file").get<std::string>());
}

WeightStore checkpoint_store(const std::string& checkpoint) {
  return WeightStore::open({checkpoint_file(checkpoint)})
      .with_prefix(checkpoint_entry(checkpoint).value("key_prefix", std::string()));
}

namespace {
std::shared_ptr<SafetensorsFile> golden_file(const GoldenCase& c) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<SafetensorsFile>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  SD3_CHECK(!c.golden_file.empty(), "case '", c.name, "' has no golden_file");
  auto& f = cache[c.golden_file];
  if (!f) f = SafetensorsFile::open(c.golden_file);
  return f;
}
}  // namespace

bool has_golden(const GoldenCase& c, const std::string& tensor_name) {
  return golden_file(c)->find(tensor_name) != nullptr;
}

Tensor golden_input(const GoldenCase& c, const std::string& name) {
  return golden_file(c)->load("input." + name);
}

Tensor golden_output(const GoldenCase& c, const std::string& name) {
  return golden_file(c)->load("output." + name);
}

// Note [Golden tolerances]
// The manifest measures, per output, how far the reference's own float32 run lands from its
// float64 run (errors_f32_vs_f64.max_abs). Our float32 code differs from PyTorch's float32
// only in summation order and library kernels, so its error is of the same order; we allow
// 8x that measured error. Outputs with no measured error (exact copies such as embeddings)
// still pass through a few roundings in our code, so a floor of 32 float32 ulps of the
// output's magnitude (32 * FLT_EPSILON * ref_max_abs) is added. Where the reference evaluates
// the timestep embedding in float32, the golden (float64) differs from what any float32
// implementation can reproduce by t_freq_float64_sensitivity.max_abs for that output: that
// figure is added in full, twice (ours may sit on the other side of the golden).
double tolerance(const GoldenCase& c, const std::string& output) {
  double measured = 0.0, ref_max = 0.0, sensitivity = 0.0;
  const auto& errs = c.raw.value("errors_f32_vs_f64", nlohmann::json::object());
  if (errs.contains(output)) {
    measured = errs[output].value("max_abs", 0.0);
    ref_max = errs[output].value("ref_max_abs", 0.0);
  }
  const auto& sens = c.raw.value("t_freq_float64_sensitivity", nlohmann::json::object());
  if (sens.is_object() && sens.contains(output)) sensitivity = sens[output].value("max_abs", 0.0);
  SD3_CHECK(errs.contains(output), "manifest case '", c.name, "' lists no errors_f32_vs_f64 for '",
            output, "': cannot derive a tolerance");
  return 8.0 * measured + 32.0 * FLT_EPSILON * ref_max + 2.0 * sensitivity;
}

::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double max_abs,
                                     const std::string& what) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_str(got.shape())
                                         << ", expected " << shape_str(want.shape());
  std::vector<float> a = got.to_floats();
  std::vector<float> b = want.to_floats();
  double worst = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i]))
      return ::testing::AssertionFailure() << what << ": NaN mismatch at flat index " << i
                                           << " (got " << a[i] << ", expected " << b[i] << ")";
    double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (d > worst) {
      worst = d;
      worst_i = i;
    }
  }
  if (worst > max_abs)
    return ::testing::AssertionFailure()
           << what << ": max |diff| " << worst << " at flat index " << worst_i << " (got "
           << a[worst_i] << ", expected " << b[worst_i] << ") exceeds tolerance " << max_abs;
  return ::testing::AssertionSuccess() << what << ": max |diff| " << worst << " <= " << max_abs;
}

::testing::AssertionResult matches_golden(const Tensor& got, const GoldenCase& c,
                                          const std::string& output) {
  return all_close(got, golden_output(c, output), tolerance(c, output), c.name + "/" + output);
}

}  // namespace sd3::test
