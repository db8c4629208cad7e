#include "engine/weights.h"

#include <algorithm>
#include <set>

namespace sd3 {

WeightStore::WeightStore(std::vector<std::shared_ptr<SafetensorsFile>> files, std::string prefix)
    : files_(std::move(files)), prefix_(std::move(prefix)) {}

WeightStore WeightStore::open(const std::vector<std::string>& paths) {
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  for (const auto& p : paths) files.push_back(SafetensorsFile::open(p));
  return WeightStore(std::move(files));
}

WeightStore WeightStore::with_prefix(const std::string& prefix) const {
  return WeightStore(files_, prefix_ + prefix);
}

const TensorInfo* WeightStore::find(const std::string& full_key,
                                    const SafetensorsFile** file) const {
  for (const auto& f : files_) {
    if (const TensorInfo* info = f->find(full_key)) {
      if (file) *file = f.get();
      return info;
    }
  }
  return nullptr;
}

bool WeightStore::has(const std::string& key) const { return find(prefix_ + key) != nullptr; }

const TensorInfo* WeightStore::info(const std::string& key) const { return find(prefix_ + key); }

std::optional<Shape> WeightStore::shape(const std::string& key) const {
  const TensorInfo* i = info(key);
  if (!i) return std::nullopt;
  return i->shape;
}

std::string WeightStore::describe() const {
  std::string s;
  for (size_t i = 0; i < files_.size(); ++i) {
    if (i) s += ", ";
    s += "'" + files_[i]->path() + "'";
  }
  if (files_.empty()) s = "(no files)";
  if (!prefix_.empty()) s += " (prefix '" + prefix_ + "')";
  return s;
}

Tensor WeightStore::get(const std::string& key, std::optional<DType> dtype) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* i = find(prefix_ + key, &file);
  SD3_CHECK(i != nullptr, "missing tensor '", prefix_ + key, "' in ", describe());
  return file->load(*i, dtype);
}

Tensor WeightStore::get(const std::string& key, const Shape& expected,
                        std::optional<DType> dtype) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* i = find(prefix_ + key, &file);
  SD3_CHECK(i != nullptr, "missing tensor '", prefix_ + key, "' (expected shape ",
            shape_str(expected), ") in ", describe());
  SD3_CHECK(i->shape == expected, "tensor '", prefix_ + key, "' in '", file->path(),
            "' has shape ", shape_str(i->shape), ", expected ", shape_str(expected));
  return file->load(*i, dtype);
}

std::vector<std::string> WeightStore::keys() const {
  std::set<std::string> out;
  for (const auto& f : files_) {
    for (const auto& t : f->tensors()) {
      if (t.key.compare(0, prefix_.size(), prefix_) == 0) out.insert(t.key.substr(prefix_.size()));
    }
  }
  return {out.begin(), out.end()};
}

std::map<std::string, Tensor> WeightStore::load_all(const std::vector<WeightSpec>& specs,
                                                    std::optional<DType> dtype) const {
  std::map<std::string, Tensor> out;
  for (const auto& s : specs) out[s.key] = get(s.key, s.shape, dtype);
  return out;
}

std::vector<std::string> WeightStore::unexpected(const std::vector<WeightSpec>& specs) const {
  std::set<std::string> wanted;
  for (const auto& s : specs) wanted.insert(s.key);
  std::vector<std::string> extra;
  for (const auto& k : keys())
    if (!wanted.count(k)) extra.push_back(k);
  return extra;
}

}  // namespace sd3
