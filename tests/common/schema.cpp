#include "common/schema.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "models/random_weights.h"

namespace sd3::test {

std::string schemas_dir() {
  const char* env = std::getenv("SD3_SCHEMAS");
  const std::string dir =
      env && *env ? std::string(env) : std::string(SD3_DEFAULT_SHARED_DIR) + "/schemas";
  SD3_CHECK(std::filesystem::is_directory(dir), "schema directory '", dir,
            "' does not exist (set SD3_SCHEMAS to the schema directory)");
  return dir;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  SD3_CHECK(in.good(), "cannot read '", path, "'");
  return nlohmann::json::parse(in);
}

nlohmann::json read_schema(const std::string& arch) {
  return read_json(schemas_dir() + "/" + arch + ".json");
}

std::vector<SchemaTensor> schema_tensors(const nlohmann::json& schema) {
  const std::string canonical = schema.value("canonical_prefix", "");
  std::vector<SchemaTensor> out;
  for (const auto& t : schema.at("tensors")) {
    const std::string key = t.at("key").get<std::string>();
    SD3_CHECK(key.compare(0, canonical.size(), canonical) == 0, "schema key '", key,
              "' lacks the canonical prefix '", canonical, "'");
    out.push_back(
        {key.substr(canonical.size()), t.at("shape").get<Shape>(), t.value("optional", false)});
  }
  return out;
}

std::vector<WeightSpec> schema_specs(const nlohmann::json& schema) {
  std::vector<WeightSpec> out;
  for (const SchemaTensor& t : schema_tensors(schema)) out.push_back({t.key, t.shape});
  return out;
}

std::vector<SafetensorsWriter::Entry> schema_entries(const nlohmann::json& schema,
                                                     const std::string& prefix, bool with_optional,
                                                     StDType dtype) {
  std::vector<SafetensorsWriter::Entry> out;
  for (const SchemaTensor& t : schema_tensors(schema))
    if (with_optional || !t.optional) out.push_back({prefix + t.key, dtype, t.shape});
  return out;
}

std::vector<SafetensorsWriter::Entry> entries_of(const std::vector<WeightSpec>& specs,
                                                 const std::string& prefix, StDType dtype) {
  std::vector<SafetensorsWriter::Entry> out;
  for (const WeightSpec& s : specs) out.push_back({prefix + s.key, dtype, s.shape});
  return out;
}

std::string write_sparse(const std::string& path,
                         const std::vector<SafetensorsWriter::Entry>& entries,
                         const std::map<std::string, std::string>& metadata) {
  models::write_sparse_safetensors(path, entries, metadata);
  return path;
}

std::string write_sparse(const std::string& path, const std::string& prefix,
                         const std::vector<WeightSpec>& specs) {
  return write_sparse(path, entries_of(specs, prefix));
}

}  // namespace sd3::test
