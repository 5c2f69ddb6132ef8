// Dropout with a stateless mask: y[i] = x[i] / (1 − p) where dropout_keep(seed, i, p), else 0.
// The mask is a hash of (seed, i), so the CPU and the GPU draw the same one, and running the op
// again with the same seed (recomputation, or the backward on the gradient) repeats it.
// x and y have the same number of elements and dtype; y may be x. p in [0, 1).
#pragma once

#include <cstdint>

#include "ops/dispatch.h"

#ifdef __CUDACC__
#define NH_HOST_DEVICE __host__ __device__
#else
#define NH_HOST_DEVICE
#endif

namespace nh {

// splitmix64 of (seed, i) -> 24 uniform bits in [0, 1), kept when >= p.
NH_HOST_DEVICE inline bool dropout_keep(uint64_t seed, int64_t i, float p) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t(i) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(z >> 40) * 0x1.0p-24f >= p;
}

namespace cpu {
void dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor& y);
}  // namespace cpu
namespace cuda {
void dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor& y);
}  // namespace cuda

inline void dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor& y) {
  NH_DISPATCH(x.device(), dropout_forward(x, p, seed, y));
}

}  // namespace nh
