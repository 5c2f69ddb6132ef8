// The Mamba-2 discretisation parameters (SPEC §2):
//   dt = clamp(softplus(dt_raw + dt_bias), lo, hi)    dt_raw, dt [T, H]; dt_bias [H]
//        softplus as torch computes it: x for x > 20, log1p(exp(x)) otherwise
//   A  = -exp(A_log)                                  A_log, A [H]
// backward: ddt_raw [T, H] overwritten (zero where the clamp is active), ddt_bias [H]
// accumulated; dA_log [H] += dA · A.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void mamba_dt_forward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                      Tensor& dt);
void mamba_dt_backward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                       const Tensor& ddt, Tensor& ddt_raw, Tensor& ddt_bias);
void mamba_a_forward(const Tensor& A_log, Tensor& A);
void mamba_a_backward(const Tensor& A, const Tensor& dA, Tensor& dA_log);
}  // namespace cpu
namespace cuda {
void mamba_dt_forward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                      Tensor& dt);
void mamba_dt_backward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                       const Tensor& ddt, Tensor& ddt_raw, Tensor& ddt_bias);
void mamba_a_forward(const Tensor& A_log, Tensor& A);
void mamba_a_backward(const Tensor& A, const Tensor& dA, Tensor& dA_log);
}  // namespace cuda

inline void mamba_dt_forward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                             Tensor& dt) {
  NH_DISPATCH(dt_raw.device(), mamba_dt_forward(dt_raw, dt_bias, lo, hi, dt));
}
inline void mamba_dt_backward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                              const Tensor& ddt, Tensor& ddt_raw, Tensor& ddt_bias) {
  NH_DISPATCH(dt_raw.device(), mamba_dt_backward(dt_raw, dt_bias, lo, hi, ddt, ddt_raw, ddt_bias));
}
inline void mamba_a_forward(const Tensor& A_log, Tensor& A) {
  NH_DISPATCH(A_log.device(), mamba_a_forward(A_log, A));
}
inline void mamba_a_backward(const Tensor& A, const Tensor& dA, Tensor& dA_log) {
  NH_DISPATCH(A.device(), mamba_a_backward(A, dA, dA_log));
}

}  // namespace nh
