// CLIP BPE pieces on their own: the text clean-up (ftfy subset, HTML, whitespace, lower-case),
// the pre-tokenisation pattern, the BPE against a literal port of the reference loop, ill-formed
// input, and vocabulary files that are missing or broken.
#include "tokenizers/clip_bpe.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "engine/error.h"
#include "tokenizer/tokenizer_test_util.h"
#include "tokenizers/text_cleanup.h"
#include "tokenizers/unicode_text.h"

namespace sd3::tok {
namespace {

std::string clean(const std::string& utf8) {
  return encode_utf8(clip_clean_text(decode_utf8(utf8)));
}

const ClipBpe& clip() {
  return test_util::tokenizer_gz().clip();
}

// ---- clean-up -------------------------------------------------------------------------------

TEST(ClipCleanup, HtmlEntitiesFtfyAndDoubleUnescape) {
  EXPECT_EQ(clean("tom &amp; jerry"), "tom & jerry");
  EXPECT_EQ(clean("tom &amp;amp;amp; jerry"), "tom & jerry");  // ftfy repeats until stable
  EXPECT_EQ(clean("&lt;b&gt;bold&lt;/b&gt;"), "<b>bold</b>");
  EXPECT_EQ(clean("caf&eacute; &copy;"), "café ©");
  // ftfy also reads all-caps names of lower-case entities; html.unescape does not.
  EXPECT_EQ(clean("P&EACUTE;REZ"), "pérez");
  EXPECT_EQ(clean("BUNDESSTRA&SZLIG;E"), "bundesstrasse");
  // Numeric references: Windows-1252 for 128..159, U+FFFD for 0 / surrogates / too large,
  // nothing for other invalid code points.
  EXPECT_EQ(clean("&#39;a&#x41;&#X42;"), "'aab");
  EXPECT_EQ(clean("x&#128;y"), "x€y");
  EXPECT_EQ(clean("x&#0;y"), "x\uFFFDy");
  EXPECT_EQ(clean("x&#xD800;y&#99999999999999999999;z"), "x\uFFFDy\uFFFDz");
  EXPECT_EQ(clean("x&#1;y"), "xy");
  // html.unescape (applied twice after ftfy) also decodes ';'-less legacy names and the longest
  // known prefix: "&notit;" -> "¬it;".
  EXPECT_EQ(clean("a&ampx"), "a&x");
  EXPECT_EQ(clean("I'm &notit; here"), "i'm ¬it; here");
}

TEST(ClipCleanup, AngleBracketSwitchesOffFtfyUnescapingFromThatLineOn) {
  // &rsquo; decoded by ftfy is then un-curled; decoded later by html.unescape it stays curly.
  EXPECT_EQ(clean("it&rsquo;s"), "it's");
  EXPECT_EQ(clean("<it&rsquo;s"), "<it’s");
  EXPECT_EQ(clean("it&rsquo;s\n<br>\nit&rsquo;s"), "it's <br> it’s");
  // &EACUTE; is known only to ftfy: after a '<' it stays (and is lower-cased).
  EXPECT_EQ(clean("<b>&EACUTE;</b>"), "<b>&eacute;</b>");
  // The reference still unescapes twice: "&amp;lt;" becomes "<" even inside markup.
  EXPECT_EQ(clean("<p>&amp;lt;"), "<p><");
}

TEST(ClipCleanup, FtfyCharacterFixes) {
  EXPECT_EQ(clean("wait\u0085 \u0096 done"), "wait… – done");  // C1 as Windows-1252
  EXPECT_EQ(clean("\uFB01ne \uFB02owers \u0133 \u01C6"), "fine flowers ij dž");  // ligatures
  EXPECT_EQ(clean("\u0149"), "'n");                                              // ŉ -> ʼn -> 'n
  EXPECT_EQ(clean("\uFF26\uFF35\uFF2C\uFF2C \uFF54\u3000\uFF76"), "full t カ");  // widths
  EXPECT_EQ(clean("\u201Cq\u201D \u2018s\u2019 \u02BC"), "\"q\" 's' '");         // quotes
  EXPECT_EQ(clean("a\r\nb\rc\u2028d\u2029e"), "a b c d e");                      // line breaks
  EXPECT_EQ(clean("\x1b[1;31mred\x1b[0m text"), "red text");                     // terminal escapes
  EXPECT_EQ(clean("e\u0301t\u00E9"), "été");                                     // NFC
}

TEST(ClipCleanup, ControlCharactersAreRemovedOrActAsSpace) {
  std::string all_c0;
  for (int c = 0; c < 0x20; ++c) all_c0.push_back(static_cast<char>(c));
  all_c0.push_back('\x7f');
  EXPECT_EQ(clean(all_c0), "");
  EXPECT_EQ(clean(std::string("a\0b", 3)), "ab");
  EXPECT_EQ(clean("a\x07"
                  "b\x0b"
                  "c"),
            "abc");
  EXPECT_EQ(clean("a\tb\x0c"
                  "c"),
            "a b c");  // tab and form feed are whitespace
  EXPECT_EQ(clean("\uFEFFbom\u206Ax\uFFFCy"), "bomxy");
  // Kept, as ftfy keeps them: zero-width space / joiner, soft hyphen, bidi controls.
  EXPECT_EQ(clean("a\u200Bb\u200Dc\u00ADd\u202Ee"), "a\u200Bb\u200Dc\u00ADd\u202Ee");
}

TEST(ClipCleanup, WhitespaceAndPythonLowerCase) {
  EXPECT_EQ(clean("  A\u00A0\u2003B \n\t C  "), "a b c");
  // Capital sigma ends a word (-> U+03C2) only after a cased letter, looking past "." etc.
  EXPECT_EQ(clean("ΟΔΟΣ ΣΑ Σ"), "\u03BF\u03B4\u03BF\u03C2 \u03C3\u03B1 \u03C3");
  EXPECT_EQ(clean("ΟΔΟΣ."), "\u03BF\u03B4\u03BF\u03C2.");
  EXPECT_EQ(clean("ΣΑΣΑ"), "\u03C3\u03B1\u03C3\u03B1");
  EXPECT_EQ(clean("İstanbul"), "i\u0307stanbul");
  EXPECT_EQ(clean("ẞ Ⅻ ǅ"), "ß ⅻ d\u017E");  // ǅ is also a ligature for ftfy
}

TEST(ClipCleanup, MojibakeOfUtf8ReadAsLatin1OrWindows1252) {
  EXPECT_EQ(clean("cafÃ© mojibake"), "café mojibake");
  EXPECT_EQ(clean("Ã¼ber schÃ¶n"), "über schön");
  EXPECT_EQ(clean("â€œquotedâ€\u009D and itâ€™s"), "\"quoted\" and it's");
  EXPECT_EQ(clean("ðŸ”¥ fire"), "🔥 fire");
  EXPECT_EQ(clean("cafÃƒÂ©"), "café");                  // encoded twice, repaired twice
  EXPECT_EQ(clean("café and cafÃ©"), "café and café");  // mixed: repaired piece by piece
  // Letters followed by ordinary punctuation that happens to spell UTF-8 stay as they are.
  EXPECT_EQ(clean("Brontë…”"), "brontë…\"");
  EXPECT_EQ(clean("naïve façade"), "naïve façade");
}

// ---- pre-tokenisation -----------------------------------------------------------------------

std::vector<std::string> pieces(const std::u32string& text) {
  std::vector<std::string> out;
  for (const PreToken& p : clip_pre_tokenize(text)) {
    out.push_back(encode_utf8(text.substr(p.begin, p.end - p.begin)));
  }
  return out;
}

using Pieces = std::vector<std::string>;

TEST(ClipPreTokenize, PatternAlternativesInOrder) {
  EXPECT_EQ(pieces(U"it's a dog's"), (Pieces{"it", "'s", "a", "dog", "'s"}));
  EXPECT_EQ(pieces(U"we're they'll i'd i'm ''s"),
            (Pieces{"we", "'re", "they", "'ll", "i", "'d", "i", "'m", "''", "s"}));
  EXPECT_EQ(pieces(U"2024 x\u00B2"), (Pieces{"2", "0", "2", "4", "x", "\u00B2"}));
  EXPECT_EQ(pieces(U"hello,,,world!?"), (Pieces{"hello", ",,,", "world", "!?"}));
  EXPECT_EQ(pieces(U"<|startoftext|>hi<|endoftext|>"),
            (Pieces{"<|startoftext|>", "hi", "<|endoftext|>"}));
  // A run of punctuation swallows a '<' that would start a special token.
  EXPECT_EQ(pieces(U"!<|endoftext|>"), (Pieces{"!<|", "endoftext", "|>"}));
  // IGNORECASE: U+017F (long s) matches 's' in "'s" and in the special tokens.
  EXPECT_EQ(pieces(U"x'\u017F"), (Pieces{"x", "'\u017F"}));
  EXPECT_EQ(pieces(U"<|\u017Ftartoftext|>"), (Pieces{"<|\u017Ftartoftext|>"}));
  // U+0345 matches no alternative under IGNORECASE and is skipped like a space.
  EXPECT_EQ(pieces(U"a\u0345b -\u0345-"), (Pieces{"a", "b", "-", "-"}));
  // Combining marks are not letters: they go with the punctuation-like run.
  EXPECT_EQ(pieces(U"न\u092E\u0938\u094D\u0924\u0947"), (Pieces{"नमस", "\u094D", "त", "\u0947"}));
}

TEST(ClipEncode, SpecialTokensOnlyByExactSpelling) {
  EXPECT_EQ(clip().encode("<|startoftext|>"), (std::vector<int64_t>{49406}));
  EXPECT_EQ(clip().encode("<|ENDOFTEXT|>"), (std::vector<int64_t>{49407}));  // lower-cased
  // Matched as one piece through IGNORECASE, but it is not the cached spelling: plain BPE.
  std::vector<int64_t> long_s = clip().encode("<|\u017Ftartoftext|>");
  EXPECT_GT(long_s.size(), 1u);
  EXPECT_EQ(std::count(long_s.begin(), long_s.end(), 49406), 0);
  EXPECT_EQ(clip().start_id(), 49406);
  EXPECT_EQ(clip().end_id(), 49407);
  EXPECT_EQ(clip().vocab_size(), 49408u);
  EXPECT_EQ(clip().token_text(320), "a</w>");
  EXPECT_EQ(clip().token_text(0), "!");
}

// ---- BPE against a literal port of the reference loop ---------------------------------------

// bpe() of simple_tokenizer.py on strings, with merges.txt / vocab.json read here
// independently of ClipBpe: repeatedly merge every occurrence of the lowest-ranked pair.
class ReferenceBpe {
 public:
  ReferenceBpe() {
    std::ifstream in(test_util::hf_merges());
    std::string line;
    std::getline(in, line);  // "#version: 0.2"
    int rank = 0;
    while (std::getline(in, line) && rank < static_cast<int>(ClipBpe::kNumMerges)) {
      size_t sp = line.find(' ');
      ranks_[{line.substr(0, sp), line.substr(sp + 1)}] = rank++;
    }
    std::ifstream vin(test_util::hf_vocab());
    nlohmann::json v = nlohmann::json::parse(vin);
    for (auto it = v.begin(); it != v.end(); ++it) vocab_[it.key()] = it.value().get<int64_t>();
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_utf8(s, printable(b) ? static_cast<char32_t>(b) : 256 + extra++);
      byte_char_[b] = s;
    }
  }

