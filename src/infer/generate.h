// Text generation with constant-memory Mamba state (SPEC §2-3): each prompt is prefilled on its
// own (the chunked scan over the whole prompt hands its final states to decoding), then every
// sequence decodes together, one token per step, updating conv and SSM state in O(1) per layer
// and appending to the attention layers' KV caches.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace nh {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_new_tokens = 128;
  std::vector<int32_t> stop_ids;          // tokens that end the sequence (not part of the output)
  std::vector<std::string> stop_strings;  // text that ends it (cut from the text; needs a tokenizer)
};

struct GenerationResult {
  std::vector<int32_t> tokens;   // the new tokens, without a stop id
  std::vector<double> logprobs;  // per token, when sampling.logprobs
  std::string text;              // decoded new text up to a stop string (with a tokenizer)
  std::string finish_reason;     // "stop" (a stop id or string) or "length"
};

// Called as a request's text becomes final (held back while it could still begin a stop
// string or end inside a UTF-8 character): request index, the new piece.
using TextCallback = std::function<void(size_t, const std::string&)>;

// One decode step for state rows `rows`, row r fed the token next[r]; row r's logits land in
// row r of `logits` (F32 [R, V] on the host). The step of generate() and of the server.
void decode_rows(Model& model, const std::vector<int64_t>& rows, const std::vector<int64_t>& next,
                 InferenceState& state, Tensor& logits);

// Runs the requests as one batch. tokenizer may be null when no request has stop strings (then
// `text` stays empty and on_text is not called). Prompts must be non-empty; a request ends at
// a stop id, a stop string or max_new_tokens.
std::vector<GenerationResult> generate(Model& model, const Tokenizer* tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text = {});

}  // namespace nh
