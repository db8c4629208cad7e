#include "tokenizers/clip_bpe.h"

#include <zlib.h>

#include <array>
#include <climits>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "engine/error.h"
#include "tokenizers/text_cleanup.h"
#include "tokenizers/unicode_text.h"

namespace fs = std::filesystem;

namespace sd3::tok {

// ---------------------------------------------------------------------------------------------
// Pre-tokenisation

namespace {

constexpr char32_t kLongS = 0x017F;  // LATIN SMALL LETTER LONG S: case-folds to 's'

// One pattern character against one text character under the pattern's IGNORECASE flag. The
// text is already lower-cased, so besides exact equality only U+017F ~ 's' can still match.
bool icase_equal(char32_t text_char, char pattern_char) {
  if (text_char == static_cast<char32_t>(pattern_char)) return true;
  if (pattern_char >= 'a' && pattern_char <= 'z' &&
      text_char == static_cast<char32_t>(pattern_char - 'a' + 'A'))
    return true;
  return pattern_char == 's' && text_char == kLongS;
}

size_t match_literal(std::u32string_view text, size_t i, std::string_view literal) {
  if (text.size() - i < literal.size()) return 0;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (!icase_equal(text[i + k], literal[k])) return 0;
  }
  return literal.size();
}

// U+0345 COMBINING GREEK YPOGEGRAMMENI case-folds to a letter (iota), so under IGNORECASE the
// `regex` module excludes it from [^\s\p{L}\p{N}] although it is not a letter itself: it
// matches no alternative and is skipped like whitespace.
bool is_other(char32_t c) {
  return !is_regex_space(c) && !is_letter(c) && !is_number(c) && c != 0x0345;
}

}  // namespace

