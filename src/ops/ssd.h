// The Mamba-2 state-space scan (SSD, SPEC §2). For each batch b, head h
// (group g = h / (H/G)) and token t, with state S ∈ R^{P×N} (fp32 or fp64):
//   S_t = exp(dt[t,h]·A[h]) · S_{t-1} + dt[t,h] · x[t,h,:] ⊗ B[t,g,:]
//   y[t,h,:] = S_t · C[t,g,:] + D[h] · x[t,h,:]
//   x, y [B, S, H, P]; dt [B, S, H] (already softplus'ed and clamped); A [H] (negative);
//   Bm, Cm [B, S, G, N]; D [H] or undefined.
//   seq_idx: I32 [B, S] or undefined: S restarts at zero where the document index changes.
//   initial_state [B, H, P, N] or undefined (zero); final_state [B, H, P, N] written when defined
//   (the state after the last token of each row), in x's dtype or, on the GPU, F32 (the state
//   decoding continues from).
// ssd_forward computes it chunk by chunk (chunk_size tokens: masked matrix products inside a
// chunk, states passed between chunks); ssd_recurrence_forward is the plain token-by-token
// recurrence, the oracle the chunked form is tested against.
//   backward: dx, ddt, dBm, dCm overwritten; dA [H], dD [H] accumulated; dinitial_state
//   [B, H, P, N] overwritten when defined.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                 const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                 const Tensor& initial_state, Tensor& y, Tensor& final_state);
void ssd_backward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                  const Tensor& initial_state, const Tensor& dy, Tensor& dx, Tensor& ddt,
                  Tensor& dA, Tensor& dBm, Tensor& dCm, Tensor& dD, Tensor& dinitial_state);
void ssd_recurrence_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                            const Tensor& Cm, const Tensor& D, const Tensor& seq_idx,
                            const Tensor& initial_state, Tensor& y, Tensor& final_state);
}  // namespace cpu
namespace cuda {
void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                 const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                 const Tensor& initial_state, Tensor& y, Tensor& final_state);
void ssd_backward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                  const Tensor& initial_state, const Tensor& dy, Tensor& dx, Tensor& ddt,
                  Tensor& dA, Tensor& dBm, Tensor& dCm, Tensor& dD, Tensor& dinitial_state);
}  // namespace cuda

inline void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                        const Tensor& Cm, const Tensor& D, int64_t chunk_size,
                        const Tensor& seq_idx, const Tensor& initial_state, Tensor& y,
                        Tensor& final_state) {
  NH_DISPATCH(x.device(),
              ssd_forward(x, dt, A, Bm, Cm, D, chunk_size, seq_idx, initial_state, y, final_state));
}
inline void ssd_backward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                         const Tensor& Cm, const Tensor& D, int64_t chunk_size,
                         const Tensor& seq_idx, const Tensor& initial_state, const Tensor& dy,
                         Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dBm, Tensor& dCm, Tensor& dD,
                         Tensor& dinitial_state) {
  NH_DISPATCH(x.device(), ssd_backward(x, dt, A, Bm, Cm, D, chunk_size, seq_idx, initial_state, dy,
                                       dx, ddt, dA, dBm, dCm, dD, dinitial_state));
}

}  // namespace nh
