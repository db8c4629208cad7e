// SD3 conditioning assembly (get_cond) against the reference goldens (manifest kind sd3_cond).
// Each case names the checkpoints it used; their `arch` says which is CLIP-L, CLIP-G and T5.
#include "models/conditioning.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>

#include "common/golden.h"
#include "engine/weights.h"
#include "model/text_golden_util.h"

namespace sd3 {
namespace {

using models::ClipTextModel;
using models::Sd3Conditioning;
using models::Sd3ConditioningOptions;
using models::Sd3PromptTokens;
using models::Sd3TextEncoders;
using models::T5Encoder;

struct Encoders {
  std::optional<ClipTextModel> clip_l, clip_g;
  std::optional<T5Encoder> t5;
  Sd3TextEncoders view(bool with_t5 = true) const {
    return Sd3TextEncoders{&*clip_l, &*clip_g, with_t5 ? &*t5 : nullptr};
  }
};

Encoders load_encoders(const test::GoldenCase& c) {
  Encoders e;
  for (const auto& name : c.raw.at("checkpoints")) {
    const std::string cp = name.get<std::string>();
    const std::string arch = test::checkpoint_entry(cp).at("arch").get<std::string>();
    WeightStore w = WeightStore::open({test::checkpoint_file(cp)});
    if (arch == "clip_l") {
      e.clip_l = ClipTextModel::load(w);
    } else if (arch == "clip_g") {
      e.clip_g = ClipTextModel::load(w);
    } else if (arch == "t5xxl") {
      e.t5 = T5Encoder::load(w);
    } else {
      ADD_FAILURE() << c.name << ": unexpected checkpoint arch " << arch;
    }
  }
  EXPECT_TRUE(e.clip_l && e.clip_g && e.t5) << c.name << " lacks an encoder";
  return e;
}

std::vector<int64_t> row(const Tensor& ids) {
  return ids.to_ints();
}

Sd3ConditioningOptions options_of(const test::GoldenCase& c) {
  Sd3ConditioningOptions opt;
  if (c.params.contains("pad_lg_to")) opt.context_width = c.params["pad_lg_to"].get<int64_t>();
  return opt;
}

TEST(Sd3CondGolden, AllCases) {
  for (const auto& c : test::cases_of_kind("sd3_cond")) {
    SCOPED_TRACE(c.name);
    const Encoders e = load_encoders(c);
    if (!e.clip_l || !e.clip_g || !e.t5) continue;
    const Tensor tl = test::golden_input(c, "tokens_l"), tg = test::golden_input(c, "tokens_g"),
                 tt = test::golden_input(c, "tokens_t5");

    // The prompt form (windows as the tokenizer gives them).
    Sd3PromptTokens tokens{{row(tl)}, {row(tg)}, {row(tt)}};
    const Sd3Conditioning cond = models::sd3_conditioning(tokens, e.view(), options_of(c));
    test::expect_all_outputs(c, {{"context", cond.context}, {"y", cond.pooled}});

    // The batched tensor form gives the same, and so does the default width (the T5's).
    const Sd3Conditioning batched = models::sd3_conditioning(tl, tg, tt, e.view());
    EXPECT_TRUE(test::all_close(batched.context, cond.context, 0.0, c.name + " batched context"));
    EXPECT_TRUE(test::all_close(batched.pooled, cond.pooled, 0.0, c.name + " batched y"));
  }
}

// The reference encodes only the first window of each stream: extra CLIP windows (text past
// 75 tokens) change nothing.
TEST(Sd3Cond, OnlyFirstWindowCounts) {
  const auto c = test::cases_of_kind("sd3_cond")[0];
  const Encoders e = load_encoders(c);
  const Tensor tl = test::golden_input(c, "tokens_l"), tg = test::golden_input(c, "tokens_g"),
               tt = test::golden_input(c, "tokens_t5");
  const Sd3Conditioning one =
      models::sd3_conditioning(Sd3PromptTokens{{row(tl)}, {row(tg)}, {row(tt)}}, e.view());
  std::vector<int64_t> second(row(tl).size(), 49407);
  second[0] = 49406;
  second[1] = 320;
  const Sd3Conditioning two = models::sd3_conditioning(
      Sd3PromptTokens{{row(tl), second}, {row(tg), second}, {row(tt)}}, e.view());
  EXPECT_TRUE(test::all_close(two.context, one.context, 0.0, "context"));
  EXPECT_TRUE(test::all_close(two.pooled, one.pooled, 0.0, "y"));
}

// Without T5 the T5 part is zeros of [77, D]: the context keeps 77 + 77 tokens and its CLIP
// half equals the golden's.
TEST(Sd3Cond, WithoutT5) {
  for (const auto& c : test::cases_of_kind("sd3_cond")) {
    SCOPED_TRACE(c.name);
    const Encoders e = load_encoders(c);
    const Tensor tl = test::golden_input(c, "tokens_l"), tg = test::golden_input(c, "tokens_g");
    const Sd3Conditioning cond = models::sd3_conditioning(Sd3PromptTokens{{row(tl)}, {row(tg)}, {}},
                                                          e.view(false), options_of(c));
    const Tensor want = test::golden_output(c, "context");
    const int64_t L = tl.size(1), D = want.size(2);
    ASSERT_EQ(cond.context.shape(), (Shape{1, 2 * L, D}));
    EXPECT_TRUE(test::all_close(cond.context.slice(1, 0, L), want.slice(1, 0, L),
                                test::tolerance(c, "context"), c.name + " CLIP part"));
    EXPECT_TRUE(test::all_close(cond.context.slice(1, L, 2 * L),
                                Tensor::zeros({1, L, D}, DType::F32), 0.0, c.name + " T5 part"));
    EXPECT_TRUE(test::matches_golden(cond.pooled, c, "y"));
  }
}

TEST(Sd3Cond, Errors) {
  const auto c = test::cases_of_kind("sd3_cond")[0];
  const Encoders e = load_encoders(c);
  const Tensor tl = test::golden_input(c, "tokens_l"), tg = test::golden_input(c, "tokens_g"),
               tt = test::golden_input(c, "tokens_t5");
  // No T5 tokens for a T5 encoder; a width narrower than CLIP-L + CLIP-G; no CLIP-G.
  EXPECT_THROW(models::sd3_conditioning(Sd3PromptTokens{{row(tl)}, {row(tg)}, {}}, e.view()),
               Error);
  Sd3ConditioningOptions narrow;
  narrow.context_width = 4;
  EXPECT_THROW(models::sd3_conditioning(tl, tg, Tensor(), e.view(false), narrow), Error);
  Sd3TextEncoders no_g = e.view();
  no_g.clip_g = nullptr;
  EXPECT_THROW(models::sd3_conditioning(tl, tg, tt, no_g), Error);
}

}  // namespace
}  // namespace sd3