std::vector<PreToken> clip_pre_tokenize(std::u32string_view t) {
  static constexpr std::string_view kAlternatives[] = {
      "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<PreToken> out;
  const size_t n = t.size();
  size_t i = 0;
  while (i < n) {
    size_t len = 0;
    if (t[i] == '<' || t[i] == '\'') {
      for (std::string_view alt : kAlternatives) {
        if ((len = match_literal(t, i, alt)) != 0) break;
      }
    }
    if (len == 0) {
      char32_t c = t[i];
      if (is_letter(c)) {
        len = 1;
        while (i + len < n && is_letter(t[i + len])) ++len;
      } else if (is_number(c)) {
        len = 1;
      } else if (is_other(c)) {
        len = 1;
        while (i + len < n && is_other(t[i + len])) ++len;
      }
    }
    if (len == 0) {
      ++i;  // whitespace (or U+0345): not part of any token
      continue;
    }
    out.push_back({i, i + len});
    i += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

namespace {

constexpr std::string_view kStartText = "<|startoftext|>";
constexpr std::string_view kEndText = "<|endoftext|>";
constexpr std::string_view kEndOfWord = "</w>";
// Bound the caches so a prompt with millions of distinct words cannot grow them without limit.
constexpr size_t kMaxCacheEntries = 1 << 16;
constexpr size_t kMaxCachedTextBytes = 256;

// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 + n in byte order. The vocabulary lists the 256
// characters in that order (printable bytes first).
struct ByteTable {
  std::array<char32_t, 256> char_of{};  // byte -> character
  std::array<uint8_t, 256> byte_at{};   // vocabulary position -> byte
};

const ByteTable& byte_table() {
  static const ByteTable table = [] {
    ByteTable t;
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int pos = 0;
    for (int b = 0; b < 256; ++b) {
      if (printable(b)) {
        t.char_of[b] = static_cast<char32_t>(b);
        t.byte_at[pos++] = static_cast<uint8_t>(b);
      }
    }
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      if (!printable(b)) {
        t.char_of[b] = static_cast<char32_t>(256 + extra++);
        t.byte_at[pos++] = static_cast<uint8_t>(b);
      }
    }
    return t;
  }();
  return table;
}

std::string byte_symbol(uint8_t b) {
  std::string s;
  append_utf8(s, byte_table().char_of[b]);
  return s;
}

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string read_file_bytes(const std::string& path, const char* what) {
  std::error_code ec;
  SD3_CHECK(fs::exists(path, ec), what, " '", path, "' does not exist");
  SD3_CHECK(!fs::is_directory(path, ec), what, " '", path, "' is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  SD3_CHECK(in.good(), "cannot open ", what, " '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  SD3_CHECK(!in.bad(), "error reading ", what, " '", path, "'");
  return ss.str();
}

std::string gunzip(const std::string& data, const std::string& path) {
  SD3_CHECK(data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x1F &&
                static_cast<unsigned char>(data[1]) == 0x8B,
            "CLIP vocabulary '", path,
            "' is not a gzip file (expected bpe_simple_vocab_16e6.txt.gz, or a vocab.json with "
            "merges.txt beside it)");
  z_stream zs{};
  SD3_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "zlib initialisation failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[1 << 16];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) break;
    out.append(buf, sizeof(buf) - zs.avail_out);
  } while (rc != Z_STREAM_END);
  std::string msg = zs.msg ? zs.msg : (rc == Z_BUF_ERROR ? "unexpected end of data" : "");
  inflateEnd(&zs);
  SD3_CHECK(rc == Z_STREAM_END, "CLIP vocabulary '", path,
            "' is corrupt or truncated (zlib: ", msg.empty() ? std::to_string(rc) : msg, ")");
  return out;
}

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

// "a b" -> {"a", "b"}; anything else (one symbol, three symbols) is malformed.
bool split_merge_line(std::string_view line, std::string_view* a, std::string_view* b) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp = line.find(' ');
  if (sp == 0 || sp == std::string_view::npos) return false;
  *a = line.substr(0, sp);
  *b = line.substr(sp + 1);
  return !b->empty() && b->find(' ') == std::string_view::npos;
}

}  // namespace

struct ClipBpe::Impl {
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  std::array<int32_t, 256> byte_id{};
  std::array<int32_t, 256> byte_end_id{};
  std::unordered_map<uint64_t, Merge> merges;
  std::vector<std::string> tokens;  // id -> vocabulary entry
  int32_t start = -1;
  int32_t end = -1;

  mutable std::mutex mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> bpe_cache;
  mutable std::unordered_map<std::string, std::vector<int64_t>> encode_cache;

  std::vector<int64_t> run_bpe(std::string_view piece) const;
};

namespace {

// Builds the tables from a vocabulary (entry -> id) and the ranked merge list.
std::shared_ptr<ClipBpe::Impl> build_impl(
    const std::unordered_map<std::string, int32_t>& vocab,
    const std::vector<std::pair<std::string_view, std::string_view>>& merges,
    const std::vector<size_t>& merge_lines, const std::string& vocab_source,
    const std::string& merges_source, bool strict) {
  auto impl = std::make_shared<ClipBpe::Impl>();
  auto lookup = [&](const std::string& token, const char* role) -> int32_t {
    auto it = vocab.find(token);
    SD3_CHECK(it != vocab.end(), "CLIP vocabulary '", vocab_source, "' has no entry for ", role,
              " '", token, "'");
    return it->second;
  };
  int32_t max_id = 0;
  for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
  impl->tokens.assign(static_cast<size_t>(max_id) + 1, std::string());
  for (const auto& [token, id] : vocab) impl->tokens[static_cast<size_t>(id)] = token;

  for (int b = 0; b < 256; ++b) {
    std::string sym = byte_symbol(static_cast<uint8_t>(b));
    impl->byte_id[b] = lookup(sym, "the byte symbol");
    impl->byte_end_id[b] = lookup(sym + std::string(kEndOfWord), "the byte symbol");
  }
  impl->start = lookup(std::string(kStartText), "the start token");
  impl->end = lookup(std::string(kEndText), "the end token");

  impl->merges.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    std::string a(merges[rank].first), b(merges[rank].second);
    auto ia = vocab.find(a), ib = vocab.find(b), im = vocab.find(a + b);
    if (ia == vocab.end() || ib == vocab.end() || im == vocab.end()) {
      // A merge whose parts are not vocabulary entries can never apply; in a Hugging Face pair
      // of files that means vocab.json and merges.txt do not belong together.
      SD3_CHECK(!strict, "CLIP merges file '", merges_source, "' line ", merge_lines[rank], ": '",
                a, " ", b, "' uses or makes a symbol that '", vocab_source,
                "' lacks (the two files do not belong together)");
      continue;
    }
    // A repeated pair keeps its last rank, as a Python dict built from the list would.
    impl->merges[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(rank), im->second};
  }
  return impl;
}

}  // namespace

