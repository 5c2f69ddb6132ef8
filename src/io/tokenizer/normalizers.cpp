#include "io/tokenizer/normalizers.h"

#include <vector>

#include "io/tokenizer/byte_level.h"
#include "io/tokenizer/pattern.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

class UnicodeForm : public Normalizer {
 public:
  explicit UnicodeForm(NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = normalize_unicode(text, form_); }

 private:
  NormalForm form_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_lowercase(text); }
};

// Removes leading and/or trailing White_Space characters.
class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      size_t i = 0;
      while (i < end) {
        const size_t at = i;
        if (!is_white_space(next_code_point(text, i))) {
          i = at;
          break;
        }
      }
      begin = i;
    }
    if (right_) {
      while (end > begin) {
        const std::string_view head(text.data(), end);
        const uint32_t cp = last_code_point(head);
        if (!is_white_space(cp)) break;
        end -= cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class StripAccents : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    size_t i = 0;
    while (i < text.size()) {
      const size_t start = i;
      if (!is_combining_mark(next_code_point(text, i))) out.append(text, start, i - start);
    }
    text = std::move(out);
  }
};

class Replace : public Normalizer {
 public:
  Replace(const json& value, const JsonPath& at)
      : pattern_(require(value, "pattern", at), at / "pattern"),
        content_(get_string(value, "content", at)) {}
  void normalize(std::string& text) const override {
    std::vector<Piece> pieces;
    pattern_.pieces(text, pieces);
    std::string out;
    for (const Piece& p : pieces) {
      if (p.is_match)
        out += content_;
      else
        out.append(text, p.start, p.end - p.start);
    }
    text = std::move(out);
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

// SentencePiece's nmt_nfkc cleanup: drops control characters, turns other spaces into ' '.
class Nmt : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    size_t i = 0;
    while (i < text.size()) {
      const uint32_t cp = next_code_point(text, i);
      if ((cp >= 0x01 && cp <= 0x08) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || cp == 0x7F ||
          cp == 0x8F || cp == 0x9F)
        continue;
      const bool space = cp == 0x09 || cp == 0x0A || cp == 0x0C || cp == 0x0D || cp == 0x1680 ||
                         (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 ||
                         cp == 0x2581 || cp == 0xFEFF || cp == 0xFFFD;
      append_utf8(out, space ? 0x20 : cp);
    }
    text = std::move(out);
  }
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = byte_level_encode(text); }
};

class Sequence : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const json& value, const JsonPath& at) {
  if (value.is_null()) return nullptr;
  const std::string type = get_type(value, at);
  if (type == "NFC") return std::make_unique<UnicodeForm>(NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeForm>(NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeForm>(NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeForm>(NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Strip")
    return std::make_unique<Strip>(get_bool(value, "strip_left", true, at),
                                   get_bool(value, "strip_right", true, at));
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Replace") return std::make_unique<Replace>(value, at);
  if (type == "Prepend") return std::make_unique<Prepend>(get_string(value, "prepend", at));
  if (type == "Nmt") return std::make_unique<Nmt>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Sequence") {
    const json& list = require(value, "normalizers", at);
    if (!list.is_array()) (at / "normalizers").fail("a list", describe(list));
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = parse_normalizer(list[i], (at / "normalizers")[i]);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  unsupported(at, type,
              "NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, Nmt, "
              "ByteLevel, Sequence");
}

}  // namespace nh::tok
