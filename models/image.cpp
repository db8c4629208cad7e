#include "models/image.h"

#include <png.h>

#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace sd3::models {

// ---- tensor <-> pixels ----------------------------------------------------------------------

std::vector<Image> decoded_to_images(const Tensor& decoded) {
  SD3_CHECK(decoded.defined() && decoded.dim() == 4 && decoded.size(1) == 3,
            "decoded image must be [B, 3, H, W], got ",
            decoded.defined() ? shape_str(decoded.shape()) : std::string("an undefined tensor"));
  SD3_CHECK(is_float(decoded.dtype()), "decoded image must be a float tensor, got ",
            dtype_name(decoded.dtype()));
  const int64_t B = decoded.size(0), H = decoded.size(2), W = decoded.size(3);
  const std::vector<float> x = decoded.to_floats();  // [B, 3, H, W] on the host
  std::vector<Image> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    Image& img = out[static_cast<size_t>(b)];
    img.width = W;
    img.height = H;
    img.pixels.resize(static_cast<size_t>(H * W * 3));
    for (int64_t c = 0; c < 3; ++c) {
      const float* plane = x.data() + (b * 3 + c) * H * W;
      for (int64_t i = 0; i < H * W; ++i) {
        // sd3_infer.py: clamp((x + 1) / 2, 0, 1), then uint8(255 * v) in float32; the cast
        // truncates. NaN (undefined in numpy) becomes 0.
        float v = (plane[i] + 1.0f) / 2.0f;
        v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;
        img.pixels[static_cast<size_t>(i * 3 + c)] = static_cast<uint8_t>(255.0f * v);
      }
    }
  }
  return out;
}

Tensor images_to_tensor(const std::vector<Image>& images, Device device) {
  SD3_CHECK(!images.empty(), "images_to_tensor: no images");
  const int64_t H = images[0].height, W = images[0].width;
  SD3_CHECK(H > 0 && W > 0, "images_to_tensor: empty image (", W, "x", H, ")");
  const int64_t B = static_cast<int64_t>(images.size());
  std::vector<float> x(static_cast<size_t>(B * 3 * H * W));
  for (int64_t b = 0; b < B; ++b) {
    const Image& img = images[static_cast<size_t>(b)];
    SD3_CHECK(img.width == W && img.height == H, "images_to_tensor: image ", b, " is ", img.width,
              "x", img.height, ", image 0 is ", W, "x", H);
    SD3_CHECK(img.pixels.size() == static_cast<size_t>(H * W * 3), "images_to_tensor: image ", b,
              " has ", img.pixels.size(), " bytes, expected ", H * W * 3, " for ", W, "x", H,
              " RGB");
    for (int64_t c = 0; c < 3; ++c) {
      float* plane = x.data() + (b * 3 + c) * H * W;
      for (int64_t i = 0; i < H * W; ++i) {
        // sd3_infer.py: float32(u) / 255, then 2 * v - 1.
        const float v = static_cast<float>(img.pixels[static_cast<size_t>(i * 3 + c)]) / 255.0f;
        plane[i] = 2.0f * v - 1.0f;
      }
    }
  }
  return Tensor::from_floats(x, {B, 3, H, W}).to(device);
}

// ---- PNG ------------------------------------------------------------------------------------
//
// Note [libpng errors]
// libpng reports errors by longjmp to a setjmp. In C++ that is only defined if no object with
// a non-trivial destructor would be skipped, so every libpng call that can fail sits in a
// small function (png_write_all, png_read_header, png_read_rows) whose locals are all
// trivial; the callbacks are trivial too. The error callback copies libpng's message into a
// fixed buffer, the function returns false, and the caller throws an sd3::Error from there.

namespace {

constexpr png_uint_32 kMaxSide = 1u << 15;  // refuse absurd headers before allocating

struct PngState {
  const uint8_t* data = nullptr;  // reading: the PNG bytes
  size_t size = 0;
  size_t pos = 0;
  std::string* sink = nullptr;  // writing: where the bytes go
  char message[256] = {0};
};

void on_error(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(st->message, sizeof st->message, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

void read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* st = static_cast<PngState*>(png_get_io_ptr(png));
  if (n > st->size - st->pos) png_error(png, "unexpected end of data (truncated file)");
  std::memcpy(out, st->data + st->pos, n);
  st->pos += n;
}

void write_bytes(png_structp png, png_bytep data, png_size_t n) {
  auto* st = static_cast<PngState*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    st->sink->append(reinterpret_cast<const char*>(data), n);
  } catch (...) {
    ok = false;
  }
  if (!ok) png_error(png, "out of memory");
}

void flush_bytes(png_structp) {}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

void check_keyword(const std::string& key) {
  SD3_CHECK(!key.empty() && key.size() <= 79, "PNG text keyword '", key,
            "' must be 1 to 79 characters long");
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(key[i]);
    SD3_CHECK(c >= 32 && c <= 126, "PNG text keyword '", key,
              "' must be printable ASCII (character ", i, " is byte ", static_cast<int>(c), ")");
  }
  SD3_CHECK(key.front() != ' ' && key.back() != ' ' && key.find("  ") == std::string::npos,
            "PNG text keyword '", key, "' has leading, trailing or double spaces");
}

// tEXt values are Latin-1; this engine's strings are UTF-8.
std::string latin1_to_utf8(const char* s, size_t n) {
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

// The libpng calls, in functions whose locals are all trivial (Note [libpng errors]). Each
// returns false with st.message set when libpng reports an error.
bool png_write_all(PngState& st, png_structp png, png_infop info, png_uint_32 width,
                   png_uint_32 height, png_bytep* rows, png_textp text, int num_text) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, &st, write_bytes, flush_bytes);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (num_text > 0) png_set_text(png, info, text, num_text);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  return true;
}

