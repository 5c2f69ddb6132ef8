// One decoding step of a Mamba-2 layer for B sequences (SPEC §2), the O(1) updates that replace
// the causal convolution and the chunked scan once a prompt has been prefilled: the CPU
// reference pieces of mamba_decode_step (ops/mamba_decode_step.h), which the GPU runs fused.
//
// conv1d_step: the causal depthwise conv + SiLU for the newest token of each sequence.
//   x [B, C] this token's convolution input; conv_state [B, C, K-1] the previous K-1 inputs of
//   each channel, oldest first (zeros before the sequence starts), updated in place: shifted by
//   one and x appended. w [C, K] (the HF [C, 1, K] weight, reshaped); bias [C] or undefined.
//   y [B, C] = silu(bias[c] + Σ_{j<K-1} w[c, j]·state[b, c, j] + w[c, K-1]·x[b, c]), that is
//   causal_conv1d_forward's last position over the window [state, x].
//   x, conv_state, w, bias, y share one float dtype.
//
// ssd_step: the SSM recurrence for the newest token (group g = h / (H/G)):
//   state[b,h] = exp(dt[b,h]·A[h]) · state[b,h] + dt[b,h] · x[b,h,:] ⊗ Bm[b,g,:]
//   y[b,h,:] = state[b,h] · Cm[b,g,:] + D[h] · x[b,h,:]
//   x, y [B, H, P]; dt [B, H] (already softplus'ed and clamped); A [H] (negative); Bm, Cm
//   [B, G, N]; D [H] or undefined; state [B, H, P, N] updated in place, F32 (F64 when x is F64),
//   the final_state of ssd_forward (so a prefill hands over to decoding without conversion).
//   x, dt, A, Bm, Cm, D, y share one float dtype.
#pragma once

#include "core/tensor.h"

namespace nh::cpu {
void conv1d_step(const Tensor& x, Tensor& conv_state, const Tensor& w, const Tensor& bias,
                 Tensor& y);
void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
              const Tensor& Cm, const Tensor& D, Tensor& state, Tensor& y);
}  // namespace nh::cpu
