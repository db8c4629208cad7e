// The real key/shape schemas of ../shared/schemas (or $SD3_SCHEMAS), and header-only sparse
// safetensors files built from them or from a model's weight specs: a real header and a data
// section that is only ftruncate'd, so even a 16 GB SD3.5-large costs no disk and no time.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "engine/weights.h"

namespace sd3::test {

// $SD3_SCHEMAS, default SD3_DEFAULT_SHARED_DIR "/schemas"; throws sd3::Error naming the
// directory and the variable when it does not exist.
std::string schemas_dir();
// A JSON file, parsed; throws sd3::Error naming the path when it cannot be read.
nlohmann::json read_json(const std::string& path);
// schemas_dir() + "/" + arch + ".json", parsed.
nlohmann::json read_schema(const std::string& arch);

// One tensor of a schema, its key without the schema's canonical_prefix.
struct SchemaTensor {
  std::string key;
  Shape shape;
  bool optional = false;
};
// The schema's tensors in its order; throws if a key lacks the canonical prefix.
std::vector<SchemaTensor> schema_tensors(const nlohmann::json& schema);
// The schema's tensors as weight specs (all of them, optional ones included).
std::vector<WeightSpec> schema_specs(const nlohmann::json& schema);
// The schema's tensors as header entries under `prefix` (optional ones only when asked).
std::vector<SafetensorsWriter::Entry> schema_entries(const nlohmann::json& schema,
                                                     const std::string& prefix, bool with_optional,
                                                     StDType dtype = StDType::F16);

// Header entries for `specs` stored under `prefix`.
std::vector<SafetensorsWriter::Entry> entries_of(const std::vector<WeightSpec>& specs,
                                                 const std::string& prefix = "",
                                                 StDType dtype = StDType::F16);
// models::write_sparse_safetensors at `path`; returns the path.
std::string write_sparse(const std::string& path,
                         const std::vector<SafetensorsWriter::Entry>& entries,
                         const std::map<std::string, std::string>& metadata = {});
// The same for `specs` as F16 under `prefix`.
std::string write_sparse(const std::string& path, const std::string& prefix,
                         const std::vector<WeightSpec>& specs);

}  // namespace sd3::test
