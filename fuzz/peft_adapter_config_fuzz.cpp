// libFuzzer target: bytes as a PEFT adapter_config.json. Every rejection must be an nh::Error
// (no other exception escapes, no crash), an accepted config must hold valid settings, and
// choosing its targets in a small MoE model (PEFT's name matching, its regular expression) must
// either succeed or be an nh::Error.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "model/lora.h"
#include "model/peft_adapter.h"
#include "model/presets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nh::ModelConfig model = nh::preset_config("tiny-moe");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  nh::LoraConfig config;
  try {
    config = nh::parse_peft_adapter_config(text, "fuzz/adapter_config.json");
  } catch (const nh::Error&) {
    return 0;
  }
  if (config.r < 1 || !(config.dropout >= 0 && config.dropout < 1) || !std::isfinite(config.alpha))
    __builtin_trap();
  try {
    for (const nh::LoraTarget& t : nh::lora_targets(model, config, "fuzz"))
      if (t.in < config.r || t.out < config.r) __builtin_trap();
  } catch (const nh::Error&) {
  }
  return 0;
}
