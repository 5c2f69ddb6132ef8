// libFuzzer target: bytes as the body of POST /v1/completions and /v1/chat/completions. Every
// rejection must be an ApiError (answered as a 400), no other exception may escape and nothing
// may crash; an accepted request must be one the engine can run (ids in the vocabulary, room in
// the context, valid sampling).
#include <cstddef>
#include <cstdint>
#include <string>

#include "serve/openai_request.h"
#include "train/first_run.h"

namespace {

const nh::serve::ApiContext& context() {
  static const nh::Tokenizer tokenizer =
      nh::Tokenizer::from_json_text(nh::byte_level_tokenizer_json(), "fuzz/tokenizer.json");
  static const nh::serve::ApiContext ctx = [] {
    nh::serve::ApiContext c;
    c.tokenizer = &tokenizer;
    c.chat_template = nh::chat_template_by_name("chatml");
    c.eos_ids = {2};
    c.vocab_size = tokenizer.vocab_size();
    c.max_context = 256;
    c.max_tokens_limit = 64;
    return c;
  }();
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const auto& ctx = context();
  for (auto endpoint : {nh::serve::Endpoint::Completions, nh::serve::Endpoint::ChatCompletions}) {
    try {
      const nh::serve::ApiRequest r = nh::serve::parse_request(endpoint, body, ctx);
      const auto& e = r.engine;
      if (e.prompt.empty() || e.max_tokens < 1 ||
          int64_t(e.prompt.size()) + e.max_tokens > ctx.max_context)
        __builtin_trap();
      for (int32_t id : e.prompt)
        if (id < 0 || id >= ctx.vocab_size) __builtin_trap();
      e.sampling.validate("fuzz");
    } catch (const nh::serve::ApiError&) {
    }
  }
  return 0;
}
