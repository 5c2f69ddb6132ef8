#include "io/tokenizer/byte_level.h"

#include <array>

#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

struct Tables {
  std::array<uint16_t, 256> char_of{};  // byte -> code point
  std::array<char, 512> utf8_of{};      // byte -> UTF-8 of its character (1 or 2 bytes)
  std::array<uint8_t, 256> utf8_len{};
  std::array<int16_t, 324> byte_of{};  // code point -> byte, -1 when none
  Tables() {
    byte_of.fill(-1);
    uint16_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      char_of[b] = printable ? static_cast<uint16_t>(b) : next++;
      std::string u;
      append_utf8(u, char_of[b]);
      utf8_len[b] = static_cast<uint8_t>(u.size());
      for (size_t k = 0; k < u.size(); ++k) utf8_of[2 * b + k] = u[k];
      byte_of[char_of[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

void byte_level_append(std::string& out, std::string_view bytes) {
  const Tables& t = tables();
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out.append(&t.utf8_of[2 * b], t.utf8_len[b]);
  }
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  byte_level_append(out, bytes);
  return out;
}

std::optional<uint8_t> byte_level_byte(uint32_t cp) {
  const Tables& t = tables();
  if (cp >= t.byte_of.size() || t.byte_of[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(t.byte_of[cp]);
}

}  // namespace nh::tok
