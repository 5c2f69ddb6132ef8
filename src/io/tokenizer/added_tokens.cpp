#include "io/tokenizer/added_tokens.h"

#include <algorithm>

#include "io/tokenizer/unicode.h"

namespace nh::tok {

void AddedVocabulary::Trie::add(std::string_view s, int32_t token) {
  int32_t node = 0;
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    auto& kids = nodes[node].children;
    const auto it =
        std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == b; });
    if (it != kids.end()) {
      node = it->second;
    } else {
      const auto next = static_cast<int32_t>(nodes.size());
      kids.emplace_back(b, next);
      nodes.emplace_back();
      node = next;
    }
  }
  nodes[node].token = token;
  if (!s.empty()) first_byte[static_cast<unsigned char>(s[0])] = true;
}

int32_t AddedVocabulary::Trie::longest_at(std::string_view text, size_t pos, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<unsigned char>(text[i]);
    const auto& kids = nodes[node].children;
    const auto it =
        std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == b; });
    if (it == kids.end()) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

AddedVocabulary::AddedVocabulary(const json& list, const BpeModel& model,
                                 const Normalizer* normalizer, const JsonPath& at) {
  if (list.is_null()) return;
  if (!list.is_array()) at.fail("a list", describe(list));
  int32_t next_id = static_cast<int32_t>(model.vocab_entries());
  for (size_t i = 0; i < list.size(); ++i) {
    const JsonPath tat = at[i];
    const json& t = list[i];
    AddedToken tok;
    tok.content = get_string(t, "content", tat);
    tok.single_word = get_bool(t, "single_word", false, tat);
    tok.lstrip = get_bool(t, "lstrip", false, tat);
    tok.rstrip = get_bool(t, "rstrip", false, tat);
    tok.special = get_bool(t, "special", false, tat);
    tok.normalized = get_bool(t, "normalized", !tok.special, tat);
    if (tok.content.empty()) continue;
    if (!is_valid_utf8(tok.content)) (tat / "content").fail("valid UTF-8", "invalid bytes");
    if (const auto known = by_content_.find(tok.content); known != by_content_.end()) {
      const AddedToken& old = tokens_[by_id_.at(known->second)];
      if (old.single_word == tok.single_word && old.lstrip == tok.lstrip &&
          old.rstrip == tok.rstrip && old.normalized == tok.normalized &&
          old.special == tok.special && old.content == tok.content)
        continue;
    }
    if (const auto known = by_content_.find(tok.content); known != by_content_.end())
      tok.id = known->second;
    else if (const auto in_model = model.token_to_id(tok.content))
      tok.id = *in_model;
    else
      tok.id = next_id++;
    tok.normalized_form = tok.content;
    if (tok.normalized && normalizer) normalizer->normalize(tok.normalized_form);
    by_content_[tok.content] = tok.id;
    if (tok.special) special_contents_.emplace(tok.content, true);
    if (const auto slot = by_id_.find(tok.id); slot != by_id_.end()) {
      tokens_[slot->second] = std::move(tok);
    } else {
      by_id_.emplace(tok.id, tokens_.size());
      tokens_.push_back(std::move(tok));
    }
  }
  rebuild();
}

void AddedVocabulary::rebuild() {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    if (t.normalized)
      normalized_.add(t.normalized_form, static_cast<int32_t>(i));
    else
      raw_.add(t.content, static_cast<int32_t>(i));
  }
}

void AddedVocabulary::split(std::string_view text, bool normalized_tokens,
                            std::vector<TextPart>& out) const {
  if (text.empty()) return;
  const Trie& trie = normalized_tokens ? normalized_ : raw_;
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 0;
    const int32_t index = trie.first_byte[static_cast<unsigned char>(text[pos])]
                              ? trie.longest_at(text, pos, len)
                              : -1;
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;
    const AddedToken& t = tokens_[index];
    if (t.single_word) {
      const bool space_before = start == 0 || !is_word_char(last_code_point(text.substr(0, start)));
      size_t k = stop;
      const bool space_after = stop == text.size() || !is_word_char(next_code_point(text, k));
      if (!space_before || !space_after) continue;
    }
    if (t.lstrip) {
      size_t s = start;
      while (s > 0) {
        const uint32_t cp = last_code_point(text.substr(0, s));
        if (!is_white_space(cp)) break;
        s -= cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      }
      start = std::max(s, start_offset);
    }
    if (t.rstrip) {
      size_t k = stop;
      while (k < text.size()) {
        const size_t at = k;
        if (!is_white_space(next_code_point(text, k))) {
          k = at;
          break;
        }
      }
      stop = k;
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = stop;
  }
  if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
}

std::optional<int32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  const auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::find(int32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

bool AddedVocabulary::is_special(std::string_view content) const {
  return special_contents_.find(content) != special_contents_.end();
}

int32_t AddedVocabulary::max_id() const {
  int32_t m = -1;
  for (const AddedToken& t : tokens_) m = std::max(m, t.id);
  return m;
}

}  // namespace nh::tok
