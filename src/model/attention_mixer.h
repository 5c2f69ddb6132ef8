// Attention mixer (`*`, SPEC §3): causal GQA without positional encoding.
#pragma once

#include "model/mixer.h"

namespace nh {

class AttentionMixer : public Mixer {
 public:
  AttentionMixer(const ModelConfig& config, const LayerParams& p);
  void forward(const Tensor& u, const Batch& batch, Tensor& out) override;
  void backward(const Tensor& dout, Tensor& du) override;
  void release() override;
  void prefill(const Tensor& u, const Batch& batch, LayerCache& cache,
               const CacheSlots& slots, int64_t row, Tensor& out) override;
  void decode(const Tensor& u, LayerCache& cache, const CacheSlots& slots, Tensor& out) override;

 private:
  int64_t heads_, kv_heads_, head_dim_;
  Linear q_, k_, v_, o_;
  Batch batch_;
  Tensor u_, q_out_, k_out_, v_out_, o_in_, lse_;
};

}  // namespace nh
