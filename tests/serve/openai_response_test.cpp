// Response bodies as OpenAI shapes them: whole completions, the server-sent events of streamed
// ones (held-back tokens, the finish chunk, the usage chunk, [DONE]), errors and the model list.
#include "serve/openai_response.h"

#include <gtest/gtest.h>

namespace nh::serve {
namespace {

using nlohmann::json;

const Tokenizer& tokenizer() {
  static const Tokenizer tok =
      Tokenizer::load(std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer/bytelevel_gpt4");
  return tok;
}

Output output(const std::string& text, std::vector<int32_t> tokens, const std::string& finish) {
  Output o;
  o.text = text;
  o.tokens = std::move(tokens);
  o.logprobs.assign(o.tokens.size(), -0.5);
  o.finished = !finish.empty();
  o.finish_reason = finish;
  return o;
}

// The JSON of each "data: " event; [DONE] as the string "[DONE]".
std::vector<json> events(const std::string& sse) {
  std::vector<json> out;
  for (size_t at = 0; at < sse.size();) {
    const size_t end = sse.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << sse;
    if (end == std::string::npos) break;
    const std::string e = sse.substr(at, end - at);
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    out.push_back(e == "data: [DONE]" ? json("[DONE]") : json::parse(e.substr(6)));
    at = end + 2;
  }
  return out;
}

TEST(ServeOpenAIResponse, CompletionBody) {
  const std::vector<int32_t> ids = tokenizer().encode("Hi there", false);
  const ResponseInfo info = new_response(Endpoint::Completions, "tiny", 4, true);
  EXPECT_EQ(info.id.rfind("cmpl-", 0), 0u);
  const json j =
      json::parse(dump(completion_body(info, output("Hi there", ids, "length"), &tokenizer())));
  EXPECT_EQ(j["id"], info.id);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_GT(j["created"].get<int64_t>(), 1600000000);
  const json& c = j["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["text"], "Hi there");
  EXPECT_EQ(c["finish_reason"], "length");
  std::string joined;
  for (const auto& t : c["logprobs"]["tokens"]) joined += t.get<std::string>();
  EXPECT_EQ(joined, "Hi there");
  EXPECT_EQ(c["logprobs"]["token_logprobs"].size(), ids.size());
  EXPECT_EQ(c["logprobs"]["text_offset"][0], 0);
  EXPECT_TRUE(c["logprobs"]["top_logprobs"].is_null());
  EXPECT_EQ(j["usage"], json({{"prompt_tokens", 4},
                              {"completion_tokens", ids.size()},
                              {"total_tokens", 4 + ids.size()}}));
}

TEST(ServeOpenAIResponse, ChatBody) {
  const ResponseInfo info = new_response(Endpoint::ChatCompletions, "tiny", 3, false);
  EXPECT_EQ(info.id.rfind("chatcmpl-", 0), 0u);
  const json j =
      json::parse(dump(completion_body(info, output("ok", {1, 2}, "stop"), &tokenizer())));
  EXPECT_EQ(j["object"], "chat.completion");
  const json& c = j["choices"][0];
  EXPECT_EQ(c["message"], json({{"role", "assistant"}, {"content", "ok"}}));
  EXPECT_TRUE(c["logprobs"].is_null());
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["total_tokens"], 5);

  const ResponseInfo with = new_response(Endpoint::ChatCompletions, "tiny", 3, true);
  const json lp =
      json::parse(dump(completion_body(with, output("ok", {1, 2}, "stop"), &tokenizer())));
  const json& content = lp["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["logprob"], -0.5);
  EXPECT_TRUE(content[0]["top_logprobs"].is_array());
}

TEST(ServeOpenAIResponse, CompletionStreamHoldsTokensUntilTheirTextAndEndsWithDone) {
  const ResponseInfo info = new_response(Endpoint::Completions, "tiny", 2, true);
  EventStream s(info, &tokenizer(), true);
  EXPECT_EQ(s.begin(), "");
  EXPECT_EQ(s.feed(output("", {10}, "")), "");  // text held back: nothing to send yet
  std::vector<json> e = events(s.feed(output("ab", {11}, "")));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["object"], "text_completion");
  EXPECT_EQ(e[0]["id"], info.id);
  EXPECT_EQ(e[0]["choices"][0]["text"], "ab");
  EXPECT_TRUE(e[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(e[0]["choices"][0]["logprobs"]["token_logprobs"].size(), 2u);
  EXPECT_TRUE(e[0]["usage"].is_null());

  e = events(s.feed(output("c", {12}, "length")));
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[0]["choices"][0]["text"], "c");
  EXPECT_EQ(e[1]["choices"][0]["text"], "");
  EXPECT_EQ(e[1]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(e[2]["choices"].empty());
  EXPECT_EQ(e[2]["usage"],
            json({{"prompt_tokens", 2}, {"completion_tokens", 3}, {"total_tokens", 5}}));
  EXPECT_EQ(e[3], "[DONE]");
  EXPECT_EQ(s.tokens_sent(), 3);
}

TEST(ServeOpenAIResponse, ChatStreamOpensWithTheRoleAndEndsWithAnEmptyDelta) {
  EventStream s(new_response(Endpoint::ChatCompletions, "tiny", 2, false), &tokenizer(), false);
  std::vector<json> e = events(s.begin());
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(e[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_FALSE(e[0].contains("usage"));
  e = events(s.feed(output("Hel", {1, 2}, "")));
  EXPECT_EQ(e[0]["choices"][0]["delta"], json({{"content", "Hel"}}));
  EXPECT_TRUE(e[0]["choices"][0]["logprobs"].is_null());
  e = events(s.feed(output("", {}, "stop")));
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0]["choices"][0]["delta"], json::object());
  EXPECT_EQ(e[0]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(e[1], "[DONE]");
}

TEST(ServeOpenAIResponse, StreamOfAFailedRequestSendsTheErrorThenDone) {
  EventStream s(new_response(Endpoint::Completions, "tiny", 2, false), &tokenizer(), false);
  Output failed;
  failed.finished = true;
  failed.error = "boom";
  const std::vector<json> e = events(s.feed(failed));
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0]["error"]["message"], "boom");
  EXPECT_EQ(e[0]["error"]["type"], "server_error");
  EXPECT_EQ(e[1], "[DONE]");
}

TEST(ServeOpenAIResponse, ErrorAndModelBodies) {
  EXPECT_EQ(
      json::parse(dump(error_body({429, "full", "rate_limit_error", "", "rate_limit_exceeded"}))),
      json::parse(R"({"error": {"message": "full", "type": "rate_limit_error",
                                      "param": null, "code": "rate_limit_exceeded"}})"));
  EXPECT_EQ(json::parse(dump(
                error_body({400, "bad", "invalid_request_error", "top_p", ""})))["error"]["param"],
            "top_p");
  const json m = json::parse(dump(models_body("tiny", 123, 4096)));
  EXPECT_EQ(m["object"], "list");
  EXPECT_EQ(m["data"][0]["id"], "tiny");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(m["data"][0]["created"], 123);
}

TEST(ServeOpenAIResponse, InvalidUtf8IsReplacedNotAnError) {
  const ResponseInfo info = new_response(Endpoint::Completions, "tiny", 1, false);
  const std::string text = dump(completion_body(info, output("a\xff", {1}, "stop"), &tokenizer()));
  EXPECT_EQ(json::parse(text)["choices"][0]["text"], "a\xEF\xBF\xBD");
}

}  // namespace
}  // namespace nh::serve
