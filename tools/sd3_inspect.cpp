// sd3-inspect FILE...: lists the tensors of safetensors checkpoints and the SD3 components
// recognised in them (architecture, key prefix, configuration derived from the weights).
//
// Exit status: 0 when every file was read and every recognised component is complete; 1 when a
// file is not valid safetensors or a component has missing / misshapen tensors (one line
// `sd3-inspect: error: <message>` on stderr for each); 2 for bad usage.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/checkpoint.h"

namespace {

constexpr const char* kUsage = R"(usage: sd3-inspect [--json] [--tensors | --no-tensors] FILE...

Lists every tensor (key, dtype, shape) of each safetensors FILE, the parameter count of each
component, and the SD3 / SD3.5 components recognised in it by their key names and shapes:
  arch (as ../shared/schemas spells it: sd3_medium_mmdit, sd35_large_mmdit, sd35_medium_mmditx,
  sd3_vae, clip_l, clip_g, t5xxl), key prefix, and the configuration read from the weights.

options:
  --json        one JSON object per file, one object per line (JSON Lines):
                {"file", "tensor_count", "param_count", "metadata", "components": [{"arch",
                "kind", "prefix", "config", "param_count", "tensor_count", "dtypes", "extras",
                "problems"}], "unrecognised": [...], "unassigned": [...]}
                (add --tensors to include every tensor as {"key", "dtype", "shape"})
  --tensors     list tensors (default for text output)
  --no-tensors  do not list tensors (summary only)
  -h, --help    this help

exit status: 0 success; 1 a file is not valid safetensors or a recognised component has
missing or misshapen tensors (one line on stderr each); 2 bad usage.
)";

using sd3::models::CheckpointContents;
using sd3::models::Component;

