// The decoded text of one sequence's tokens, released as it becomes final: held back while the
// last token ends inside a UTF-8 character or the text could still begin a stop string.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "infer/stop_strings.h"
#include "io/tokenizer.h"

namespace nh {

class TextStream {
 public:
  // tokenizer may be null: then no text is ever released (stops must be empty).
  TextStream(const Tokenizer* tokenizer, const std::vector<std::string>& stops)
      : tokenizer_(tokenizer), stops_(stops) {}
  // Decodes the tokens so far and returns the newly final text ("" while a character is
  // incomplete or a stop string may be starting).
  std::string update(const std::vector<int32_t>& tokens);
  // At the end of the sequence: the text still held back (nothing once a stop string ended it).
  std::string flush() { return tokenizer_ && !stops_.stopped() ? stops_.flush() : ""; }
  bool stopped() const { return stops_.stopped(); }

 private:
  const Tokenizer* tokenizer_;
  StopStrings stops_;
  size_t decoded_ = 0;
};

}  // namespace nh
