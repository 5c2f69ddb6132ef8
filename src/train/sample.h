// A short continuation of a prompt, for the end of a training run: each new token runs the
// whole sequence forward again (fine for the tiny models trained on CPU; generation with
// constant-memory state is `nemotronh generate`).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace nh {

// temperature 0 is greedy; otherwise softmax(logits / temperature) sampled from `seed`.
// Stops early at stop_id (when >= 0).
std::vector<int32_t> sample_continuation(Model& model, std::vector<int32_t> prompt,
                                         int64_t new_tokens, double temperature, uint64_t seed,
                                         int32_t stop_id = -1);

}  // namespace nh
