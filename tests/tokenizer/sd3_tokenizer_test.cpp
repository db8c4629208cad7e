// The SD3 layer: weight syntax, word splitting, windows, T5 truncation, tokenizer file lookup,
// and prompts that are hostile or huge.
#include "tokenizers/sd3_tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "engine/error.h"
#include "tokenizer/tokenizer_test_util.h"
#include "tokenizers/token_json.h"
#include "tokenizers/unicode_text.h"

namespace fs = std::filesystem;

namespace sd3::tok {
namespace {

using Words = std::vector<std::string>;

// ---- weight syntax --------------------------------------------------------------------------

TEST(PromptWeights, StrippedAsTheReferenceDoes) {
  EXPECT_EQ(prompt_words("a (red:1.3) car"), (Words{"a", "red", "car"}));
  EXPECT_EQ(prompt_words("(masterpiece), (best quality:1.2), ((ultra detailed))"),
            (Words{"masterpiece", ",", "best", "quality", ",", "ultra", "detailed"}));
  EXPECT_EQ(prompt_words("(cat:dog:0.5)"), (Words{"cat:dog"}));
  EXPECT_EQ(prompt_words("(d:) (a:b) (:1.5)"), (Words{"d:", "a:b", ":1.5"}));
  EXPECT_EQ(prompt_words("()"), Words{});
  EXPECT_EQ(prompt_words("a\\(escaped\\) parenthesis"), (Words{"a(escaped)", "parenthesis"}));
  EXPECT_EQ(prompt_words("(a \\) b:2)"), (Words{"a", ")", "b"}));
  // Unclosed '(': the rest is one literal piece, groups inside it are not parsed.
  EXPECT_EQ(prompt_words("(unclosed (inner) rest"), (Words{"(unclosed", "(inner)", "rest"}));
  // ...unless that piece happens to end with ')': then it is treated as a group.
  EXPECT_EQ(prompt_words("((a)"), (Words{"(a"}));
  EXPECT_EQ(prompt_words("unbalanced close) paren"), (Words{"unbalanced", "close)", "paren"}));
  // A stray ')' leaves the level negative: no group at level 0 until a '(' brings it back.
  EXPECT_EQ(prompt_words(")(x)"), (Words{")(x)"}));
  EXPECT_EQ(prompt_words(")((x))"), (Words{")(", "x", ")"}));
  // Every group is its own piece, so it splits a word.
  EXPECT_EQ(prompt_words("a(b)c"), (Words{"a", "b", "c"}));
  // Only ' ' and '\n' separate words.
  EXPECT_EQ(prompt_words("a\nb\tc\u00A0d  e"), (Words{"a", "b\tc\u00A0d", "e"}));
}

TEST(PromptWeights, WeightsFollowTheReference) {
  auto w = parse_prompt_weights("a (b:1.5) ((c)) (d:x)");
  ASSERT_EQ(w.size(), 6u);
  EXPECT_EQ(w[0].text, "a ");
  EXPECT_EQ(w[0].weight, 1.0);
  EXPECT_EQ(w[1].text, "b");
  EXPECT_EQ(w[1].weight, 1.5);
  EXPECT_EQ(w[3].text, "c");
  EXPECT_DOUBLE_EQ(w[3].weight, 1.1 * 1.1);
  EXPECT_EQ(w[5].text, "d:x");
  EXPECT_DOUBLE_EQ(w[5].weight, 1.1);
}

TEST(PromptWeights, PythonFloatSyntax) {
  auto f = [](const char32_t* s) { return parse_python_float(s); };
  EXPECT_EQ(f(U"1.2"), 1.2);
  EXPECT_EQ(f(U"-1"), -1.0);
  EXPECT_EQ(f(U"1e3"), 1000.0);
  EXPECT_EQ(f(U".5"), 0.5);
  EXPECT_EQ(f(U"5."), 5.0);
  EXPECT_EQ(f(U"+1.E-2"), 0.01);
  EXPECT_EQ(f(U" 1_0 "), 10.0);
  EXPECT_EQ(f(U"\u3000\u00A02\u2003"), 2.0);  // Unicode whitespace around
  EXPECT_EQ(f(U"\u0661\u0662"), 12.0);        // Arabic-Indic digits
  EXPECT_EQ(f(U"\U0001D7D9"), 1.0);           // MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
  EXPECT_TRUE(std::isnan(*f(U"nan")));
  EXPECT_TRUE(std::isinf(*f(U"-INFINITY")));
  EXPECT_TRUE(std::isinf(*f(U"iNf")));
  for (const char32_t* bad :
       {U"", U" ", U"1__0", U"_1", U"1_", U"1_.5", U"1._5", U"1e", U"e5", U".", U"0x10", U"1.2.3",
        U"1 2", U"infinit", U"nan(1)", U"--1", U"1\u00B2", U"\u00BD", U"1\u066B5"}) {
    EXPECT_FALSE(f(bad).has_value()) << encode_utf8(bad);
  }
  EXPECT_EQ(prompt_words("(x: 1_0 ) (y:\u0661) (z:nan) (w:1__0)"),
            (Words{"x", "y", "z", "w:1__0"}));
}

// The reference token_weights()/parse_parentheses(), ported literally (recursive, re-scanning),
// as an oracle for the linear-time implementation.
std::vector<std::string> literal_parse_parentheses(const std::string& s) {
  std::vector<std::string> result;
  std::string current;
  long level = 0;
  for (char c : s) {
    if (c == '(') {
      if (level == 0) {
        if (!current.empty()) result.push_back(current);
        current = "(";
      } else {
        current += c;
      }
      ++level;
    } else if (c == ')') {
      --level;
      if (level == 0) {
        result.push_back(current + ")");
        current.clear();
      } else {
        current += c;
      }
    } else {
      current += c;
    }
  }
  if (!current.empty()) result.push_back(current);
  return result;
}

void literal_token_weights(const std::string& s, double weight, std::vector<WeightedText>* out) {
  for (std::string x : literal_parse_parentheses(s)) {
    if (x.size() >= 2 && x.front() == '(' && x.back() == ')') {
      x = x.substr(1, x.size() - 2);
      double w = weight * 1.1;
      size_t colon = x.rfind(':');
      if (colon != std::string::npos && colon > 0) {
        if (auto v = parse_python_float(decode_utf8(x.substr(colon + 1)))) {
          w = *v;
          x = x.substr(0, colon);
        }
      }
      literal_token_weights(x, w, out);
    } else {
      out->push_back({x, weight});
    }
  }
}

TEST(PromptWeights, MatchesALiteralPortOnRandomPrompts) {
  std::mt19937 rng(7);
  const std::vector<std::string> atoms = {"(", "(", ")",   ")",   ":", "a", "b",  " ",    "1",
                                          ".", "2", "\\(", "\\)", "_", "é", "\n", ":0.5", "e"};
  for (int trial = 0; trial < 20000; ++trial) {
    std::string prompt;
    const int len = 1 + static_cast<int>(rng() % 24);
    for (int k = 0; k < len; ++k) prompt += atoms[rng() % atoms.size()];
    // Same escaping as the implementation: protect \( and \), unescape each piece after.
    std::string escaped;
    for (size_t i = 0; i < prompt.size(); ++i) {
      if (prompt[i] == '\\' && i + 1 < prompt.size() &&
          (prompt[i + 1] == ')' || prompt[i + 1] == '(')) {
        escaped += '\0';
        escaped += prompt[i + 1] == ')' ? '\1' : '\2';
        ++i;
      } else {
        escaped += prompt[i];
      }
    }
    std::vector<WeightedText> expected;
    literal_token_weights(escaped, 1.0, &expected);
    for (auto& e : expected) {
      for (size_t i = 0; i + 1 < e.text.size(); ++i) {
        if (e.text[i] == '\0' && (e.text[i + 1] == '\1' || e.text[i + 1] == '\2')) {
          e.text.replace(i, 2, e.text[i + 1] == '\1' ? ")" : "(");
        }
      }
    }
    const std::vector<WeightedText> got = parse_prompt_weights(prompt);
    ASSERT_EQ(got.size(), expected.size()) << "prompt: " << prompt;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].text, expected[i].text) << "prompt: " << prompt;
      ASSERT_EQ(got[i].weight, expected[i].weight) << "prompt: " << prompt;
    }
  }
}

