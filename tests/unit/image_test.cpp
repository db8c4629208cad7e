// Pixel conversions (the reference's exact float32 formulas) and PNG files with text chunks.
#include "models/image.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "common/test_data.h"
#include "engine/error.h"

namespace sd3::models {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ImageConvert, DecodedToUint8Truncates) {
  // Hand-computed with the reference's float32 math, uint8(255 * clamp((x + 1) / 2, 0, 1)):
  //   -1.5 -> clamp(-0.25) = 0 -> 0          1.5 -> clamp(1.25) = 1 -> 255
  //   -1   -> 0 -> 0                         1   -> 1 -> 255
  //    0   -> 0.5 -> 127.5 -> 127 (truncated, not rounded to 128)
  //    0.5 -> 0.75 -> 191.25 -> 191         -0.5 -> 0.25 -> 63.75 -> 63
  //    0.9 -> 0.95 -> 242.25 -> 242          0.999 -> 0.9995 -> 254.87 -> 254
  // Layout [1, 3, 1, 3]: channel c of pixel x at c*3 + x.
  const Tensor x = Tensor::from_floats({-1.5f, -1.0f, 0.0f,   // R of pixels 0..2
                                        0.5f, -0.5f, 1.0f,    // G
                                        1.5f, 0.9f, 0.999f},  // B
                                       {1, 3, 1, 3});
  const std::vector<Image> images = decoded_to_images(x);
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].width, 3);
  EXPECT_EQ(images[0].height, 1);
  const std::vector<uint8_t> want = {0,   191, 255,  // pixel 0: R G B
                                     0,   63,  242,  // pixel 1
                                     127, 255, 254};
  EXPECT_EQ(images[0].pixels, want);
}

TEST(ImageConvert, Uint8ToFloat) {
  // 2 * (u / 255) - 1 in float32: 0 -> -1, 255 -> 1, 51 -> 2*0.2-1 = -0.6.
  Image img;
  img.width = 2;
  img.height = 1;
  img.pixels = {0, 51, 255, 255, 0, 128};
  const Tensor t = images_to_tensor({img});
  EXPECT_EQ(t.shape(), (Shape{1, 3, 1, 2}));
  const std::vector<float> v = t.to_floats();  // [R0 R1 G0 G1 B0 B1]
  EXPECT_EQ(v[0], -1.0f);
  EXPECT_EQ(v[1], 1.0f);
  EXPECT_EQ(v[2], 2.0f * (51.0f / 255.0f) - 1.0f);
  EXPECT_NEAR(v[2], -0.6f, 1e-6f);
  EXPECT_EQ(v[3], -1.0f);
  EXPECT_EQ(v[4], 1.0f);
  EXPECT_EQ(v[5], 2.0f * (128.0f / 255.0f) - 1.0f);
  // Back through the decoder-side conversion, every byte value survives except the
  // truncation of values that land just below an integer.
  Image all;
  all.width = 256;
  all.height = 1;
  for (int i = 0; i < 256; ++i)
    for (int c = 0; c < 3; ++c) all.pixels.push_back(static_cast<uint8_t>(i));
  const std::vector<uint8_t> back = decoded_to_images(images_to_tensor({all}))[0].pixels;
  for (size_t i = 0; i < back.size(); ++i) {
    EXPECT_GE(all.pixels[i] - back[i], 0) << i;
    EXPECT_LE(all.pixels[i] - back[i], 1) << i;
  }
}

TEST(ImageConvert, BadInputs) {
  EXPECT_NE(error_of([] {
              decoded_to_images(Tensor::zeros({1, 4, 2, 2}, DType::F32));
            }).find("[B, 3, H, W]"),
            std::string::npos);
  Image a;
  a.width = 2;
  a.height = 2;
  a.pixels.assign(12, 0);
  Image b = a;
  b.width = 1;
  b.pixels.assign(6, 0);
  EXPECT_NE(error_of([&] { images_to_tensor({a, b}); }).find("image 1"), std::string::npos);
  a.pixels.pop_back();
  EXPECT_NE(error_of([&] { images_to_tensor({a}); }).find("bytes"), std::string::npos);
}

