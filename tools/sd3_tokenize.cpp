// sd3-tokenize: prompts in, SD3 token ids out, one JSON line each (the format of
// ../shared/tokenizers/golden.jsonl). See docs/tokenizers.md.
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <optional>
#include <string>

#include "engine/error.h"
#include "tokenizers/sd3_tokenizer.h"
#include "tokenizers/token_json.h"

namespace {

constexpr const char* kUsage =
    "usage: sd3-tokenize (--clip-vocab PATH --t5-model PATH | --model PATH) < prompts > ids\n"
    "\n"
    "Reads one prompt per line, each a JSON string (\"a photo of a cat\"), and writes one JSON\n"
    "object per line with the ids SD3 feeds its text encoders:\n"
    "  prompt        the prompt as read (lone surrogate escapes and bad UTF-8 become U+FFFD)\n"
    "  clip_bpe_ids  CLIP BPE ids of the whole prompt, no start/end token\n"
    "  clip_l_77     CLIP-L windows of 77 ids (start, up to 75 ids, end, end-token padding)\n"
    "  clip_g_77     CLIP-G windows of 77 ids (padding 0)\n"
    "  t5_ids        T5 sentencepiece ids of the whole prompt, no eos\n"
    "  t5_77         the T5 sequence: first 226 code points, eos, 0-padded to >= 77 ids\n"
    "A line that is not a JSON string stops the program with exit status 1, naming the line.\n"
    "\n"
    "  --clip-vocab PATH  bpe_simple_vocab_16e6.txt.gz, or a vocab.json with merges.txt beside it\n"
    "  --t5-model PATH    the T5 v1.1 XXL spiece.model\n"
    "  --model PATH       find both next to a model as a Hugging Face download lays them out\n"
    "                     (tokenizer/, tokenizer_2/, tokenizer_3/); the two flags above win\n"
    "  --help             this text\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "sd3-tokenize: %s\n%s", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string clip_vocab, t5_model, model;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string* target = nullptr;
    std::string name = arg.substr(0, arg.find('='));
    if (name == "--clip-vocab") target = &clip_vocab;
    if (name == "--t5-model") target = &t5_model;
    if (name == "--model") target = &model;
    if (!target) return usage_error("unknown argument '" + arg + "'");
    if (arg.size() > name.size()) {
      *target = arg.substr(name.size() + 1);
    } else if (i + 1 < argc) {
      *target = argv[++i];
    } else {
      return usage_error(name + " needs a value");
    }
    if (target->empty()) return usage_error(name + " needs a non-empty value");
  }
  if (model.empty() && (clip_vocab.empty() || t5_model.empty())) {
    return usage_error("give --clip-vocab and --t5-model (or --model)");
  }

  try {
    const sd3::tok::TokenizerFiles files =
        sd3::tok::find_tokenizer_files(model, clip_vocab, t5_model);
    const sd3::tok::Sd3Tokenizer tokenizer =
        sd3::tok::Sd3Tokenizer::load(files.clip_vocab, files.t5_model);

    std::ios::sync_with_stdio(false);
    std::string line;
    size_t line_number = 0;
    while (std::getline(std::cin, line)) {
      ++line_number;
      std::string why;
      std::optional<std::string> prompt = sd3::tok::parse_json_string_line(line, &why);
      if (!prompt) {
        std::cout.flush();
        std::fprintf(stderr, "sd3-tokenize: line %zu: not a JSON string: %s\n", line_number,
                     why.c_str());
        return 1;
      }
      const sd3::tok::Sd3Tokens tokens = tokenizer.tokenize(*prompt);
      std::cout << sd3::tok::golden_json_line(*prompt, tokenizer.clip_ids(*prompt), tokens.clip_l,
                                              tokens.clip_g, tokenizer.t5_ids(*prompt), tokens.t5)
                << '\n';
    }
    std::cout.flush();
    if (!std::cout) {
      std::fprintf(stderr, "sd3-tokenize: error writing the output\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::cout.flush();
    std::fprintf(stderr, "sd3-tokenize: %s\n", e.what());
    return 1;
  }
  return 0;
}
