// A safetensors file that is truncated, bit-flipped or lying about its contents must give one
// clear sd3::Error naming the file (and the tensor, where one is at fault), and sd3-inspect on
// it must exit non-zero with one line on stderr: never a crash, never a silent success.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/files.h"
#include "common/test_data.h"
#include "engine/error.h"
#include "engine/safetensors.h"

namespace sd3 {
namespace {

// The raw bytes of a safetensors file: 8-byte little-endian header length, header, data.
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  return test::write_file(test::temp_dir() + "/" + name, bytes);
}

// A valid file: "a" F32 [2, 3] (24 bytes) then "b.weight" F16 [4] (8 bytes), with metadata.
constexpr const char* kGoodHeader =
    R"({"__metadata__":{"format":"pt","note":"kept"},)"
    R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b.weight":{"dtype":"F16","shape":[4],"data_offsets":[24,32]}})";
const std::string kGoodData(32, '\x01');

std::string inspect_bin() {
  return test::bin_dir() + "/sd3-inspect";
}

// sd3-inspect exits 1 and prints exactly one line, "sd3-inspect: error: ...", naming the file
// (and nothing on stdout).
void expect_inspect_rejects(const std::string& path, const std::string& must_contain = "") {
  const test::CommandResult err =
      test::run_command(inspect_bin() + " '" + path + "' 2>&1 >/dev/null");
  EXPECT_EQ(err.status, 1) << "sd3-inspect on " << path << " (is it built?): " << err.out;
  ASSERT_FALSE(err.out.empty()) << path;
  EXPECT_EQ(err.out.find('\n'), err.out.size() - 1) << "not one line: " << err.out;
  EXPECT_EQ(err.out.rfind("sd3-inspect: error: ", 0), 0u) << err.out;
  EXPECT_NE(err.out.find(path), std::string::npos) << err.out;
  if (!must_contain.empty()) {
    EXPECT_NE(err.out.find(must_contain), std::string::npos) << err.out;
  }
  const test::CommandResult out = test::run_command(inspect_bin() + " '" + path + "' 2>/dev/null");
  EXPECT_EQ(out.out, "") << "stdout on a bad file";
}

// Opening fails with sd3::Error whose message names the file and every string in `parts`;
// sd3-inspect rejects the file too.
std::string expect_rejected(const std::string& name, const std::string& bytes,
                            const std::vector<std::string>& parts) {
  const std::string path = write_bytes(name, bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << name << ": opened without error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << name << ": " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << name << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << name << ": not one line: " << msg;
  }
  expect_inspect_rejects(path, parts.empty() ? "" : parts.front());
  return path;
}

std::string good_file() {
  return st_bytes(kGoodHeader, kGoodData);
}

// The same header with one substring replaced.
std::string with_header(const std::string& from, const std::string& to) {
  std::string h = kGoodHeader;
  const size_t at = h.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  h.replace(at, from.size(), to);
  return st_bytes(h, kGoodData);
}

TEST(SafetensorsRobustness, GoodFileOpensWithMetadata) {
  const std::string path = write_bytes("good.safetensors", good_file());
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "kept");
  EXPECT_EQ(f->find("a")->shape, (Shape{2, 3}));
  EXPECT_EQ(f->find("b.weight")->dtype, StDType::F16);
  const test::CommandResult r = test::run_command(inspect_bin() + " '" + path + "' 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("b.weight"), std::string::npos) << r.out;
}

TEST(SafetensorsRobustness, TruncatedFiles) {
  const std::string good = good_file();
  expect_rejected("empty.safetensors", "", {"truncated"});
  expect_rejected("five_bytes.safetensors", good.substr(0, 5), {"truncated"});
  // Cut inside the header: the length field now exceeds the file.
  expect_rejected("cut_header.safetensors", good.substr(0, 40), {"header length"});
  // Cut inside the data: the last tensor runs past the end.
  expect_rejected("cut_data.safetensors", good.substr(0, good.size() - 3), {"b.weight", "past"});
}

TEST(SafetensorsRobustness, HeaderLengthLies) {
  std::string big = good_file();
  big[5] = '\x01';  // header length ~2^40
  expect_rejected("huge_len.safetensors", big, {"header length"});
  std::string all_ones = good_file();
  for (int i = 0; i < 8; ++i) all_ones[i] = '\xff';
  expect_rejected("max_len.safetensors", all_ones, {"header length"});
  // A length that ends the header early leaves invalid JSON.
  std::string shorter = good_file();
  shorter[0] = static_cast<char>(shorter[0] - 10);
  expect_rejected("short_len.safetensors", shorter, {"JSON"});
  expect_rejected("tiny_len.safetensors", st_bytes("{", ""), {"header"});
}

TEST(SafetensorsRobustness, MalformedJson) {
  expect_rejected("garbage.safetensors", st_bytes("not json at all!", ""), {"JSON"});
  expect_rejected("unterminated.safetensors", st_bytes(R"({"a":{"dtype":"F32",)", ""), {"JSON"});
  expect_rejected("array.safetensors", st_bytes("[1,2,3]", ""), {"not a JSON object"});
  expect_rejected("entry_not_object.safetensors", st_bytes(R"({"a":5})", ""), {"'a'"});
  expect_rejected("metadata_not_object.safetensors", st_bytes(R"({"__metadata__":[1]})", ""),
                  {"__metadata__"});
  expect_rejected("metadata_not_string.safetensors",
                  st_bytes(R"({"__metadata__":{"heads":2}})", ""), {"heads"});
}

TEST(SafetensorsRobustness, UnknownOrMissingDtype) {
  expect_rejected("unknown_dtype.safetensors", with_header(R"("dtype":"F32")", R"("dtype":"F17")"),
                  {"'a'", "F17"});
  expect_rejected("dtype_number.safetensors", with_header(R"("dtype":"F32")", R"("dtype":32)"),
                  {"'a'", "dtype"});
  expect_rejected("lowercase_dtype.safetensors",
                  with_header(R"("dtype":"F16")", R"("dtype":"f16")"), {"'b.weight'", "f16"});
  expect_rejected("no_shape.safetensors", with_header(R"("shape":[4],)", ""),
                  {"'b.weight'", "shape"});
}

TEST(SafetensorsRobustness, OffsetsPastTheEnd) {
  expect_rejected("offsets_past_end.safetensors", with_header("[24,32]", "[24,4000]"),
                  {"'b.weight'", "past"});
  expect_rejected("offsets_huge.safetensors",
                  with_header("[24,32]", "[18446744073709551600,18446744073709551608]"),
                  {"'b.weight'"});
  expect_rejected("offsets_reversed.safetensors", with_header("[24,32]", "[32,24]"),
                  {"'b.weight'", "reversed"});
  expect_rejected("offsets_negative.safetensors", with_header("[24,32]", "[-8,0]"),
                  {"'b.weight'", "data_offsets"});
  expect_rejected("offsets_float.safetensors", with_header("[24,32]", "[24.0,32]"),
                  {"'b.weight'", "data_offsets"});
  expect_rejected("offsets_three.safetensors", with_header("[24,32]", "[24,32,40]"),
                  {"'b.weight'", "data_offsets"});
}

TEST(SafetensorsRobustness, OverlappingTensors) {
  // "b.weight" [16, 24) lies inside "a" [0, 24).
  const std::string path =
      expect_rejected("overlap.safetensors", with_header("[24,32]", "[16,24]"), {"overlap"});
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'b.weight'"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsRobustness, ByteSizeDiffersFromShapeTimesDtype) {
  expect_rejected("size_mismatch.safetensors", with_header("[2,3]", "[2,4]"), {"'a'", "needs"});
  expect_rejected("size_mismatch_dtype.safetensors",
                  with_header(R"("dtype":"F16")", R"("dtype":"F32")"), {"'b.weight'", "needs"});
  // A shape whose element count overflows 64 bits must not wrap around to the stored size.
  expect_rejected("size_overflow.safetensors",
                  with_header("[2,3]", "[4294967296,4294967296,4294967296]"), {"'a'"});
}

TEST(SafetensorsRobustness, BadShapeEntries) {
  expect_rejected("shape_negative.safetensors", with_header("[2,3]", "[-2,-3]"), {"'a'", "shape"});
  expect_rejected("shape_float.safetensors", with_header("[2,3]", "[2.5,3]"), {"'a'", "shape"});
  expect_rejected("shape_string.safetensors", with_header("[2,3]", R"(["2",3])"), {"'a'", "shape"});
  expect_rejected("shape_null.safetensors", with_header("[2,3]", "[null,3]"), {"'a'", "shape"});
  expect_rejected("shape_object.safetensors", with_header("[2,3]", "{}"), {"'a'", "shape"});
}

TEST(SafetensorsRobustness, NotAFile) {
  const std::string dir = test::temp_dir();
  EXPECT_THROW(SafetensorsFile::open(dir), Error);
  expect_inspect_rejects(dir);
  const std::string missing = dir + "/does_not_exist.safetensors";
  EXPECT_THROW(SafetensorsFile::open(missing), Error);
  expect_inspect_rejects(missing);
}

// Every single-bit flip of the header and its length field gives an sd3::Error or a file that
// still opens (and whose tensors load); nothing else.
TEST(SafetensorsRobustness, EverySingleBitFlipOfTheHeader) {
  const std::string good = good_file();
  const std::string dir = test::temp_dir();
  int rejected = 0, accepted = 0;
  for (size_t byte = 0; byte < 8 + std::strlen(kGoodHeader); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bytes = good;
      bytes[byte] = static_cast<char>(bytes[byte] ^ (1 << bit));
      // A fresh name each time: rewriting one file in place makes ext4 flush it on close.
      const std::string path = dir + "/flip_" + std::to_string(byte) + "_" + std::to_string(bit);
      test::write_file(path, bytes);
      try {
        auto f = SafetensorsFile::open(path);
        for (const auto& t : f->tensors()) f->load(t, DType::F32);
        ++accepted;
      } catch (const Error&) {
        ++rejected;
      }
      std::remove(path.c_str());
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);  // e.g. flips inside metadata strings stay valid
}

}  // namespace
}  // namespace sd3
