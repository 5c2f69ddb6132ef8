// The added tokens of tokenizer.json ("added_tokens"): found in the text before
// pre-tokenization, longest match first at the leftmost position. Tokens with
// normalized=false are found in the raw text, the others in each normalized piece (as their
// own normalized form). single_word, lstrip and rstrip behave as in the library's
// AddedVocabulary::find_matches.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/tokenizer/bpe.h"
#include "io/tokenizer/json_fields.h"
#include "io/tokenizer/normalizers.h"

namespace nh::tok {

struct AddedToken {
  std::string content;
  std::string normalized_form;  // what it matches and decodes to when normalized is true
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// A part of a text: an added token (id >= 0) or text to tokenize (id < 0).
struct TextPart {
  size_t start = 0, end = 0;
  int32_t id = -1;
};

class AddedVocabulary {
 public:
  // Ids come as the library assigns them: an existing token keeps its id, a new one gets the
  // next id after the model's vocab (the "id" fields of the file are not used).
  AddedVocabulary(const json& list, const BpeModel& model, const Normalizer* normalizer,
                  const JsonPath& at);

  // Cuts `text` into parts on the raw (normalized=false) or the normalized tokens; empty text
  // gives no parts.
  void split(std::string_view text, bool normalized_tokens, std::vector<TextPart>& out) const;

  std::optional<int32_t> token_to_id(std::string_view content) const;
  const AddedToken* find(int32_t id) const;
  bool is_special(std::string_view content) const;
  int32_t max_id() const;

 private:
  // Byte trie over one set of token strings.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;
      int32_t token = -1;  // index into tokens_ when a token ends here
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    void add(std::string_view s, int32_t token);
    // Index and length of the longest token starting at text[pos], or -1.
    int32_t longest_at(std::string_view text, size_t pos, size_t& len) const;
  };
  void rebuild();

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  StringMap by_content_;
  std::unordered_map<std::string, bool, StringHash, std::equal_to<>> special_contents_;
  Trie raw_, normalized_;
};

}  // namespace nh::tok
