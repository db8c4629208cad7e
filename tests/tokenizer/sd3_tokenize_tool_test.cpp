// sd3-tokenize end to end: the program is run through the shell with prompts on stdin.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer_test_util.h"
#include "tokenizers/token_json.h"

namespace sd3::tok {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string quote(const std::string& s) {
  return "'" + s + "'";
}

RunResult run_tool(const std::string& args, const std::string& stdin_bytes) {
  const std::string dir = test::temp_dir();
  const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl", err = dir + "/err.txt";
  std::ofstream(in, std::ios::binary) << stdin_bytes;
  const std::string cmd = quote(test::bin_dir() + "/sd3-tokenize") + " " + args + " < " +
                          quote(in) + " > " + quote(out) + " 2> " + quote(err);
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr) << cmd;
  RunResult r;
  if (p) {
    int status = pclose(p);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  r.out = read_all(out);
  r.err = read_all(err);
  return r;
}

std::string vocab_flags(const std::string& clip) {
  return "--clip-vocab " + quote(clip) + " --t5-model " + quote(test_util::spiece());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

TEST(Sd3TokenizeTool, WritesTheGoldenFormatForBothVocabularies) {
  const auto golden = test_util::read_jsonl("golden.jsonl");
  std::string input;
  std::vector<std::string> expected;
  for (size_t i : {0, 16, 32, 66, 88, 98}) {  // plain, empty, weights, HTML, NUL, long
    input += golden[i].json.at("prompt").dump() + "\n";
    expected.push_back(golden[i].raw);
  }
  for (const std::string& clip : {test_util::gz_vocab(), test_util::hf_vocab()}) {
    RunResult r = run_tool(vocab_flags(clip), input);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(lines_of(r.out), expected);
  }
}

TEST(Sd3TokenizeTool, LoneSurrogateEscapeIsReadAsReplacementCharacter) {
  RunResult r = run_tool(vocab_flags(test_util::gz_vocab()),
                         "\"a \\ud800 b\"\n\"\\udc00\"\n\"\\ud83d\\udd25 fire\"\r\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 3u);
  const Sd3Tokenizer& t = test_util::tokenizer_gz();
  auto expect_line = [&](const std::string& line, const std::string& prompt) {
    const Sd3Tokens k = t.tokenize(prompt);
    EXPECT_EQ(line, golden_json_line(prompt, t.clip_ids(prompt), k.clip_l, k.clip_g,
                                     t.t5_ids(prompt), k.t5));
  };
  expect_line(lines[0], "a \uFFFD b");
  expect_line(lines[1], "\uFFFD");
  expect_line(lines[2], "🔥 fire");  // a proper pair is one character
}

TEST(Sd3TokenizeTool, BadLineStopsWithItsNumber) {
  RunResult r = run_tool(vocab_flags(test_util::gz_vocab()),
                         "\"fine\"\n\"also fine\"\n{\"prompt\": \"an object\"}\n\"never read\"\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("line 3"), std::string::npos) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 2u);  // the lines before it were written
  for (const char* bad : {"unquoted\n", "\"open\n", "\"a\" \"b\"\n", "\"\\x41\"\n",
                          "\"tab\tinside\"\n", "\n", "42\n"}) {
    RunResult b = run_tool(vocab_flags(test_util::gz_vocab()), std::string("\"ok\"\n") + bad);
    EXPECT_EQ(b.exit_code, 1) << bad;
    EXPECT_NE(b.err.find("line 2: not a JSON string"), std::string::npos) << b.err;
  }
}

TEST(Sd3TokenizeTool, FlagsHelpAndVocabularyErrors) {
  RunResult help = run_tool("--help", "");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--clip-vocab"), std::string::npos);
  EXPECT_NE(help.out.find("--t5-model"), std::string::npos);

  RunResult none = run_tool("", "\"x\"\n");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("--clip-vocab"), std::string::npos) << none.err;
  EXPECT_EQ(run_tool("--bogus", "").exit_code, 2);

  const std::string missing = test::temp_dir() + "/bpe_simple_vocab_16e6.txt.gz";
  RunResult m = run_tool(vocab_flags(missing), "\"x\"\n");
  EXPECT_EQ(m.exit_code, 1);
  EXPECT_NE(m.err.find(missing), std::string::npos) << m.err;

  // --model finds the files of a Hugging Face layout.
  const std::string repo = test::temp_dir();
  std::filesystem::create_directories(repo + "/tokenizer");
  std::filesystem::create_directories(repo + "/tokenizer_3");
  std::filesystem::copy_file(test_util::hf_vocab(), repo + "/tokenizer/vocab.json");
  std::filesystem::copy_file(test_util::hf_merges(), repo + "/tokenizer/merges.txt");
  std::filesystem::copy_file(test_util::spiece(), repo + "/tokenizer_3/spiece.model");
  std::ofstream(repo + "/sd3_medium.safetensors") << "";
  RunResult found =
      run_tool("--model " + quote(repo + "/sd3_medium.safetensors"), "\"a photo of a cat\"\n");
  EXPECT_EQ(found.exit_code, 0) << found.err;
  EXPECT_EQ(lines_of(found.out).at(0), test_util::read_jsonl("golden.jsonl")[0].raw);
}

}  // namespace
}  // namespace sd3::tok
