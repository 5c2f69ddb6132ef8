// Initialisation of a model trained from scratch (SPEC §8), as transformers does it.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "model/config.h"
#include "model/params.h"

namespace nh {

// A fp32 tensor for `spec`; each parameter draws from its own stream derived from
// (seed, name), so adding a layer does not change the others.
Tensor init_parameter(const ModelConfig& config, const ParamSpec& spec, uint64_t seed);

}  // namespace nh
