// CPU Mamba-2 decoding step (SPEC §2): the CPU step ops themselves (conv1d_step, mamba_dt_forward,
// mamba_a_forward, ssd_step), run entry by entry on views of the entry's columns and state rows,
// so it is the composition the header states, bit for bit. Also the shape checks both backends
// share.
#include "ops/mamba_decode_step.h"

#include <string>
#include <vector>

#include "ops/mamba_dt.h"
#include "ops/cpu/mamba_step.h"

namespace nh {

namespace {

const char* kOp = "mamba_decode_step";

void check(const Tensor& t, const Shape& shape, DType dtype, Device device,
           const std::string& name) {
  if (t.device() != device)
    throw Error(kOp, name + " device", device_name(device), device_name(t.device()));
  if (t.shape() != shape) throw Error(kOp, name + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error(kOp, name + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

}  // namespace

MambaDecodeShape check_mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows,
                                         const Tensor& conv_w, const Tensor& conv_b,
                                         const Tensor& dt_bias, const Tensor& A_log,
                                         const Tensor& D, int64_t groups, int64_t state_size,
                                         const Tensor& conv_state, const Tensor& ssm_state,
                                         DType state_dtype, const Tensor& y) {
  if (zxbcdt.ndim() != 2)
    throw Error(kOp, "zxbcdt shape", "[B, 2·d_inner + 2·G·N + H]", shape_str(zxbcdt.shape()));
  if (ssm_state.ndim() != 4 || ssm_state.size(3) != state_size)
    throw Error(kOp, "ssm_state shape", "[R, H, P, N = " + std::to_string(state_size) + "]",
                shape_str(ssm_state.shape()));
  if (conv_w.ndim() != 2 || conv_w.size(1) < 1)
    throw Error(kOp, "conv_w shape", "[C, K] with K >= 1", shape_str(conv_w.shape()));
  MambaDecodeShape s{zxbcdt.size(0),
                     ssm_state.size(0),
                     ssm_state.size(1),
                     ssm_state.size(2),
                     groups,
                     state_size,
                     0,
                     conv_w.size(1)};
  if (groups < 1 || s.heads % groups != 0)
    throw Error(kOp, "groups", "a divisor of H = " + std::to_string(s.heads),
                std::to_string(groups));
  if (state_size < 1) throw Error(kOp, "state_size", "at least 1", std::to_string(state_size));
  s.conv_dim = s.d_inner() + 2 * groups * state_size;
  const DType f = zxbcdt.dtype();
  const Device dev = zxbcdt.device();
  if (!is_float(f)) throw Error(kOp, "zxbcdt dtype", "a float dtype", dtype_name(f));
  check(zxbcdt, {s.batch, s.d_inner() + s.conv_dim + s.heads}, f, dev, "zxbcdt");
  check(rows, {s.batch}, DType::I32, dev, "rows");
  check(conv_w, {s.conv_dim, s.kernel}, f, dev, "conv_w");
  if (conv_b.defined()) check(conv_b, {s.conv_dim}, f, dev, "conv_b");
  check(dt_bias, {s.heads}, f, dev, "dt_bias");
  check(A_log, {s.heads}, f, dev, "A_log");
  if (D.defined()) check(D, {s.heads}, f, dev, "D");
  check(conv_state, {s.state_rows, s.conv_dim, s.kernel - 1}, f, dev, "conv_state");
  check(ssm_state, {s.state_rows, s.heads, s.head_dim, state_size}, state_dtype, dev, "ssm_state");
  check(y, {s.batch, s.heads, s.head_dim}, f, dev, "y");
  return s;
}

namespace cpu {

namespace {

// Elements [begin, end) of row b of a 2-D tensor, as a [1, end - begin] view.
Tensor columns(const Tensor& t, int64_t b, int64_t begin, int64_t end) {
  return t.slice0(b, b + 1).reshape({t.size(1)}).slice0(begin, end).reshape({1, end - begin});
}

}  // namespace

void mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows, const Tensor& conv_w,
                       const Tensor& conv_b, const Tensor& dt_bias, const Tensor& A_log,
                       const Tensor& D, double dt_min, double dt_max, int64_t groups,
                       int64_t state_size, Tensor& conv_state, Tensor& ssm_state, Tensor& y) {
  const MambaDecodeShape s =
      check_mamba_decode_step(zxbcdt, rows, conv_w, conv_b, dt_bias, A_log, D, groups, state_size,
                              conv_state, ssm_state, zxbcdt.dtype(), y);
  const int32_t* row = rows.data<int32_t>();
  std::vector<int64_t> entry_of(s.state_rows, -1);
  for (int64_t b = 0; b < s.batch; ++b) {
    if (row[b] < 0) continue;
    const std::string name = "rows[" + std::to_string(b) + "]";
    if (row[b] >= s.state_rows)
      throw Error(kOp, name, "-1 (padding) or a state row < R = " + std::to_string(s.state_rows),
                  std::to_string(row[b]));
    if (entry_of[row[b]] >= 0)
      throw Error(kOp, name, "distinct rows",
                  std::to_string(row[b]) + ", also rows[" + std::to_string(entry_of[row[b]]) + "]");
    entry_of[row[b]] = b;
  }
  const DType f = zxbcdt.dtype();
  const int64_t d_inner = s.d_inner(), gn = groups * state_size;
  Tensor A = Tensor::empty({s.heads}, f);
  cpu::mamba_a_forward(A_log, A);
  for (int64_t b = 0; b < s.batch; ++b) {
    Tensor yb = y.slice0(b, b + 1);
    if (row[b] < 0) {
      yb.fill(0.0);
      continue;
    }
    Tensor conv_row = conv_state.slice0(row[b], row[b] + 1);
    Tensor ssm_row = ssm_state.slice0(row[b], row[b] + 1);
    Tensor xbc = Tensor::empty({1, s.conv_dim}, f);
    cpu::conv1d_step(columns(zxbcdt, b, d_inner, d_inner + s.conv_dim), conv_row, conv_w, conv_b,
                     xbc);
    Tensor dt = Tensor::empty({1, s.heads}, f);
    const int64_t dt0 = d_inner + s.conv_dim;
    cpu::mamba_dt_forward(columns(zxbcdt, b, dt0, dt0 + s.heads), dt_bias, dt_min, dt_max, dt);
    const Tensor x = columns(xbc, 0, 0, d_inner).reshape({1, s.heads, s.head_dim});
    const Tensor Bm = columns(xbc, 0, d_inner, d_inner + gn).reshape({1, groups, state_size});
    const Tensor Cm =
        columns(xbc, 0, d_inner + gn, d_inner + 2 * gn).reshape({1, groups, state_size});
    cpu::ssd_step(x, dt, A, Bm, Cm, D, ssm_row, yb);
  }
}

}  // namespace cpu
}  // namespace nh
