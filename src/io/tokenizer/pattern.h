// Where a pattern matches in a text, and how those matches cut the text: the `tokenizers`
// library's Pattern::find_matches (the pieces cover the text in order, each flagged as a
// match or not) and SplitDelimiterBehavior.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer/json_fields.h"
#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

struct Piece {
  size_t start = 0, end = 0;
  bool is_match = false;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext" or "Contiguous".
SplitBehavior parse_split_behavior(const json& value, const JsonPath& at);

// The pieces of `text` cut by a character predicate: each matching character is its own
// piece, the runs between them are non-matching pieces.
template <class Pred>
void char_pieces(std::string_view text, Pred is_match, std::vector<Piece>& out) {
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < text.size()) {
    const size_t start = i;
    const uint32_t cp = next_code_point(text, i);
    if (is_match(cp)) {
      if (last < start) out.push_back({last, start, false});
      out.push_back({start, i, true});
      last = i;
    }
  }
  if (last < text.size()) out.push_back({last, text.size(), false});
}

// The pieces of `text` cut by a regex's matches.
void regex_pieces(const Regex& re, std::string_view text, std::vector<Piece>& out);

// A Split or Replace pattern: {"String": literal} or {"Regex": Oniguruma pattern}.
class TextPattern {
 public:
  TextPattern(const json& pattern, const JsonPath& at);
  void pieces(std::string_view text, std::vector<Piece>& out) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;  // null for a non-empty literal, found by plain search
};

// The spans that `behavior` keeps of `pieces` (possibly empty ones; callers drop those).
void cut(const std::vector<Piece>& pieces, SplitBehavior behavior, std::vector<Span>& out);

}  // namespace nh::tok
