// Device memory entry points used by Tensor. Built from cuda_memory.cu when the
// CUDA backend is compiled in, from cuda_memory_stub.cpp otherwise (where each
// call is an Error saying the build has no CUDA).
#pragma once

#include <cstddef>
#include <memory>

#include "core/tensor.h"

namespace nh {

bool cuda_available();
std::shared_ptr<void> cuda_allocate(size_t bytes);
void cuda_memset_zero(void* p, size_t bytes);
void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

}  // namespace nh
