// Elementwise activations (any shape; y and dx the same shape as x).
//   relu2:  y = relu(x)²               dx = dy · 2·relu(x)          (SPEC §4)
//   silu:   y = x · sigmoid(x)         dx = dy · σ(x)(1 + x(1 − σ(x)))
// Backward outputs are overwritten.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void relu2_forward(const Tensor& x, Tensor& y);
void relu2_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void silu_forward(const Tensor& x, Tensor& y);
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
}  // namespace cpu
namespace cuda {
void relu2_forward(const Tensor& x, Tensor& y);
void relu2_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
void silu_forward(const Tensor& x, Tensor& y);
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);
}  // namespace cuda

inline void relu2_forward(const Tensor& x, Tensor& y) { NH_DISPATCH(x.device(), relu2_forward(x, y)); }
inline void relu2_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  NH_DISPATCH(x.device(), relu2_backward(x, dy, dx));
}
inline void silu_forward(const Tensor& x, Tensor& y) { NH_DISPATCH(x.device(), silu_forward(x, y)); }
inline void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  NH_DISPATCH(x.device(), silu_backward(x, dy, dx));
}

}  // namespace nh
