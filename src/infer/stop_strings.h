// Stop strings for streamed generation, as transformers' stop_strings and vLLM's `stop` end
// the text: the output ends just before the first stop string it contains, which is left out.
//
// push() takes each newly decoded piece of text and returns what is safe to show now: text
// is held back only while it could still be the beginning of a stop string. Matching is on
// bytes; with valid UTF-8 text and stop strings, a match and a held-back part always begin on
// a character boundary (a stop string starts with a lead byte), so released text splits
// between characters whenever the pieces pushed are whole characters.
#pragma once

#include <string>
#include <vector>

namespace nh {

class StopStrings {
 public:
  // An empty stop string is an nh::Error naming `where`.
  explicit StopStrings(std::vector<std::string> stops, const std::string& where = "stop");

  // Appends new_text; returns the text that can no longer be part of a stop string. Once a
  // stop string is found, returns the text before it and then nothing more.
  std::string push(const std::string& new_text);
  bool stopped() const { return stopped_; }
  // At the end of generation: the held-back text (empty once stopped).
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back: a suffix that is a proper prefix of some stop string
  bool stopped_ = false;
};

}  // namespace nh