// ---- windows --------------------------------------------------------------------------------

WindowOptions clip_options(int64_t pad) {
  WindowOptions o;
  o.start = 49406;
  o.end = 49407;
  o.pad = pad;
  return o;
}

TEST(Windows, SeventyFiveTokensFitOneWindowSeventySixNeedTwo) {
  std::vector<std::vector<int64_t>> words(75, std::vector<int64_t>{7});
  auto w = build_windows(words, clip_options(0));
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].size(), 77u);
  EXPECT_EQ(w[0][0], 49406);
  EXPECT_EQ(w[0][75], 7);
  EXPECT_EQ(w[0][76], 49407);
  words.push_back({8});
  w = build_windows(words, clip_options(0));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1][1], 8);
  EXPECT_EQ(w[1][2], 49407);
  EXPECT_EQ(w[1][3], 0);
  for (const auto& win : w) EXPECT_EQ(win.size(), 77u);
}

TEST(Windows, LongWordsSplitShortWordsMove) {
  std::vector<std::vector<int64_t>> words(70, std::vector<int64_t>{1});
  words.push_back(std::vector<int64_t>(7, 2));  // 7 tokens: moves whole to the next window
  auto w = build_windows(words, clip_options(49407));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0][70], 1);
  EXPECT_EQ(w[0][71], 49407);  // end, then end-token padding
  EXPECT_EQ(w[0][76], 49407);
  EXPECT_EQ(w[1][1], 2);
  EXPECT_EQ(w[1][7], 2);
  EXPECT_EQ(w[1][8], 49407);

  words.back() = std::vector<int64_t>(8, 3);  // 8 tokens: split, 5 here and 3 there
  w = build_windows(words, clip_options(0));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0][75], 3);
  EXPECT_EQ(w[0][76], 49407);
  EXPECT_EQ(w[1][3], 3);
  EXPECT_EQ(w[1][4], 49407);
  EXPECT_EQ(w[1][5], 0);

  // A 200-token word spans three windows of 75.
  w = build_windows({std::vector<int64_t>(200, 4)}, clip_options(0));
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(std::count(w[2].begin(), w[2].end(), 4), 50);
}

