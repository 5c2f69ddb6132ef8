// SFT chat formatting: a record {"messages": [{"role": ..., "content": ...}, ...]} becomes
// text pieces, each marked trained or not, and then token ids with a per-token loss mask.
// Pieces are tokenized one by one without special tokens, so a token never straddles a
// trained and an untrained piece and the mask stays aligned; marker strings such as
// <|im_start|> are added tokens of the tokenizer and come out as single ids.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace nh {

// How one role's message is written: prefix + content + suffix + separator. The prefix and
// separator are never trained; content and suffix are trained when the role is (the suffix
// holds the end-of-turn marker, which the model must learn to emit). "{role}" in the prefix
// is replaced by the message's role.
struct RoleFormat {
  std::string prefix;
  std::string suffix;
  std::string separator;
};

struct ChatTemplate {
  std::string bos;                          // once at the start of a record, never trained
  RoleFormat default_format;                // roles not listed in `roles`
  std::map<std::string, RoleFormat> roles;  // per-role overrides
  std::set<std::string> trained_roles = {"assistant"};
  bool train_all = false;  // train every message, whatever its role
};

// "chatml": <|im_start|>{role}\n{content}<|im_end|>\n per message, as Nemotron models use;
// only assistant turns trained. "plain": contents only, one "\n" after each, every message
// trained (pretraining-style text). Any other name is an Error.
ChatTemplate chat_template_by_name(const std::string& name);

struct ChatPiece {
  std::string text;
  bool trained = false;
};

// The pieces of one record, adjacent pieces of the same kind merged (so untrained markers
// and text tokenize together as they would in one string). `where` ("file:line") names the
// record in errors: no "messages" array, a message that is not an object or has no string
// "role"/"content" is an Error naming where and the field (messages[2].content).
std::vector<ChatPiece> render_chat(const nlohmann::json& record, const ChatTemplate& tmpl,
                                   const std::string& where);

// Token ids of many texts, in input order, without special tokens (BOS/EOS templates);
// an implementation may use all cores. Tokenizer adapts to it with encode_batch(texts, false).
using BatchEncoder =
    std::function<std::vector<std::vector<int32_t>>(const std::vector<std::string>& texts)>;

struct TokenizedExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // per token: 1 = the model is trained to predict this token
};

// Tokenizes every record's pieces in one encoder call; result i belongs to records[i].
std::vector<TokenizedExample> tokenize_chats(const std::vector<std::vector<ChatPiece>>& records,
                                             const BatchEncoder& encode);

}  // namespace nh
