// sd3: prompt in, PNG out. A thin command-line client of libsd3 (include/sd3.h).
#include <sd3.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage = R"(usage: sd3 -m MODEL.safetensors [-m MORE...] -p PROMPT [options]

Generates an image with Stable Diffusion 3 / 3.5.

model files:
  -m, --model PATH         checkpoint file; repeat for several (single-file releases, or
                           component files); components are recognised from their tensors
      --clip-l PATH        CLIP-L file (overrides any CLIP-L in the -m files)
      --clip-g PATH        CLIP-G file
      --t5xxl PATH         T5-XXL file (fp16 or fp8 e4m3)
      --vae PATH           VAE file
      --clip-vocab PATH    CLIP vocabulary: bpe_simple_vocab_16e6.txt.gz, or vocab.json
                           with merges.txt beside it (default: tokenizer/ or tokenizer_2/
                           beside the model, as a Hugging Face download lays them out)
      --t5-model PATH      T5 spiece.model (default: tokenizer_3/ beside the model)
      --no-t5              run without T5 (its part of the context is zeros)
      --preset NAME        sampler defaults: sd3_medium, sd35_medium, sd35_large,
                           sd35_large_turbo (default: from the detected model)

generation:
  -p, --prompt TEXT        the prompt
  -n, --negative-prompt TEXT
                           the negative prompt (default: empty)
  -W, --width N            image width, a multiple of 16 (default 1024)
  -H, --height N           image height, a multiple of 16 (default 1024)
      --steps N            sampling steps (default: the model's)
      --cfg-scale F        classifier-free guidance scale (default: the model's)
      --shift F            flow-matching schedule shift (default: the model's)
      --sampler NAME       euler, dpmpp_2m or heun (default: the model's)
      --seed N             random seed; -1 (default) picks one and prints it
      --batch-count N      images to make, with seeds seed, seed+1, ... (default 1)
      --slg-scale F        skip-layer guidance scale (0 = off; SD3.5-medium: 2.5)
      --skip-layers LIST   joint blocks skipped by skip-layer guidance, e.g. 7,8,9
      --slg-start F        fraction of the steps where skip-layer guidance starts (0.01)
      --slg-end F          fraction of the steps where it ends (0.2)
      --init-img PATH      img2img: start from this PNG (its size must equal -W x -H)
      --strength F         img2img: how much of the schedule to run, in (0, 1] (0.75)
  -o, --output PATH        PNG to write (default output.png); %d is replaced by the
                           image's index in a batch

runtime:
      --backend NAME       cpu (default) or cuda
      --threads N          CPU threads (default: all cores)
      --free-encoders      free the text encoders once the prompt is encoded
      --unfused LIST       turn fused kernels off: adaln,attn,groupnorm,euler or all
      --profile-ops        time every op of the generation and print where the time went
      --json               print the run summary as JSON on stdout
  -v, --verbose            print the model's components and every warning
  -h, --help               this text
      --version            the program's version
)";

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "sd3: error: %s\n", message.c_str());
  std::exit(1);
}

struct Args {
  std::vector<std::string> models;
  std::string clip_l, clip_g, t5xxl, vae, clip_vocab, t5_model, preset;
  bool no_t5 = false, free_encoders = false, json = false, verbose = false;
  std::string prompt, negative;
  bool have_prompt = false;
  int width = 1024, height = 1024, steps = 0, batch_count = 1, threads = 0;
  float cfg_scale = -1, shift = -1, slg_scale = -1, slg_start = -1, slg_end = -1;
  std::string sampler;
  long long seed = -1;
  std::vector<int> skip_layers;
  bool have_skip_layers = false;
  std::string init_img;
  float strength = 0.75f;
  std::string output = "output.png";
  std::string backend = "cpu";
  std::string unfused;
  bool profile_ops = false;
};

long long parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE)
    die(flag + ": '" + v + "' is not an integer");
  if (x < lo || x > hi)
    die(flag + ": " + v + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) +
        "]");
  return x;
}

