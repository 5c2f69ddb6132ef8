// When a CPU loop is worth OpenMP threads: waking a team costs more than a small loop (and
// far more on a loaded machine), so loops touching fewer elements than this run on one thread.
#pragma once

#include <cstdint>

namespace nh::cpu {

inline constexpr int64_t kMinParallelWork = 65536;

}  // namespace nh::cpu
