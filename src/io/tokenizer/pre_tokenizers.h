// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): Split, ByteLevel, Metaspace, Digits,
// Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit and
// Sequence. Each cuts every split of a piece into smaller ones (dropping empty ones) and may
// rewrite them (ByteLevel's byte alphabet, Metaspace's replacement character).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

struct Split {
  std::string text;
  // Whether the split starts at offset 0 of the original input (Metaspace's "first" scheme
  // prepends only there).
  bool at_origin = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `splits` (none empty) by the splits made of each, in order, none empty.
  virtual void pre_tokenize(std::vector<Split>& splits) const = 0;
};

// The pre-tokenizer described by `value` (null gives nullptr); unsupported types are an Error.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& value, const JsonPath& at);

}  // namespace nh::tok