TEST(Windows, EmptyPromptAndT5Lengths) {
  const Sd3Tokens empty = test_util::tokenizer_gz().tokenize("");
  ASSERT_EQ(empty.clip_l.size(), 1u);
  EXPECT_EQ(empty.clip_l[0][0], 49406);
  EXPECT_EQ(empty.clip_l[0][1], 49407);
  EXPECT_EQ(empty.clip_l[0][76], 49407);
  EXPECT_EQ(empty.clip_g[0][2], 0);
  ASSERT_EQ(empty.t5.size(), 1u);
  EXPECT_EQ(empty.t5[0].size(), 77u);
  EXPECT_EQ(empty.t5[0][0], 1);

  WindowOptions t5;
  t5.end = 1;
  t5.max_length = std::numeric_limits<size_t>::max();
  t5.pad_to_max_length = false;
  t5.min_length = 77;
  EXPECT_EQ(build_windows({std::vector<int64_t>(76, 5)}, t5)[0].size(), 77u);  // no padding
  auto long_t5 = build_windows({std::vector<int64_t>(100, 5), {6}}, t5);
  ASSERT_EQ(long_t5.size(), 1u);
  EXPECT_EQ(long_t5[0].size(), 102u);
  EXPECT_EQ(long_t5[0].back(), 1);
}