ClipBpe ClipBpe::load_gz(const std::string& gz_path) {
  std::string text = gunzip(read_file_bytes(gz_path, "CLIP vocabulary"), gz_path);
  std::vector<std::string_view> lines = split_lines(text);
  SD3_CHECK(lines.size() >= kNumMerges + 1, "CLIP vocabulary '", gz_path, "' has ", lines.size(),
            " lines, expected a header and at least ", kNumMerges, " merges");
  std::vector<std::pair<std::string_view, std::string_view>> merges;
  std::vector<size_t> merge_lines;
  merges.reserve(kNumMerges);
  for (size_t i = 1; i <= kNumMerges; ++i) {
    std::string_view a, b;
    SD3_CHECK(split_merge_line(lines[i], &a, &b), "CLIP vocabulary '", gz_path, "' line ", i + 1,
              ": expected two symbols separated by one space");
    merges.emplace_back(a, b);
    merge_lines.push_back(i + 1);
  }
  // simple_tokenizer.py: 256 byte symbols, the same with </w>, one entry per merge, then the
  // two special tokens; a repeated entry keeps its last position.
  std::vector<std::string> entries;
  entries.reserve(2 * 256 + merges.size() + 2);
  for (int k = 0; k < 256; ++k) entries.push_back(byte_symbol(byte_table().byte_at[k]));
  for (int k = 0; k < 256; ++k) entries.push_back(entries[k] + std::string(kEndOfWord));
  for (const auto& [a, b] : merges) entries.push_back(std::string(a) + std::string(b));
  entries.emplace_back(kStartText);
  entries.emplace_back(kEndText);
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(entries.size() * 2);
  for (size_t id = 0; id < entries.size(); ++id) vocab[entries[id]] = static_cast<int32_t>(id);
  return ClipBpe(build_impl(vocab, merges, merge_lines, gz_path, gz_path, /*strict=*/false));
}

ClipBpe ClipBpe::load_hf(const std::string& vocab_json_path, const std::string& merges_txt_path) {
  std::string json_text = read_file_bytes(vocab_json_path, "CLIP vocabulary");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail("CLIP vocabulary '", vocab_json_path, "' is not valid JSON: ", e.what());
  }
  SD3_CHECK(j.is_object(), "CLIP vocabulary '", vocab_json_path,
            "' must be a JSON object mapping tokens to ids");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(j.size() * 2);
  std::vector<bool> seen;
  for (auto it = j.begin(); it != j.end(); ++it) {
    SD3_CHECK(it.value().is_number_integer(), "CLIP vocabulary '", vocab_json_path,
              "': the id of '", it.key(), "' is not an integer");
    int64_t id = it.value().get<int64_t>();
    SD3_CHECK(id >= 0 && id < (1 << 24), "CLIP vocabulary '", vocab_json_path, "': id ", id,
              " of '", it.key(), "' is out of range");
    if (seen.size() <= static_cast<size_t>(id)) seen.resize(static_cast<size_t>(id) + 1, false);
    SD3_CHECK(!seen[static_cast<size_t>(id)], "CLIP vocabulary '", vocab_json_path, "': id ", id,
              " is used twice");
    seen[static_cast<size_t>(id)] = true;
    vocab[it.key()] = static_cast<int32_t>(id);
  }

  std::string merges_text = read_file_bytes(merges_txt_path, "CLIP merges file");
  std::vector<std::string_view> lines = split_lines(merges_text);
  std::vector<std::pair<std::string_view, std::string_view>> merges;
  std::vector<size_t> merge_lines;
  size_t first = (!lines.empty() && lines[0].rfind("#version", 0) == 0) ? 1 : 0;
  for (size_t i = first; i < lines.size() && merges.size() < kNumMerges; ++i) {
    if (lines[i].empty() || lines[i] == "\r") {
      SD3_CHECK(i + 1 == lines.size(), "CLIP merges file '", merges_txt_path, "' line ", i + 1,
                " is empty");
      continue;  // the final newline
    }
    std::string_view a, b;
    SD3_CHECK(split_merge_line(lines[i], &a, &b), "CLIP merges file '", merges_txt_path, "' line ",
              i + 1, ": expected two symbols separated by one space");
    merges.emplace_back(a, b);
    merge_lines.push_back(i + 1);
  }
  SD3_CHECK(!merges.empty(), "CLIP merges file '", merges_txt_path, "' holds no merges");
  return ClipBpe(build_impl(vocab, merges, merge_lines, vocab_json_path, merges_txt_path,
                            /*strict=*/true));
}

ClipBpe ClipBpe::load(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "vocab.json", ec)) return load(path + "/vocab.json");
    if (fs::exists(p / "bpe_simple_vocab_16e6.txt.gz", ec))
      return load_gz((p / "bpe_simple_vocab_16e6.txt.gz").string());
    fail("CLIP vocabulary directory '", path,
         "' holds neither vocab.json + merges.txt nor bpe_simple_vocab_16e6.txt.gz");
  }
  if (p.extension() == ".json") {
    fs::path merges = p.parent_path() / "merges.txt";
    SD3_CHECK(fs::exists(merges, ec), "CLIP vocabulary '", path,
              "' needs merges.txt beside it, but '", merges.string(), "' does not exist");
    return load_hf(path, merges.string());
  }
  return load_gz(path);
}

// ---------------------------------------------------------------------------------------------
// BPE

