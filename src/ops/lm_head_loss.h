// LM head and cross-entropy (SPEC §6), computed in chunks of rows so the [T, V]
// logits are never all held at once (unless the caller asks for them).
//   logits[t] = h[t] · wᵀ, h [T, D], w [V, D]; labels I64 [T], already aligned (the label of
//   row t is the target of position t; -100 = ignored). Loss terms in fp32 (or fp64).
//   forward: returns Σ over non-ignored rows of (logsumexp(logits[t]) − logits[t, label]) and
//            the number of such rows; writes logits [T, V] too when `logits` is defined.
//   backward: dh [T, D] overwritten, dw [V, D] accumulated (skipped when undefined: a frozen
//             head); each row's gradient is (softmax − onehot) · grad_scale (1/count for the
//             mean loss). Ignored rows get 0.
//   forward_backward: both at once (the loss of forward without logits, the gradients of
//             backward), three matrix products per chunk of rows instead of four; for training,
//             where the loss scale is known before the forward.
// A label outside [0, V) other than -100 is an Error.
#pragma once

#include "ops/dispatch.h"

namespace nh {

struct LossSum {
  double sum = 0;
  int64_t count = 0;
};

namespace cpu {
LossSum lm_head_loss_forward(const Tensor& h, const Tensor& w, const Tensor& labels,
                             Tensor& logits);
void lm_head_loss_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                           double grad_scale, Tensor& dh, Tensor& dw);
LossSum lm_head_loss_forward_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                      double grad_scale, Tensor& dh, Tensor& dw);
}  // namespace cpu
namespace cuda {
LossSum lm_head_loss_forward(const Tensor& h, const Tensor& w, const Tensor& labels,
                             Tensor& logits);
void lm_head_loss_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                           double grad_scale, Tensor& dh, Tensor& dw);
LossSum lm_head_loss_forward_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                      double grad_scale, Tensor& dh, Tensor& dw);
}  // namespace cuda

inline LossSum lm_head_loss_forward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                    Tensor& logits) {
  NH_DISPATCH_RETURN(h.device(), lm_head_loss_forward(h, w, labels, logits));
}
inline void lm_head_loss_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                  double grad_scale, Tensor& dh, Tensor& dw) {
  NH_DISPATCH(h.device(), lm_head_loss_backward(h, w, labels, grad_scale, dh, dw));
}
inline LossSum lm_head_loss_forward_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                             double grad_scale, Tensor& dh, Tensor& dw) {
  NH_DISPATCH_RETURN(h.device(), lm_head_loss_forward_backward(h, w, labels, grad_scale, dh, dw));
}

}  // namespace nh