void error_line(const std::string& message) {
  std::fprintf(stderr, "sd3-inspect: error: %s\n", message.c_str());
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string prefix_text(const std::string& prefix) {
  return prefix.empty() ? "bare keys (prefix '')" : "prefix '" + prefix + "'";
}

// "depth 2, hidden_size 128, qk_norm rms, x_block_self_attn_layers [0]"
std::string config_text(const nlohmann::json& cfg) {
  std::string s;
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    if (!s.empty()) s += ", ";
    s += it.key() + " " +
         (it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
  }
  return s;
}

int64_t total_params(const sd3::SafetensorsFile& f) {
  int64_t n = 0;
  for (const auto& t : f.tensors()) n += t.numel();
  return n;
}

void print_text(const std::string& path, const CheckpointContents& c, bool tensors) {
  const auto& file = *c.store.files().front();
  std::printf("%s: %zu tensors, %s parameters, %s bytes\n", path.c_str(), file.tensors().size(),
              with_commas(total_params(file)).c_str(),
              with_commas(int64_t(file.file_size())).c_str());
  if (!file.metadata().empty()) {
    std::printf("  metadata:\n");
    for (const auto& [k, v] : file.metadata()) std::printf("    %s: %s\n", k.c_str(), v.c_str());
  }
  if (tensors) {
    std::printf("  tensors:\n");
    int width = 0;
    for (const auto& t : file.tensors()) width = std::max(width, static_cast<int>(t.key.size()));
    for (const auto& t : file.tensors())
      std::printf("    %-*s  %-7s %s\n", width, t.key.c_str(), sd3::st_dtype_name(t.dtype),
                  sd3::shape_str(t.shape).c_str());
  }
  std::printf("  components: %zu\n", c.components.size());
  for (const Component& comp : c.components) {
    std::string dtypes;
    for (const auto& d : comp.dtypes) dtypes += (dtypes.empty() ? "" : "/") + d;
    std::printf("    %s (%s) at %s: %s tensors, %s parameters, %s\n", comp.arch.c_str(),
                sd3::models::component_kind_name(comp.kind), prefix_text(comp.prefix).c_str(),
                with_commas(comp.tensor_count).c_str(), with_commas(comp.param_count).c_str(),
                dtypes.c_str());
    std::printf("      config: %s\n",
                config_text(sd3::models::config_to_json(comp.config)).c_str());
    if (!comp.extras.empty()) {
      std::printf("      unexpected tensors (ignored by the loader): %zu\n", comp.extras.size());
      for (const auto& k : comp.extras) std::printf("        %s\n", k.c_str());
    }
    for (const auto& p : comp.problems) std::printf("      problem: %s\n", p.c_str());
  }
  for (const auto& u : c.unrecognised)
    std::printf("    unrecognised %s-like weights at %s: %s\n", u.kind_guess.c_str(),
                prefix_text(u.prefix).c_str(), u.reason.c_str());
  if (!c.unassigned.empty()) {
    std::printf("  tensors of no known component: %zu\n", c.unassigned.size());
    for (const auto& k : c.unassigned) std::printf("    %s\n", k.c_str());
  }
}

nlohmann::json to_json(const std::string& path, const CheckpointContents& c, bool tensors) {
  const auto& file = *c.store.files().front();
  nlohmann::json j;
  j["file"] = path;
  j["tensor_count"] = file.tensors().size();
  j["param_count"] = total_params(file);
  j["metadata"] = file.metadata();
  nlohmann::json comps = nlohmann::json::array();
  for (const Component& comp : c.components) {
    comps.push_back({{"arch", comp.arch},
                     {"kind", sd3::models::component_kind_name(comp.kind)},
                     {"prefix", comp.prefix},
                     {"config", sd3::models::config_to_json(comp.config)},
                     {"param_count", comp.param_count},
                     {"tensor_count", comp.tensor_count},
                     {"dtypes", comp.dtypes},
                     {"extras", comp.extras},
                     {"problems", comp.problems}});
  }
  j["components"] = comps;
  nlohmann::json unrec = nlohmann::json::array();
  for (const auto& u : c.unrecognised)
    unrec.push_back({{"kind", u.kind_guess}, {"prefix", u.prefix}, {"reason", u.reason}});
  j["unrecognised"] = unrec;
  j["unassigned"] = c.unassigned;
  if (tensors) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& t : file.tensors())
      list.push_back({{"key", t.key}, {"dtype", sd3::st_dtype_name(t.dtype)}, {"shape", t.shape}});
    j["tensors"] = list;
  }
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  int tensors = -1;  // -1: default for the output format
  std::vector<std::string> files;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (!options_done && a == "--") {
      options_done = true;
    } else if (!options_done && (a == "-h" || a == "--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!options_done && a == "--json") {
      json = true;
    } else if (!options_done && a == "--tensors") {
      tensors = 1;
    } else if (!options_done && a == "--no-tensors") {
      tensors = 0;
    } else if (!options_done && a.size() > 1 && a[0] == '-') {
      error_line("unknown option '" + a + "' (see --help)");
      return 2;
    } else {
      files.push_back(a);
    }
  }
  if (files.empty()) {
    error_line("no FILE given (see --help)");
    return 2;
  }
  const bool list_tensors = tensors < 0 ? !json : tensors == 1;

  int status = 0;
  for (const std::string& path : files) {
    CheckpointContents contents;
    try {
      contents = sd3::models::inspect_checkpoint(path);
    } catch (const std::exception& e) {
      std::fflush(stdout);
      error_line(e.what());
      status = 1;
      continue;
    }
    if (json) {
      std::cout << to_json(path, contents, list_tensors).dump() << "\n";
    } else {
      print_text(path, contents, list_tensors);
    }
    std::cout.flush();
    for (const Component& comp : contents.components) {
      if (comp.problems.empty()) continue;
      error_line(comp.describe() + ": " + comp.problems.front() +
                 (comp.problems.size() > 1
                      ? " (and " + std::to_string(comp.problems.size() - 1) + " more problems)"
                      : ""));
      status = 1;
    }
  }
  return status;
}
