// The fused bf16 SSD kernels (ssd_fused.cu) that ssd.cu runs instead of its tile kernels where
// the shapes allow: chunks of 128 tokens, head_dim 64 or 80, a state of 128 or 256 and 16-byte
// aligned rows (every Nemotron-H and Nemotron 3 model). Each kernel stages a chunk's operands
// whole in shared memory once and multiplies them on the tensor cores with the fragments chained
// in registers; the backward forms dy·xᵀ and C·Bᵀ per group (summed over the group's heads)
// instead of per head.
//
// All pointers are the tensors and buffers of ssd.cu (layouts in ssd_chunk.cuh), with the states
// entering each chunk (S_in) and their gradients (dS_out) in bf16; the per-token outputs are one
// part of [parts, B, S, H] fp32 for ssd_detail::finish_dt_kernel.
#pragma once

#include <initializer_list>

#include "ops/cuda/ssd_chunk.cuh"

namespace nh::cuda::ssd_fused {

using ssd_detail::SsdDims;

constexpr int kChunk = 128;
constexpr int kStateBlock = 64;  // state columns per block of the kernels that split the state

// Whether the fused kernels take these dimensions and pointers.
bool supports(const SsdDims& d, std::initializer_list<const void*> rows);

// out[b, c, h] (fp32 P × N) = Σ_t weight_t (· dt_t) u_t ⊗ v_t over the chunk's tokens.
void chunk_state(const SsdDims& d, const float* weight, const bf16* dt, const bf16* u,
                 const bf16* v, float* out);

// Forward outputs: y = (L ∘ C·Bᵀ)·(dt x) + decay_in · C S_inᵀ + D x.
void scan(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* Bm, const bf16* Cm,
          const bf16* D, const float* cs, const float* decay_in, const int32_t* doc,
          const bf16* states, bf16* y);

// Backward, per head: dxd = (L ∘ B·Cᵀ)·dy + decay_out · B dS_outᵀ, dx = dt dxd + D dy, and per
// token x·dxd (ddt_part), dy·x (dD_part) and v_t = dt_t decay_out_t x_t·(dS_out B_t) (v_part).
void dx(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* dy, const bf16* Bm,
        const bf16* Cm, const bf16* D, const float* cs, const float* decay_out,
        const int32_t* doc, const bf16* dstates, bf16* dx, float* ddt_part, float* dD_part,
        float* v_part);

// Backward, per group: dcb = Σ_heads L ∘ dt_j (dy_i·x_j) (bf16 [B, n_chunks, G, Q, Q]) and per
// head the intra-chunk terms t_ij = that head's (L ∘ dt_j dy_i·x_j)_ij (C_i·B_j), summed over j
// into rows and over i into cols.
void dcb(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* dy, const bf16* Bm,
         const bf16* Cm, const float* cs, const int32_t* doc, bf16* dcb, float* rows,
         float* cols);

// Backward, per group: dC = dcb·B + Σ_heads decay_in dy S_in with off_part (per state block,
// head and token: C_t·(decay_in_t dy_t S_in)), and dB = dcbᵀ·C + Σ_heads decay_out dt x dS_out.
void dC(const SsdDims& d, const bf16* dy, const bf16* Bm, const bf16* Cm, const float* decay_in,
        const bf16* states, const bf16* dcb, bf16* dCm, float* off_part);
void dB(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* Cm, const float* decay_out,
        const bf16* dstates, const bf16* dcb, bf16* dBm);

}  // namespace nh::cuda::ssd_fused
