// End-to-end: the `sd3` binary on the manifest's e2e case (its prompt, negative prompt, seed,
// size, steps, CFG, shift, sampler and component files), checked against the golden image,
// plus the runner's handling of bad input (one error line, non-zero exit, no file left).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/golden.h"
#include "common/test_data.h"
#include "models/image.h"

namespace fs = std::filesystem;

namespace sd3::test {
namespace {

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  return q + "'";
}

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

RunResult run(const std::string& args) {
  std::string cmd = quote(bin_dir() + "/sd3") + " " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The component files of the e2e case, as runner flags.
std::string component_flags(const GoldenCase& c) {
  const auto& files = c.raw.at("checkpoint_files");
  std::string flags;
  flags += " -m " + quote(fixture_path(files.at("mmdit").get<std::string>()));
  flags += " --clip-l " + quote(fixture_path(files.at("clip_l").get<std::string>()));
  flags += " --clip-g " + quote(fixture_path(files.at("clip_g").get<std::string>()));
  flags += " --t5xxl " + quote(fixture_path(files.at("t5").get<std::string>()));
  flags += " --vae " + quote(fixture_path(files.at("vae").get<std::string>()));
  flags += " --clip-vocab " + quote(tokenizer_path("clip/bpe_simple_vocab_16e6.txt.gz"));
  flags += " --t5-model " + quote(tokenizer_path("t5/spiece.model"));
  return flags;
}

std::string number(const nlohmann::json& v) {
  std::ostringstream os;
  os << v.get<double>();
  return os.str();
}

TEST(RunnerE2E, GoldenImageFromTinyCheckpoints) {
  for (const GoldenCase& c : cases_of_kind("e2e")) {
    SCOPED_TRACE(c.name);
    const auto& p = c.params;
    const std::string out = temp_dir() + "/e2e.png";
    std::string args = component_flags(c);
    args += " -p " + quote(p.at("prompt").get<std::string>());
    args += " -n " + quote(p.value("negative_prompt", ""));
    args += " --seed " + std::to_string(p.at("seed").get<int64_t>());
    args += " -W " + std::to_string(p.at("width").get<int>());
    args += " -H " + std::to_string(p.at("height").get<int>());
    args += " --steps " + std::to_string(p.at("steps").get<int>());
    args += " --cfg-scale " + number(p.at("cfg_scale"));
    args += " --shift " + number(p.at("shift"));
    args += " --sampler " + p.at("sampler").get<std::string>();
    args += " --threads 2 -o " + quote(out);
    RunResult r = run(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;

    models::PngImage png = models::read_png(out);
    Tensor want = golden_output(c, "image_u8");  // [H, W, 3] i32 0..255
    ASSERT_EQ(want.dim(), 3);
    ASSERT_EQ(png.image.height, want.size(0));
    ASSERT_EQ(png.image.width, want.size(1));
    std::vector<int64_t> w = want.to_ints();
    ASSERT_EQ(w.size(), png.image.pixels.size());
    // uint8 truncation of float values: a value within rounding of an integer may land on
    // either side, so each byte may differ from the float64 reference by 1 (README).
    int worst = 0;
    size_t differing = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      int d = std::abs(static_cast<int>(png.image.pixels[i]) - static_cast<int>(w[i]));
      worst = std::max(worst, d);
      differing += d != 0;
    }
    EXPECT_LE(worst, 1) << differing << " bytes differ";

    std::string params;
    for (const auto& [k, v] : png.text)
      if (k == "parameters") params = v;
    ASSERT_FALSE(params.empty()) << "no parameters chunk";
    EXPECT_NE(params.find(p.at("prompt").get<std::string>()), std::string::npos) << params;
    EXPECT_NE(params.find("Seed: " + std::to_string(p.at("seed").get<int64_t>())),
              std::string::npos)
        << params;
    EXPECT_NE(params.find("Steps: " + std::to_string(p.at("steps").get<int>())),
              std::string::npos)
        << params;
    EXPECT_NE(params.find("Sampler: " + p.at("sampler").get<std::string>()), std::string::npos)
        << params;
  }
}

// --no-t5 needs neither the T5 weights nor its tokenizer model: CLIP files and the vocabulary
// are enough, and the image is written.
TEST(RunnerE2E, NoT5RunsWithoutT5Files) {
  const GoldenCase c = cases_of_kind("e2e").front();
  const auto& files = c.raw.at("checkpoint_files");
  const std::string out = temp_dir() + "/no_t5.png";
  std::string args = " -m " + quote(fixture_path(files.at("mmdit").get<std::string>()));
  args += " --clip-l " + quote(fixture_path(files.at("clip_l").get<std::string>()));
  args += " --clip-g " + quote(fixture_path(files.at("clip_g").get<std::string>()));
  args += " --vae " + quote(fixture_path(files.at("vae").get<std::string>()));
  args += " --clip-vocab " + quote(tokenizer_path("clip/bpe_simple_vocab_16e6.txt.gz"));
  args += " --no-t5 -p 'a red fox' -W 64 -H 64 --steps 2 --seed 1 --threads 2 -o " + quote(out);
  RunResult r = run(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  models::PngImage png = models::read_png(out);
  EXPECT_EQ(png.image.width, 64);
  EXPECT_EQ(png.image.height, 64);
}

// Each bad invocation: non-zero exit, exactly one line naming the problem, no output file.
TEST(RunnerE2E, BadInputGivesOneLineAndNoFile) {
  const GoldenCase c = cases_of_kind("e2e").front();
  const std::string dir = temp_dir();
  const std::string out = dir + "/bad.png";
  const std::string good = component_flags(c) + " -p 'a cat' --steps 1 -W 64 -H 64";
  struct Case {
    std::string args;
    std::string expect;  // a fragment of the error line
  } cases[] = {
      {good + " -W 100 -o " + quote(out), "multiple of 16"},
      {good + " --steps 0 -o " + quote(out), "--steps"},
      {good + " --steps abc -o " + quote(out), "not an integer"},
      {good + " --sampler magic -o " + quote(out), "--sampler"},
      {good + " --cfg-scale nan -o " + quote(out), "--cfg-scale"},
      {good + " --frobnicate -o " + quote(out), "unknown option"},
      {good + " --backend tpu -o " + quote(out), "--backend"},
      {good + " -o " + quote(dir + "/no/such/dir/x.png"), "x.png"},
      {good + " -o " + quote(dir + "/x.jpg"), ".png"},
      {"-m " + quote(dir + "/missing.safetensors") + " -p x -o " + quote(out),
       "missing.safetensors"},
      {"-m " + quote(tokenizer_path("t5/spiece.model")) + " -p x -o " + quote(out),
       "spiece.model"},
      {component_flags(c) + " -o " + quote(out), "prompt"},
      {"-p x -o " + quote(out), "model"},
  };
  for (const auto& bc : cases) {
    SCOPED_TRACE(bc.args);
    RunResult r = run(bc.args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    std::string text = r.output;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    EXPECT_EQ(text.find('\n'), std::string::npos) << "more than one line:\n" << r.output;
    EXPECT_EQ(text.rfind("sd3: error: ", 0), 0u) << r.output;
    EXPECT_NE(text.find(bc.expect), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
  }
  // Nothing half-written anywhere in the directory.
  for (const auto& e : fs::directory_iterator(dir)) ADD_FAILURE() << "left behind: " << e.path();
}

}  // namespace
}  // namespace sd3::test
