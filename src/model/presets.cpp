#include "model/presets.h"

#include "core/error.h"

namespace nh {

ModelConfig preset_config(const std::string& name) {
  std::string known;
  for (const auto& [n, text] : preset_configs()) {
    if (n == name) return parse_config_text(text, "preset " + name);
    known += (known.empty() ? "" : ", ") + n;
  }
  throw Error("--preset", "name", "one of " + known, name);
}

}  // namespace nh
