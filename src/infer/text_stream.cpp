#include "infer/text_stream.h"

namespace nh {

std::string TextStream::update(const std::vector<int32_t>& tokens) {
  if (!tokenizer_) return "";
  const std::string all = tokenizer_->decode(tokens, true);
  // A token that ends inside a UTF-8 character decodes to U+FFFD; wait for the rest.
  if (all.size() >= 3 && all.compare(all.size() - 3, 3, "\xEF\xBF\xBD") == 0) return "";
  if (all.size() < decoded_) return "";
  const std::string piece = all.substr(decoded_);
  decoded_ = all.size();
  return stops_.push(piece);
}

}  // namespace nh