// Note [Exact BPE in O(n log n)]
// simple_tokenizer.py repeatedly takes the lowest-ranked adjacent pair and merges all of its
// occurrences left to right, then looks again: quadratic in the length of a word, which a
// 1 MB prompt of letters turns into hours. Here the symbols form a linked list and every
// adjacent pair with a rank sits in a min-heap keyed by (rank, position). All entries of the
// lowest rank are taken as one batch in position order -- exactly the left-to-right pass --
// and the pairs that the batch creates are pushed only after it, so a later pass sees them,
// as in the reference. An entry is stale when its left symbol is gone or the pair at its
// position no longer has its rank; a merged symbol never equals either of its parts, so a
// stale entry cannot validate by accident.
std::vector<int64_t> ClipBpe::Impl::run_bpe(std::string_view piece) const {
  const size_t n = piece.size();
  if (n == 0) return {};
  SD3_CHECK(n < static_cast<size_t>(INT32_MAX), "a single word of ", n,
            " bytes is too long for CLIP BPE");
  struct Node {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Node> nodes(n);
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = static_cast<uint8_t>(piece[i]);
    nodes[i] = {i + 1 == n ? byte_end_id[b] : byte_id[b], static_cast<int32_t>(i) - 1,
                i + 1 == n ? -1 : static_cast<int32_t>(i + 1), true};
  }
  struct Entry {
    int32_t rank;
    int32_t pos;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto rank_at = [&](int32_t pos) -> const Merge* {
    int32_t nx = nodes[pos].next;
    if (nx < 0) return nullptr;
    auto it = merges.find(pair_key(nodes[pos].id, nodes[nx].id));
    return it == merges.end() ? nullptr : &it->second;
  };
  auto push_pair = [&](int32_t pos) {
    if (pos < 0) return;
    if (const Merge* m = rank_at(pos)) heap.push({m->rank, pos});
  };
  for (size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<int32_t>(i));

  std::vector<int32_t> merged;
  while (!heap.empty()) {
    const int32_t rank = heap.top().rank;
    merged.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      int32_t pos = heap.top().pos;
      heap.pop();
      if (!nodes[pos].alive) continue;
      const Merge* m = rank_at(pos);
      if (m == nullptr || m->rank != rank) continue;
      int32_t right = nodes[pos].next;
      nodes[pos].id = m->id;
      nodes[pos].next = nodes[right].next;
      if (nodes[right].next >= 0) nodes[nodes[right].next].prev = pos;
      nodes[right].alive = false;
      merged.push_back(pos);
    }
    for (int32_t pos : merged) {
      if (!nodes[pos].alive) continue;
      push_pair(nodes[pos].prev);
      push_pair(pos);
    }
  }
  std::vector<int64_t> ids;
  for (int32_t pos = 0; pos >= 0; pos = nodes[pos].next) ids.push_back(nodes[pos].id);
  return ids;
}

std::vector<int64_t> ClipBpe::bpe(std::string_view piece) const {
  // simple_tokenizer.py seeds its BPE cache with the two special tokens, so only their exact
  // spelling maps to the special ids.
  if (piece == kStartText) return {impl_->start};
  if (piece == kEndText) return {impl_->end};
  const bool cacheable = piece.size() <= kMaxCachedTextBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    auto it = impl_->bpe_cache.find(std::string(piece));
    if (it != impl_->bpe_cache.end()) return it->second;
  }
  std::vector<int64_t> ids = impl_->run_bpe(piece);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->bpe_cache.size() >= kMaxCacheEntries) impl_->bpe_cache.clear();
    impl_->bpe_cache.emplace(std::string(piece), ids);
  }
  return ids;
}

std::vector<int64_t> ClipBpe::encode(std::string_view utf8) const {
  const bool cacheable = utf8.size() <= kMaxCachedTextBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    auto it = impl_->encode_cache.find(std::string(utf8));
    if (it != impl_->encode_cache.end()) return it->second;
  }
  std::u32string cleaned = clip_clean_text(decode_utf8(utf8));
  std::vector<int64_t> ids;
  std::string piece;
  for (const PreToken& tok : clip_pre_tokenize(cleaned)) {
    piece = encode_utf8(std::u32string_view(cleaned).substr(tok.begin, tok.end - tok.begin));
    std::vector<int64_t> part = bpe(piece);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  if (cacheable) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->encode_cache.size() >= kMaxCacheEntries) impl_->encode_cache.clear();
    impl_->encode_cache.emplace(std::string(utf8), ids);
  }
  return ids;
}

int64_t ClipBpe::start_id() const {
  return impl_->start;
}
int64_t ClipBpe::end_id() const {
  return impl_->end;
}
size_t ClipBpe::vocab_size() const {
  return impl_->tokens.size();
}

std::string ClipBpe::token_text(int64_t id) const {
  SD3_CHECK(id >= 0 && static_cast<size_t>(id) < impl_->tokens.size(), "CLIP token id ", id,
            " is outside the vocabulary (", impl_->tokens.size(), " entries)");
  return impl_->tokens[static_cast<size_t>(id)];
}

}  // namespace sd3::tok
