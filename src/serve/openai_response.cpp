#include "serve/openai_response.h"

#include <chrono>
#include <cstdio>
#include <random>

namespace nh::serve {

namespace {

const char* object_name(Endpoint e, bool chunk) {
  if (e == Endpoint::Completions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

Json null_or(const std::string& s) { return s.empty() ? Json() : Json(s); }

std::string token_text(const Tokenizer* tokenizer, int32_t id) {
  return tokenizer ? tokenizer->decode({id}) : "";
}

// The chosen tokens' logprobs in the endpoint's shape; text_offset advances past each token.
Json logprobs_json(Endpoint endpoint, const Output& o, const Tokenizer* tokenizer,
                   int64_t& text_offset) {
  if (endpoint == Endpoint::ChatCompletions) {
    Json content = Json::array();
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      const std::string s = token_text(tokenizer, o.tokens[i]);
      content.push_back({{"token", s},
                         {"logprob", o.logprobs[i]},
                         {"bytes", std::vector<uint8_t>(s.begin(), s.end())},
                         {"top_logprobs", Json::array()}});
    }
    return {{"content", content}};
  }
  Json tokens = Json::array(), offsets = Json::array();
  for (int32_t id : o.tokens) {
    const std::string s = token_text(tokenizer, id);
    tokens.push_back(s);
    offsets.push_back(text_offset);
    text_offset += int64_t(s.size());
  }
  return {{"tokens", tokens},
          {"token_logprobs", o.logprobs},
          {"top_logprobs", nullptr},
          {"text_offset", offsets}};
}

Json usage(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

Json head(const ResponseInfo& info, bool chunk) {
  return {{"id", info.id},
          {"object", object_name(info.endpoint, chunk)},
          {"created", info.created},
          {"model", info.model}};
}

std::string event(const Json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

ResponseInfo new_response(Endpoint endpoint, const std::string& model, int64_t prompt_tokens,
                          bool logprobs) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  char hex[25];
  std::snprintf(hex, sizeof hex, "%016llx%08llx", (unsigned long long)rng(),
                (unsigned long long)(rng() & 0xffffffffull));
  ResponseInfo info;
  info.endpoint = endpoint;
  info.id = std::string(endpoint == Endpoint::Completions ? "cmpl-" : "chatcmpl-") + hex;
  info.model = model;
  info.created = std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  info.prompt_tokens = prompt_tokens;
  info.logprobs = logprobs;
  return info;
}

Json completion_body(const ResponseInfo& info, const Output& all, const Tokenizer* tokenizer) {
  int64_t offset = 0;
  Json choice = {{"index", 0}};
  if (info.endpoint == Endpoint::Completions)
    choice["text"] = all.text;
  else
    choice["message"] = {{"role", "assistant"}, {"content", all.text}};
  choice["logprobs"] =
      info.logprobs ? logprobs_json(info.endpoint, all, tokenizer, offset) : Json();
  choice["finish_reason"] = all.finish_reason;
  Json body = head(info, false);
  body["choices"] = Json::array({choice});
  body["usage"] = usage(info.prompt_tokens, int64_t(all.tokens.size()));
  return body;
}

std::string EventStream::chunk(const std::string& text, const Json& finish_reason,
                               const Json& logprobs) {
  Json choice = {{"index", 0}};
  if (info_.endpoint == Endpoint::Completions)
    choice["text"] = text;
  else
    choice["delta"] = finish_reason.is_null() ? Json{{"content", text}} : Json::object();
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish_reason;
  Json body = head(info_, true);
  body["choices"] = Json::array({choice});
  if (include_usage_) body["usage"] = nullptr;
  return event(body);
}

std::string EventStream::begin() {
  if (info_.endpoint != Endpoint::ChatCompletions) return "";
  Json body = head(info_, true);
  body["choices"] = Json::array({{{"index", 0},
                                  {"delta", {{"role", "assistant"}, {"content", ""}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}});
  if (include_usage_) body["usage"] = nullptr;
  return event(body);
}

std::string EventStream::feed(const Output& next) {
  if (!next.error.empty())
    return event(error_body({500, next.error, "server_error", "", ""})) + "data: [DONE]\n\n";
  held_.text += next.text;
  held_.tokens.insert(held_.tokens.end(), next.tokens.begin(), next.tokens.end());
  held_.logprobs.insert(held_.logprobs.end(), next.logprobs.begin(), next.logprobs.end());
  // Sends the held tokens' logprobs (null unless asked for or when none) and forgets them.
  auto take_logprobs = [&] {
    const Json lp = info_.logprobs && !held_.tokens.empty()
                        ? logprobs_json(info_.endpoint, held_, tokenizer_, text_offset_)
                        : Json();
    sent_tokens_ += int64_t(held_.tokens.size());
    held_ = Output();
    return lp;
  };
  std::string out;
  if (!held_.text.empty()) {
    const std::string text = held_.text;
    out += chunk(text, nullptr, take_logprobs());
  }
  if (!next.finished) return out;
  out += chunk("", next.finish_reason, take_logprobs());
  if (include_usage_) {
    Json body = head(info_, true);
    body["choices"] = Json::array();
    body["usage"] = usage(info_.prompt_tokens, sent_tokens_);
    out += event(body);
  }
  return out + "data: [DONE]\n\n";
}

Json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", null_or(e.param)},
            {"code", null_or(e.code)}}}};
}

Json models_body(const std::string& model, int64_t created, int64_t max_context) {
  return {{"object", "list"},
          {"data", Json::array({{{"id", model},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "nemotronh"},
                                 {"max_model_len", max_context}}})}};
}

std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace nh::serve
