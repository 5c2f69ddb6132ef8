// Regular expressions through PCRE2 (UTF + UCP, JIT-compiled once at load), matching the way
// the `tokenizers` library matches its Oniguruma patterns: Oniguruma's meanings of \s, \w, \h,
// ^/$ (line anchors) and (?m) (dot matches newline) are translated to PCRE2's spelling, and
// find_all yields the matches in the order and with the empty-match rule of onig's find_iter.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

struct Span {
  size_t start = 0, end = 0;
};

class Regex {
 public:
  enum class Syntax { Oniguruma, Pcre2 };
  // Compiles `pattern`; a bad pattern is an Error at `at` naming PCRE2's message and offset.
  Regex(std::string_view pattern, Syntax syntax, const JsonPath& at);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every match in `text` (valid UTF-8): searches resume at the end of the previous
  // match, and an empty match right after a non-empty one is skipped, as onig's find_iter does.
  void find_all(std::string_view text, std::vector<Span>& out) const;
  // Whether the whole of `text` matches.
  bool matches_whole(std::string_view text) const;

 private:
  // Position of the first match at or after `from`, or false when there is none.
  bool search(std::string_view text, size_t from, Span& found, bool anchored) const;
  void* code_ = nullptr;  // pcre2_code_8, kept opaque so that pcre2.h stays out of the header
  bool jit_ = false;
  std::string where_;
};

// The PCRE2 spelling of an Oniguruma pattern (exposed for tests).
std::string translate_oniguruma(std::string_view pattern);
// `literal` with every regex metacharacter escaped.
std::string escape_regex(std::string_view literal);

}  // namespace nh::tok
