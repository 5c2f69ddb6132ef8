// Deterministic reductions shared by the CUDA kernels: a fixed-tree block sum, a block max and the
// second stage of two-pass parameter-gradient sums (per-chunk partials added in chunk order).
#pragma once

#include "ops/cuda/common.cuh"

namespace nh::cuda {

// Sum of v over the block, returned to every thread; blockDim.x is a multiple of 32 (<= 1024).
// Fixed reduction tree, so the result does not depend on scheduling.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // a previous call's readers are done with warp_sums
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? warp_sums[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Max of v over the block, returned to every thread; blockDim.x is a multiple of 32 (<= 1024).
__device__ __forceinline__ float block_max(float v) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // a previous call's readers are done with warp_max
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? warp_max[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// out[i] += Σ_chunk partial[chunk, i], chunks in order (the deterministic second stage).
template <class T>
__global__ void add_partial_sums_kernel(const float* partial, int64_t chunks, int64_t n, T* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float s = 0.f;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * n + i];
  out[i] = from_f32<T>(to_f32(out[i]) + s);
}

}  // namespace nh::cuda
