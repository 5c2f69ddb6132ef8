#include "io/chat_format.h"

#include "core/error.h"

namespace nh {

namespace {

std::string replace_role(const std::string& prefix, const std::string& role) {
  std::string out = prefix;
  const std::string key = "{role}";
  for (size_t pos = out.find(key); pos != std::string::npos; pos = out.find(key, pos + role.size()))
    out.replace(pos, key.size(), role);
  return out;
}

// Appends text to the pieces, merging it into the last piece when both are of one kind.
void append(std::vector<ChatPiece>& pieces, const std::string& text, bool trained) {
  if (text.empty()) return;
  if (!pieces.empty() && pieces.back().trained == trained)
    pieces.back().text += text;
  else
    pieces.push_back({text, trained});
}

const std::string& string_field(const nlohmann::json& message, const char* key,
                                const std::string& where, const std::string& field) {
  const auto it = message.find(key);
  if (it == message.end()) throw Error(where, field, "a string", "nothing");
  if (!it->is_string()) throw Error(where, field, "a string", it->type_name());
  return it->get_ref<const std::string&>();
}

}  // namespace

ChatTemplate chat_template_by_name(const std::string& name) {
  ChatTemplate t;
  if (name == "chatml") {
    t.default_format = {"<|im_start|>{role}\n", "<|im_end|>", "\n"};
  } else if (name == "plain") {
    t.default_format = {"", "", "\n"};
    t.train_all = true;
  } else {
    throw Error("chat template", "name", "\"chatml\" or \"plain\"", "\"" + name + "\"");
  }
  return t;
}

std::vector<ChatPiece> render_chat(const nlohmann::json& record, const ChatTemplate& tmpl,
                                   const std::string& where) {
  if (!record.is_object()) throw Error(where, "record", "a JSON object", record.type_name());
  const auto messages = record.find("messages");
  if (messages == record.end()) throw Error(where, "messages", "an array of messages", "nothing");
  if (!messages->is_array())
    throw Error(where, "messages", "an array of messages", messages->type_name());
  std::vector<ChatPiece> pieces;
  append(pieces, tmpl.bos, false);
  for (size_t i = 0; i < messages->size(); ++i) {
    const auto& m = (*messages)[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw Error(where, field, "an object", m.type_name());
    const std::string& role = string_field(m, "role", where, field + ".role");
    const std::string& content = string_field(m, "content", where, field + ".content");
    const auto custom = tmpl.roles.find(role);
    const RoleFormat& f = custom != tmpl.roles.end() ? custom->second : tmpl.default_format;
    const bool trained = tmpl.train_all || tmpl.trained_roles.count(role) > 0;
    append(pieces, replace_role(f.prefix, role), false);
    append(pieces, content, trained);
    append(pieces, f.suffix, trained);
    append(pieces, f.separator, false);
  }
  return pieces;
}

std::vector<TokenizedExample> tokenize_chats(const std::vector<std::vector<ChatPiece>>& records,
                                             const BatchEncoder& encode) {
  std::vector<std::string> texts;
  for (const auto& pieces : records)
    for (const auto& p : pieces) texts.push_back(p.text);
  const std::vector<std::vector<int32_t>> ids = encode(texts);
  NH_CHECK(ids.size() == texts.size(), "tokenize_chats: encoder returned a different count");
  std::vector<TokenizedExample> out(records.size());
  size_t k = 0;
  for (size_t r = 0; r < records.size(); ++r) {
    for (const auto& p : records[r]) {
      const auto& piece_ids = ids[k++];
      out[r].tokens.insert(out[r].tokens.end(), piece_ids.begin(), piece_ids.end());
      out[r].mask.insert(out[r].mask.end(), piece_ids.size(), p.trained ? 1 : 0);
    }
  }
  return out;
}

}  // namespace nh
