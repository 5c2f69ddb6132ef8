#include "serve/channel.h"

namespace nh::serve {

void Output::append(Output later) {
  text += later.text;
  tokens.insert(tokens.end(), later.tokens.begin(), later.tokens.end());
  logprobs.insert(logprobs.end(), later.logprobs.begin(), later.logprobs.end());
  if (later.finished) {
    finished = true;
    finish_reason = std::move(later.finish_reason);
    error = std::move(later.error);
  }
}

void Channel::publish(Output o) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.append(std::move(o));
  }
  ready_.notify_all();
}

void Channel::push_token(int32_t token, double logprob, const std::string& text) {
  Output o;
  o.text = text;
  o.tokens = {token};
  o.logprobs = {logprob};
  publish(std::move(o));
}

void Channel::finish(const std::string& reason, const std::string& text) {
  Output o;
  o.text = text;
  o.finished = true;
  o.finish_reason = reason;
  publish(std::move(o));
}

void Channel::fail(const std::string& error) {
  Output o;
  o.finished = true;
  o.error = error;
  publish(std::move(o));
}

Output Channel::take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait_for(lock, timeout, [&] { return !pending_.empty(); });
  Output out = std::move(pending_);
  pending_ = Output();
  return out;
}

Output Channel::take_all() {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return pending_.finished; });
  Output out = std::move(pending_);
  pending_ = Output();
  return out;
}

}  // namespace nh::serve
