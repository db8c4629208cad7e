// T5 v1.1 (XXL) tokenizer: the sentencepiece library with the model's spiece.model, used as is
// (its nmt_nfkc normalisation, whitespace handling and `▁` prefix). No eos is appended here;
// the SD3 window code adds it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace sd3::tok {

class T5Tokenizer {
 public:
  // Loads spiece.model. Throws sd3::Error naming the file if it is missing or not a model.
  static T5Tokenizer load(const std::string& spiece_model_path);

  // sentencepiece encode(): piece ids, no eos. Ill-formed UTF-8 is read as U+FFFD first.
  std::vector<int64_t> encode(std::string_view utf8) const;

  int64_t eos_id() const { return eos_id_; }  // 1 (`</s>`) for T5
  int64_t pad_id() const { return 0; }        // what SD3 pads the T5 stream with
  size_t vocab_size() const;

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  int64_t eos_id_ = 1;
};

}  // namespace sd3::tok
