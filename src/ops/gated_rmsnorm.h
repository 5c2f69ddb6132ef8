// Gated grouped RMSNorm of the Mamba-2 mixer (SPEC §2, norm_before_gate = False):
//   g = x · silu(z);  each row's C channels form `groups` groups of C/groups channels;
//   rstd[r, j] = 1 / sqrt(mean over group j of g² + eps);  y = w · g · rstd
//   x, z, y [R, C] (any leading shape); w [C]; rstd [R, groups] saved for the backward.
//   backward: dx, dz [R, C] overwritten; dw [C] accumulated. fp32 (or fp64) throughout.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void gated_rmsnorm_forward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                           double eps, Tensor& y, Tensor& rstd);
void gated_rmsnorm_backward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                            const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dz,
                            Tensor& dw);
}  // namespace cpu
namespace cuda {
void gated_rmsnorm_forward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                           double eps, Tensor& y, Tensor& rstd);
void gated_rmsnorm_backward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                            const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dz,
                            Tensor& dw);
}  // namespace cuda

inline void gated_rmsnorm_forward(const Tensor& x, const Tensor& z, const Tensor& w,
                                  int64_t groups, double eps, Tensor& y, Tensor& rstd) {
  NH_DISPATCH(x.device(), gated_rmsnorm_forward(x, z, w, groups, eps, y, rstd));
}
inline void gated_rmsnorm_backward(const Tensor& x, const Tensor& z, const Tensor& w,
                                   int64_t groups, const Tensor& rstd, const Tensor& dy,
                                   Tensor& dx, Tensor& dz, Tensor& dw) {
  NH_DISPATCH(x.device(), gated_rmsnorm_backward(x, z, w, groups, rstd, dy, dx, dz, dw));
}

}  // namespace nh
