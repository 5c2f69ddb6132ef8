// Causal grouped-query attention without positional encoding (SPEC §3):
//   o[b,t,h] = Σ_{s≤t, same document} softmax_s(scale · q[b,t,h]·k[b,s,kh]) v[b,s,kh],
//   kh = h / (Hq/Hkv). q, o [B, S, Hq, dh]; k, v [B, S, Hkv, dh]; seq_idx I32 [B, S] or
//   undefined (one document per row). lse [B, Hq, S]: log-sum-exp of the scaled scores,
//   saved for the backward. Softmax in fp32 (or fp64); never holds S×S scores for all heads.
//   backward: dq, dk, dv overwritten.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                       double scale, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cpu
namespace cuda {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                       double scale, Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cuda

inline void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& seq_idx, double scale, Tensor& out, Tensor& lse) {
  NH_DISPATCH(q.device(), attention_forward(q, k, v, seq_idx, scale, out, lse));
}
inline void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& seq_idx, double scale, const Tensor& out,
                               const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                               Tensor& dv) {
  NH_DISPATCH(q.device(), attention_backward(q, k, v, seq_idx, scale, out, lse, dout, dq, dk, dv));
}

}  // namespace nh
