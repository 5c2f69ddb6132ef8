// Mixture-of-experts mixer (`E`, SPEC §5): sigmoid router with correction bias and
// group-limited top-k, optional latent projections around the routed experts, and a
// shared expert on the layer input. The router and the routing weights stay fp32 when the
// activations are bf16 (as in transformers and Megatron): routing decisions and the gate's
// gradient need the bits.
#pragma once

#include "dist/communicator.h"
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
  // Expert parallelism (Model::shard_experts): this rank holds experts [r·E/n, (r+1)·E/n) of the
  // n ranks of `group`. The layer gathers the group's tokens and routing, runs its experts on
  // the pairs routed to them, and sums the partial outputs back to each token's rank, as
  // Megatron's all-gather token dispatcher does; the backward mirrors it.
  void set_expert_parallel(Communicator& group) { ep_ = &group; }

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
  Communicator* ep_ = nullptr;
  // Under expert parallelism: the group's gathered h, routing weights, and routing with other
  // ranks' experts marked -1.
  Tensor h_all_, w_all_, idx_here_;
  // Routes h (rows of this rank, or of the whole group) through this rank's experts.
  void routed_experts(const Tensor& up, const Tensor& down);
  // The router's inputs in its own dtype (u and the gate converted when it differs).
  Tensor router_u() const;
  std::pair<Tensor, Tensor> experts(DType dtype) const;
  Tensor router_gate() const;
  MoeExpertsCache cache_;
};

}  // namespace nh
