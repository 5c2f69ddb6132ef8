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

#include <string>

#include "core/error.h"
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

// The argument checks that do not depend on the device, shared by the CPU and CUDA
// implementations (each adds its own: the CPU the label values, CUDA the devices and dtypes).
namespace lm_head {

struct HeadDims {
  int64_t rows, dim, vocab;
};

// h [T, D] (any leading shape) and w [V, D].
inline HeadDims check_shapes(const Tensor& h, const Tensor& w) {
  if (w.ndim() != 2 || h.ndim() < 1 || h.size(-1) != w.size(1))
    throw Error("lm_head_loss", "h and w shapes", "h [T, D] and w [V, D]",
                "h " + shape_str(h.shape()) + ", w " + shape_str(w.shape()));
  return {w.size(1) ? h.numel() / w.size(1) : 0, w.size(1), w.size(0)};
}

// w of h's dtype; labels I64 with T elements.
inline void check_types(const Tensor& h, const Tensor& w, const Tensor& labels, const HeadDims& d) {
  if (w.dtype() != h.dtype())
    throw Error("lm_head_loss", "w dtype", dtype_name(h.dtype()), dtype_name(w.dtype()));
  if (labels.dtype() != DType::I64)
    throw Error("lm_head_loss", "labels dtype", "I64", dtype_name(labels.dtype()));
  if (labels.numel() != d.rows)
    throw Error("lm_head_loss", "labels shape", std::to_string(d.rows) + " elements",
                shape_str(labels.shape()));
}

// dh of h's shape and dtype; dw, when defined, of w's.
inline void check_gradients(const Tensor& h, const Tensor& w, const Tensor& dh, const Tensor& dw) {
  if (dh.shape() != h.shape() || dh.dtype() != h.dtype())
    throw Error("lm_head_loss", "dh",
                std::string(dtype_name(h.dtype())) + " " + shape_str(h.shape()),
                std::string(dtype_name(dh.dtype())) + " " + shape_str(dh.shape()));
  if (dw.defined() && (dw.shape() != w.shape() || dw.dtype() != w.dtype()))
    throw Error("lm_head_loss", "dw",
                std::string(dtype_name(w.dtype())) + " " + shape_str(w.shape()),
                std::string(dtype_name(dw.dtype())) + " " + shape_str(dw.shape()));
}

}  // namespace lm_head

}  // namespace nh
