#include "model/init.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace nh {

namespace {

// Fills p[0, n) of a tensor of `spec` from `rng`; p is element `first` of the tensor.
void fill(const ModelConfig& c, const ParamSpec& spec, Rng& rng, float* p, int64_t n,
          int64_t first) {
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
      for (int64_t i = 0; i < n; ++i) p[i] = float(std::log(double(first + i + 1)));
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
}

}  // namespace

Tensor init_parameter(const ModelConfig& c, const ParamSpec& spec, uint64_t seed) {
  Rng rng(seed ^ name_hash(spec.name));
  Tensor t = Tensor::empty(spec.shape, DType::F32);
  fill(c, spec, rng, t.data<float>(), t.numel(), 0);
  return t;
}

Tensor init_parameter_parallel(const ModelConfig& c, const ParamSpec& spec, uint64_t seed) {
  constexpr int64_t kChunk = int64_t(1) << 20;
  Tensor t = Tensor::empty(spec.shape, DType::F32);
  const int64_t n = t.numel(), chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < chunks; ++k) {
    Rng rng(seed ^ name_hash(spec.name) ^ (uint64_t(k) * 0x9e3779b97f4a7c15ull));
    const int64_t first = k * kChunk;
    fill(c, spec, rng, t.data<float>() + first, std::min(kChunk, n - first), first);
  }
  return t;
}

}  // namespace nh
