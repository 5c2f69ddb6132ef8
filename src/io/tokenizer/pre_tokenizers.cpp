#include "io/tokenizer/pre_tokenizers.h"

#include "io/tokenizer/byte_level.h"
#include "io/tokenizer/pattern.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

// Replaces each split by the non-empty spans `cut_split(text, spans)` appends for it.
template <class CutFn>
void resplit(std::vector<Split>& splits, CutFn cut_split) {
  thread_local std::vector<Span> spans;
  std::vector<Split> out;
  out.reserve(splits.size() * 2);
  for (Split& s : splits) {
    spans.clear();
    cut_split(s.text, spans);
    if (spans.size() == 1 && spans[0].start == 0 && spans[0].end == s.text.size()) {
      out.push_back(std::move(s));
      continue;
    }
    for (const Span& sp : spans)
      if (sp.end > sp.start)
        out.push_back({s.text.substr(sp.start, sp.end - sp.start), s.at_origin && sp.start == 0});
  }
  splits = std::move(out);
}

template <class Pred>
void cut_by_char(const std::string& text, Pred pred, SplitBehavior behavior,
                 std::vector<Span>& spans) {
  thread_local std::vector<Piece> pieces;
  pieces.clear();
  char_pieces(text, pred, pieces);
  cut(pieces, behavior, spans);
}

class SplitPre : public PreTokenizer {
 public:
  SplitPre(const json& v, const JsonPath& at)
      : pattern_(require(v, "pattern", at), at / "pattern"),
        behavior_(parse_split_behavior(require(v, "behavior", at), at / "behavior")),
        invert_(get_bool(v, "invert", false, at)) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
      thread_local std::vector<Piece> pieces;
      pieces.clear();
      pattern_.pieces(text, pieces);
      if (invert_)
        for (Piece& p : pieces) p.is_match = !p.is_match;
      cut(pieces, behavior_, spans);
    });
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(const json& v, const JsonPath& at)
      : add_prefix_space_(get_bool(v, "add_prefix_space", true, at)),
        use_regex_(get_bool(v, "use_regex", true, at)) {
    if (use_regex_)
      gpt2_ = std::make_unique<Regex>(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
          Regex::Syntax::Oniguruma, at);
  }
  void pre_tokenize(std::vector<Split>& splits) const override {
    if (add_prefix_space_)
      for (Split& s : splits)
        if (s.text[0] != ' ') s.text.insert(0, 1, ' ');
    if (use_regex_) {
      resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
        thread_local std::vector<Piece> pieces;
        pieces.clear();
        regex_pieces(*gpt2_, text, pieces);
        cut(pieces, SplitBehavior::Isolated, spans);
      });
    }
    for (Split& s : splits) s.text = byte_level_encode(s.text);
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> gpt2_;
};

class Metaspace : public PreTokenizer {
 public:
  enum class Prepend { Always, First, Never };
  Metaspace(const json& v, const JsonPath& at)
      : replacement_(get_char(v, "replacement", at)), split_(get_bool(v, "split", true, at)) {
    append_utf8(replacement_utf8_, replacement_);
    prepend_ = Prepend::Always;
    if (const json* p = optional(v, "prepend_scheme")) {
      const std::string s = p->is_string() ? p->get<std::string>() : "";
      if (s == "always")
        prepend_ = Prepend::Always;
      else if (s == "first")
        prepend_ = Prepend::First;
      else if (s == "never")
        prepend_ = Prepend::Never;
      else
        (at / "prepend_scheme").fail("\"always\", \"first\" or \"never\"", describe(*p));
    }
    // Files from before prepend_scheme existed say add_prefix_space: false instead.
    if (!get_bool(v, "add_prefix_space", true, at)) prepend_ = Prepend::Never;
  }
  void pre_tokenize(std::vector<Split>& splits) const override {
    for (Split& s : splits) {
      std::string out;
      out.reserve(s.text.size() + replacement_utf8_.size());
      for (const char c : s.text) {
        if (c == ' ')
          out += replacement_utf8_;
        else
          out.push_back(c);
      }
      const bool starts = out.compare(0, replacement_utf8_.size(), replacement_utf8_) == 0;
      if (!starts && (prepend_ == Prepend::Always || (prepend_ == Prepend::First && s.at_origin)))
        out.insert(0, replacement_utf8_);
      s.text = std::move(out);
    }
    if (!split_) return;
    resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
      cut_by_char(
          text, [&](uint32_t cp) { return cp == replacement_; }, SplitBehavior::MergedWithNext,
          spans);
    });
  }

 private:
  uint32_t replacement_;
  std::string replacement_utf8_;
  bool split_;
  Prepend prepend_;
};

