#include "io/tokenizer/pattern.h"

#include <algorithm>

namespace nh::tok {

SplitBehavior parse_split_behavior(const json& value, const JsonPath& at) {
  static const std::pair<const char*, SplitBehavior> kNames[] = {
      {"Removed", SplitBehavior::Removed},
      {"Isolated", SplitBehavior::Isolated},
      {"MergedWithPrevious", SplitBehavior::MergedWithPrevious},
      {"MergedWithNext", SplitBehavior::MergedWithNext},
      {"Contiguous", SplitBehavior::Contiguous}};
  if (value.is_string())
    for (const auto& [name, b] : kNames)
      if (value.get<std::string>() == name) return b;
  at.fail("Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous", describe(value));
}

void regex_pieces(const Regex& re, std::string_view text, std::vector<Piece>& out) {
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  thread_local std::vector<Span> matches;
  matches.clear();
  re.find_all(text, matches);
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.start) out.push_back({prev, m.start, false});
    out.push_back({m.start, m.end, true});
    prev = m.end;
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}

TextPattern::TextPattern(const json& pattern, const JsonPath& at) {
  if (const json* s = optional(pattern, "String"); s && s->is_string()) {
    literal_ = s->get<std::string>();
    // The library compiles the escaped literal as a regex; only the empty one (which matches
    // between every two characters) needs the regex here.
    if (literal_.empty())
      regex_ = std::make_unique<Regex>("", Regex::Syntax::Oniguruma, at / "String");
  } else if (const json* r = optional(pattern, "Regex"); r && r->is_string()) {
    regex_ = std::make_unique<Regex>(r->get<std::string>(), Regex::Syntax::Oniguruma, at / "Regex");
  } else {
    at.fail("{\"String\": ...} or {\"Regex\": ...}", describe(pattern));
  }
}

void TextPattern::pieces(std::string_view text, std::vector<Piece>& out) const {
  if (regex_) {
    regex_pieces(*regex_, text, out);
    return;
  }
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  for (size_t at = text.find(literal_); at != std::string_view::npos;
       at = text.find(literal_, prev)) {
    if (prev != at) out.push_back({prev, at, false});
    out.push_back({at, at + literal_.size(), true});
    prev = at + literal_.size();
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}

void cut(const std::vector<Piece>& pieces, SplitBehavior behavior, std::vector<Span>& out) {
  const size_t first = out.size();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Piece& p : pieces) out.push_back({p.start, p.end});
      break;
    case SplitBehavior::Removed:
      for (const Piece& p : pieces)
        if (!p.is_match) out.push_back({p.start, p.end});
      break;
    case SplitBehavior::Contiguous:
      for (const Piece& p : pieces) {
        if (p.is_match == previous_match && out.size() > first)
          out.back().end = p.end;
        else
          out.push_back({p.start, p.end});
        previous_match = p.is_match;
      }
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Piece& p : pieces) {
        if (p.is_match && !previous_match && out.size() > first)
          out.back().end = p.end;
        else
          out.push_back({p.start, p.end});
        previous_match = p.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      // Walks backwards: a match joins the piece after it unless that one matched too.
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !previous_match && out.size() > first)
          out.back().start = it->start;
        else
          out.push_back({it->start, it->end});
        previous_match = it->is_match;
      }
      std::reverse(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
      break;
  }
}

}  // namespace nh::tok
