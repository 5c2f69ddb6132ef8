// The products of a low-rank update y += s · (x · aᵀ) · bᵀ and of its gradients, over raw
// row-major blocks: shared by the LoRA op (ops/lora.h) and the experts' LoRA pairs (ops/moe.h).
//   x [m, k], a [r, k], b [n, r], y [m, n], dy [m, n]; xa and g are [m, r] scratch.
#pragma once

#include <cstdint>

#include "ops/cpu/gemm.h"

namespace nh::cpu {

// y += s · (x · aᵀ) · bᵀ.
template <class T>
void add_low_rank(const T* x, const T* a, const T* b, T s, int64_t m, int64_t n, int64_t k,
                  int64_t r, T* xa, T* y) {
  gemm<T>(false, true, m, r, k, T(1), x, k, a, k, T(0), xa, r);
  gemm<T>(false, true, m, n, r, s, xa, r, b, r, T(1), y, n);
}

// db += s · dyᵀ · (x · aᵀ), da += s · gᵀ · x with g = dy · b, which is left in `g` for the
// input gradient (s · g · a).
template <class T>
void low_rank_grads(const T* x, const T* a, const T* b, const T* dy, T s, int64_t m, int64_t n,
                    int64_t k, int64_t r, T* xa, T* g, T* da, T* db) {
  gemm<T>(false, true, m, r, k, T(1), x, k, a, k, T(0), xa, r);
  gemm<T>(false, false, m, r, n, T(1), dy, n, b, r, T(0), g, r);
  gemm<T>(true, false, n, r, m, s, dy, n, xa, r, T(1), db, r);
  gemm<T>(true, false, r, k, m, s, g, r, x, k, T(1), da, k);
}

}  // namespace nh::cpu
