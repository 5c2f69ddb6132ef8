// Used when the build has no CUDA backend (NH_CUDA=OFF, or AUTO without nvcc).
#include "core/cuda_memory.h"

namespace nh {

namespace {
[[noreturn]] void no_cuda() {
  throw Error("this nemotronh was built without CUDA (configure with -DNH_CUDA=ON)");
}
}  // namespace

bool cuda_available() { return false; }
std::shared_ptr<void> cuda_allocate(size_t) { no_cuda(); }
void cuda_memset_zero(void*, size_t) { no_cuda(); }
void cuda_copy(void*, Device, const void*, Device, size_t) { no_cuda(); }
void cuda_convert(void*, DType, const void*, DType, int64_t) { no_cuda(); }
void cuda_synchronize() {}
std::string cuda_device_name() { return ""; }
void cuda_profiler(bool) {}
DeviceMemoryStats device_memory_stats() { return {}; }
void reset_device_memory_peak() {}

}  // namespace nh
