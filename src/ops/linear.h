// Linear layer, the GEMM every projection uses.
//   forward:  y[M, N] = x[M, K] · w[N, K]ᵀ + b[N]          (b optional: undefined Tensor)
//   backward: dx[M, K] = dy · w   (overwritten; skipped when dx is undefined)
//             dw[N, K] += dyᵀ · x,  db[N] += Σ_rows dy     (accumulated; skipped when undefined)
// x may have any leading shape; its last dimension is K. CPU: BLAS, fp32 or fp64.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw,
                     Tensor& db);
}  // namespace cpu
namespace cuda {
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw,
                     Tensor& db);
}  // namespace cuda

inline void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  NH_DISPATCH(x.device(), linear_forward(x, w, b, y));
}
inline void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx,
                            Tensor& dw, Tensor& db) {
  NH_DISPATCH(x.device(), linear_backward(x, w, dy, dx, dw, db));
}

}  // namespace nh
