// The GPU twin of src/ops/cpu/low_rank.h: the products of a low-rank update
// y += s · (x · aᵀ) · bᵀ and of its gradients over device pointers in `dt` (F32 or BF16), through
// cuBLASLt; shared by the LoRA op and the experts' LoRA pairs. Defined in lora.cu.
//   x [m, k], a [r, k], b [n, r], y [m, n], dy [m, n]; xa and g are [m, r] scratch.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace nh::cuda {

// y += s · (x · aᵀ) · bᵀ.
void add_low_rank(const void* x, const void* a, const void* b, float s, int64_t m, int64_t n,
                  int64_t k, int64_t r, void* xa, void* y, DType dt);

// db += s · dyᵀ · (x · aᵀ), da += s · gᵀ · x with g = dy · b, which is left in `g` for the
// input gradient (s · g · a).
void low_rank_grads(const void* x, const void* a, const void* b, const void* dy, float s,
                    int64_t m, int64_t n, int64_t k, int64_t r, void* xa, void* g, void* da,
                    void* db, DType dt);

}  // namespace nh::cuda