  std::vector<int64_t> bpe(const std::string& piece) const {
    std::vector<std::string> word;
    for (unsigned char b : piece) word.push_back(byte_char_[b]);
    word.back() += "</w>";
    while (word.size() > 1) {
      int best = -1;
      std::pair<std::string, std::string> bigram;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = ranks_.find({word[i], word[i + 1]});
        if (it != ranks_.end() && (best < 0 || it->second < best)) {
          best = it->second;
          bigram = it->first;
        }
      }
      if (best < 0) break;
      std::vector<std::string> merged;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == bigram.first && word[i + 1] == bigram.second) {
          merged.push_back(word[i] + word[i + 1]);
          i += 2;
        } else {
          merged.push_back(word[i++]);
        }
      }
      word = std::move(merged);
    }
    std::vector<int64_t> ids;
    for (const auto& w : word) ids.push_back(vocab_.at(w));
    return ids;
  }

 private:
  std::map<std::pair<std::string, std::string>, int> ranks_;
  std::map<std::string, int64_t> vocab_;
  std::string byte_char_[256];
};

TEST(ClipBpe, MatchesTheReferenceLoopOnRandomPieces) {
  const ReferenceBpe reference;
  std::mt19937 rng(1234);
  const std::string alphabet = "aabbcdeeilmnorsstt";
  const std::vector<std::string> syllables = {"ing", "tion", "er", "an", "th", "qu", "ss", "oo"};
  for (int trial = 0; trial < 1500; ++trial) {
    std::string piece;
    const int kind = trial % 3;
    const int len = 1 + static_cast<int>(rng() % (trial < 1400 ? 24 : 400));
    for (int k = 0; k < len; ++k) {
      if (kind == 0) piece += alphabet[rng() % alphabet.size()];
      if (kind == 1) piece += syllables[rng() % syllables.size()];
      if (kind == 2) piece += static_cast<char>(rng() % 256);  // any bytes, even not UTF-8
    }
    ASSERT_EQ(clip().bpe(piece), reference.bpe(piece)) << "piece #" << trial << ": " << piece;
  }
}

