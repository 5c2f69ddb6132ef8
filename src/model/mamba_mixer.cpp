#include "model/mamba_mixer.h"

#include <algorithm>

#include "ops/causal_conv1d.h"
#include "ops/elementwise.h"
#include "ops/gated_rmsnorm.h"
#include "ops/mamba_dt.h"
#include "ops/mamba_decode_step.h"
#include "ops/ssd.h"

namespace nh {

MambaMixer::MambaMixer(const ModelConfig& c, const LayerParams& p)
    : heads_(c.mamba_num_heads),
      head_dim_(c.mamba_head_dim),
      state_(c.ssm_state_size),
      groups_(c.n_groups),
      d_inner_(c.d_inner()),
      conv_dim_(c.conv_dim()),
      chunk_(c.chunk_size),
      kernel_(c.conv_kernel),
      eps_(c.layer_norm_epsilon),
      dt_lo_(c.time_step_limit.first),
      dt_hi_(c.time_step_limit.second),
      in_proj_(p, "in_proj"),
      out_proj_(p, "out_proj"),
      conv_w_(p.param("conv1d.weight")),
      conv_b_(p.optional_param("conv1d.bias")),
      dconv_w_(p.grad("conv1d.weight")),
      dconv_b_(p.optional_grad("conv1d.bias")),
      dt_bias_(p.param("dt_bias")),
      ddt_bias_(p.grad("dt_bias")),
      A_log_(p.param("A_log")),
      dA_log_(p.grad("A_log")),
      D_(p.param("D")),
      dD_(p.grad("D")),
      norm_w_(p.param("norm.weight")),
      dnorm_w_(p.grad("norm.weight")) {}

void MambaMixer::forward(const Tensor& u, const Batch& batch, Tensor& out) {
  run(u, batch, out, Tensor());
}

void MambaMixer::run(const Tensor& u, const Batch& batch, Tensor& out, Tensor final_state) {
  const int64_t b = batch.batch, s = batch.seq, t = batch.tokens();
  const DType dt = u.dtype();
  const Device dev = u.device();
  auto make = [&](const Shape& shape) { return Tensor::empty(shape, dt, dev); };
  batch_ = batch;
  u_ = u;

  Tensor zxbcdt = make({t, d_inner_ + conv_dim_ + heads_});
  in_proj_.forward(u, zxbcdt);
  z_ = make({t, d_inner_});
  xbc_raw_ = make({b, s, conv_dim_});
  dt_raw_ = make({t, heads_});
  copy_columns(zxbcdt, 0, z_);
  copy_columns(zxbcdt, d_inner_, xbc_raw_);
  copy_columns(zxbcdt, d_inner_ + conv_dim_, dt_raw_);

  xbc_ = make({b, s, conv_dim_});
  causal_conv1d_forward(xbc_raw_, conv_w_.reshape({conv_dim_, conv_w_.size(-1)}), conv_b_,
                        batch.seq_idx, xbc_);
  x_ = make({b, s, heads_, head_dim_});
  bm_ = make({b, s, groups_, state_});
  cm_ = make({b, s, groups_, state_});
  Tensor x2 = x_.reshape({t, d_inner_}), b2 = bm_.reshape({t, groups_ * state_}),
         c2 = cm_.reshape({t, groups_ * state_});
  copy_columns(xbc_, 0, x2);
  copy_columns(xbc_, d_inner_, b2);
  copy_columns(xbc_, d_inner_ + groups_ * state_, c2);

  dt_ = make({b, s, heads_});
  Tensor dt2 = dt_.reshape({t, heads_});
  mamba_dt_forward(dt_raw_, dt_bias_, dt_lo_, dt_hi_, dt2);
  A_ = make({heads_});
  mamba_a_forward(A_log_, A_);

  y_ = make({b, s, heads_, head_dim_});
  Tensor none;
  ssd_forward(x_, dt_, A_, bm_, cm_, D_, chunk_, batch.seq_idx, none, y_, final_state);

  g_ = make({t, d_inner_});
  rstd_ = Tensor::empty({t, groups_}, stats_dtype(dt), dev);
  gated_rmsnorm_forward(y_.reshape({t, d_inner_}), z_, norm_w_, groups_, eps_, g_, rstd_);
  out_proj_.forward(g_, out);
}

void MambaMixer::backward(const Tensor& dout, Tensor& du) {
  const int64_t b = batch_.batch, s = batch_.seq, t = batch_.tokens();
  const DType dt = dout.dtype();
  const Device dev = dout.device();
  auto make = [&](const Shape& shape) { return Tensor::empty(shape, dt, dev); };

  Tensor dg = make({t, d_inner_});
  out_proj_.backward(g_, dout, dg);
  Tensor dy = make({b, s, heads_, head_dim_}), dz = make({t, d_inner_});
  Tensor dy2 = dy.reshape({t, d_inner_});
  gated_rmsnorm_backward(y_.reshape({t, d_inner_}), z_, norm_w_, groups_, rstd_, dg, dy2, dz,
                         dnorm_w_);

  Tensor dx = make(x_.shape()), ddt = make(dt_.shape()), dbm = make(bm_.shape()),
         dcm = make(cm_.shape()), dA = Tensor::zeros({heads_}, dt, dev), none;
  ssd_backward(x_, dt_, A_, bm_, cm_, D_, chunk_, batch_.seq_idx, none, dy, dx, ddt, dA, dbm, dcm,
               dD_, none);
  mamba_a_backward(A_, dA, dA_log_);

  Tensor dxbc = make({b, s, conv_dim_});
  write_columns(dx.reshape({t, d_inner_}), dxbc, 0);
  write_columns(dbm.reshape({t, groups_ * state_}), dxbc, d_inner_);
  write_columns(dcm.reshape({t, groups_ * state_}), dxbc, d_inner_ + groups_ * state_);

  Tensor dzxbcdt = make({t, d_inner_ + conv_dim_ + heads_});
  Tensor dxbc_raw = make({b, s, conv_dim_});
  Tensor dconv_w = dconv_w_.reshape({conv_dim_, conv_w_.size(-1)});
  causal_conv1d_backward(xbc_raw_, conv_w_.reshape({conv_dim_, conv_w_.size(-1)}), conv_b_,
                         batch_.seq_idx, dxbc, dxbc_raw, dconv_w, dconv_b_);
  Tensor ddt_raw = make({t, heads_});
  mamba_dt_backward(dt_raw_, dt_bias_, dt_lo_, dt_hi_, ddt.reshape({t, heads_}), ddt_raw,
                    ddt_bias_);

  write_columns(dz, dzxbcdt, 0);
  write_columns(dxbc_raw, dzxbcdt, d_inner_);
  write_columns(ddt_raw, dzxbcdt, d_inner_ + conv_dim_);
  in_proj_.backward(u_, dzxbcdt, du);
  release();
}

void MambaMixer::prefill(const Tensor& u, const Batch& batch, LayerCache& cache, const CacheSlots&,
                         int64_t row, Tensor& out) {
  NH_CHECK(batch.batch == 1, "prefill runs one sequence");
  run(u, batch, out, cache.ssm_state.slice0(row, row + 1));
  // The convolution state: the last K-1 inputs of each channel, zeros before the prompt. It is
  // K-1 rows, so it is transposed on the host.
  const int64_t s = batch.seq, taps = kernel_ - 1, first = std::max<int64_t>(0, s - taps);
  const Tensor tail = xbc_raw_.reshape({s, conv_dim_}).slice0(first, s).to(Device::CPU);
  Tensor state = Tensor::zeros({conv_dim_, taps}, DType::F64);
  double* st = state.data<double>();
  for (int64_t i = 0; i < s - first; ++i)
    for (int64_t c = 0; c < conv_dim_; ++c)
      st[c * taps + taps - (s - first) + i] = read_float(tail, i * conv_dim_ + c);
  Tensor dst = cache.conv_state.slice0(row, row + 1).reshape({conv_dim_, taps});
  dst.copy_from(state);
  release();
}

void MambaMixer::decode(const Tensor& u, LayerCache& cache, const CacheSlots& slots, Tensor& out) {
  const int64_t b = u.size(0);
  const DType dt = u.dtype();
  const Device dev = u.device();
  Tensor zxbcdt = Tensor::empty({b, d_inner_ + conv_dim_ + heads_}, dt, dev);
  in_proj_.forward(u, zxbcdt);
  Tensor y = Tensor::empty({b, heads_, head_dim_}, dt, dev);
  mamba_decode_step(zxbcdt, slots.rows, conv_w_.reshape({conv_dim_, kernel_}), conv_b_, dt_bias_,
                    A_log_, D_, dt_lo_, dt_hi_, groups_, state_, cache.conv_state,
                    cache.ssm_state, y);
  Tensor z = Tensor::empty({b, d_inner_}, dt, dev), g = Tensor::empty({b, d_inner_}, dt, dev);
  copy_columns(zxbcdt, 0, z);
  Tensor rstd = Tensor::empty({b, groups_}, stats_dtype(dt), dev);
  gated_rmsnorm_forward(y.reshape({b, d_inner_}), z, norm_w_, groups_, eps_, g, rstd);
  out_proj_.forward(g, out);
}

void MambaMixer::release() { u_ = z_ = xbc_raw_ = dt_raw_ = xbc_ = x_ = bm_ = cm_ = dt_ = A_ = y_ = rstd_ = g_ = Tensor(); }

}  // namespace nh
