// UTF-8 and the Unicode character properties the tokenizer components rely on, with the
// meanings the `tokenizers` library (Rust) gives them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace nh::tok {

// Bytes of the UTF-8 sequence that starts with `lead` (1 for ASCII and stray bytes).
inline size_t utf8_length(char lead) {
  const auto b = static_cast<unsigned char>(lead);
  return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// The code point at s[i] of valid UTF-8; advances i past it.
inline uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[k])); };
  const uint32_t c = b(i);
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    i += 2;
    return ((c & 0x1F) << 6) | (b(i - 1) & 0x3F);
  }
  if (c < 0xF0) {
    i += 3;
    return ((c & 0x0F) << 12) | ((b(i - 2) & 0x3F) << 6) | (b(i - 1) & 0x3F);
  }
  i += 4;
  return ((c & 0x07) << 18) | ((b(i - 3) & 0x3F) << 12) | ((b(i - 2) & 0x3F) << 6) |
         (b(i - 1) & 0x3F);
}

// The code point that ends at s[end) of valid UTF-8 (end > 0).
uint32_t last_code_point(std::string_view s);

void append_utf8(std::string& out, uint32_t cp);

// Offset of the first byte that does not begin a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or npos when all of it is valid.
size_t invalid_utf8_at(std::string_view bytes);
inline bool is_valid_utf8(std::string_view bytes) {
  return invalid_utf8_at(bytes) == std::string_view::npos;
}
// `bytes` with every maximal invalid subsequence replaced by U+FFFD, as Python's
// bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy do.
std::string to_valid_utf8(std::string_view bytes);

// Unicode White_Space (Rust's char::is_whitespace, regex \s).
bool is_white_space(uint32_t cp);
// General category Nd, Nl or No (Rust's char::is_numeric).
bool is_numeric(uint32_t cp);
// ASCII punctuation or general category P* (tokenizers' Punctuation pre-tokenizer).
bool is_punctuation(uint32_t cp);
// General category Mn, Mc or Me.
bool is_combining_mark(uint32_t cp);
// Rust regex's Unicode \w: Alphabetic, marks, Nd, Pc and the join controls.
bool is_word_char(uint32_t cp);

// Rust's str::to_lowercase without the context-dependent final sigma (tokenizers lowercases
// character by character).
std::string to_lowercase(std::string_view s);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize_unicode(std::string_view s, NormalForm form);

}  // namespace nh::tok