// ---- ill-formed and hostile input -----------------------------------------------------------

TEST(ClipEncode, IllFormedUtf8IsReadAsReplacementCharacters) {
  // Unicode's maximal-subpart rule, as Python's decode("utf-8", "replace").
  EXPECT_EQ(sanitize_utf8("a\x80"
                          "b"),
            "a\uFFFDb");
  EXPECT_EQ(sanitize_utf8("\xE2\x82"), "\uFFFD");                            // truncated sequence
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");            // encoded surrogate
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), "\uFFFD\uFFFD");                      // overlong
  EXPECT_EQ(sanitize_utf8("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // > U+10FFFF
  EXPECT_EQ(sanitize_utf8("\xF0\x9F\x94\xA5"), "🔥");
  // So the ids of ill-formed bytes are those of U+FFFD.
  EXPECT_EQ(clip().encode("bad \xFF\xFE bytes"), clip().encode("bad \uFFFD\uFFFD bytes"));
  EXPECT_EQ(clip().encode("\xFF"), clip().bpe("\xEF\xBF\xBD"));
}

TEST(ClipEncode, ControlAndC1CharactersNeverFail) {
  std::string all;
  for (int c = 0; c < 0x20; ++c) all.push_back(static_cast<char>(c));
  EXPECT_TRUE(clip().encode(all).empty());  // all removed or whitespace
  for (char32_t c = 0x80; c <= 0x9F; ++c) {
    std::string s = "x";
    append_utf8(s, c);
    EXPECT_FALSE(clip().encode(s).empty()) << std::hex << static_cast<uint32_t>(c);
  }
}

TEST(ClipEncode, LongWordsStayFast) {
  // One 200 kB "word": quadratic BPE would take minutes.
  const std::string word(200000, 'a');
  const ClipBpe& bpe = clip();  // loaded outside the timed part
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int64_t> ids = bpe.encode(word);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(ids.empty());
  EXPECT_LT(s, 10.0);
  std::printf("[ timing ] CLIP encode of a 200 kB single word: %.3f s, %zu ids\n", s, ids.size());
}

// ---- vocabulary files -----------------------------------------------------------------------

std::string write_file(const std::string& name, const std::string& bytes) {
  std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string gunzip_file(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  std::string out;
  char buf[65536];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return out;
}

std::string write_gz(const std::string& name, const std::string& text) {
  std::string path = test::temp_dir() + "/" + name;
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  return path;
}

// Expects load() to throw an sd3::Error whose message contains every fragment.
void expect_load_error(const std::string& path, const std::vector<std::string>& fragments) {
  try {
    ClipBpe::load(path);
    ADD_FAILURE() << "loading '" << path << "' did not fail";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
}

TEST(ClipVocabularyFiles, BothFormatsGiveTheSameVocabulary) {
  const ClipBpe gz = ClipBpe::load(test_util::gz_vocab());
  const ClipBpe hf = ClipBpe::load(test_util::hf_vocab());
  ASSERT_EQ(gz.vocab_size(), hf.vocab_size());
  for (int64_t id = 0; id < static_cast<int64_t>(gz.vocab_size()); id += 97) {
    EXPECT_EQ(gz.token_text(id), hf.token_text(id)) << id;
  }
  // A directory holding vocab.json + merges.txt works too.
  EXPECT_EQ(ClipBpe::load(test::tokenizers_dir() + "/clip").encode("a photo of a cat"),
            (std::vector<int64_t>{320, 1125, 539, 320, 2368}));
}

TEST(ClipVocabularyFiles, MissingOrCorruptGzipNamesTheFile) {
  const std::string dir = test::temp_dir();
  expect_load_error(dir + "/nowhere/bpe_simple_vocab_16e6.txt.gz",
                    {dir + "/nowhere/bpe_simple_vocab_16e6.txt.gz", "does not exist"});
  expect_load_error(dir, {dir, "neither vocab.json"});
  const std::string text_file = write_file("plain.txt.gz", "this is not gzip\n");
  expect_load_error(text_file, {text_file, "is not a gzip file"});
  const std::string real = read_all(test_util::gz_vocab());
  const std::string truncated = write_file("truncated.txt.gz", real.substr(0, real.size() / 2));
  expect_load_error(truncated, {truncated, "corrupt or truncated"});
  std::string flipped = real;
  flipped[flipped.size() / 2] = static_cast<char>(flipped[flipped.size() / 2] ^ 0x55);
  const std::string damaged = write_file("damaged.txt.gz", flipped);
  expect_load_error(damaged, {damaged, "corrupt"});
  const std::string short_gz = write_gz("short.txt.gz", "header\na b\nc d\n");
  expect_load_error(short_gz, {short_gz, "has 4 lines", "48894"});
  std::string text = gunzip_file(test_util::gz_vocab());
  size_t line5 = 0;
  for (int k = 0; k < 5; ++k) line5 = text.find('\n', line5) + 1;
  text.insert(line5, "x ");  // line 6 now has three symbols
  const std::string bad_line = write_gz("badline.txt.gz", text);
  expect_load_error(bad_line, {bad_line, "line 6", "two symbols"});
}

TEST(ClipVocabularyFiles, BrokenHuggingFaceFilesNameTheFile) {
  const std::string dir = test::temp_dir();
  const std::string merges = read_all(test_util::hf_merges());
  std::string vocab = read_all(test_util::hf_vocab());

  std::string d1 = dir + "/no_merges";
  std::filesystem::create_directories(d1);
  std::ofstream(d1 + "/vocab.json") << vocab;
  expect_load_error(d1 + "/vocab.json", {d1 + "/merges.txt", "needs merges.txt"});

  std::string d2 = dir + "/bad_json";
  std::filesystem::create_directories(d2);
  std::ofstream(d2 + "/vocab.json") << vocab.substr(0, vocab.size() / 3);
  std::ofstream(d2 + "/merges.txt") << merges;
  expect_load_error(d2 + "/vocab.json", {d2 + "/vocab.json", "not valid JSON"});

  // vocab.json without "a</w>": the byte symbol and the merges that make it are missing.
  std::string d3 = dir + "/missing_entry";
  std::filesystem::create_directories(d3);
  nlohmann::json j = nlohmann::json::parse(vocab);
  j.erase("a</w>");
  std::ofstream(d3 + "/vocab.json") << j.dump();
  std::ofstream(d3 + "/merges.txt") << merges;
  expect_load_error(d3 + "/vocab.json", {d3, "a</w>"});

  std::string d4 = dir + "/bad_merges";
  std::filesystem::create_directories(d4);
  std::ofstream(d4 + "/vocab.json") << vocab;
  std::ofstream(d4 + "/merges.txt") << "#version: 0.2\ni n\nthree sym bols\n";
  expect_load_error(d4 + "/vocab.json", {d4 + "/merges.txt", "line 3", "two symbols"});

  std::string d5 = dir + "/not_object";
  std::filesystem::create_directories(d5);
  std::ofstream(d5 + "/vocab.json") << "[1, 2, 3]";
  std::ofstream(d5 + "/merges.txt") << merges;
  expect_load_error(d5 + "/vocab.json", {d5 + "/vocab.json", "JSON object"});
}

}  // namespace
}  // namespace sd3::tok
