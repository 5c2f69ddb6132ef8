#include "serve/openai_request.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

namespace nh::serve {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message,
                      const std::string& code = "") {
  throw ApiError{400, message, "invalid_request_error", param, code};
}

// The field, or null when it is absent.
const json& field(const json& body, const char* key) {
  static const json null;
  const auto it = body.find(key);
  return it == body.end() ? null : *it;
}

double number(const json& body, const char* key, double fallback) {
  const json& v = field(body, key);
  if (v.is_null()) return fallback;
  if (!v.is_number()) bad(key, std::string("'") + key + "' must be a number");
  return v.get<double>();
}

int64_t integer(const json& body, const char* key, int64_t fallback) {
  const json& v = field(body, key);
  if (v.is_null()) return fallback;
  if (!v.is_number_integer()) bad(key, std::string("'") + key + "' must be an integer");
  return v.get<int64_t>();
}

bool boolean(const json& body, const char* key, bool fallback) {
  const json& v = field(body, key);
  if (v.is_null()) return fallback;
  if (!v.is_boolean()) bad(key, std::string("'") + key + "' must be a boolean");
  return v.get<bool>();
}

SamplingParams sampling(const json& body) {
  SamplingParams s;
  s.temperature = number(body, "temperature", 1.0);
  s.top_p = number(body, "top_p", 1.0);
  s.top_k = integer(body, "top_k", 0);
  if (s.top_k == -1) s.top_k = 0;  // vLLM's "off"
  s.min_p = number(body, "min_p", 0.0);
  s.presence_penalty = number(body, "presence_penalty", 0.0);
  s.frequency_penalty = number(body, "frequency_penalty", 0.0);
  s.repetition_penalty = number(body, "repetition_penalty", 1.0);
  const json& seed = field(body, "seed");
  if (seed.is_null()) {
    s.seed = std::random_device{}() * 0x100000000ull + std::random_device{}();
  } else {
    if (!seed.is_number_integer()) bad("seed", "'seed' must be an integer");
    s.seed = seed.is_number_unsigned() ? seed.get<uint64_t>() : uint64_t(seed.get<int64_t>());
  }
  try {
    s.validate("request");
  } catch (const Error& e) {
    bad("", e.what());
  }
  return s;
}

std::vector<std::string> stop_strings(const json& body) {
  const json& v = field(body, "stop");
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const json& s : v) {
      if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else if (!v.is_null()) {
    bad("stop", "'stop' must be a string or a list of strings");
  }
  if (std::find(out.begin(), out.end(), "") != out.end())
    bad("stop", "'stop' strings must not be empty");
  return out;
}

std::vector<int32_t> completion_prompt(const json& body, const ApiContext& ctx) {
  const json& p = field(body, "prompt");
  if (p.is_string()) {
    if (!ctx.tokenizer) bad("prompt", "text prompts need a tokenizer; send a list of token ids");
    return ctx.tokenizer->encode(p.get<std::string>(), true);
  }
  if (!p.is_array()) bad("prompt", "'prompt' must be a string or a list of token ids");
  std::vector<int32_t> ids;
  for (const json& id : p) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= ctx.vocab_size)
      bad("prompt", "'prompt' token ids must be integers in [0, " + std::to_string(ctx.vocab_size) +
                        ") (batches of prompts are not supported)");
    ids.push_back(int32_t(id.get<int64_t>()));
  }
  return ids;
}

const RoleFormat& format_of(const ChatTemplate& t, const std::string& role) {
  const auto it = t.roles.find(role);
  return it == t.roles.end() ? t.default_format : it->second;
}

