// OpenAI-shaped response bodies: a whole completion (object "text_completion" or
// "chat.completion"), the server-sent events of a streamed one (chunks of "text_completion" or
// "chat.completion.chunk", ending with `data: [DONE]`), the model list and errors.
// Logprobs are the chosen tokens' only: completions' "top_logprobs" is null and chat's lists
// are empty.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "io/tokenizer.h"
#include "serve/channel.h"
#include "serve/openai_request.h"

namespace nh::serve {

using Json = nlohmann::ordered_json;

// What every body of one response repeats.
struct ResponseInfo {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;  // "cmpl-…" or "chatcmpl-…"
  std::string model;
  int64_t created = 0;  // Unix seconds
  int64_t prompt_tokens = 0;
  bool logprobs = false;
};

// A fresh id and the time now.
ResponseInfo new_response(Endpoint endpoint, const std::string& model, int64_t prompt_tokens,
                          bool logprobs);

// The body of a finished request (all: everything its channel delivered).
Json completion_body(const ResponseInfo& info, const Output& all, const Tokenizer* tokenizer);

// The events of one streamed response, produced as the request's output arrives.
class EventStream {
 public:
  EventStream(ResponseInfo info, const Tokenizer* tokenizer, bool include_usage)
      : info_(std::move(info)), tokenizer_(tokenizer), include_usage_(include_usage) {}
  // The events to send first (chat: the assistant role), before any output.
  std::string begin();
  // The events for newly arrived output: tokens whose text is still held back wait for it; at
  // the end, the last chunk with the finish reason, the usage when asked, and [DONE].
  std::string feed(const Output& next);
  int64_t tokens_sent() const { return sent_tokens_; }

 private:
  std::string chunk(const std::string& text, const Json& finish_reason, const Json& logprobs);

  ResponseInfo info_;
  const Tokenizer* tokenizer_;
  bool include_usage_;
  Output held_;  // tokens not sent yet
  int64_t sent_tokens_ = 0;
  int64_t text_offset_ = 0;  // completions' logprobs.text_offset of the next token
};

Json error_body(const ApiError& e);
Json models_body(const std::string& model, int64_t created, int64_t max_context);
// JSON text with invalid UTF-8 replaced (a model may emit any bytes).
std::string dump(const Json& j);

}  // namespace nh::serve
