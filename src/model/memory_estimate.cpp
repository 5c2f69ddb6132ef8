#include "model/memory_estimate.h"

#include <algorithm>

#include "core/error.h"
#include "model/params.h"

namespace nh {

namespace {
std::string kind_of(const std::string& name, const ModelConfig& c) {
  if (name == "embeddings.weight") return "embedding";
  if (name == "lm_head.weight") return "lm_head";
  if (!name.starts_with("layers.")) return "norm";
  if (name.find(".mixer.") == std::string::npos) return "norm";
  const int64_t l = std::stoll(name.substr(7));
  switch (c.layers[size_t(l)]) {
    case LayerKind::Mamba: return "mamba";
    case LayerKind::Attention: return "attention";
    case LayerKind::Mlp: return "mlp";
    case LayerKind::Moe: return "moe";
  }
  return "other";
}
}  // namespace

ParameterCount count_parameters(const ModelConfig& c) {
  ParameterCount out;
  for (const auto& spec : param_specs(c, c.tie_word_embeddings)) {
    if (!spec.trainable) continue;
    const int64_t n = shape_numel(spec.shape);
    if (__builtin_add_overflow(out.total, n, &out.total))
      throw Error("config", "parameter count", "at most 2^63 - 1", "more");
    out.by_kind[kind_of(spec.name, c)] += n;
    // Only top-k of the routed experts run for a token.
    if (spec.name.find(".experts.") != std::string::npos)
      out.active += n / c.n_routed_experts * c.num_experts_per_tok;
    else
      out.active += n;
  }
  return out;
}

MemoryEstimate estimate_memory(const ModelConfig& c, int64_t batch, int64_t seq) {
  MemoryEstimate m;
  const int64_t params = count_parameters(c).total;
  m.weights_bf16 = 2 * params;
  m.training_state = (2 + 4 + 4 + 8) * params;
  const int64_t t = batch * seq, d = c.hidden_size;
  int64_t per_token = 0;  // saved activation elements per token
  int64_t largest_layer = 0;  // the most any one layer saves per token, beyond its input
  for (LayerKind k : c.layers) {
    per_token += 2 * d + 1;  // residual input, its norm, 1/rms
    const int64_t before = per_token;
    switch (k) {
      case LayerKind::Mamba: {
        const int64_t din = c.d_inner(), cd = c.conv_dim(), h = c.mamba_num_heads;
        m.state_per_sequence += batch * ((c.conv_kernel - 1) * cd * 2 + h * c.mamba_head_dim *
                                                                            c.ssm_state_size * 4);
        per_token += d + 5 * din + 2 * cd + 3 * h + c.n_groups;
        break;
      }
      case LayerKind::Attention: {
        const int64_t q = c.num_attention_heads * c.head_dim,
                      kv = c.num_key_value_heads * c.head_dim;
        m.kv_cache += 2 * kv * 2 * t;
        per_token += d + 2 * q + 2 * kv + c.num_attention_heads;
        break;
      }
      case LayerKind::Mlp: per_token += d + 2 * c.intermediate_size; break;
      case LayerKind::Moe: {
        const int64_t din = c.moe_latent_size > 0 ? c.moe_latent_size : d;
        per_token += d + 2 * din + c.n_routed_experts + 2 * c.num_experts_per_tok +
                     c.num_experts_per_tok * 2 * c.moe_intermediate_size +
                     2 * c.moe_shared_expert_intermediate_size;
        break;
      }
    }
    largest_layer = std::max(largest_layer, per_token - before);
  }
  m.activations = 2 * per_token * t;
  m.activations_recompute = 2 * (int64_t(c.layers.size()) * (2 * d + 1) + largest_layer) * t;
  return m;
}

AdapterMemory estimate_adapter_memory(const ModelConfig& c, const LoraConfig& lora,
                                      bool quantized) {
  AdapterMemory a;
  for (const LoraTarget& t : lora_targets(c, lora, "memory estimate"))
    a.adapter_params += lora.r * (t.in + t.out) * std::max<int64_t>(1, t.experts);
  const int64_t total = count_parameters(c).total;
  int64_t largest = 0;
  for (const LoraTarget& t : lora_candidates(c)) {
    const int64_t n = t.out * t.in * std::max<int64_t>(1, t.experts);
    a.quantized_params += n;
    largest = std::max(largest, n);
  }
  // NF4 with double quantisation: 4 bits, plus one byte per 64 and four per 64 · 256 values.
  const double nf4_bytes = (32.0 + 1.0 + 4.0 / 256.0) / 64.0;
  a.base = quantized ? int64_t(double(a.quantized_params) * nf4_bytes) +
                           2 * (total - a.quantized_params)
                     : 2 * total;
  if (!quantized) a.quantized_params = 0;
  a.adapter_state = (2 + 2 + 4 + 8) * a.adapter_params;
  // An MoE layer holds its up and down experts de-quantised together.
  a.dequantized = quantized ? 2 * (c.has(LayerKind::Moe) ? 2 * largest : largest) : 0;
  return a;
}

}  // namespace nh