TEST(Sd3Tokenizer, T5SeesTheFirst226CodePointsBeforeWeightParsing) {
  const Sd3Tokenizer& t = test_util::tokenizer_gz();
  std::string prompt;
  for (int i = 0; i < 300; ++i) prompt += "é";  // 2 bytes each: the cut is in code points
  std::string first226;
  for (int i = 0; i < 226; ++i) first226 += "é";
  std::vector<int64_t> expected = t.t5().encode(first226);
  expected.push_back(1);
  if (expected.size() < 77) expected.resize(77, 0);
  EXPECT_EQ(t.tokenize(prompt).t5, (std::vector<std::vector<int64_t>>{expected}));
  // The cut falls inside "(red:1.5)": T5 then sees the unclosed "(re" literally.
  const std::string weighted = std::string(222, 'x') + " (red:1.5)";
  std::vector<int64_t> t5_expected = t.t5().encode(std::string(222, 'x'));
  const std::vector<int64_t> tail = t.t5().encode("(re");
  t5_expected.insert(t5_expected.end(), tail.begin(), tail.end());
  t5_expected.push_back(1);
  if (t5_expected.size() < 77) t5_expected.resize(77, 0);
  EXPECT_EQ(t.tokenize(weighted).t5[0], t5_expected);
  EXPECT_EQ(t.tokenize(weighted).clip_l, t.tokenize(std::string(222, 'x') + " red").clip_l);
}

// ---- hostile input --------------------------------------------------------------------------

void expect_well_formed(const Sd3Tokens& t) {
  ASSERT_FALSE(t.clip_l.empty());
  ASSERT_EQ(t.clip_l.size(), t.clip_g.size());
  for (const auto& w : t.clip_l) ASSERT_EQ(w.size(), 77u);
  for (const auto& w : t.clip_g) ASSERT_EQ(w.size(), 77u);
  ASSERT_EQ(t.t5.size(), 1u);
  ASSERT_GE(t.t5[0].size(), 77u);
}

TEST(Sd3Tokenizer, IllFormedUtf8NulAndControlCharacters) {
  const Sd3Tokenizer& t = test_util::tokenizer_gz();
  // Ill-formed UTF-8 is read as U+FFFD, one per maximal ill-formed subsequence.
  const Sd3Tokens bad = t.tokenize("a \xFF\xC0\xAF cat \xE2\x82");
  EXPECT_EQ(bad.clip_l, t.tokenize("a \uFFFD\uFFFD\uFFFD cat \uFFFD").clip_l);
  EXPECT_EQ(bad.t5, t.tokenize("a \uFFFD\uFFFD\uFFFD cat \uFFFD").t5);
  EXPECT_EQ(t.t5_ids("\xFF"), t.t5_ids("\uFFFD"));
  // NUL and the other C0 controls (except whitespace) vanish from the CLIP stream.
  const std::string nul("cat\0dog", 7);
  expect_well_formed(t.tokenize(nul));
  EXPECT_EQ(t.tokenize(nul).clip_l, t.tokenize("catdog").clip_l);
  std::string controls;
  for (int c = 0; c < 0x20; ++c) controls.push_back(static_cast<char>(c));
  for (char32_t c = 0x7F; c <= 0x9F; ++c) append_utf8(controls, c);
  const Sd3Tokens ctl = t.tokenize(controls);
  expect_well_formed(ctl);
  // The escape markers of the weight syntax cannot be spoofed into a crash either.
  expect_well_formed(t.tokenize(std::string("\0\1(\0\2)\\", 7)));
}

