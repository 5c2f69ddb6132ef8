// Attention of one new token per sequence over its KV cache (decoding), causal GQA (SPEC §4).
//   q [B, Hq, d] the newest token's queries; k_cache, v_cache [B, L, Hkv, d] with Hq a multiple
//   of Hkv (query head h reads kv head h / (Hq/Hkv)); lengths I64 [B] (on the host, a CPU
//   tensor whatever the device of the rest): sequence b attends to cache positions
//   [0, lengths[b]), the newest token's k and v already written at lengths[b] - 1;
//   1 <= lengths[b] <= L. out [B, Hq, d] = softmax(q·kᵀ·scale) · v over those positions, the
//   softmax in fp32 (fp64 for F64 inputs). q, caches and out share one float dtype.
// The result equals attention_forward's row for that position over the same keys.
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& lengths, double scale, Tensor& out);
}  // namespace cpu
namespace cuda {
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& lengths, double scale, Tensor& out);
}  // namespace cuda

inline void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& lengths, double scale, Tensor& out) {
  NH_DISPATCH(q.device(), attention_decode(q, k_cache, v_cache, lengths, scale, out));
}

}  // namespace nh