// The conversation as the template writes it (io/chat_format.h), then the assistant's turn
// opened, as `nemotronh chat` renders it. Content given as a list of text parts is joined.
std::string render_messages(const json& body, const ChatTemplate& tmpl) {
  const json& messages = field(body, "messages");
  if (!messages.is_array() || messages.empty())
    bad("messages", "'messages' must be a non-empty list of messages");
  json record = {{"messages", messages}};
  for (json& m : record["messages"]) {
    if (!m.is_object() || !m.contains("content") || !m["content"].is_array()) continue;
    std::string text;
    for (const json& part : m["content"]) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string())
        bad("messages", "message content parts must be {\"type\": \"text\", \"text\": ...}");
      text += part["text"].get<std::string>();
    }
    m["content"] = text;
  }
  std::string text;
  try {
    for (const ChatPiece& piece : render_chat(record, tmpl, "request")) text += piece.text;
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  std::string prefix = format_of(tmpl, "assistant").prefix;
  for (size_t at; (at = prefix.find("{role}")) != std::string::npos;)
    prefix.replace(at, 6, "assistant");
  return text + prefix;
}

}  // namespace

ApiRequest parse_request(Endpoint endpoint, const std::string& body_text, const ApiContext& ctx) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const json::exception& e) {  // syntax, or a number too large for a double
    bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) bad("", "the body must be a JSON object");

  ApiRequest r;
  r.endpoint = endpoint;
  const bool chat = endpoint == Endpoint::ChatCompletions;
  if (integer(body, "n", 1) != 1) bad("n", "only n = 1 is supported");
  r.stream = boolean(body, "stream", false);
  const json& options = field(body, "stream_options");
  if (!options.is_null() && !options.is_object())
    bad("stream_options", "'stream_options' must be an object");
  r.include_usage = options.is_object() && boolean(options, "include_usage", false);

  const json& logprobs = field(body, "logprobs");
  if (logprobs.is_boolean()) {
    r.logprobs = logprobs.get<bool>();
  } else if (!chat && logprobs.is_number_integer() && logprobs.get<int64_t>() >= 0) {
    r.logprobs = true;  // the chosen tokens' logprobs; alternatives are not reported
  } else if (!logprobs.is_null()) {
    bad("logprobs",
        chat ? "'logprobs' must be a boolean" : "'logprobs' must be a boolean or an integer >= 0");
  }
  if (chat && integer(body, "top_logprobs", 0) < 0)
    bad("top_logprobs", "'top_logprobs' must be an integer >= 0");

  EngineRequest& e = r.engine;
  e.sampling = sampling(body);
  e.sampling.logprobs = r.logprobs;
  e.stop_strings = stop_strings(body);
  if (!boolean(body, "ignore_eos", false)) e.stop_ids = ctx.eos_ids;
  const char* prompt_field = chat ? "messages" : "prompt";
  if (chat) {
    if (!ctx.tokenizer) bad("messages", "chat needs a tokenizer");
    e.prompt = ctx.tokenizer->encode(render_messages(body, ctx.chat_template), false);
    const std::string& end_of_turn = format_of(ctx.chat_template, "assistant").suffix;
    if (!end_of_turn.empty()) e.stop_strings.push_back(end_of_turn);
  } else {
    if (field(body, "prompt").is_null()) bad("prompt", "'prompt' is required");
    e.prompt = completion_prompt(body, ctx);
  }
  const int64_t n = int64_t(e.prompt.size());
  if (n == 0) bad(prompt_field, "the prompt is empty");

  const char* max_field = chat && !field(body, "max_completion_tokens").is_null()
                              ? "max_completion_tokens"
                              : "max_tokens";
  const int64_t room = ctx.max_context - n;
  const auto too_long = [&](int64_t max_tokens) {
    bad(prompt_field,
        "this server's maximum context length is " + std::to_string(ctx.max_context) +
            " tokens, but " + std::to_string(n) + " prompt tokens and " +
            std::to_string(max_tokens) + " new tokens were requested",
        "context_length_exceeded");
  };
  if (room < 1) too_long(1);
  e.max_tokens = integer(body, max_field, chat ? std::min(ctx.max_tokens_limit, room) : 16);
  if (e.max_tokens < 1) bad(max_field, std::string("'") + max_field + "' must be at least 1");
  if (e.max_tokens > ctx.max_tokens_limit)
    bad(max_field,
        std::string("'") + max_field + "' must be at most " + std::to_string(ctx.max_tokens_limit));
  if (e.max_tokens > room) too_long(e.max_tokens);
  return r;
}

}  // namespace nh::serve
