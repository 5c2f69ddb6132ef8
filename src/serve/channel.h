// The queue between the engine thread and the HTTP handler waiting for one request: the engine
// appends each generated token (with its logprob and the text it released) and finally how the
// request ended; the handler takes whatever has arrived since its last look.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace nh::serve {

struct Output {
  std::string text;              // released text (stop strings cut, whole UTF-8 characters)
  std::vector<int32_t> tokens;   // generated tokens, without a stop id
  std::vector<double> logprobs;  // one per token (NaN unless the request asked for them)
  bool finished = false;
  std::string finish_reason;  // when finished: "stop", "length" or "cancelled"
  std::string error;          // when finished because the engine failed the request

  bool empty() const { return text.empty() && tokens.empty() && !finished; }
  // Appends `later` (what arrived after this).
  void append(Output later);
};

class Channel {
 public:
  // Engine side.
  void push_token(int32_t token, double logprob, const std::string& text);
  void finish(const std::string& reason, const std::string& text = "");
  void fail(const std::string& error);

  // Handler side: waits up to `timeout` for anything new and returns it (empty on timeout).
  Output take(std::chrono::milliseconds timeout);
  // Waits for the end and returns everything not taken yet.
  Output take_all();
  // Asks the engine to drop the request at its next step; its row is freed then.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  void publish(Output o);

  std::mutex mutex_;
  std::condition_variable ready_;
  Output pending_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace nh::serve
