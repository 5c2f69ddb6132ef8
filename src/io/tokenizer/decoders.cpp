#include "io/tokenizer/decoders.h"

#include <optional>

#include "io/tokenizer/byte_level.h"
#include "io/tokenizer/pattern.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

constexpr const char* kReplacementChar = "\xEF\xBF\xBD";

// Byte-level characters back to bytes (a token with any other character keeps its UTF-8),
// all tokens joined, invalid UTF-8 replaced.
class ByteLevelDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      size_t i = 0;
      bool all = true;
      while (i < t.size() && all) {
        const auto b = byte_level_byte(next_code_point(t, i));
        if (b)
          bytes.push_back(static_cast<char>(*b));
        else
          all = false;
      }
      if (!all) bytes.replace(mark, std::string::npos, t);
    }
    tokens.assign(1, to_valid_utf8(bytes));
  }
};

// The replacement character back to spaces; in the first token it is dropped instead when
// the pre-tokenizer prepends one.
class MetaspaceDec : public Decoder {
 public:
  MetaspaceDec(const json& v, const JsonPath& at) : replacement_(get_char(v, "replacement", at)) {
    if (const json* p = optional(v, "prepend_scheme"); p && p->is_string())
      drop_first_ = p->get<std::string>() != "never";
    if (!get_bool(v, "add_prefix_space", true, at)) drop_first_ = false;
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      size_t i = 0;
      while (i < t.size()) {
        const size_t start = i;
        const uint32_t cp = next_code_point(t, i);
        if (cp != replacement_)
          out.append(t, start, i - start);
        else if (!(k == 0 && drop_first_))
          out.push_back(' ');
      }
      tokens[k] = std::move(out);
    }
  }

 private:
  uint32_t replacement_;
  bool drop_first_ = true;
};

// Runs of <0xXX> tokens become the bytes they name: their text when those bytes are valid
// UTF-8, else one U+FFFD per byte.
class ByteFallbackDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    const auto flush = [&] {
      if (pending.empty()) return;
      if (is_valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      if (const auto b = byte_of(t)) {
        pending.push_back(static_cast<char>(*b));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static std::optional<uint8_t> byte_of(const std::string& t) {
    if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return std::nullopt;
    const auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = hex(t[3]), lo = hex(t[4]);
    if (hi < 0 || lo < 0) return std::nullopt;
    return static_cast<uint8_t>(hi * 16 + lo);
  }
};

class FuseDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDec : public Decoder {
 public:
  StripDec(const json& v, const JsonPath& at)
      : content_(get_char(v, "content", at)),
        start_(static_cast<size_t>(get_int(v, "start", at))),
        stop_(static_cast<size_t>(get_int(v, "stop", at))) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, uint32_t>> chars;  // byte offset, code point
      size_t i = 0;
      while (i < t.size()) {
        const size_t at = i;
        chars.emplace_back(at, next_code_point(t, i));
      }
      size_t first = 0, last = chars.size();
      for (size_t k = 0; k < start_ && k < chars.size() && chars[k].second == content_; ++k)
        first = k + 1;
      for (size_t k = 0; k < stop_ && k < chars.size(); ++k) {
        const size_t index = chars.size() - k - 1;
        if (chars[index].second != content_) break;
        last = index;
      }
      if (first >= last) {
        t.clear();
        continue;
      }
      const size_t begin = chars[first].first;
      const size_t end = last < chars.size() ? chars[last].first : t.size();
      t = t.substr(begin, end - begin);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(const json& v, const JsonPath& at)
      : pattern_(require(v, "pattern", at), at / "pattern"),
        content_(get_string(v, "content", at)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<Piece> pieces;
    for (std::string& t : tokens) {
      pieces.clear();
      pattern_.pieces(t, pieces);
      std::string out;
      for (const Piece& p : pieces) {
        if (p.is_match)
          out += content_;
        else
          out.append(t, p.start, p.end - p.start);
      }
      t = std::move(out);
    }
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

// The end-of-word suffix becomes a space, except in the last token where it is dropped.
class BpeDec : public Decoder {
 public:
  explicit BpeDec(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (suffix_.empty()) continue;
      const std::string with = k + 1 == tokens.size() ? "" : " ";
      std::string out;
      const std::string& t = tokens[k];
      size_t pos = 0;
      for (size_t f = t.find(suffix_); f != std::string::npos; f = t.find(suffix_, pos)) {
        out.append(t, pos, f - pos);
        out += with;
        pos = f + suffix_.size();
      }
      out.append(t, pos);
      tokens[k] = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& value, const JsonPath& at) {
  if (value.is_null()) return nullptr;
  const std::string type = get_type(value, at);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDec>(value, at);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip") return std::make_unique<StripDec>(value, at);
  if (type == "Replace") return std::make_unique<ReplaceDec>(value, at);
  if (type == "BPEDecoder") {
    const json* s = optional(value, "suffix");
    return std::make_unique<BpeDec>(s ? get_string(value, "suffix", at) : "</w>");
  }
  if (type == "Sequence") {
    const json& list = require(value, "decoders", at);
    if (!list.is_array()) (at / "decoders").fail("a list", describe(list));
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = parse_decoder(list[i], (at / "decoders")[i]);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceDec>(std::move(parts));
  }
  unsupported(at, type,
              "ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, BPEDecoder, Sequence");
}

}  // namespace nh::tok
