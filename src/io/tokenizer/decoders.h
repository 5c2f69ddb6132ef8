// Decoders of tokenizer.json ("decoder"): ByteLevel, Metaspace, ByteFallback, Fuse, Strip,
// Replace, BPEDecoder and Sequence, each turning the list of token strings into another
// list (decode_chain); the decoded text is the concatenation of the final list.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// The decoder described by `value` (null gives nullptr); unsupported types are an Error.
std::unique_ptr<Decoder> parse_decoder(const json& value, const JsonPath& at);

}  // namespace nh::tok