float parse_float(const std::string& flag, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  float x = std::strtof(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x))
    die(flag + ": '" + v + "' is not a finite number");
  return x;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(f + " needs a value");
      return argv[++i];
    };
    if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (f == "--version") {
      std::printf("sd3 (C API version %d)\n", sd3_api_version());
      std::exit(0);
    } else if (f == "-m" || f == "--model") {
      a.models.push_back(value());
    } else if (f == "--clip-l") {
      a.clip_l = value();
    } else if (f == "--clip-g") {
      a.clip_g = value();
    } else if (f == "--t5xxl") {
      a.t5xxl = value();
    } else if (f == "--vae") {
      a.vae = value();
    } else if (f == "--clip-vocab") {
      a.clip_vocab = value();
    } else if (f == "--t5-model") {
      a.t5_model = value();
    } else if (f == "--no-t5") {
      a.no_t5 = true;
    } else if (f == "--preset") {
      a.preset = value();
    } else if (f == "-p" || f == "--prompt") {
      a.prompt = value();
      a.have_prompt = true;
    } else if (f == "-n" || f == "--negative-prompt") {
      a.negative = value();
    } else if (f == "-W" || f == "--width") {
      a.width = static_cast<int>(parse_int(f, value(), 16, 16384));
    } else if (f == "-H" || f == "--height") {
      a.height = static_cast<int>(parse_int(f, value(), 16, 16384));
    } else if (f == "--steps") {
      a.steps = static_cast<int>(parse_int(f, value(), 1, 10000));
    } else if (f == "--cfg-scale") {
      a.cfg_scale = parse_float(f, value());
      if (a.cfg_scale < 0) die(f + ": must not be negative");
    } else if (f == "--shift") {
      a.shift = parse_float(f, value());
      if (a.shift <= 0) die(f + ": must be positive");
    } else if (f == "--sampler") {
      a.sampler = value();
      if (a.sampler != "euler" && a.sampler != "dpmpp_2m" && a.sampler != "heun")
        die("--sampler: '" + a.sampler + "' is not one of euler, dpmpp_2m, heun");
    } else if (f == "--seed") {
      a.seed = parse_int(f, value(), -1, std::numeric_limits<long long>::max());
    } else if (f == "--batch-count") {
      a.batch_count = static_cast<int>(parse_int(f, value(), 1, 100000));
    } else if (f == "--slg-scale") {
      a.slg_scale = parse_float(f, value());
      if (a.slg_scale < 0) die(f + ": must not be negative");
    } else if (f == "--skip-layers") {
      std::string v = value();
      std::stringstream ss(v);
      std::string item;
      a.skip_layers.clear();
      while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        a.skip_layers.push_back(static_cast<int>(parse_int(f, item, 0, 1000)));
      }
      a.have_skip_layers = true;
    } else if (f == "--slg-start") {
      a.slg_start = parse_float(f, value());
      if (a.slg_start < 0 || a.slg_start > 1) die(f + ": must be in [0, 1]");
    } else if (f == "--slg-end") {
      a.slg_end = parse_float(f, value());
      if (a.slg_end < 0 || a.slg_end > 1) die(f + ": must be in [0, 1]");
    } else if (f == "--init-img") {
      a.init_img = value();
    } else if (f == "--strength") {
      a.strength = parse_float(f, value());
      if (!(a.strength > 0 && a.strength <= 1)) die(f + ": must be in (0, 1]");
    } else if (f == "-o" || f == "--output") {
      a.output = value();
    } else if (f == "--threads") {
      a.threads = static_cast<int>(parse_int(f, value(), 0, 4096));
    } else if (f == "--backend") {
      a.backend = value();
      if (a.backend != "cpu" && a.backend != "cuda")
        die("--backend: '" + a.backend + "' is not cpu or cuda");
    } else if (f == "--free-encoders") {
      a.free_encoders = true;
    } else if (f == "--unfused") {
      a.unfused = value();
    } else if (f == "--profile-ops") {
      a.profile_ops = true;
    } else if (f == "--json") {
      a.json = true;
    } else if (f == "-v" || f == "--verbose") {
      a.verbose = true;
    } else {
      die("unknown option '" + f + "' (see sd3 --help)");
    }
  }
  if (a.models.empty()) die("no model given (-m FILE; see sd3 --help)");
  if (!a.have_prompt) die("no prompt given (-p TEXT)");
  if (a.width % 16 || a.height % 16)
    die("image size " + std::to_string(a.width) + "x" + std::to_string(a.height) +
        " is not a multiple of 16");
  if (a.output.empty()) die("--output is empty");
  if (a.output.size() < 4 || a.output.compare(a.output.size() - 4, 4, ".png") != 0)
    die("--output '" + a.output + "' must end in .png");
  // Fail before any work when the output cannot be written.
  const size_t slash = a.output.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : a.output.substr(0, slash + 1);
  if (access(dir.c_str(), W_OK) != 0)
    die("--output '" + a.output + "': directory '" + dir + "' " +
        (errno == ENOENT ? "does not exist" : "is not writable"));
  return a;
}