// Random bytes biased towards the characters every stage treats specially: nothing throws,
// every output is well formed, and the JSON line parser never misbehaves either.
TEST(Sd3Tokenizer, RandomBytesNeverFail) {
  const Sd3Tokenizer& t = test_util::tokenizer_gz();
  std::string specials = "&#;x(\\):1. <|'\"\n\r\t";
  specials.push_back('\0');
  std::mt19937 rng(99);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 48);
    for (int k = 0; k < len; ++k) {
      const unsigned r = rng() % 4;
      s.push_back(r == 0   ? static_cast<char>(0x80 + rng() % 0x80)
                  : r == 1 ? static_cast<char>(rng() % 0x80)
                           : specials[rng() % specials.size()]);
    }
    Sd3Tokens tokens;
    ASSERT_NO_THROW(tokens = t.tokenize(s)) << "trial " << trial;
    expect_well_formed(tokens);
    ASSERT_NO_THROW(t.clip_ids(s));
    ASSERT_NO_THROW(t.t5_ids(s));
    std::string why;
    parse_json_string_line(s, &why);  // any answer is fine; it must not crash
  }
}

struct Timed {
  Sd3Tokens tokens;
  double seconds;
};

Timed timed_tokenize(const std::string& prompt) {
  const auto t0 = std::chrono::steady_clock::now();
  Sd3Tokens tokens = test_util::tokenizer_gz().tokenize(prompt);
  std::vector<int64_t> raw = test_util::tokenizer_gz().clip_ids(prompt);
  std::vector<int64_t> t5raw = test_util::tokenizer_gz().t5_ids(prompt);
  EXPECT_FALSE(raw.empty());
  EXPECT_FALSE(t5raw.empty());
  return {std::move(tokens),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

// One megabyte prompts of several shapes: each completes in bounded time with well-formed
// output (windows of 77, T5 from the first 226 code points).
TEST(Sd3Tokenizer, OneMegabytePromptsFinishQuickly) {
  constexpr size_t kMB = 1000000;
  constexpr double kLimitSeconds = 20.0;  // measured ~1-2 s each on 2 cores
  std::mt19937 rng(11);
  std::vector<std::pair<std::string, std::string>> prompts;
  prompts.emplace_back("one 1 MB word of letters", std::string(kMB, 'a'));
  {
    const std::vector<std::string> words = {"cat", "(red:1.2)",    "photo,",  "café", "東京",
                                            "8k",  "((detailed))", "\\(x\\)", "it's", "&amp;"};
    std::string s;
    while (s.size() < kMB) s += words[rng() % words.size()] + " ";
    prompts.emplace_back("200k words with weight syntax", s);
  }
  prompts.emplace_back("nesting 500k levels deep",
                       std::string(kMB / 2, '(') + "x" + std::string(kMB / 2 - 1, ')'));
  {
    std::string s;
    while (s.size() < kMB) append_utf8(s, static_cast<char32_t>(0x20 + rng() % 0x2FE0));
    prompts.emplace_back("random BMP characters", s);
  }
  for (const auto& [label, prompt] : prompts) {
    Timed r = timed_tokenize(prompt);
    expect_well_formed(r.tokens);
    std::printf("[ timing ] 1 MB prompt (%s): %.2f s, %zu CLIP windows, T5 length %zu\n",
                label.c_str(), r.seconds, r.tokens.clip_l.size(), r.tokens.t5[0].size());
    EXPECT_LT(r.seconds, kLimitSeconds) << label;
  }
}

// ---- tokenizer files next to a model --------------------------------------------------------

void touch(const fs::path& p) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << "x";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerFiles, FoundInTheHuggingFaceLayout) {
  const fs::path repo = test::temp_dir();
  touch(repo / "sd3_medium.safetensors");
  touch(repo / "tokenizer" / "vocab.json");
  touch(repo / "tokenizer" / "merges.txt");
  touch(repo / "tokenizer_3" / "spiece.model");
  TokenizerFiles f = find_tokenizer_files((repo / "sd3_medium.safetensors").string());
  EXPECT_EQ(f.clip_vocab, (repo / "tokenizer" / "vocab.json").string());
  EXPECT_EQ(f.t5_model, (repo / "tokenizer_3" / "spiece.model").string());
  // A diffusers checkpoint keeps the MM-DiT in transformer/: look one directory up as well.
  touch(repo / "transformer" / "diffusion_pytorch_model.safetensors");
  f = find_tokenizer_files((repo / "transformer" / "diffusion_pytorch_model.safetensors").string());
  EXPECT_EQ(f.clip_vocab, (repo / "tokenizer" / "vocab.json").string());
  // A model directory works like a file inside it; flags win.
  f = find_tokenizer_files(repo.string(), test_util::gz_vocab(), test_util::spiece());
  EXPECT_EQ(f.clip_vocab, test_util::gz_vocab());
  EXPECT_EQ(f.t5_model, test_util::spiece());
}

TEST(TokenizerFiles, MissingFilesExplainWhereAndWhichFlag) {
  const fs::path dir = test::temp_dir();
  touch(dir / "model.safetensors");
  touch(dir / "tokenizer_3" / "tokenizer.json");
  const std::string model = (dir / "model.safetensors").string();
  std::string msg = error_of([&] { find_tokenizer_files(model); });
  EXPECT_NE(msg.find("--clip-vocab"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "tokenizer" / "vocab.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("bpe_simple_vocab_16e6.txt.gz"), std::string::npos) << msg;
  msg = error_of([&] { find_tokenizer_files(model, test_util::gz_vocab()); });
  EXPECT_NE(msg.find("--t5-model"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "tokenizer_3" / "spiece.model").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json is there"), std::string::npos) << msg;
  msg = error_of([&] { find_tokenizer_files(model, "/no/such/vocab.json", test_util::spiece()); });
  EXPECT_NE(msg.find("--clip-vocab '/no/such/vocab.json' does not exist"), std::string::npos)
      << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST(TokenizerFiles, BrokenT5ModelNamesTheFile) {
  const std::string dir = test::temp_dir();
  std::string msg = error_of([&] { T5Tokenizer::load(dir + "/spiece.model"); });
  EXPECT_NE(msg.find(dir + "/spiece.model' does not exist"), std::string::npos) << msg;
  std::ofstream(dir + "/garbage.model") << "definitely not a protobuf";
  msg = error_of([&] { T5Tokenizer::load(dir + "/garbage.model"); });
  EXPECT_NE(msg.find(dir + "/garbage.model' is not a valid sentencepiece model"), std::string::npos)
      << msg;
  EXPECT_EQ(T5Tokenizer::load(test_util::spiece()).encode("Hello world"),
            (std::vector<int64_t>{8774, 296}));
}

}  // namespace
}  // namespace sd3::tok

namespace sd3::tok {
namespace {

// A run without the T5 encoder needs no spiece.model: the lookup does not insist on it and
// the tokenizer builds the CLIP streams alone.
TEST(TokenizerFiles, WithoutT5TheT5ModelIsOptional) {
  const fs::path dir = test::temp_dir();
  std::ofstream(dir / "model.safetensors").put('x');
  const std::string model = (dir / "model.safetensors").string();
  TokenizerFiles f = find_tokenizer_files(model, test_util::gz_vocab(), "", /*need_t5=*/false);
  EXPECT_EQ(f.clip_vocab, test_util::gz_vocab());
  EXPECT_TRUE(f.t5_model.empty());

  const Sd3Tokenizer clip_only = Sd3Tokenizer::load(f.clip_vocab, "");
  EXPECT_FALSE(clip_only.has_t5());
  const Sd3Tokenizer full = Sd3Tokenizer::load(test_util::gz_vocab(), test_util::spiece());
  const Sd3Tokens a = clip_only.tokenize("a red fox in fresh snow");
  const Sd3Tokens b = full.tokenize("a red fox in fresh snow");
  EXPECT_EQ(a.clip_l, b.clip_l);
  EXPECT_EQ(a.clip_g, b.clip_g);
  EXPECT_TRUE(a.t5.empty());
  EXPECT_FALSE(b.t5.empty());
  EXPECT_THROW(clip_only.t5_ids("x"), Error);
}

}  // namespace
}  // namespace sd3::tok
