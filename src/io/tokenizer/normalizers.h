// Normalizers of tokenizer.json ("normalizer"): NFC, NFD, NFKC, NFKD, Lowercase, Strip,
// StripAccents, Replace, Prepend, Nmt, ByteLevel and Sequence. They rewrite the text of each
// piece between added tokens before pre-tokenization. Offsets are not tracked: ids do not
// depend on them.
#pragma once

#include <memory>
#include <string>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// The normalizer described by `value` (null gives nullptr); unsupported types are an Error.
std::unique_ptr<Normalizer> parse_normalizer(const json& value, const JsonPath& at);

}  // namespace nh::tok
