#include "io/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>

#include "core/error.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

// Oniguruma's \w is Letter | Mark | Number | Connector_Punctuation; PCRE2 10.42's UCP \w
// leaves out the marks. \s is White_Space in both Oniguruma and Rust, which PCRE2's UCP \s is
// not (it adds U+180E).
constexpr const char* kWordClass = R"(\p{L}\p{M}\p{N}\p{Pc})";
constexpr const char* kHexClass = "0-9a-fA-F";

// Per-thread PCRE2 working memory: one match block (one pair of offsets is all we read) and a
// JIT stack large enough for long runs of whitespace.
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchScratch() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

}  // namespace

std::string translate_oniguruma(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      switch (e) {
        case 's':
          out += "\\p{White_Space}";
          break;
        case 'S':
          out += "\\P{White_Space}";
          break;
        case 'w':
          out += in_class ? kWordClass : std::string("[") + kWordClass + "]";
          break;
        case 'W':
          // A negated class cannot sit inside another class: keep PCRE2's own \W there.
          out += in_class ? std::string("\\W") : std::string("[^") + kWordClass + "]";
          break;
        case 'h':
          out += in_class ? kHexClass : std::string("[") + kHexClass + "]";
          break;
        case 'H':
          out += in_class ? std::string("\\H") : std::string("[^") + kHexClass + "]";
          break;
        case 'u':  // \uHHHH
          if (i + 4 < p.size()) {
            out += "\\x{" + std::string(p.substr(i + 1, 4)) + "}";
            i += 4;
          } else {
            out += "\\u";
          }
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
      }
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' (after an optional '^') right after '[' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      // Inline options: Oniguruma's (?m) is PCRE2's (?s).
      size_t j = i + 2;
      std::string opts;
      while (j < p.size() && p[j] != '\0' && std::strchr("imx-", p[j])) opts.push_back(p[j++]);
      if (!opts.empty() && j < p.size() && (p[j] == ':' || p[j] == ')')) {
        for (char& o : opts)
          if (o == 'm') o = 's';
        out += "(?" + opts;
        i = j - 1;
        continue;
      }
    }
    out.push_back(c);
  }
  return out;
}

std::string escape_regex(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    if (c != '\0' && std::strchr("\\^$.|?*+()[]{}", c)) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

Regex::Regex(std::string_view pattern, Syntax syntax, const JsonPath& at)
    : where_(at.file + ": " + at.path) {
  const std::string translated =
      syntax == Syntax::Oniguruma ? translate_oniguruma(pattern) : std::string(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  // Oniguruma's ^ and $ always match at line boundaries.
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK |
                           (syntax == Syntax::Oniguruma ? PCRE2_MULTILINE : 0);
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), options, &err, &offset, cc);
  pcre2_compile_context_free(cc);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(err, message, sizeof message);
    at.fail("a valid regular expression", "\"" + std::string(pattern) + "\" (" +
                                              reinterpret_cast<const char*>(message) +
                                              " at offset " + std::to_string(offset) + ")");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::search(std::string_view text, size_t from, Span& found, bool anchored) const {
  MatchScratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const uint32_t options = PCRE2_NO_UTF_CHECK | (anchored ? PCRE2_ANCHORED : 0);
  auto* code = static_cast<pcre2_code*>(code_);
  int rc = jit_ && !anchored
               ? pcre2_jit_match(code, subject, text.size(), from, options, s.data, s.context)
               : pcre2_match(code, subject, text.size(), from, options, s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof message);
    throw Error(where_ + ": regular expression failed on a text of " + std::to_string(text.size()) +
                " bytes: " + reinterpret_cast<const char*>(message));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
  found = {ov[0], ov[1]};
  return true;
}

void Regex::find_all(std::string_view text, std::vector<Span>& out) const {
  size_t last_end = 0;
  bool skip_next_empty = false;
  Span m;
  while (last_end <= text.size() && search(text, last_end, m, false)) {
    last_end = m.end;
    if (m.end == m.start) {
      last_end += m.end < text.size() ? utf8_length(text[m.end]) : 1;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    out.push_back(m);
  }
}

bool Regex::matches_whole(std::string_view text) const {
  Span m;
  return search(text, 0, m, true) && m.end == text.size();
}

}  // namespace nh::tok
