// LoRA's low-rank path beside a linear layer (Hu et al. 2021, in PEFT's form), added to the
// output of the base product in place: no [M, N] buffer of its own.
//   forward:  y[M, N] += s · (drop(x) · aᵀ) · bᵀ          x [M, K], a [r, K], b [N, r]
//   backward: dx[M, K] += s · drop((dy · b) · a)           (skipped when dx is undefined)
//             db[N, r] += s · dyᵀ · (drop(x) · aᵀ)
//             da[r, K] += s · (dy · b)ᵀ · drop(x)
// drop is dropout_forward(·, p, seed) (ops/dropout.h), the identity when p = 0; the backward
// draws the same mask from the same seed. x may have any leading shape (M rows of K); y and dy
// are any shape of M·N elements (as the linear layer's output).
#pragma once

#include <cstdint>

#include "ops/dispatch.h"

namespace nh {

struct LoraPath {
  double scale = 1;    // alpha / r, or alpha / √r (rsLoRA)
  double dropout = 0;  // p of the dropout on the path's input
  uint64_t seed = 0;   // the dropout mask's stream
};

namespace cpu {
void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                  Tensor& y);
void lora_backward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                   const Tensor& dy, Tensor& dx, Tensor& da, Tensor& db);
}  // namespace cpu
namespace cuda {
void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                  Tensor& y);
void lora_backward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                   const Tensor& dy, Tensor& dx, Tensor& da, Tensor& db);
}  // namespace cuda

inline void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                         Tensor& y) {
  NH_DISPATCH(x.device(), lora_forward(x, a, b, path, y));
}
inline void lora_backward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                          const Tensor& dy, Tensor& dx, Tensor& da, Tensor& db) {
  NH_DISPATCH(x.device(), lora_backward(x, a, b, path, dy, dx, da, db));
}

// Throws unless a [r, K] and b [N, r] fit x [..., K] and y (shared by both backends).
void check_lora_shapes(const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& y);

}  // namespace nh
