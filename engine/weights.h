// WeightStore: named access to checkpoint tensors across one or more safetensors files,
// through a key prefix, so the same model code loads `model.diffusion_model.*` from a
// combined file and bare keys from a separate file.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/safetensors.h"

namespace sd3 {

// One tensor a model expects: key relative to the model's prefix, and its shape.
struct WeightSpec {
  std::string key;
  Shape shape;
};

class WeightStore {
 public:
  WeightStore() = default;
  WeightStore(std::vector<std::shared_ptr<SafetensorsFile>> files, std::string prefix = "");
  static WeightStore open(const std::vector<std::string>& paths);

  // A view whose keys are `prefix() + prefix`.
  WeightStore with_prefix(const std::string& prefix) const;
  const std::string& prefix() const { return prefix_; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  bool empty() const { return files_.empty(); }

  bool has(const std::string& key) const;
  // Header entry of a key (relative to the prefix), or nullptr.
  const TensorInfo* info(const std::string& key) const;
  std::optional<Shape> shape(const std::string& key) const;
  // Loads a tensor in its stored dtype (see natural_dtype) or converted to `dtype`.
  // A missing key is an error naming the full key, the prefix and the files searched.
  Tensor get(const std::string& key, std::optional<DType> dtype = std::nullopt) const;
  // As get(), and the stored shape must equal `expected` (error names both shapes).
  Tensor get(const std::string& key, const Shape& expected,
             std::optional<DType> dtype = std::nullopt) const;
  // Keys under the prefix, with the prefix removed, sorted.
  std::vector<std::string> keys() const;

  // Loads every spec with shape checks; the error for the first missing or misshapen tensor
  // names the key, the expected and the found shape.
  std::map<std::string, Tensor> load_all(const std::vector<WeightSpec>& specs,
                                         std::optional<DType> dtype = std::nullopt) const;
  // Keys under the prefix that no spec names (extras such as position_ids or logit_scale).
  std::vector<std::string> unexpected(const std::vector<WeightSpec>& specs) const;
  // "'a.safetensors', 'b.safetensors' (prefix 'model.diffusion_model.')" for messages.
  std::string describe() const;

 private:
  const TensorInfo* find(const std::string& full_key,
                         const SafetensorsFile** file = nullptr) const;

  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::string prefix_;
};

}  // namespace sd3
