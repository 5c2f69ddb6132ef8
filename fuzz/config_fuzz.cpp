// libFuzzer target: bytes as config.json text. Every rejection must be an nh::Error (no other
// exception escapes, no crash), and every accepted config must survive a save: to_hf_json then
// parse_config gives the same struct.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "model/config.h"
#include "model/memory_estimate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  nh::ModelConfig config;
  try {
    config = nh::parse_config_text(text, "fuzz/config.json");
  } catch (const nh::Error&) {
    return 0;
  }
  try {
    (void)nh::count_parameters(config);
  } catch (const nh::Error&) {
    // Sizes within the per-key bounds can still overflow the total (many experts).
  }
  nh::ModelConfig back = nh::parse_config(nh::to_hf_json(config), "fuzz/saved.json");
  back.raw = config.raw = nlohmann::json::object();
  back.mamba_ssm_layout = config.mamba_ssm_layout = false;
  if (!(back == config)) __builtin_trap();
  return 0;
}
