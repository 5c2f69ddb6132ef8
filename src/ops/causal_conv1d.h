// Causal depthwise conv1d + SiLU of the Mamba-2 mixer (SPEC §2), channels last:
//   y[b,t,c] = silu( bias[c] + Σ_{j<K} w[c,j] · x[b, t-K+1+j, c] )
//   x, y [B, S, C]; w [C, K] (the HF [C, 1, K] weight, reshaped); bias [C] or undefined.
//   seq_idx: I32 [B, S] document index of each token, or undefined. A tap at a
//   position before 0 or in another document (seq_idx differs) reads 0, so no
//   document sees its neighbour.
//   backward: dx [B, S, C] overwritten; dw [C, K], dbias [C] accumulated (skipped when undefined).
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                           const Tensor& seq_idx, Tensor& y);
void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& bias,
                            const Tensor& seq_idx, const Tensor& dy, Tensor& dx, Tensor& dw,
                            Tensor& dbias);
}  // namespace cpu
namespace cuda {
void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                           const Tensor& seq_idx, Tensor& y);
void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& bias,
                            const Tensor& seq_idx, const Tensor& dy, Tensor& dx, Tensor& dw,
                            Tensor& dbias);
}  // namespace cuda

inline void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                  const Tensor& seq_idx, Tensor& y) {
  NH_DISPATCH(x.device(), causal_conv1d_forward(x, w, bias, seq_idx, y));
}
inline void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                   const Tensor& seq_idx, const Tensor& dy, Tensor& dx,
                                   Tensor& dw, Tensor& dbias) {
  NH_DISPATCH(x.device(), causal_conv1d_backward(x, w, bias, seq_idx, dy, dx, dw, dbias));
}

}  // namespace nh
