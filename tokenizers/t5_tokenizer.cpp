#include "tokenizers/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>

#include "engine/error.h"
#include "tokenizers/unicode_text.h"

namespace sd3::tok {

T5Tokenizer T5Tokenizer::load(const std::string& spiece_model_path) {
  std::error_code ec;
  SD3_CHECK(std::filesystem::exists(spiece_model_path, ec), "T5 tokenizer model '",
            spiece_model_path, "' does not exist");
  SD3_CHECK(!std::filesystem::is_directory(spiece_model_path, ec), "T5 tokenizer model '",
            spiece_model_path, "' is a directory, expected spiece.model");
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->Load(spiece_model_path);
  SD3_CHECK(status.ok(), "T5 tokenizer model '", spiece_model_path,
            "' is not a valid sentencepiece model (", status.ToString(), ")");
  SD3_CHECK(sp->GetPieceSize() > 2 && sp->eos_id() >= 0, "T5 tokenizer model '", spiece_model_path,
            "' has no end-of-sequence piece");
  T5Tokenizer t;
  t.eos_id_ = sp->eos_id();
  t.sp_ = std::move(sp);
  return t;
}

std::vector<int64_t> T5Tokenizer::encode(std::string_view utf8) const {
  std::string text = sanitize_utf8(utf8);
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  SD3_CHECK(status.ok(), "T5 tokenization failed: ", status.ToString());
  return std::vector<int64_t>(ids.begin(), ids.end());
}

size_t T5Tokenizer::vocab_size() const {
  return static_cast<size_t>(sp_->GetPieceSize());
}

}  // namespace sd3::tok