// The output path of image i of a batch: %d replaced by i; without %d and with more than one
// image, _i is inserted before the extension.
std::string output_path(const std::string& pattern, int index, int count) {
  size_t pos = pattern.find("%d");
  if (pos != std::string::npos)
    return pattern.substr(0, pos) + std::to_string(index) + pattern.substr(pos + 2);
  if (count == 1) return pattern;
  return pattern.substr(0, pattern.size() - 4) + "_" + std::to_string(index) + ".png";
}

struct ProgressState {
  bool tty = false;
  std::string stage;
  std::chrono::steady_clock::time_point step_start;
};

int on_progress(const sd3_progress* p, void* user) {
  auto* st = static_cast<ProgressState*>(user);
  const std::string stage = p->stage;
  if (stage != st->stage) {
    if (!st->stage.empty()) std::fputc('\n', stderr);
    st->stage = stage;
    if (stage != "sample") {
      std::fprintf(stderr, "%s...", p->stage);
      std::fflush(stderr);
      return 0;
    }
  }
  if (stage != "sample" || p->total <= 0) return 0;
  const int width = 30;
  const int filled = width * p->step / p->total;
  const double its = p->step > 0 && p->stage_seconds > 0 ? p->step / p->stage_seconds : 0.0;
  std::fprintf(stderr, "%ssample |%.*s%*s| %d/%d %.2f it/s%s", st->tty ? "\r" : "", filled,
               "==============================", width - filled, "", p->step, p->total, its,
               st->tty ? "" : "\n");
  std::fflush(stderr);
  return 0;
}

std::string format_params(const nlohmann::json& p, const std::string& model_name) {
  std::ostringstream os;
  os << p.value("prompt", "") << "\n";
  std::string neg = p.value("negative_prompt", "");
  if (!neg.empty()) os << "Negative prompt: " << neg << "\n";
  os << "Steps: " << p.value("steps", 0) << ", Sampler: " << p.value("sampler", "")
     << ", CFG scale: " << p.value("cfg_scale", 0.0) << ", Seed: " << p.value("seed", 0ull)
     << ", Size: " << p.value("width", 0) << "x" << p.value("height", 0)
     << ", Model: " << model_name << ", Shift: " << p.value("shift", 0.0);
  if (p.contains("slg") && p["slg"].value("scale", 0.0) > 0) {
    os << ", SLG scale: " << p["slg"].value("scale", 0.0) << ", Skip layers: ";
    std::string layers;
    for (const auto& l : p["slg"]["layers"]) layers += (layers.empty() ? "" : ",") + l.dump();
    os << layers;
  }
  if (p.value("img2img", false)) os << ", Denoising strength: " << p.value("strength", 1.0);
  return os.str();
}

