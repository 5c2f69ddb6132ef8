// What a model needs in memory, from its config alone (for `nemotronh info`).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "model/config.h"
#include "model/lora.h"

namespace nh {

// Trainable parameters as transformers' num_parameters() counts them: weights, biases,
// A_log / D / dt_bias and norms; not buffers (the router's correction bias), not MTP layers,
// a tied head once. Derived from param_specs(), the table the model itself is built from.
struct ParameterCount {
  int64_t total = 0;
  std::map<std::string, int64_t> by_kind;  // "embedding", "mamba", "attention", "mlp", "moe",
                                           // "norm", "lm_head"
  int64_t active = 0;  // parameters used per token (MoE: top-k routed experts only)
};
ParameterCount count_parameters(const ModelConfig& config);

struct MemoryEstimate {
  int64_t weights_bf16 = 0;        // inference weights
  int64_t state_per_sequence = 0;  // Mamba conv + SSM state (constant in length)
  int64_t kv_cache = 0;            // attention K/V for the whole context, bf16
  int64_t training_state = 0;      // bf16 weights + fp32 grads + fp32 master + Adam moments
  int64_t activations = 0;         // saved activations of one micro-batch, bf16, no recompute
  // With every layer recomputed: each layer's input, norm and 1/rms, plus the largest layer's
  // own activations while it runs again for its backward.
  int64_t activations_recompute = 0;
};
MemoryEstimate estimate_memory(const ModelConfig& config, int64_t batch, int64_t seq_len);

// Training an adapter (model/lora.h) on a frozen base, optionally held in NF4.
struct AdapterMemory {
  int64_t adapter_params = 0;
  int64_t quantized_params = 0;  // linear and expert weights (QLoRA)
  int64_t base = 0;              // the frozen base: NF4 codes and scales, the rest in bf16
  int64_t adapter_state = 0;     // bf16 adapter + grads, fp32 master + Adam moments
  int64_t dequantized = 0;       // QLoRA: the largest weights de-quantised at once (bf16)
};
AdapterMemory estimate_adapter_memory(const ModelConfig& config, const LoraConfig& lora,
                                      bool quantized);

}  // namespace nh
