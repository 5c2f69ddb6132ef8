#include "io/chat_format.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "io/document_source.h"
#include "io/tokenizer.h"

namespace nh {

namespace {

constexpr int32_t kImStart = 300, kImEnd = 301;

// A stand-in tokenizer: one id per byte, and the ChatML markers as single added tokens, as a
// real tokenizer with <|im_start|>/<|im_end|> in its added tokens gives them.
std::vector<int32_t> fake_encode(const std::string& text) {
  const std::string start = "<|im_start|>", end = "<|im_end|>";
  std::vector<int32_t> ids;
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, start.size(), start) == 0) {
      ids.push_back(kImStart);
      i += start.size();
    } else if (text.compare(i, end.size(), end) == 0) {
      ids.push_back(kImEnd);
      i += end.size();
    } else {
      ids.push_back(int32_t(uint8_t(text[i++])));
    }
  }
  return ids;
}

std::vector<std::vector<int32_t>> fake_encode_batch(const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& t : texts) out.push_back(fake_encode(t));
  return out;
}

const nlohmann::json kChat = nlohmann::json::parse(R"({"messages": [
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi"},
  {"role": "assistant", "content": "Hello!"},
  {"role": "user", "content": "Bye"},
  {"role": "assistant", "content": "See you."}]})");

std::string joined(const std::vector<ChatPiece>& pieces) {
  std::string s;
  for (const auto& p : pieces) s += p.text;
  return s;
}

std::vector<std::string> trained_texts(const std::vector<ChatPiece>& pieces) {
  std::vector<std::string> out;
  for (const auto& p : pieces)
    if (p.trained) out.push_back(p.text);
  return out;
}

// The Error message of render_chat on `record`, or "" when it renders.
std::string render_error(const std::string& record) {
  try {
    render_chat(nlohmann::json::parse(record), chat_template_by_name("chatml"), "chats.jsonl:7");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ChatFormat, ChatMlWrapsEachMessageInImStartAndImEnd) {
  const auto pieces = render_chat(kChat, chat_template_by_name("chatml"), "t");
  EXPECT_EQ(joined(pieces),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n"
            "<|im_start|>assistant\nSee you.<|im_end|>\n");
}

TEST(ChatFormat, ChatMlTrainsOnlyAssistantContentAndItsEndMarker) {
  const auto pieces = render_chat(kChat, chat_template_by_name("chatml"), "t");
  EXPECT_EQ(trained_texts(pieces),
            (std::vector<std::string>{"Hello!<|im_end|>", "See you.<|im_end|>"}));
  // Adjacent pieces of one kind are merged, so kinds alternate.
  for (size_t i = 1; i < pieces.size(); ++i) EXPECT_NE(pieces[i].trained, pieces[i - 1].trained);
}

TEST(ChatFormat, TrainAllTrainsEveryMessage) {
  ChatTemplate t = chat_template_by_name("chatml");
  t.train_all = true;
  const auto trained = trained_texts(render_chat(kChat, t, "t"));
  ASSERT_EQ(trained.size(), 5u);
  EXPECT_EQ(trained[0], "Be brief.<|im_end|>");
  EXPECT_EQ(trained[1], "Hi<|im_end|>");
}

TEST(ChatFormat, TrainedRolesCanBeChosen) {
  ChatTemplate t = chat_template_by_name("chatml");
  t.trained_roles = {"user"};
  EXPECT_EQ(trained_texts(render_chat(kChat, t, "t")),
            (std::vector<std::string>{"Hi<|im_end|>", "Bye<|im_end|>"}));
}

TEST(ChatFormat, PlainTemplateHasNoMarkersAndTrainsEverything) {
  const auto pieces = render_chat(kChat, chat_template_by_name("plain"), "t");
  EXPECT_EQ(joined(pieces), "Be brief.\nHi\nHello!\nBye\nSee you.\n");
  EXPECT_EQ(trained_texts(pieces).size(), 5u);
}

TEST(ChatFormat, CustomTemplateHasBosRolePrefixesAndOverrides) {
  ChatTemplate t;
  t.bos = "<s>";
  t.default_format = {"[{role}] ", "</turn>", "\n"};
  t.roles["assistant"] = {"[bot] ", "</s>", ""};
  const nlohmann::json chat = nlohmann::json::parse(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "tool", "content": "c"}]})");
  const auto pieces = render_chat(chat, t, "t");
  EXPECT_EQ(joined(pieces), "<s>[user] a</turn>\n[bot] b</s>[tool] c</turn>\n");
  EXPECT_EQ(trained_texts(pieces), (std::vector<std::string>{"b</s>"}));
}