std::string basename_no_ext(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);

  sd3_model_options mo;
  sd3_model_options_init(&mo);
  std::vector<const char*> model_ptrs;
  for (const auto& m : a.models) model_ptrs.push_back(m.c_str());
  mo.model_paths = model_ptrs.data();
  mo.n_model_paths = model_ptrs.size();
  auto opt = [](const std::string& s) { return s.empty() ? nullptr : s.c_str(); };
  mo.clip_l = opt(a.clip_l);
  mo.clip_g = opt(a.clip_g);
  mo.t5xxl = opt(a.t5xxl);
  mo.vae = opt(a.vae);
  mo.clip_vocab = opt(a.clip_vocab);
  mo.t5_model = opt(a.t5_model);
  mo.backend = a.backend.c_str();
  mo.threads = a.threads;
  mo.free_encoders = a.free_encoders;
  mo.no_t5 = a.no_t5;
  mo.preset = opt(a.preset);
  mo.unfused = opt(a.unfused);
  mo.profile_ops = a.profile_ops;

  std::vector<uint8_t> init_pixels;
  if (!a.init_img.empty()) {
    uint8_t* px = nullptr;
    int w = 0, h = 0;
    if (sd3_read_png(a.init_img.c_str(), &px, &w, &h) != SD3_OK) die(sd3_last_error());
    init_pixels.assign(px, px + static_cast<size_t>(w) * h * 3);
    std::free(px);
    if (w != a.width || h != a.height)
      die("--init-img '" + a.init_img + "' is " + std::to_string(w) + "x" + std::to_string(h) +
          " but the output is " + std::to_string(a.width) + "x" + std::to_string(a.height) +
          " (give -W " + std::to_string(w) + " -H " + std::to_string(h) + ")");
  }

  sd3_model* model = nullptr;
  if (sd3_model_open(&mo, &model) != SD3_OK) die(sd3_last_error());
  nlohmann::json info = nlohmann::json::parse(sd3_model_info_json(model));
  for (const auto& w : info["warnings"]) std::fprintf(stderr, "sd3: warning: %s\n", w.get<std::string>().c_str());
  if (a.verbose) {
    for (const auto& c : info["components"])
      std::fprintf(stderr, "sd3: %s: %s at prefix '%s' in %s\n",
                   c["component"].get<std::string>().c_str(), c["arch"].get<std::string>().c_str(),
                   c["prefix"].get<std::string>().c_str(), c["file"].get<std::string>().c_str());
  }

  uint64_t seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed)
                              : (static_cast<uint64_t>(std::random_device{}()) % 4294967296ull);
  if (a.seed < 0) std::fprintf(stderr, "sd3: seed %llu\n", static_cast<unsigned long long>(seed));

  std::vector<uint8_t> rgb(static_cast<size_t>(a.width) * a.height * 3);
  nlohmann::json runs = nlohmann::json::array();
  ProgressState ps;
  ps.tty = isatty(STDERR_FILENO);
  const std::string model_name = basename_no_ext(a.models.front());
  int status = 0;
  for (int i = 0; i < a.batch_count; ++i) {
    sd3_generate_options go;
    sd3_generate_options_init(&go);
    go.prompt = a.prompt.c_str();
    go.negative_prompt = a.negative.c_str();
    go.width = a.width;
    go.height = a.height;
    go.steps = a.steps;
    go.cfg_scale = a.cfg_scale;
    go.shift = a.shift;
    go.sampler = opt(a.sampler);
    go.seed = seed + static_cast<uint64_t>(i);
    go.slg_scale = a.slg_scale;
    go.slg_start = a.slg_start;
    go.slg_end = a.slg_end;
    if (a.have_skip_layers) {
      go.skip_layers = a.skip_layers.data();
      go.n_skip_layers = a.skip_layers.size();
    }
    if (!init_pixels.empty()) {
      go.init_image = init_pixels.data();
      go.strength = a.strength;
    }
    ps.stage.clear();
    if (sd3_generate(model, &go, rgb.data(), rgb.size(), on_progress, &ps) != SD3_OK) {
      std::fputc('\n', stderr);
      std::string msg = sd3_last_error();
      sd3_model_free(model);
      die(msg);
    }
    if (ps.tty) std::fputc('\n', stderr);
    nlohmann::json run = nlohmann::json::parse(sd3_last_run_json(model));
    const std::string path = output_path(a.output, i, a.batch_count);
    const std::string params = format_params(run["params"], model_name);
    const char* keys[] = {"parameters"};
    const char* values[] = {params.c_str()};
    if (sd3_write_png(path.c_str(), rgb.data(), a.width, a.height, keys, values, 1) != SD3_OK) {
      std::string msg = sd3_last_error();
      sd3_model_free(model);
      die(msg);
    }
    run["output"] = path;
    const auto& sec = run["seconds"];
    std::fprintf(stderr, "sd3: wrote %s (seed %llu)\n", path.c_str(),
                 static_cast<unsigned long long>(go.seed));
    std::fprintf(stderr, "sd3: time:");
    for (auto it = sec.begin(); it != sec.end(); ++it)
      std::fprintf(stderr, " %s %.2fs", it.key().c_str(), it.value().get<double>());
    std::fprintf(stderr, "\nsd3: peak memory: host %.1f MiB",
                 run.value("peak_host_bytes", 0.0) / (1024.0 * 1024.0));
    if (run.value("peak_device_bytes", 0.0) > 0)
      std::fprintf(stderr, ", device %.1f MiB", run.value("peak_device_bytes", 0.0) / (1024.0 * 1024.0));
    std::fputc('\n', stderr);
    if (run.contains("ops")) {  // --profile-ops: the ops by time, outermost calls only
      double total = 0;
      for (const auto& op : run["ops"]) total += op["ms"].get<double>();
      std::fprintf(stderr, "sd3: op profile (%.1f ms in all):\n", total);
      for (const auto& op : run["ops"]) {
        const double ms = op["ms"].get<double>();
        std::fprintf(stderr, "  %-22s %8lld calls %11.3f ms %6.1f%%\n",
                     op["op"].get<std::string>().c_str(), op["calls"].get<long long>(), ms,
                     total > 0 ? 100.0 * ms / total : 0.0);
      }
    }
    runs.push_back(run);
  }
  if (a.json) {
    nlohmann::json out = {{"model", info}, {"runs", runs}};
    std::printf("%s\n", out.dump(2).c_str());
  }
  sd3_model_free(model);
  return status;
}
