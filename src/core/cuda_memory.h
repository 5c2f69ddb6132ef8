// Device memory entry points used by Tensor. Built from cuda_memory.cu when the
// CUDA backend is compiled in, from cuda_memory_stub.cpp otherwise (where each
// call is an Error saying the build has no CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace nh {

bool cuda_available();
// Stream-ordered allocation on the stream the ops run on; freed memory stays in the pool.
std::shared_ptr<void> cuda_allocate(size_t bytes);
void cuda_memset_zero(void* p, size_t bytes);
// Copies between any two devices; returns once a copy to the host has arrived (copies from
// host memory, which is pageable, are staged before returning).
void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// dst[i] = src[i] converted, both on the GPU; float dtypes F32, F16 and BF16.
void cuda_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n);
// Waits until every op queued so far has finished.
void cuda_synchronize();
// The current GPU's name ("NVIDIA H100 80GB HBM3"); empty without one.
std::string cuda_device_name();
// Starts or stops the range a profiler started with `ncu --profile-from-start off` records.
void cuda_profiler(bool on);

// Bytes of device memory held by tensors now and the most held since the last reset, and what
// the device has free and in total.
struct DeviceMemoryStats {
  int64_t current = 0, peak = 0, free = 0, total = 0;
};
DeviceMemoryStats device_memory_stats();
void reset_device_memory_peak();

}  // namespace nh
