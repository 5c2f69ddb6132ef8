// What a model needs in memory, from its config alone (for `nemotronh info`).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "model/config.h"

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
};
MemoryEstimate estimate_memory(const ModelConfig& config, int64_t batch, int64_t seq_len);

}  // namespace nh
