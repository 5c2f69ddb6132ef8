#include "infer/generate.h"

#include <algorithm>
#include <memory>

#include "infer/text_stream.h"

namespace nh {

void decode_rows(Model& model, const std::vector<int64_t>& rows, const std::vector<int64_t>& next,
                 InferenceState& state, Tensor& logits) {
  const int64_t k = int64_t(rows.size()), vocab = logits.size(1);
  std::vector<int64_t> ids;
  for (int64_t r : rows) ids.push_back(next[size_t(r)]);
  Tensor step = Tensor::empty({k, vocab}, DType::F32);
  model.decode(Tensor::from(ids, {k}), rows, state, step);
  for (int64_t i = 0; i < k; ++i)
    logits.slice0(rows[size_t(i)], rows[size_t(i)] + 1).copy_from(step.slice0(i, i + 1));
}

std::vector<GenerationResult> generate(Model& model, const Tokenizer* tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text) {
  const size_t n = requests.size();
  std::vector<GenerationResult> results(n);
  if (n == 0) return results;
  const int64_t vocab = model.config().vocab_size;
  int64_t longest_prompt = 0, most_new = 0;
  std::vector<Sampler> samplers;
  std::vector<TextStream> streams;
  for (size_t r = 0; r < n; ++r) {
    const auto& q = requests[r];
    const std::string where = "request " + std::to_string(r);
    if (q.prompt.empty()) throw Error(where, "prompt", "at least one token", "none");
    if (q.max_new_tokens < 0) throw Error(where, "max_new_tokens", ">= 0", std::to_string(q.max_new_tokens));
    for (int32_t id : q.prompt)
      if (id < 0 || id >= vocab)
        throw Error(where, "prompt", "token ids in [0, " + std::to_string(vocab) + ")",
                    std::to_string(id));
    if (!q.stop_strings.empty() && !tokenizer)
      throw Error(where, "stop strings", "a tokenizer to decode with", "none");
    samplers.emplace_back(q.sampling, vocab);
    streams.emplace_back(tokenizer, q.stop_strings);
    longest_prompt = std::max<int64_t>(longest_prompt, int64_t(q.prompt.size()));
    most_new = std::max(most_new, q.max_new_tokens);
  }
  // Each row reserves KV pages for its own prompt and new tokens only.
  int64_t kv_positions = 0;
  for (const auto& q : requests) {
    const int64_t want = int64_t(q.prompt.size()) + q.max_new_tokens;
    kv_positions += pages_for(want, kDefaultPageSize) * kDefaultPageSize;
  }
  InferenceState state =
      model.new_inference_state(int64_t(n), longest_prompt + most_new, kv_positions);
  Tensor logits = Tensor::empty({int64_t(n), vocab}, DType::F32);
  for (size_t r = 0; r < n; ++r) {
    const auto& p = requests[r].prompt;
    NH_CHECK(state.reserve(int64_t(r), int64_t(p.size()) + requests[r].max_new_tokens),
             "the KV pool is sized for every request");
    Tensor ids = Tensor::from(std::vector<int64_t>(p.begin(), p.end()), {int64_t(p.size())});
    Tensor row = logits.slice0(int64_t(r), int64_t(r) + 1);
    model.prefill(ids, state, int64_t(r), row);
  }

  std::vector<bool> done(n, false);
  std::vector<int64_t> next(n, 0);
  auto finish = [&](size_t r, const char* reason) {
    done[r] = true;
    results[r].finish_reason = reason;
    const std::string rest = streams[r].flush(results[r].tokens);
    results[r].text += rest;
    if (on_text && !rest.empty()) on_text(r, rest);
  };
  for (size_t r = 0; r < n; ++r)
    if (requests[r].max_new_tokens == 0) finish(r, "length");
  for (int64_t step = 0; step < most_new; ++step) {
    for (size_t r = 0; r < n; ++r) {
      if (done[r]) continue;
      auto& res = results[r];
      const auto& q = requests[r];
      const Sampler::Choice c =
          samplers[r].sample(logits.data<float>() + int64_t(r) * vocab, q.prompt, res.tokens);
      next[r] = c.token;
      if (std::find(q.stop_ids.begin(), q.stop_ids.end(), c.token) != q.stop_ids.end()) {
        finish(r, "stop");
        continue;
      }
      res.tokens.push_back(c.token);
      if (q.sampling.logprobs) res.logprobs.push_back(c.logprob);
      const std::string piece = streams[r].update(res.tokens);
      res.text += piece;
      if (on_text && !piece.empty()) on_text(r, piece);
      if (streams[r].stopped())
        finish(r, "stop");
      else if (int64_t(res.tokens.size()) >= q.max_new_tokens)
        finish(r, "length");
    }
    // Only the rows still generating take a step.
    std::vector<int64_t> live;
    for (size_t r = 0; r < n; ++r)
      if (!done[r]) live.push_back(int64_t(r));
    if (live.empty()) break;
    decode_rows(model, live, next, state, logits);
  }
  return results;
}

}  // namespace nh
