// Device memory for Tensor: stream-ordered allocation from the default pool.
#include <cuda_runtime.h>

#include <string>

#include "core/cuda_memory.h"

namespace nh {

namespace {
void check(cudaError_t e, const char* what, size_t bytes = 0) {
  if (e == cudaSuccess) return;
  std::string msg = std::string("CUDA ") + what + ": " + cudaGetErrorString(e);
  if (e == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    msg += " (asked for " + std::to_string(bytes >> 20) + " MiB, " + std::to_string(free_b >> 20) +
           " MiB free; a smaller micro batch or recompute would help)";
  }
  throw Error(msg);
}
}  // namespace

bool cuda_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::shared_ptr<void> cuda_allocate(size_t bytes) {
  void* p = nullptr;
  check(cudaMallocAsync(&p, bytes, 0), "cudaMallocAsync", bytes);
  return std::shared_ptr<void>(p, [](void* q) { cudaFreeAsync(q, 0); });
}

void cuda_memset_zero(void* p, size_t bytes) { check(cudaMemsetAsync(p, 0, bytes, 0), "memset"); }

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  cudaMemcpyKind kind = src_device == Device::CPU
                            ? (dst_device == Device::CPU ? cudaMemcpyHostToHost
                                                         : cudaMemcpyHostToDevice)
                            : (dst_device == Device::CPU ? cudaMemcpyDeviceToHost
                                                         : cudaMemcpyDeviceToDevice);
  check(cudaMemcpy(dst, src, bytes, kind), "memcpy");
}

}  // namespace nh
