// Token embedding lookup.
//   forward:  out[T, D] = weight[ids[t], :]           ids: I64 [T] (any shape of T elements)
//   backward: dweight[V, D] += Σ_t onehot(ids[t]) dout[t]   (accumulated)
// An id outside [0, V) is an Error naming the id and V.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight);
}  // namespace cpu
namespace cuda {
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight);
}  // namespace cuda

inline void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out) {
  NH_DISPATCH(weight.device(), embedding_forward(ids, weight, out));
}
inline void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight) {
  NH_DISPATCH(dout.device(), embedding_backward(ids, dout, dweight));
}

}  // namespace nh