Image gradient(int64_t w, int64_t h) {
  Image img;
  img.width = w;
  img.height = h;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      img.pixels.push_back(static_cast<uint8_t>(x * 255 / (w - 1)));
      img.pixels.push_back(static_cast<uint8_t>(y * 255 / (h - 1)));
      img.pixels.push_back(static_cast<uint8_t>((x * 7 + y * 13) & 0xff));
    }
  return img;
}

TEST(Png, RoundTripWithText) {
  const std::string path = test::temp_dir() + "/out.png";
  const Image img = gradient(37, 23);
  const PngText text = {{"prompt", "a photo of a cat"},
                        {"parameters", "steps: 28, cfg: 4.5, seed: 23"},
                        {"Comment", "caf\xc3\xa9 \xe2\x9c\x93"}};  // UTF-8 -> iTXt
  write_png(path, img, text);
  const PngImage back = read_png(path);
  EXPECT_EQ(back.image.width, img.width);
  EXPECT_EQ(back.image.height, img.height);
  EXPECT_EQ(back.image.pixels, img.pixels);
  EXPECT_EQ(back.text, text);
  // No temporary left beside the target.
  int files = 0;
  for (const auto& e :
       std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
    files += e.path().filename() == "out.png" ? 1 : 100;
  EXPECT_EQ(files, 1);
}

TEST(Png, BadFilesGiveClearErrors) {
  const std::string dir = test::temp_dir();
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
    return dir + "/" + name;
  };
  const std::string good = encode_png(gradient(16, 16));

  const std::string missing = error_of([&] { read_png(dir + "/nope.png"); });
  EXPECT_NE(missing.find("cannot open"), std::string::npos) << missing;
  EXPECT_NE(missing.find("nope.png"), std::string::npos) << missing;

  const std::string text_file = write("text.png", "hello, this is not a PNG");
  const std::string not_png = error_of([&] { read_png(text_file); });
  EXPECT_NE(not_png.find("not a PNG"), std::string::npos) << not_png;
  EXPECT_NE(not_png.find("text.png"), std::string::npos) << not_png;

  const std::string cut = write("cut.png", good.substr(0, good.size() / 2));
  const std::string truncated = error_of([&] { read_png(cut); });
  EXPECT_NE(truncated.find("invalid PNG"), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("cut.png"), std::string::npos) << truncated;

  std::string bad_ihdr = good;
  bad_ihdr[20] = static_cast<char>(bad_ihdr[20] ^ 0x5a);  // a byte of IHDR's width: CRC fails
  const std::string crc = error_of([&] { read_png(write("crc.png", bad_ihdr)); });
  EXPECT_NE(crc.find("invalid PNG"), std::string::npos) << crc;

  EXPECT_NE(error_of([] { decode_png(std::string("\x89PNG\r\n\x1a\n", 8)); }).find("invalid PNG"),
            std::string::npos);
}

TEST(Png, WriteRejectsBadInput) {
  const std::string dir = test::temp_dir();
  Image img = gradient(4, 4);
  EXPECT_NE(error_of([&] {
              write_png(dir + "/a.png", img, {{"", "x"}});
            }).find("keyword"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              write_png(dir + "/a.png", img, {{" lead", "x"}});
            }).find("spaces"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              write_png(dir + "/a.png", img, {{std::string(80, 'k'), "x"}});
            }).find("1 to 79"),
            std::string::npos);
  img.pixels.pop_back();
  const std::string e = error_of([&] { write_png(dir + "/a.png", img); });
  EXPECT_NE(e.find("a.png"), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(dir + "/a.png"));
}

}  // namespace
}  // namespace sd3::models
