#include "infer/text_stream.h"

namespace nh {

std::string TextStream::update(const std::vector<int32_t>& tokens) {
  if (!tokenizer_) return "";
  const auto from = tokens.begin() + std::ptrdiff_t(prefix_);
  const std::string before = tokenizer_->decode({from, tokens.begin() + std::ptrdiff_t(read_)}, true);
  const std::string now = tokenizer_->decode({from, tokens.end()}, true);
  // A token that ends inside a UTF-8 character decodes to U+FFFD; wait for the rest.
  if (now.size() <= before.size() ||
      (now.size() >= 3 && now.compare(now.size() - 3, 3, "\xEF\xBF\xBD") == 0))
    return "";
  prefix_ = read_;
  read_ = tokens.size();
  return stops_.push(now.substr(before.size()));
}

std::string TextStream::flush(const std::vector<int32_t>& tokens) {
  if (!tokenizer_ || stops_.stopped()) return "";
  const auto from = tokens.begin() + std::ptrdiff_t(prefix_);
  const std::string before = tokenizer_->decode({from, tokens.begin() + std::ptrdiff_t(read_)}, true);
  const std::string now = tokenizer_->decode({from, tokens.end()}, true);
  prefix_ = read_ = tokens.size();
  std::string out = now.size() > before.size() ? stops_.push(now.substr(before.size())) : "";
  return stops_.stopped() ? out : out + stops_.flush();
}

}  // namespace nh
