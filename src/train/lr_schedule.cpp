#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace nh {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  const double p = std::clamp(double(step - warmup_steps) / double(decay_steps), 0.0, 1.0);
  if (kind == "constant") return lr;
  if (kind == "cosine") return min_lr + (lr - min_lr) * 0.5 * (1 + std::cos(M_PI * p));
  if (kind == "linear") return lr - (lr - min_lr) * p;
  if (kind == "wsd") {
    const double stable = 1 - decay_fraction;
    return p <= stable ? lr : lr - (lr - min_lr) * (p - stable) / decay_fraction;
  }
  throw Error("recipe", "lr_schedule", "cosine, linear, wsd or constant", kind);
}

}  // namespace nh
