// What decoding keeps per sequence between steps (SPEC §2, §3): for each Mamba layer the last
// K-1 convolution inputs and the fp32 SSM state, fixed in size whatever the context length; for
// each attention layer the keys and values of every position so far.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace nh {

struct LayerCache {
  Tensor conv_state;  // Mamba: [B, conv_dim, K-1], the activations' dtype
  Tensor ssm_state;   // Mamba: [B, H, P, N], F32 (F64 for F64 models)
  Tensor k, v;        // attention: [B, capacity, Hkv, head_dim]
};

struct InferenceState {
  int64_t capacity = 0;           // positions each sequence may reach (prompt + new tokens)
  std::vector<int64_t> lengths;   // positions filled so far, per sequence
  std::vector<LayerCache> layers;
  int64_t batch() const { return int64_t(lengths.size()); }
  // Bytes held by the caches.
  int64_t bytes() const;
};

}  // namespace nh
