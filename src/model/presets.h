// The published model configurations of configs/models/, compiled into the program.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace nh {

// (name, config.json text) pairs, sorted by name.
const std::vector<std::pair<std::string, std::string>>& preset_configs();
// The named preset; an Error listing the known names when there is none.
ModelConfig preset_config(const std::string& name);

}  // namespace nh
