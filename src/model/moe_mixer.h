// Mixture-of-experts mixer (`E`, SPEC §5): sigmoid router with correction bias and
// group-limited top-k, optional latent projections around the routed experts, and a
// shared expert on the layer input. The router and the routing weights stay fp32 when the
// activations are bf16 (as in transformers and Megatron): routing decisions and the gate's
// gradient need the bits.
#pragma once

#include "model/mixer.h"
#include "model/mlp_mixer.h"
#include "ops/moe.h"

namespace nh {

class MoeMixer : public Mixer {
 public:
  MoeMixer(const ModelConfig& config, const LayerParams& p);
  void forward(const Tensor& u, const Batch& batch, Tensor& out) override;
  void backward(const Tensor& dout, Tensor& du) override;
  void release() override;
  // Routing reads the experts' token counts back to the host.
  bool decode_capturable() const override { return false; }
  // Routed (token, slot) pairs per expert in the last forward, I64 [E].
  const Tensor& expert_load() const { return load_; }

 private:
  MoeRouteConfig route_;
  bool latent_;
  // The experts' weights, or their quantised forms (then up_/down_ are undefined).
  const QuantizedTensor *qup_, *qdown_;
  Tensor gate_w_, dgate_w_, correction_bias_, up_, dup_, down_, ddown_;
  MoeExpertsLora lora_;  // the adapter's pairs on the expert weights, if any
  Linear fc1_, fc2_;
  MlpMixer shared_;
  // Saved by forward for backward.
  Tensor u_, topk_idx_, topk_w_, scores_, h_, routed_, load_;
  // The router's inputs in its own dtype (u and the gate converted when it differs).
  Tensor router_u() const;
  std::pair<Tensor, Tensor> experts(DType dtype) const;
  Tensor router_gate() const;
  MoeExpertsCache cache_;
};

}  // namespace nh
