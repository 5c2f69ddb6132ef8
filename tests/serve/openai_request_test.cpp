// Request bodies of /v1/completions and /v1/chat/completions: what the engine is asked to run,
// and the 400s (in OpenAI's error shape) for bodies and fields that are wrong.
#include "serve/openai_request.h"

#include <gtest/gtest.h>

namespace nh::serve {
namespace {

const Tokenizer& tokenizer() {
  static const Tokenizer tok =
      Tokenizer::load(std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer/bytelevel_gpt4");
  return tok;
}

ApiContext context() {
  ApiContext c;
  c.tokenizer = &tokenizer();
  c.chat_template = chat_template_by_name("chatml");
  c.eos_ids = {7};
  c.vocab_size = tokenizer().vocab_size();
  c.max_context = 64;
  c.max_tokens_limit = 32;
  return c;
}

ApiRequest completion(const std::string& body) {
  return parse_request(Endpoint::Completions, body, context());
}
ApiRequest chat(const std::string& body) {
  return parse_request(Endpoint::ChatCompletions, body, context());
}

// The ApiError a body gives.
ApiError error_of(Endpoint endpoint, const std::string& body) {
  try {
    parse_request(endpoint, body, context());
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body;
  return {};
}

TEST(ServeOpenAIRequest, CompletionWithTokenIdsAndDefaults) {
  const ApiRequest r = completion(R"({"model": "x", "prompt": [1, 2, 3], "user": "ignored"})");
  EXPECT_EQ(r.endpoint, Endpoint::Completions);
  EXPECT_EQ(r.engine.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(r.engine.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(r.engine.sampling.temperature, 1.0);
  EXPECT_EQ(r.engine.stop_ids, std::vector<int32_t>{7});
  EXPECT_TRUE(r.engine.stop_strings.empty());
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs);
}

TEST(ServeOpenAIRequest, CompletionWithTextAndEverySamplingField) {
  const ApiRequest r = completion(R"({"prompt": "Hello world", "max_tokens": 5,
      "temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.05, "presence_penalty": 0.1,
      "frequency_penalty": 0.2, "repetition_penalty": 1.1, "seed": 42, "stop": ["a", "bc"],
      "logprobs": 0, "stream": true, "stream_options": {"include_usage": true},
      "ignore_eos": true})");
  EXPECT_EQ(r.engine.prompt, tokenizer().encode("Hello world", true));
  EXPECT_EQ(r.engine.max_tokens, 5);
  const SamplingParams& s = r.engine.sampling;
  EXPECT_EQ(s.temperature, 0.5);
  EXPECT_EQ(s.top_p, 0.9);
  EXPECT_EQ(s.top_k, 0);
  EXPECT_EQ(s.min_p, 0.05);
  EXPECT_EQ(s.presence_penalty, 0.1);
  EXPECT_EQ(s.frequency_penalty, 0.2);
  EXPECT_EQ(s.repetition_penalty, 1.1);
  EXPECT_EQ(s.seed, 42u);
  EXPECT_TRUE(s.logprobs);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.engine.stop_strings, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.engine.stop_ids.empty());
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(completion(R"({"prompt": [1], "stop": "x"})").engine.stop_strings,
            std::vector<std::string>{"x"});
}

TEST(ServeOpenAIRequest, ChatRendersTheTemplateAndStopsAtTheEndOfTurn) {
  const ApiRequest r = chat(R"({"messages": [{"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}],
      "stop": "END", "logprobs": true, "top_logprobs": 2})");
  const std::string text =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(r.engine.prompt, tokenizer().encode(text, false));
  EXPECT_EQ(r.engine.stop_strings, (std::vector<std::string>{"END", "<|im_end|>"}));
  EXPECT_EQ(r.engine.stop_ids, std::vector<int32_t>{7});
  // No max_tokens: as many as the context and the limit allow.
  EXPECT_EQ(r.engine.max_tokens, std::min<int64_t>(32, 64 - int64_t(r.engine.prompt.size())));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": "a"}], "max_tokens": 9,
                     "max_completion_tokens": 3})")
                .engine.max_tokens,
            3);
}

TEST(ServeOpenAIRequest, RandomSeedWhenNoneIsGiven) {
  const std::string body = R"({"prompt": [1]})";
  EXPECT_NE(completion(body).engine.sampling.seed, completion(body).engine.sampling.seed);
}

TEST(ServeOpenAIRequest, BadBodiesAndFieldsAre400sNamingTheField) {
  struct Case {
    Endpoint endpoint;
    std::string body, param;
  };
  const auto C = Endpoint::Completions, Chat = Endpoint::ChatCompletions;
  const std::vector<Case> cases = {
      {C, "{not json", ""},
      {C, R"({"prompt": [1], "temperature": 5e333333})", ""},  // a number beyond double
      {C, "[1, 2]", ""},
      {C, "{}", "prompt"},
      {C, R"({"prompt": {"a": 1}})", "prompt"},
      {C, R"({"prompt": ["a", "b"]})", "prompt"},
      {C, R"({"prompt": [1, 1000000]})", "prompt"},
      {C, R"({"prompt": [-1]})", "prompt"},
      {C, R"({"prompt": []})", "prompt"},
      {C, R"({"prompt": [1], "max_tokens": 0})", "max_tokens"},
      {C, R"({"prompt": [1], "max_tokens": 33})", "max_tokens"},
      {C, R"({"prompt": [1], "max_tokens": "5"})", "max_tokens"},
      {C, R"({"prompt": [1], "max_tokens": 2.5})", "max_tokens"},
      {C, R"({"prompt": [1], "temperature": -1})", ""},
      {C, R"({"prompt": [1], "top_p": 0})", ""},
      {C, R"({"prompt": [1], "temperature": "hot"})", "temperature"},
      {C, R"({"prompt": [1], "stop": ""})", "stop"},
      {C, R"({"prompt": [1], "stop": [1]})", "stop"},
      {C, R"({"prompt": [1], "n": 2})", "n"},
      {C, R"({"prompt": [1], "stream": "yes"})", "stream"},
      {C, R"({"prompt": [1], "logprobs": -1})", "logprobs"},
      {C, R"({"prompt": [1], "seed": 1.5})", "seed"},
      {Chat, R"({"prompt": "hi"})", "messages"},
      {Chat, R"({"messages": []})", "messages"},
      {Chat, R"({"messages": [{"role": "user"}]})", "messages"},
      {Chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages"},
      {Chat, R"({"messages": [{"role": "user", "content": "a"}], "logprobs": 3})", "logprobs"},
      {Chat, R"({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})",
       "max_completion_tokens"},
  };
  for (const auto& c : cases) {
    const ApiError e = error_of(c.endpoint, c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_FALSE(e.message.empty()) << c.body;
  }
}

TEST(ServeOpenAIRequest, PromptThatLeavesNoRoomForMaxTokensExceedsTheContext) {
  std::string ids = "1";
  for (int i = 1; i < 60; ++i) ids += ",1";
  // 60 prompt tokens + 5 new > 64.
  ApiError e = error_of(Endpoint::Completions, R"({"prompt": [)" + ids + R"(], "max_tokens": 5})");
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_NO_THROW(completion(R"({"prompt": [)" + ids + R"(], "max_tokens": 4})"));
  for (int i = 60; i < 64; ++i) ids += ",1";
  e = error_of(Endpoint::Completions, R"({"prompt": [)" + ids + "]}");
  EXPECT_EQ(e.code, "context_length_exceeded");
}

}  // namespace
}  // namespace nh::serve
