// Token embedding lookup.
//   forward:  out[T, D] = weight[ids[t], :]           ids: I64 [T] (any shape of T elements)
//   backward: dweight[V, D] += Σ_t onehot(ids[t]) dout[t]   (accumulated)
// An id outside [0, V) is an Error naming the id and V. forward with `ids_checked` (the caller
// checked them on the host, as decoding does) skips the GPU's check and its read-back, so the
// lookup can be captured in a CUDA graph; an id outside [0, V) then gives a row of zeros.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out, bool ids_checked);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight);
}  // namespace cpu
namespace cuda {
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out, bool ids_checked);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight);
}  // namespace cuda

inline void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out,
                              bool ids_checked = false) {
  NH_DISPATCH(weight.device(), embedding_forward(ids, weight, out, ids_checked));
}
inline void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight) {
  NH_DISPATCH(dout.device(), embedding_backward(ids, dout, dweight));
}

}  // namespace nh
