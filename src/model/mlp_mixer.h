// MLP mixer (`-`) and the MoE shared expert (SPEC §4): out = down(relu(up(u))²).
#pragma once

#include "model/mixer.h"

namespace nh {

class MlpMixer : public Mixer {
 public:
  // `name` is the sub-module prefix ("" for an MLP layer, "shared_experts." inside MoE).
  MlpMixer(const ModelConfig& config, const LayerParams& p, const std::string& name,
           int64_t intermediate);
  void forward(const Tensor& u, const Batch& batch, Tensor& out) override;
  void backward(const Tensor& dout, Tensor& du) override;
  void release() override;

 private:
  Linear up_, down_;
  Tensor u_, pre_, act_;  // saved: input, up(u), relu(up(u))²
};

}  // namespace nh
