// AdamW with decoupled weight decay (Loshchilov & Hutter), one fused pass per tensor, and the
// squared norm used for global-norm clipping. fp32 master weights and moments.
//   g = grad · grad_scale                      (1/tokens for the mean loss, times the clip factor)
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   w = w − lr·( m/(1−β1^t) / (sqrt(v/(1−β2^t)) + eps) + weight_decay·w )
// param, m, v: F32 (or F64) of one shape; grad: the same shape, any float dtype the backend reads.
#pragma once

#include <vector>

#include "ops/dispatch.h"

namespace nh {

struct AdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;  // 1-based, for the bias corrections
  double grad_scale = 1;
};

// With `copy` (param's shape, any float dtype), the updated param is also written there: the
// model's bf16 weights from fp32 masters, in the same pass.
namespace cpu {
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s,
                Tensor* copy = nullptr);
std::vector<double> sums_of_squares(const std::vector<Tensor>& ts);
}  // namespace cpu
namespace cuda {
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s,
                Tensor* copy = nullptr);
std::vector<double> sums_of_squares(const std::vector<Tensor>& ts);
}  // namespace cuda

inline void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s,
                       Tensor* copy = nullptr) {
  NH_DISPATCH(param.device(), adamw_step(param, grad, m, v, s, copy));
}
// Σ t² of each tensor (all on one device), accumulated in double in a fixed order (the same
// result on every run). On the GPU the host waits once for all of them.
inline std::vector<double> sums_of_squares(const std::vector<Tensor>& ts) {
  if (ts.empty()) return {};
  NH_DISPATCH_RETURN(ts[0].device(), sums_of_squares(ts));
}

}  // namespace nh
