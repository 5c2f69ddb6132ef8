// GPT-2's byte-level alphabet: every byte maps to a printable character (bytes that are
// printable Latin-1 map to themselves, the others to U+0100 and up), so any text becomes a
// string over 256 characters.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace nh::tok {

// `bytes` with every byte replaced by its byte-level character (UTF-8 encoded).
std::string byte_level_encode(std::string_view bytes);
// Appends the UTF-8 of the byte-level character of each byte of `bytes` to `out`.
void byte_level_append(std::string& out, std::string_view bytes);
// The byte a byte-level character stands for, if it is one.
std::optional<uint8_t> byte_level_byte(uint32_t cp);

}  // namespace nh::tok
