// Golden fixtures from the reference implementation, driven by $SD3_FIXTURES/manifest.json.
//
// Tests iterate over manifest cases by `kind`, never by name, so any directory with the same
// manifest format (other sizes, seeds, depths) is checked by `SD3_FIXTURES=DIR ctest -L model`.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "engine/weights.h"

namespace sd3::test {

struct GoldenCase {
  std::string name;
  std::string kind;
  std::string checkpoint;   // manifest checkpoint name, or empty
  std::string golden_file;  // path of <case>_golden.safetensors
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  nlohmann::json params;
  nlohmann::json raw;  // the whole manifest entry
};

const nlohmann::json& manifest();
// All cases of a kind; fails (throws) if there is none, so a test never passes vacuously.
std::vector<GoldenCase> cases_of_kind(const std::string& kind);
// Path of a manifest checkpoint's file, and its config object.
std::string checkpoint_file(const std::string& checkpoint);
const nlohmann::json& checkpoint_entry(const std::string& checkpoint);
// The manifest checkpoint's file viewed through its key_prefix: what the model loaders take.
WeightStore checkpoint_store(const std::string& checkpoint);

// input.<name> / output.<name> of a case (F32 or I64 as stored).
Tensor golden_input(const GoldenCase& c, const std::string& name);
Tensor golden_output(const GoldenCase& c, const std::string& name);
bool has_golden(const GoldenCase& c, const std::string& tensor_name);

// Allowed max |ours - golden| for one output of a case; see the formula in golden.cpp.
double tolerance(const GoldenCase& c, const std::string& output);

// Compares a tensor with output.<name> elementwise against tolerance(c, name): same shape, no
// NaN, max abs error within bound. Reports the worst element and the bound on failure.
::testing::AssertionResult matches_golden(const Tensor& got, const GoldenCase& c,
                                          const std::string& output);
// The same, with an explicit bound.
::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double max_abs,
                                     const std::string& what);

}  // namespace sd3::test