// Cuts at characters of one class with a fixed behavior (Digits, Punctuation, ...).
template <bool (*kPred)(uint32_t)>
class CharClassPre : public PreTokenizer {
 public:
  explicit CharClassPre(SplitBehavior behavior) : behavior_(behavior) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
      cut_by_char(text, kPred, behavior_, spans);
    });
  }

 private:
  SplitBehavior behavior_;
};

class CharDelimiterSplit : public PreTokenizer {
 public:
  explicit CharDelimiterSplit(uint32_t delimiter) : delimiter_(delimiter) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
      cut_by_char(
          text, [&](uint32_t cp) { return cp == delimiter_; }, SplitBehavior::Removed, spans);
    });
  }

 private:
  uint32_t delimiter_;
};

// Rust regex \w+|[^\w\s]+ (Unicode \w, \s), keeping the matches.
class Whitespace : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Split>& splits) const override {
    static const Regex words(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+)"
        R"(|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\p{White_Space}]+)",
        Regex::Syntax::Pcre2, {"(built in)", "Whitespace pattern"});
    resplit(splits, [&](const std::string& text, std::vector<Span>& spans) {
      thread_local std::vector<Piece> pieces;
      pieces.clear();
      regex_pieces(words, text, pieces);
      for (const Piece& p : pieces)
        if (p.is_match) spans.push_back({p.start, p.end});
    });
  }
};

class BertPre : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Split>& splits) const override {
    white_.pre_tokenize(splits);
    punct_.pre_tokenize(splits);
  }

 private:
  CharClassPre<is_white_space> white_{SplitBehavior::Removed};
  CharClassPre<is_punctuation> punct_{SplitBehavior::Isolated};
};

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Split>& splits) const override {
    for (const auto& p : parts_) p->pre_tokenize(splits);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& value, const JsonPath& at) {
  if (value.is_null()) return nullptr;
  const std::string type = get_type(value, at);
  if (type == "Split") return std::make_unique<SplitPre>(value, at);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPre>(value, at);
  if (type == "Metaspace") return std::make_unique<Metaspace>(value, at);
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit")
    return std::make_unique<CharClassPre<is_white_space>>(SplitBehavior::Removed);
  if (type == "Digits")
    return std::make_unique<CharClassPre<is_numeric>>(
        get_bool(value, "individual_digits", false, at) ? SplitBehavior::Isolated
                                                        : SplitBehavior::Contiguous);
  if (type == "Punctuation") {
    const json* b = optional(value, "behavior");
    return std::make_unique<CharClassPre<is_punctuation>>(
        b ? parse_split_behavior(*b, at / "behavior") : SplitBehavior::Isolated);
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
  if (type == "CharDelimiterSplit")
    return std::make_unique<CharDelimiterSplit>(get_char(value, "delimiter", at));
  if (type == "Sequence") {
    const json& list = require(value, "pretokenizers", at);
    if (!list.is_array()) (at / "pretokenizers").fail("a list", describe(list));
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = parse_pre_tokenizer(list[i], (at / "pretokenizers")[i]);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePre>(std::move(parts));
  }
  unsupported(at, type,
              "Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Digits, Punctuation, "
              "BertPreTokenizer, CharDelimiterSplit, Sequence");
}

}  // namespace nh::tok
