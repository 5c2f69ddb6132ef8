// One decoding step of the Mamba-2 mixer for B sequences, from the in_proj output to the SSM
// output (SPEC §2), on the state rows the batch entries name.
//
//   zxbcdt [B, 2·d_inner + 2·G·N + H]: the columns z | xBC | dt_raw (z is not read: the gated
//   norm after the step reads it). rows I32 [B], on the device of the data: entry b updates state
//   row rows[b]; rows[b] < 0 marks a padding entry (y[b] = 0, no state touched). The rows of one
//   call are distinct and below R: the CPU checks it; the GPU cannot without a sync, and treats a
//   row >= R as padding so that nothing out of bounds is touched.
//   conv_w [C, K] with C = d_inner + 2·G·N (the HF [C, 1, K] weight, reshaped); conv_b [C] or
//   undefined; conv_state [R, C, K-1], oldest input first.
//   dt_bias, A_log [H]; D [H] or undefined; dt_min, dt_max the clamp of mamba_dt_forward (0 and
//   +inf when the model sets no limit).
//   ssm_state [R, H, P, N] (P = d_inner / H, N = state_size, G = groups dividing H): F32, or F64
//   for F64 inputs on the CPU. y [B, H, P].
// For each entry b with row r = rows[b] it is exactly
//   xbc = conv1d_step(xBC[b], conv_state[r], conv_w, conv_b)   (ops/cpu/mamba_step.h)
//   x | Bm | Cm = the columns of xbc (d_inner | G·N | G·N)
//   dt = mamba_dt_forward(dt_raw[b], dt_bias, dt_min, dt_max), A = mamba_a_forward(A_log)
//   y[b] = ssd_step(x, dt, A, Bm, Cm, D, ssm_state[r])
// Every float tensor but ssm_state has zxbcdt's dtype. The CPU runs those ops; the GPU stores F32
// or BF16 and computes in fp32, xbc and dt included (N <= 256, B <= 65535).
#pragma once

#include "ops/dispatch.h"

namespace nh {

// The sizes of a call once its shapes, dtypes and devices are checked (by both backends, with
// the state dtype each keeps; the row range is the CPU op's own check).
struct MambaDecodeShape {
  int64_t batch, state_rows, heads, head_dim, groups, state_size, conv_dim, kernel;
  int64_t d_inner() const { return heads * head_dim; }
};
MambaDecodeShape check_mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows,
                                         const Tensor& conv_w, const Tensor& conv_b,
                                         const Tensor& dt_bias, const Tensor& A_log,
                                         const Tensor& D, int64_t groups, int64_t state_size,
                                         const Tensor& conv_state, const Tensor& ssm_state,
                                         DType state_dtype, const Tensor& y);

namespace cpu {
void mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows, const Tensor& conv_w,
                       const Tensor& conv_b, const Tensor& dt_bias, const Tensor& A_log,
                       const Tensor& D, double dt_min, double dt_max, int64_t groups,
                       int64_t state_size, Tensor& conv_state, Tensor& ssm_state, Tensor& y);
}  // namespace cpu
namespace cuda {
void mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows, const Tensor& conv_w,
                       const Tensor& conv_b, const Tensor& dt_bias, const Tensor& A_log,
                       const Tensor& D, double dt_min, double dt_max, int64_t groups,
                       int64_t state_size, Tensor& conv_state, Tensor& ssm_state, Tensor& y);
}  // namespace cuda

inline void mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows, const Tensor& conv_w,
                              const Tensor& conv_b, const Tensor& dt_bias, const Tensor& A_log,
                              const Tensor& D, double dt_min, double dt_max, int64_t groups,
                              int64_t state_size, Tensor& conv_state, Tensor& ssm_state,
                              Tensor& y) {
  NH_DISPATCH(zxbcdt.device(),
              mamba_decode_step(zxbcdt, rows, conv_w, conv_b, dt_bias, A_log, D, dt_min, dt_max,
                                groups, state_size, conv_state, ssm_state, y));
}

}  // namespace nh
