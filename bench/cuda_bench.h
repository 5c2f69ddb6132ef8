// What the GPU benchmark programs share: CUDA error checks, random device tensors and event
// timing on the ops' stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace nh {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A GPU tensor in `dtype` of normal draws times `scale` plus `shift` (a random block repeated:
// the values do not change the time, and drawing a GiB on the host would).
inline Tensor random_gpu(const Shape& shape, DType dtype, uint64_t seed, double scale = 1,
                         double shift = 0) {
  const int64_t numel = shape_numel(shape), block_numel = std::min<int64_t>(numel, 1 << 20);
  Tensor block = Tensor::empty({block_numel}, DType::F32);
  Rng rng(seed);
  for (int64_t i = 0; i < block_numel; ++i)
    block.data<float>()[i] = float(rng.normal() * scale + shift);
  const Tensor gpu_block = block.to(dtype).to(Device::CUDA);
  Tensor t = Tensor::empty(shape, dtype, Device::CUDA), flat = t.reshape({numel});
  for (int64_t i = 0; i < numel; i += block_numel) {
    const int64_t len = std::min(block_numel, numel - i);
    Tensor dst = flat.slice0(i, i + len);
    dst.copy_from(gpu_block.slice0(0, len));
  }
  return t;
}

// Milliseconds of each of `samples` calls of `work` (after `warmup` untimed ones), timed by
// events on the ops' stream (cudaStreamPerThread), sorted.
inline std::vector<double> event_times_ms(const std::function<void()>& work, int samples,
                                          int warmup) {
  for (int i = 0; i < warmup; ++i) work();
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<double> ms;
  for (int i = 0; i < samples; ++i) {
    check(cudaEventRecord(start, cudaStreamPerThread), "event record");
    work();
    check(cudaEventRecord(stop, cudaStreamPerThread), "event record");
    check(cudaEventSynchronize(stop), "event synchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "event time");
    ms.push_back(double(t));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms;
}

}  // namespace nh
