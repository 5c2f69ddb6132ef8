// Initialisation of a model trained from scratch (SPEC §8), as transformers does it.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/config.h"
#include "model/params.h"

namespace nh {

// FNV-1a: a hash of a parameter's name that is the same on every platform, to derive its
// random stream.
inline uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// A fp32 tensor for `spec`; each parameter draws from its own stream derived from
// (seed, name), so adding a layer does not change the others.
Tensor init_parameter(const ModelConfig& config, const ParamSpec& spec, uint64_t seed);

// The same distributions drawn in parallel, each chunk of a tensor from its own stream of
// (seed, name, chunk): other values than init_parameter's, for the large random models of
// benchmarks, where one stream per tensor would take minutes.
Tensor init_parameter_parallel(const ModelConfig& config, const ParamSpec& spec, uint64_t seed);

}  // namespace nh
