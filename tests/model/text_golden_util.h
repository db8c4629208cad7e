// Shared by the text-encoder golden tests: checks every output a manifest case lists against
// what the model produced, by name.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include "common/golden.h"
#include "engine/tensor.h"

namespace sd3::test {

// Every name in c.outputs must be in `produced`. Integer goldens (indices, buckets) must match
// exactly; float goldens within tolerance(c, name) (Note [Golden tolerances] in golden.cpp).
// Prints one line per output with the worst error and its ratio to the tolerance.
inline void expect_all_outputs(const GoldenCase& c, const std::map<std::string, Tensor>& produced) {
  for (const std::string& name : c.outputs) {
    auto it = produced.find(name);
    if (it == produced.end() || !it->second.defined()) {
      ADD_FAILURE() << c.name << ": listed output '" << name << "' is not produced by the model";
      continue;
    }
    const Tensor want = golden_output(c, name);
    const Tensor& got = it->second;
    if (!is_float(want.dtype())) {
      EXPECT_EQ(got.shape(), want.shape()) << c.name << "/" << name;
      EXPECT_EQ(got.to_ints(), want.to_ints()) << c.name << "/" << name;
      std::printf("  %-12s %-28s exact integer match %s\n", c.name.c_str(), name.c_str(),
                  got.to_ints() == want.to_ints() ? "yes" : "NO");
      continue;
    }
    const double tol = tolerance(c, name);
    if (got.shape() == want.shape()) {
      const std::vector<float> a = got.to_floats(), b = want.to_floats();
      double worst = 0.0;
      for (size_t i = 0; i < a.size(); ++i)
        worst = std::fmax(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
      std::printf("  %-12s %-28s max|diff| %.3g  tol %.3g  ratio %.3f\n", c.name.c_str(),
                  name.c_str(), worst, tol, tol > 0 ? worst / tol : 0.0);
    }
    EXPECT_TRUE(matches_golden(got, c, name));
  }
}

}  // namespace sd3::test
