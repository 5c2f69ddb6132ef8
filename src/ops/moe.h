// Mixture-of-experts ops (SPEC §5): the group-limited sigmoid router, the routed experts, and
// the auxiliary-loss-free load balancing of the router's correction bias. The latent projections
// (fc1/fc2) and the shared expert are plain linear layers composed by the model.
//
// Router, for each token t (E experts in n_group equal groups of E/n_group):
//   logits = u[t] · gate_wᵀ;  s = sigmoid(logits);  choice = s + correction_bias
//   group score = sum of the 2 largest `choice` of the group; the topk_group best groups are
//   kept; topk_idx[t] = the top_k experts of the kept groups by `choice`;
//   topk_w[t, j] = s[topk_idx[t, j]] (/ (Σ_j s[topk_idx[t, j]] + 1e-20) when norm_topk_prob)
//                  · routed_scaling_factor.
//   Ties (equal group scores or equal choices) go to the lower index. Each row of topk_idx is
//   ordered best first (descending choice); transformers uses topk(sorted=False), whose order is
//   unspecified, so compare with it as sets.
//   u [T, D]; gate_w [E, D]; correction_bias [E], F32 or u's dtype (a buffer, no gradient);
//   outputs topk_idx I64 [T, k], topk_w [T, k], scores [T, E] (s, saved for the backward).
//   Precision: u's dtype (fp32, or fp64 for gradient checks), as the reference computes the
//   router in fp32.
//   backward: the gradient flows through the normalisation and the sigmoid into u and gate_w,
//   never through the selection. dtopk_w [T, k] -> du [T, D] += (the caller adds the router's
//   share of the input gradient), dgate_w [E, D] +=.
//
// Routed experts, with e = topk_idx[t, j]:
//   out[t] = Σ_j topk_w[t, j] · down[e] · relu(up[e] · h[t])²
//   h [T, Din]; up [E, I, Din]; down [E, Din, I]; topk_idx I64 [T, k]; topk_w [T, k];
//   out [T, Din] overwritten. The (token, slot) pairs are grouped by expert, in token order
//   within an expert, and each expert runs two GEMMs over its rows, so results do not depend on
//   thread count. An id of -1 marks an expert held by another rank (expert parallelism): the
//   pair adds nothing here, its dtopk_w is 0, and its rows sort after every expert's. `cache` is
//   (re)allocated by the forward and holds what the backward needs. backward: dout [T, Din] -> dh
//   [T, Din] overwritten, dup [E, I, Din] +=, ddown [E, Din, I] += (each skipped when undefined: a
//   frozen base), dtopk_w [T, k] overwritten. topk_w and dtopk_w are in h's dtype, or F32 with bf16
//   h on the GPU (the fp32 router of a bf16 model).
//
// Expert load: load I64 [E] (overwritten) = the number of (token, slot) pairs routed to each
// expert; E is load.size(0).
// Correction bias update (DeepSeek-V3 / Megatron aux-loss-free balancing):
//   correction_bias[e] += rate · sign(mean(load) − load[e])   (sign(0) = 0)
// which raises the bias of under-loaded experts and lowers it for over-loaded ones.
#pragma once

#include <string>

#include "ops/dispatch.h"

