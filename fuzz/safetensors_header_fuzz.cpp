// libFuzzer target: the safetensors header parser on arbitrary bytes (a whole
// file). Every input must either parse or raise nh::Error; a crash, a sanitizer
// report or any other exception is a finding. Seeds: fuzz/corpus/safetensors.
#include <cstddef>
#include <cstdint>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nh::SafetensorsHeader h = nh::parse_safetensors_header(data, size, "fuzz");
    // A header that parses must describe tensors that lie inside the input.
    for (const auto& [name, info] : h.tensors)
      if (h.data_start + info.end > size || info.begin > info.end) __builtin_trap();
  } catch (const nh::Error&) {
  }
  return 0;
}
