// Token sampling for generation, as transformers' logits processors and vLLM's sampler do it.
//
// The logits of one position go through, in this order:
//   1. repetition_penalty over the distinct tokens of prompt + generated (transformers' rule:
//      a positive logit is divided by the penalty, a negative one multiplied);
//   2. frequency and presence penalties over the generated tokens only (OpenAI's rule:
//      logit -= frequency_penalty * count + presence_penalty * (count > 0));
//   3. division by temperature;
//   4. top-k (ties with the k-th logit are kept, as transformers and vLLM keep them), then
//      top-p over the distribution renormalised after top-k (the smallest set of most probable
//      tokens whose mass reaches top_p; equal logits in order of token id), then min-p (tokens
//      with probability < min_p * the largest probability are dropped);
//   5. one draw from the renormalised distribution of what is left.
// temperature 0 is greedy: the argmax after steps 1-2, ties to the lowest id; top-k/p and
// min-p are then ignored and no random number is drawn.
//
// Choice::logprob (only when SamplingParams::logprobs; NaN otherwise) is the log-softmax of
// the chosen token over the whole vocabulary after steps 1-3 and before any truncation, as
// vLLM reports processed logprobs; for greedy it is taken after steps 1-2 (temperature 1).
//
// Logits may be -inf (a banned token); NaN or +inf, or all -inf, are an nh::Error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace nh {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off; above the vocabulary size it keeps everything
  double top_p = 1.0;
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  double frequency_penalty = 0.0;
  double presence_penalty = 0.0;
  uint64_t seed = 0;
  bool logprobs = false;

  // Throws nh::Error naming `where` and the field for a value out of range or not finite.
  void validate(const std::string& where) const;
};

class Sampler {
 public:
  struct Choice {
    int32_t token;
    double logprob;
  };

  // Validates params; the random stream is seeded from params.seed once, so a Sampler gives
  // the same tokens for the same sequence of calls.
  Sampler(SamplingParams params, int64_t vocab_size);

  // logits: vocab_size values. prompt and generated: the token ids so far (each in
  // [0, vocab_size)), read for the penalties.
  Choice sample(const float* logits, const std::vector<int32_t>& prompt,
                const std::vector<int32_t>& generated);

  const SamplingParams& params() const { return params_; }

 private:
  void apply_penalties(std::vector<double>& l, const std::vector<int32_t>& prompt,
                       const std::vector<int32_t>& generated) const;
  // Token ids that survive top-k, top-p and min-p; `s` are the processed logits shifted so
  // that their maximum is 0, and only finite ones can survive.
  std::vector<int32_t> truncate(const std::vector<double>& s) const;

  SamplingParams params_;
  int64_t vocab_size_;
  Rng rng_;
};

}  // namespace nh
