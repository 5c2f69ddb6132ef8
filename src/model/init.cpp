#include "model/init.h"

#include <cmath>

#include "core/rng.h"

namespace nh {

Tensor init_parameter(const ModelConfig& c, const ParamSpec& spec, uint64_t seed) {
  Rng rng(seed ^ name_hash(spec.name));
  Tensor t = Tensor::empty(spec.shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  switch (spec.init) {
    case Init::Normal:
      for (int64_t i = 0; i < n; ++i) p[i] = float(c.initializer_range * rng.normal());
      break;
    case Init::Zero:
      for (int64_t i = 0; i < n; ++i) p[i] = 0.f;
      break;
    case Init::One:
      for (int64_t i = 0; i < n; ++i) p[i] = 1.f;
      break;
    case Init::ALogRange:  // A = 1..H
      for (int64_t i = 0; i < n; ++i) p[i] = float(std::log(double(i + 1)));
      break;
    case Init::DtBias: {
      // dt log-uniform in [time_step_min, time_step_max], floored, then softplus⁻¹.
      const double lo = std::log(c.time_step_min > 0 ? c.time_step_min : c.time_step_floor);
      const double hi = std::log(c.time_step_max);
      for (int64_t i = 0; i < n; ++i) {
        const double dt = std::max(std::exp(lo + rng.uniform() * (hi - lo)), c.time_step_floor);
        p[i] = float(dt + std::log(-std::expm1(-dt)));
      }
      break;
    }
    case Init::OutProjRescaled: {
      // Kaiming-uniform with a = √5 gives the bound 1/√fan_in; then divided by √L.
      const double bound = 1.0 / std::sqrt(double(spec.shape.back()));
      const double scale = 1.0 / std::sqrt(double(c.layers.size()));
      for (int64_t i = 0; i < n; ++i) p[i] = float(rng.uniform(-bound, bound) * scale);
      break;
    }
  }
  return t;
}

}  // namespace nh
