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
  // Takes the tokens so far (each call the previous ones plus new ones) and returns the newly
  // final text ("" while a character is incomplete or a stop string may be starting). Decodes
  // only a window of the last tokens, so a step costs the same however long the output is.
  std::string update(const std::vector<int32_t>& tokens);
  // At the end of the sequence (`tokens` as last passed to update): the text still held back,
  // an incomplete character included (nothing once a stop string ended it).
  std::string flush(const std::vector<int32_t>& tokens);
  bool stopped() const { return stops_.stopped(); }

 private:
  const Tokenizer* tokenizer_;
  StopStrings stops_;
  // tokens [prefix_, read_) were decoded last time (their text already released): decoding
  // from prefix_ gives the context a decoder needs (spaces, byte fallback) for what follows.
  size_t prefix_ = 0, read_ = 0;
};

}  // namespace nh
