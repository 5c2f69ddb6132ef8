// RMSNorm over the last dimension (SPEC §1), statistics in fp32 (or fp64):
//   forward:  rstd[r] = 1 / sqrt(mean_d x[r,d]² + eps);  y[r,d] = w[d] · x[r,d] · rstd[r]
//             x, y [R, D] (any leading shape); w [D]; rstd [R] saved for the backward.
//   backward: dx[R, D] overwritten; dw[D] accumulated.
//   add_rmsnorm_forward: x += delta (x's dtype, one rounding), then forward on the new x — a
//             residual add and the next pre-norm in one pass (decoding).
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);
void add_rmsnorm_forward(Tensor& x, const Tensor& delta, const Tensor& w, double eps, Tensor& y,
                         Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dw);
}  // namespace cpu
namespace cuda {
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);
void add_rmsnorm_forward(Tensor& x, const Tensor& delta, const Tensor& w, double eps, Tensor& y,
                         Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dw);
}  // namespace cuda

inline void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  NH_DISPATCH(x.device(), rmsnorm_forward(x, w, eps, y, rstd));
}
inline void add_rmsnorm_forward(Tensor& x, const Tensor& delta, const Tensor& w, double eps,
                                Tensor& y, Tensor& rstd) {
  NH_DISPATCH(x.device(), add_rmsnorm_forward(x, delta, w, eps, y, rstd));
}
inline void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                             Tensor& dx, Tensor& dw) {
  NH_DISPATCH(x.device(), rmsnorm_backward(x, w, rstd, dy, dx, dw));
}

}  // namespace nh