TEST(ChatFormat, TokenMaskMarksExactlyTheTrainedPiecesTokens) {
  const auto pieces = render_chat(kChat, chat_template_by_name("chatml"), "t");
  const auto ex = tokenize_chats({pieces}, fake_encode_batch);
  ASSERT_EQ(ex.size(), 1u);
  ASSERT_EQ(ex[0].tokens.size(), ex[0].mask.size());
  // Markers are single ids, so piecewise tokens equal those of the whole text here.
  EXPECT_EQ(ex[0].tokens, fake_encode(joined(pieces)));
  std::vector<int32_t> trained;
  for (size_t i = 0; i < ex[0].tokens.size(); ++i)
    if (ex[0].mask[i]) trained.push_back(ex[0].tokens[i]);
  std::vector<int32_t> want = fake_encode("Hello!<|im_end|>See you.<|im_end|>");
  EXPECT_EQ(trained, want);
  EXPECT_EQ(std::count(ex[0].tokens.begin(), ex[0].tokens.end(), kImStart), 5);
}

TEST(ChatFormat, TokenizeChatsKeepsRecordsApart) {
  const ChatTemplate t = chat_template_by_name("chatml");
  const nlohmann::json one =
      nlohmann::json::parse(R"({"messages":[{"role":"user","content":"x"}]})");
  const auto ex =
      tokenize_chats({render_chat(kChat, t, "a"), render_chat(one, t, "b")}, fake_encode_batch);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1].tokens, fake_encode("<|im_start|>user\nx<|im_end|>\n"));
  EXPECT_EQ(std::count(ex[1].mask.begin(), ex[1].mask.end(), 1), 0);
}

TEST(ChatFormat, UnknownTemplateNameIsAnError) {
  EXPECT_THROW(chat_template_by_name("llama9"), Error);
}

TEST(ChatFormat, BadRecordsAreErrorsNamingWhereAndTheField) {
  struct Case {
    const char* record;
    const char* field;
  };
  const Case cases[] = {
      {R"({"text": "no messages"})", "messages: expected an array"},
      {R"({"messages": "hi"})", "messages: expected an array"},
      {R"({"messages": [{"role": "user", "content": "a"}, 3]})", "messages[1]: expected an object"},
      {R"({"messages": [{"content": "a"}]})", "messages[0].role: expected a string, found nothing"},
      {R"({"messages": [{"role": "user"}]})",
       "messages[0].content: expected a string, found nothing"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]})",
       "messages[1].content: expected a string, found null"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
       "messages[0].content: expected a string, found array"},
      {R"({"messages": [{"role": 7, "content": "a"}]})", "messages[0].role: expected a string"},
      {R"(["messages"])", "record: expected a JSON object"},
  };
  for (const auto& c : cases) {
    const std::string msg = render_error(c.record);
    EXPECT_NE(msg.find("chats.jsonl:7"), std::string::npos) << c.record << " -> " << msg;
    EXPECT_NE(msg.find(c.field), std::string::npos) << c.record << " -> " << msg;
  }
}

TEST(ChatFormat, RealTokenizerGivesMarkersAsSingleIdsAndAlignedMasks) {
  const Tokenizer tok =
      Tokenizer::load(std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer/bytelevel_gpt4");
  const int32_t im_start = *tok.token_to_id("<|im_start|>"),
                im_end = *tok.token_to_id("<|im_end|>");
  const auto pieces = render_chat(kChat, chat_template_by_name("chatml"), "t");
  const auto ex = tokenize_chats({pieces}, tokenizer_encoder(tok))[0];
  EXPECT_EQ(std::count(ex.tokens.begin(), ex.tokens.end(), im_start), 5);
  EXPECT_EQ(std::count(ex.tokens.begin(), ex.tokens.end(), im_end), 5);
  std::vector<int32_t> trained;
  for (size_t i = 0; i < ex.tokens.size(); ++i)
    if (ex.mask[i]) trained.push_back(ex.tokens[i]);
  EXPECT_EQ(tok.decode(trained), "Hello!<|im_end|>See you.<|im_end|>");
  EXPECT_EQ(tok.decode(ex.tokens), joined(pieces));
}

}  // namespace nh
