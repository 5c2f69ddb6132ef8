// OpenAI-compatible request bodies (POST /v1/completions and /v1/chat/completions) parsed and
// validated into what the engine runs. Fields: prompt (a string or a list of token ids) or
// messages (role/content, rendered with the chat template as `nemotronh chat` renders them),
// max_tokens (chat: max_completion_tokens first), temperature, top_p, top_k (-1 or 0 = off),
// min_p, presence/frequency/repetition_penalty, seed (random when absent), stop (a string or a
// list), logprobs, n (1 only), stream, stream_options.include_usage and vLLM's ignore_eos.
// Other fields (model, user, ...) are accepted and ignored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/chat_format.h"
#include "io/tokenizer.h"
#include "serve/engine.h"

namespace nh::serve {

enum class Endpoint { Completions, ChatCompletions };

// An error answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the request field at fault ("" is null)
  std::string code;   // "" is null
};

// What parsing needs from the server.
struct ApiContext {
  const Tokenizer* tokenizer = nullptr;  // text prompts and chat need one
  ChatTemplate chat_template;
  std::vector<int32_t> eos_ids;  // end every request unless ignore_eos
  int64_t vocab_size = 0;
  int64_t max_context = 4096;       // prompt + max_tokens at most
  int64_t max_tokens_limit = 2048;  // max_tokens at most
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  EngineRequest engine;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  bool logprobs = false;       // report the chosen tokens' logprobs
};

// Throws ApiError (400) for a body that is not JSON or a field that is missing, of the wrong
// type or out of range, and for a prompt that leaves no room for max_tokens in the context.
ApiRequest parse_request(Endpoint endpoint, const std::string& body, const ApiContext& ctx);

}  // namespace nh::serve
