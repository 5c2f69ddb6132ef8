// Mamba-2 mixer (`M`, SPEC §2): in_proj → split z | xBC | dt → causal conv + SiLU on xBC →
// SSD scan → gate with SiLU(z) and grouped RMSNorm → out_proj.
#pragma once

#include "model/mixer.h"

namespace nh {

class MambaMixer : public Mixer {
 public:
  MambaMixer(const ModelConfig& config, const LayerParams& p);
  void forward(const Tensor& u, const Batch& batch, Tensor& out) override;
  void backward(const Tensor& dout, Tensor& du) override;
  void release() override;
  void prefill(const Tensor& u, const Batch& batch, LayerCache& cache,
               const CacheSlots& slots, int64_t row, Tensor& out) override;
  void decode(const Tensor& u, LayerCache& cache, const CacheSlots& slots, Tensor& out) override;

 private:
  // forward, also writing the SSM state after the last token when final_state is defined.
  void run(const Tensor& u, const Batch& batch, Tensor& out, Tensor final_state);

  int64_t heads_, head_dim_, state_, groups_, d_inner_, conv_dim_, chunk_, kernel_;
  double eps_, dt_lo_, dt_hi_;
  Linear in_proj_, out_proj_;
  Tensor conv_w_, conv_b_, dconv_w_, dconv_b_;
  Tensor dt_bias_, ddt_bias_, A_log_, dA_log_, D_, dD_, norm_w_, dnorm_w_;
  // Saved by forward for backward.
  Batch batch_;
  Tensor u_, z_, xbc_raw_, dt_raw_, xbc_, x_, bm_, cm_, dt_, A_, y_, rstd_, g_;
};

}  // namespace nh
