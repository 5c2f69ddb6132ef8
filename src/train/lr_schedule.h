// Learning-rate schedules (Megatron's names): linear warmup from 0 over warmup_steps, then
//   constant: lr
//   cosine:   min_lr + (lr − min_lr)·(1 + cos(π·p))/2,  p = progress after warmup in [0, 1]
//   linear:   lr − (lr − min_lr)·p
//   wsd:      warmup–stable–decay: lr until the last decay_fraction of the steps, then linear
//             down to min_lr
#pragma once

#include <cstdint>
#include <string>

namespace nh {

struct LrSchedule {
  std::string kind = "cosine";
  double lr = 3e-4, min_lr = 0;
  int64_t warmup_steps = 0, total_steps = 1;
  double decay_fraction = 0.1;  // wsd only
  // The rate for optimizer step `step` (0-based).
  double at(int64_t step) const;
};

}  // namespace nh
