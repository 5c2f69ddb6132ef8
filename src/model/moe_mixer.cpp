#include "model/moe_mixer.h"

#include "ops/elementwise.h"

namespace nh {

MoeMixer::MoeMixer(const ModelConfig& c, const LayerParams& p)
    : route_{c.num_experts_per_tok, c.n_group, c.topk_group, c.norm_topk_prob,
             c.routed_scaling_factor},
      latent_(c.moe_latent_size > 0),
      qup_(p.quantized("experts.up_proj")),
      qdown_(p.quantized("experts.down_proj")),
      gate_w_(p.param("gate.weight")),
      dgate_w_(p.grad("gate.weight")),
      correction_bias_(p.param("gate.e_score_correction_bias")),
      up_(qup_ ? Tensor() : p.param("experts.up_proj")),
      dup_(p.optional_grad("experts.up_proj")),
      down_(qdown_ ? Tensor() : p.param("experts.down_proj")),
      ddown_(p.optional_grad("experts.down_proj")),
      shared_(c, p, "shared_experts.", c.moe_shared_expert_intermediate_size) {
  moe_check_route_config(route_, c.n_routed_experts);
  const LoraPair up = p.lora("experts.up_proj"), down = p.lora("experts.down_proj");
  const double scale = up.defined() || down.defined() ? p.lora_runtime()->scale : 1.0;
  lora_ = {up.a, up.b, down.a, down.b, up.da, up.db, down.da, down.db, scale};
  if (latent_) {
    fc1_ = Linear(p, "fc1_latent_proj");
    fc2_ = Linear(p, "fc2_latent_proj");
  }
}

Tensor MoeMixer::router_u() const { return u_.to(stats_dtype(u_.dtype())); }
Tensor MoeMixer::router_gate() const { return gate_w_.to(stats_dtype(gate_w_.dtype())); }

// The expert weights in `dtype`: themselves, or de-quantised for this pass.
std::pair<Tensor, Tensor> MoeMixer::experts(DType dtype) const {
  return {qup_ ? dequantized(*qup_, dtype) : up_, qdown_ ? dequantized(*qdown_, dtype) : down_};
}

namespace {

// The group's routing with every expert held elsewhere marked -1, and this rank's experts
// renumbered from 0 (ids from rank r·local on).
Tensor experts_here(const Tensor& idx_all, int64_t first, int64_t local) {
  Tensor ids = idx_all.to(Device::CPU).clone();
  int64_t* p = ids.data<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    p[i] = p[i] >= first && p[i] < first + local ? p[i] - first : -1;
  return ids.to(idx_all.device());
}

}  // namespace

void MoeMixer::routed_experts(const Tensor& up, const Tensor& down) {
  if (!ep_) {
    routed_ = Tensor::empty(h_.shape(), h_.dtype(), h_.device());
    moe_experts_forward(h_, up, down, topk_idx_, topk_w_, routed_, cache_, lora_);
    return;
  }
  h_all_ = all_gather_rows(*ep_, h_);
  w_all_ = all_gather_rows(*ep_, topk_w_);
  idx_here_ = experts_here(all_gather_rows(*ep_, topk_idx_), up.size(0) * ep_->rank(), up.size(0));
  Tensor partial = Tensor::empty(h_all_.shape(), h_.dtype(), h_.device());
  moe_experts_forward(h_all_, up, down, idx_here_, w_all_, partial, cache_, lora_);
  routed_ = reduce_scatter_rows(*ep_, partial);  // each token's rank gets the sum over experts
}

void MoeMixer::forward(const Tensor& u, const Batch& batch, Tensor& out) {
  const auto [up, down] = experts(u.dtype());
  const int64_t t = u.size(0), k = route_.top_k, e = gate_w_.size(0), din = up.size(2);
  const DType dt = u.dtype();
  const Device dev = u.device();
  u_ = u;
  const DType rdt = stats_dtype(dt);
  topk_idx_ = Tensor::empty({t, k}, DType::I64, dev);
  topk_w_ = Tensor::empty({t, k}, rdt, dev);
  scores_ = Tensor::empty({t, e}, rdt, dev);
  moe_route_forward(router_u(), router_gate(), correction_bias_, route_, topk_idx_, topk_w_,
                    scores_);

  h_ = u;
  if (latent_) {
    h_ = Tensor::empty({t, din}, dt, dev);
    fc1_.forward(u, h_);
  }
  routed_experts(up, down);
  load_ = Tensor::empty({e}, DType::I64, dev);
  moe_expert_load(topk_idx_, load_);

  if (latent_)
    fc2_.forward(routed_, out);
  else
    out.copy_from(routed_);
  Tensor shared_out = Tensor::empty(out.shape(), dt, dev);
  shared_.forward(u, batch, shared_out);
  add_inplace(out, shared_out);
}

void MoeMixer::backward(const Tensor& dout, Tensor& du) {
  const DType dt = dout.dtype();
  const auto [up, down] = experts(dt);
  const Device dev = dout.device();
  Tensor drouted = dout;
  if (latent_) {
    drouted = Tensor::empty(routed_.shape(), dt, dev);
    fc2_.backward(routed_, dout, drouted);
  }
  Tensor dh, dtopk_w;
  if (ep_) {
    // The group's output gradients through this rank's experts, summed back to their ranks.
    Tensor dh_all = Tensor::empty(h_all_.shape(), dt, dev);
    Tensor dw_all = Tensor::empty(w_all_.shape(), w_all_.dtype(), dev);
    moe_experts_backward(h_all_, up, down, idx_here_, w_all_, cache_,
                         all_gather_rows(*ep_, drouted), dh_all, dup_, ddown_, dw_all, lora_);
    dh = reduce_scatter_rows(*ep_, dh_all);
    dtopk_w = reduce_scatter_rows(*ep_, dw_all);
  } else {
    dh = Tensor::empty(h_.shape(), dt, dev);
    dtopk_w = Tensor::empty(topk_w_.shape(), topk_w_.dtype(), dev);
    moe_experts_backward(h_, up, down, topk_idx_, topk_w_, cache_, drouted, dh, dup_, ddown_,
                         dtopk_w, lora_);
  }
  if (latent_)
    fc1_.backward(u_, dh, du);
  else
    du.copy_from(dh);
  if (stats_dtype(dt) == dt) {
    moe_route_backward(u_, gate_w_, topk_idx_, scores_, route_, dtopk_w, du, dgate_w_);
  } else {
    Tensor du32 = du.to(stats_dtype(dt));
    Tensor dgate32 = Tensor::zeros(gate_w_.shape(), stats_dtype(dt), dev);
    moe_route_backward(router_u(), router_gate(), topk_idx_, scores_, route_, dtopk_w, du32,
                       dgate32);
    du.copy_from(du32);
    add_inplace(dgate_w_, dgate32.to(dt));
  }
  Tensor dshared = Tensor::empty(du.shape(), dt, dev);
  shared_.backward(dout, dshared);
  add_inplace(du, dshared);
  release();
}

void MoeMixer::release() {
  u_ = topk_idx_ = topk_w_ = scores_ = h_ = routed_ = h_all_ = w_all_ = idx_here_ = Tensor();
  cache_ = MoeExpertsCache();
  shared_.release();
}

}  // namespace nh