// Reads the header and sets up the conversion to 8-bit RGB the way PIL's convert("RGB")
// does: palette expanded, gray replicated, alpha dropped (not composited); 16-bit samples
// keep their high byte.
bool png_read_header(PngState& st, png_structp png, png_infop info, png_uint_32* width,
                     png_uint_32* height) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &st, read_bytes);
  png_set_user_limits(png, kMaxSide, kMaxSide);
  png_read_info(png, info);
  int bit_depth = 0, color_type = 0;
  png_get_IHDR(png, info, width, height, &bit_depth, &color_type, nullptr, nullptr, nullptr);
  if (bit_depth == 16) png_set_strip_16(png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color_type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
    png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
      png_get_rowbytes(png, info) != static_cast<size_t>(*width) * 3)
    png_error(png, "unsupported pixel format");
  return true;
}

bool png_read_rows(png_structp png, png_infop info, png_bytep* rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, info);  // text after the image data lands in the same info
  return true;
}

// Owns the libpng structs so every exit path frees them.
struct PngWriter {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngWriter() { png_destroy_write_struct(&png, &info); }
};
struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngReader() { png_destroy_read_struct(&png, &info, nullptr); }
};

}  // namespace

std::string encode_png(const Image& image, const PngText& text) {
  SD3_CHECK(
      image.width > 0 && image.height > 0 && image.width <= kMaxSide && image.height <= kMaxSide,
      "cannot write a ", image.width, "x", image.height, " PNG (each side must be 1 to ", kMaxSide,
      ")");
  SD3_CHECK(image.pixels.size() == static_cast<size_t>(image.width * image.height * 3),
            "image has ", image.pixels.size(), " bytes, expected ", image.width * image.height * 3,
            " for ", image.width, "x", image.height, " RGB");
  for (const auto& [key, value] : text) {
    check_keyword(key);
    SD3_CHECK(value.find('\0') == std::string::npos, "PNG text '", key,
              "' contains a NUL character");
  }

  std::string bytes;
  bytes.reserve(static_cast<size_t>(image.width * image.height * 3 / 2 + 4096));
  std::vector<png_text> chunks(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    png_text& t = chunks[i];
    std::memset(&t, 0, sizeof t);
    const bool ascii = is_ascii(text[i].second);
    t.compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    t.key = const_cast<char*>(text[i].first.c_str());
    t.text = const_cast<char*>(text[i].second.c_str());
    if (ascii) {
      t.text_length = text[i].second.size();
    } else {
      t.itxt_length = text[i].second.size();
      t.lang = const_cast<char*>("");
      t.lang_key = const_cast<char*>("");
    }
  }
  std::vector<png_bytep> rows(static_cast<size_t>(image.height));
  for (int64_t y = 0; y < image.height; ++y)
    rows[static_cast<size_t>(y)] =
        const_cast<png_bytep>(image.pixels.data() + static_cast<size_t>(y * image.width * 3));

  PngState st;
  st.sink = &bytes;
  PngWriter w;
  w.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &st, on_error, on_warning);
  SD3_CHECK(w.png != nullptr, "PNG encoder: out of memory");
  w.info = png_create_info_struct(w.png);
  SD3_CHECK(w.info != nullptr, "PNG encoder: out of memory");
  SD3_CHECK(png_write_all(st, w.png, w.info, static_cast<png_uint_32>(image.width),
                          static_cast<png_uint_32>(image.height), rows.data(), chunks.data(),
                          static_cast<int>(chunks.size())),
            "PNG encoder: ", st.message);
  return bytes;
}

void write_png(const std::string& path, const Image& image, const PngText& text) {
  std::string bytes;
  try {
    bytes = encode_png(image, text);
  } catch (const Error& e) {
    fail("cannot write '", path, "': ", e.what());
  }
  write_file_atomic(path, bytes);
}

PngImage decode_png(const std::string& bytes, const std::string& what) {
  SD3_CHECK(
      bytes.size() >= 8 && png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) == 0,
      what, ": not a PNG file (bad signature)");
  PngState st;
  st.data = reinterpret_cast<const uint8_t*>(bytes.data());
  st.size = bytes.size();
  PngReader r;
  r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st, on_error, on_warning);
  SD3_CHECK(r.png != nullptr, what, ": PNG decoder: out of memory");
  r.info = png_create_info_struct(r.png);
  SD3_CHECK(r.info != nullptr, what, ": PNG decoder: out of memory");

  png_uint_32 width = 0, height = 0;
  SD3_CHECK(png_read_header(st, r.png, r.info, &width, &height), what,
            ": invalid PNG: ", st.message);
  PngImage out;
  out.image.width = width;
  out.image.height = height;
  out.image.pixels.resize(static_cast<size_t>(width) * height * 3);
  std::vector<png_bytep> rows(height);
  for (png_uint_32 y = 0; y < height; ++y)
    rows[y] = out.image.pixels.data() + static_cast<size_t>(y) * width * 3;
  SD3_CHECK(png_read_rows(r.png, r.info, rows.data()), what, ": invalid PNG: ", st.message);

  png_textp chunks = nullptr;
  const int n = png_get_text(r.png, r.info, &chunks, nullptr);
  for (int i = 0; i < n; ++i) {
    const png_text& t = chunks[i];
    const bool itxt =
        t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
    out.text.emplace_back(
        t.key, itxt ? std::string(t.text, t.itxt_length) : latin1_to_utf8(t.text, t.text_length));
  }
  return out;
}

PngImage read_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SD3_CHECK(in.good(), "cannot open PNG file '", path, "': ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SD3_CHECK(!in.bad(), "cannot read PNG file '", path, "'");
  return decode_png(bytes, "'" + path + "'");
}

}  // namespace sd3::models
