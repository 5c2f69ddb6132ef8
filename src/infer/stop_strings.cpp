#include "infer/stop_strings.h"

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace nh {

StopStrings::StopStrings(std::vector<std::string> stops, const std::string& where)
    : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i)
    if (stops_[i].empty())
      throw Error(where, "stop[" + std::to_string(i) + "]", "a non-empty string",
                  "an empty string");
}

std::string StopStrings::push(const std::string& new_text) {
  if (stopped_) return "";
  pending_ += new_text;
  // The earliest occurrence of any stop string ends the text. pending_ holds at most the
  // longest stop string plus new_text, so searching all of it each time stays cheap.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that a stop string begins with. A match starting before it
  // would either lie wholly in pending_ (found above) or make a longer suffix a prefix.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStrings::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace nh
