// RGB images: conversion between the VAE's float tensors and 8-bit pixels exactly as the
// reference pipeline does it (sd3_infer.py), and PNG files with text metadata.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace sd3::models {

// 8-bit RGB, row-major HWC: pixel (y, x) channel c at pixels[(y * width + x) * 3 + c].
struct Image {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> pixels;
};

// Decoder output [B, 3, H, W] (nominally [-1, 1]) -> B images, per value in f32:
// uint8(255 * clamp((x + 1) / 2, 0, 1)), truncating toward zero as numpy's astype(uint8).
std::vector<Image> decoded_to_images(const Tensor& decoded);
// Images of one size -> [B, 3, H, W] f32 in [-1, 1] on `device`, per value in f32:
// 2 * (u / 255) - 1, as the reference prepares an image for the VAE encoder.
Tensor images_to_tensor(const std::vector<Image>& images, Device device = Device::cpu());

// PNG text metadata, (keyword, value) in file order. Values are UTF-8: written as tEXt when
// ASCII, else as iTXt; tEXt (Latin-1) values read back are converted to UTF-8.
using PngText = std::vector<std::pair<std::string, std::string>>;

struct PngImage {
  Image image;
  PngText text;
};

// 8-bit RGB PNG bytes with the given text chunks. Keywords must be 1-79 printable Latin-1
// characters without leading, trailing or double spaces (the PNG rules).
std::string encode_png(const Image& image, const PngText& text = {});
// Writes encode_png() to `path` atomically (temporary file + rename).
void write_png(const std::string& path, const Image& image, const PngText& text = {});

// Decodes any 8-bit (or 16-bit, keeping the high byte) gray, gray+alpha, palette, RGB or RGBA
// PNG to RGB, dropping alpha as PIL's convert("RGB") does. `what` names the source in errors.
PngImage decode_png(const std::string& bytes, const std::string& what = "PNG data");
// Reads and decodes a PNG file; errors name the file and what is wrong with it.
PngImage read_png(const std::string& path);

}  // namespace sd3::models