namespace nh {

// config.json: num_experts_per_tok, n_group, topk_group, norm_topk_prob, routed_scaling_factor.
struct MoeRouteConfig {
  int64_t top_k = 1;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
};

// Throws an Error unless the router can run with n_experts experts. Groups need two experts
// each, since the group score sums the two largest; and the kept groups must hold top_k experts,
// or the reference would pick experts it masked out.
inline void moe_check_route_config(const MoeRouteConfig& cfg, int64_t n_experts) {
  const auto fail = [](const std::string& field, const std::string& expected, int64_t found) {
    throw Error("moe router config", field, expected, std::to_string(found));
  };
  if (cfg.n_group < 1 || n_experts % cfg.n_group != 0)
    fail("n_group", "a divisor of n_routed_experts = " + std::to_string(n_experts), cfg.n_group);
  const int64_t group_size = n_experts / cfg.n_group;
  if (group_size < 2) fail("n_routed_experts / n_group", ">= 2", group_size);
  if (cfg.topk_group < 1 || cfg.topk_group > cfg.n_group)
    fail("topk_group", "in [1, n_group = " + std::to_string(cfg.n_group) + "]", cfg.topk_group);
  if (cfg.top_k < 1 || cfg.top_k > cfg.topk_group * group_size)
    fail("num_experts_per_tok",
         "in [1, topk_group * experts per group = " + std::to_string(cfg.topk_group * group_size) +
             "]",
         cfg.top_k);
}

// LoRA on the routed experts' weights (PEFT's target_parameters), one low-rank pair per expert:
//   up[e] + s · up_b[e] · up_a[e],   down[e] + s · down_b[e] · down_a[e]
// up_a [E, r, Din], up_b [E, I, r], down_a [E, r, I], down_b [E, Din, r], in h's dtype; a pair
// left undefined adapts nothing. The low-rank products run beside the experts' own GEMMs over
// the same routed rows, so no [E, I, Din] delta is ever formed. The backward accumulates into
// the d* tensors of the pairs present.
struct MoeExpertsLora {
  Tensor up_a, up_b, down_a, down_b;
  Tensor dup_a, dup_b, ddown_a, ddown_b;
  double scale = 1;
};

// What moe_experts_backward needs from the forward. Routed rows, one per (token, slot) pair,
// are grouped by expert and in token order within an expert.
struct MoeExpertsCache {
  Tensor expert_offsets;  // I64 [E + 1]: expert e owns routed rows [offsets[e], offsets[e + 1])
  Tensor row_source;      // I64 [T·k]: routed row r is topk entry row_source[r] = t·k + j
  Tensor row_of;  // I64 [T·k]: the inverse, topk entry t·k + j is routed row row_of[t·k + j]
  Tensor pre;     // [T·k, I]: up[e] · h[t] of each routed row, before relu²
};

namespace cpu {
void moe_route_forward(const Tensor& u, const Tensor& gate_w, const Tensor& correction_bias,
                       const MoeRouteConfig& cfg, Tensor& topk_idx, Tensor& topk_w, Tensor& scores);
void moe_route_backward(const Tensor& u, const Tensor& gate_w, const Tensor& topk_idx,
                        const Tensor& scores, const MoeRouteConfig& cfg, const Tensor& dtopk_w,
                        Tensor& du, Tensor& dgate_w);
void moe_experts_forward(const Tensor& h, const Tensor& up, const Tensor& down,
                         const Tensor& topk_idx, const Tensor& topk_w, Tensor& out,
                         MoeExpertsCache& cache, const MoeExpertsLora& lora);
void moe_experts_backward(const Tensor& h, const Tensor& up, const Tensor& down,
                          const Tensor& topk_idx, const Tensor& topk_w,
                          const MoeExpertsCache& cache, const Tensor& dout, Tensor& dh, Tensor& dup,
                          Tensor& ddown, Tensor& dtopk_w, const MoeExpertsLora& lora);
void moe_expert_load(const Tensor& topk_idx, Tensor& load);
void moe_update_correction_bias(Tensor& correction_bias, const Tensor& expert_load, double rate);
}  // namespace cpu
namespace cuda {
void moe_route_forward(const Tensor& u, const Tensor& gate_w, const Tensor& correction_bias,
                       const MoeRouteConfig& cfg, Tensor& topk_idx, Tensor& topk_w, Tensor& scores);
void moe_route_backward(const Tensor& u, const Tensor& gate_w, const Tensor& topk_idx,
                        const Tensor& scores, const MoeRouteConfig& cfg, const Tensor& dtopk_w,
                        Tensor& du, Tensor& dgate_w);
void moe_experts_forward(const Tensor& h, const Tensor& up, const Tensor& down,
                         const Tensor& topk_idx, const Tensor& topk_w, Tensor& out,
                         MoeExpertsCache& cache, const MoeExpertsLora& lora);
void moe_experts_backward(const Tensor& h, const Tensor& up, const Tensor& down,
                          const Tensor& topk_idx, const Tensor& topk_w,
                          const MoeExpertsCache& cache, const Tensor& dout, Tensor& dh, Tensor& dup,
                          Tensor& ddown, Tensor& dtopk_w, const MoeExpertsLora& lora);
void moe_expert_load(const Tensor& topk_idx, Tensor& load);
void moe_update_correction_bias(Tensor& correction_bias, const Tensor& expert_load, double rate);
}  // namespace cuda

inline void moe_route_forward(const Tensor& u, const Tensor& gate_w, const Tensor& correction_bias,
                              const MoeRouteConfig& cfg, Tensor& topk_idx, Tensor& topk_w,
                              Tensor& scores) {
  NH_DISPATCH(u.device(),
              moe_route_forward(u, gate_w, correction_bias, cfg, topk_idx, topk_w, scores));
}
inline void moe_route_backward(const Tensor& u, const Tensor& gate_w, const Tensor& topk_idx,
                               const Tensor& scores, const MoeRouteConfig& cfg,
                               const Tensor& dtopk_w, Tensor& du, Tensor& dgate_w) {
  NH_DISPATCH(u.device(),
              moe_route_backward(u, gate_w, topk_idx, scores, cfg, dtopk_w, du, dgate_w));
}
inline void moe_experts_forward(const Tensor& h, const Tensor& up, const Tensor& down,
                                const Tensor& topk_idx, const Tensor& topk_w, Tensor& out,
                                MoeExpertsCache& cache,
                                const MoeExpertsLora& lora = MoeExpertsLora()) {
  NH_DISPATCH(h.device(), moe_experts_forward(h, up, down, topk_idx, topk_w, out, cache, lora));
}
inline void moe_experts_backward(const Tensor& h, const Tensor& up, const Tensor& down,
                                 const Tensor& topk_idx, const Tensor& topk_w,
                                 const MoeExpertsCache& cache, const Tensor& dout, Tensor& dh,
                                 Tensor& dup, Tensor& ddown, Tensor& dtopk_w,
                                 const MoeExpertsLora& lora = MoeExpertsLora()) {
  NH_DISPATCH(h.device(), moe_experts_backward(h, up, down, topk_idx, topk_w, cache, dout, dh, dup,
                                               ddown, dtopk_w, lora));
}
// Throws unless the pairs of `lora` that are present fit up [E, I, Din] (and have gradients, for
// the backward). Shared by both backends.
void check_experts_lora(const MoeExpertsLora& lora, const Tensor& up, bool backward);

inline void moe_expert_load(const Tensor& topk_idx, Tensor& load) {
  NH_DISPATCH(topk_idx.device(), moe_expert_load(topk_idx, load));
}
inline void moe_update_correction_bias(Tensor& correction_bias, const Tensor& expert_load,
                                       double rate) {
  NH_DISPATCH(correction_bias.device(),
              moe_update_correction_bias(correction_bias, expert_load, rate));
}

}  // namespace nh
