#include "serve/engine.h"

#include <algorithm>

#include "infer/generate.h"

namespace nh::serve {

namespace {

// The positions a request reserves in the inference state: its prompt and every new token.
int64_t positions_of(const EngineRequest& r) { return int64_t(r.prompt.size()) + r.max_tokens; }

}  // namespace

Engine::Engine(Model& model, const Tokenizer* tokenizer, EngineOptions options)
    : model_(model), tokenizer_(tokenizer), options_(options) {
  if (options.max_batch < 1)
    throw Error("serve", "max_batch", "at least 1", std::to_string(options.max_batch));
  if (options.max_context < 2)
    throw Error("serve", "max_context", "at least 2", std::to_string(options.max_context));
  if (options.max_queue < 1)
    throw Error("serve", "max_queue", "at least 1", std::to_string(options.max_queue));
  state_ = model_.new_inference_state(options.max_batch, options.max_context, options.kv_positions);
  logits_ = Tensor::empty({options.max_batch, model_.config().vocab_size}, DType::F32);
  next_.assign(size_t(options.max_batch), 0);
  kv_pool_positions_ = state_.page_size > 0
                           ? int64_t(state_.free_pages.size()) * state_.page_size
                           : options.max_context;
  rows_.resize(size_t(options.max_batch));
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Channel> Engine::submit(EngineRequest request) {
  const int64_t vocab = model_.config().vocab_size;
  const int64_t n = int64_t(request.prompt.size());
  if (n == 0) throw Error("request", "prompt", "at least one token", "none");
  for (int32_t id : request.prompt)
    if (id < 0 || id >= vocab)
      throw Error("request", "prompt", "token ids in [0, " + std::to_string(vocab) + ")",
                  std::to_string(id));
  if (request.max_tokens < 1)
    throw Error("request", "max_tokens", "at least 1", std::to_string(request.max_tokens));
  const int64_t room = std::min(options_.max_context, kv_pool_positions_);
  if (positions_of(request) > room)
    throw Error("request", "prompt + max_tokens", "at most " + std::to_string(room) + " tokens",
                std::to_string(n) + " + " + std::to_string(request.max_tokens));
  request.sampling.validate("request");
  if (!request.stop_strings.empty() && !tokenizer_)
    throw Error("request", "stop", "a tokenizer to decode with", "none");
  StopStrings check(request.stop_strings);  // empty stop strings are an Error

  auto channel = std::make_shared<Channel>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (draining_ || stopping_) throw ShuttingDown("the server is shutting down");
    if (int64_t(queue_.size()) >= options_.max_queue)
      throw QueueFull("the queue is full (" + std::to_string(options_.max_queue) +
                      " requests waiting)");
    queue_.push_back({std::move(request), channel});
  }
  wake_.notify_all();
  return channel;
}

void Engine::drain() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t Engine::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int64_t(queue_.size());
}

void Engine::run() {
  std::vector<Waiting> admitted;
  while (admit(admitted)) {
    for (Waiting& w : admitted) start(std::move(w));
    admitted.clear();
    if (active_ > 0) sample_all();
    if (active_ > 0) decode_all();
  }
}

bool Engine::admit(std::vector<Waiting>& admitted) {
  std::unique_lock<std::mutex> lock(mutex_);
  std::erase_if(queue_, [](const Waiting& w) {
    const bool cancelled = w.channel->cancelled();
    if (cancelled) w.channel->finish("cancelled");
    return cancelled;
  });
  wake_.wait(lock, [&] { return stopping_ || draining_ || active_ > 0 || !queue_.empty(); });
  if (stopping_) {
    for (Waiting& w : queue_) w.channel->finish("cancelled");
    queue_.clear();
    for (size_t r = 0; r < rows_.size(); ++r)
      if (rows_[r]) end_row(r, "cancelled");
    return false;
  }
  if (draining_ && active_ == 0 && queue_.empty()) return false;
  // Pages the admitted requests will take; in order, so a long request is not starved.
  int64_t pages = int64_t(state_.free_pages.size());
  for (int64_t free = options_.max_batch - active_; free > 0 && !queue_.empty(); --free) {
    const int64_t need = state_.pages_needed(positions_of(queue_.front().request));
    if (need > pages) break;
    pages -= need;
    admitted.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return true;
}

void Engine::start(Waiting w) {
  const auto free = std::find_if(rows_.begin(), rows_.end(), [](const auto& r) { return !r; });
  NH_CHECK(free != rows_.end(), "a request admitted without a free row");
  const size_t r = size_t(free - rows_.begin());
  if (w.channel->cancelled()) {
    w.channel->finish("cancelled");
    return;
  }
  try {
    NH_CHECK(state_.reserve(int64_t(r), positions_of(w.request)),
             "a request admitted without free KV pages");
    Sampler sampler(w.request.sampling, model_.config().vocab_size);
    TextStream text(tokenizer_, w.request.stop_strings);
    const auto& p = w.request.prompt;
    Tensor ids = Tensor::from(std::vector<int64_t>(p.begin(), p.end()), {int64_t(p.size())});
    Tensor row_logits = logits_.slice0(int64_t(r), int64_t(r) + 1);
    model_.prefill(ids, state_, int64_t(r), row_logits);
    rows_[r].emplace(Row{std::move(w.request), w.channel, std::move(sampler), std::move(text), {}});
    ++active_;
  } catch (const std::exception& e) {
    state_.release(int64_t(r));
    w.channel->fail(e.what());
  }
}

void Engine::sample_all() {
  const int64_t vocab = model_.config().vocab_size;
  for (size_t r = 0; r < rows_.size(); ++r) {
    if (!rows_[r]) continue;
    Row& row = *rows_[r];
    if (row.channel->cancelled()) {
      end_row(r, "cancelled");
      continue;
    }
    try {
      const Sampler::Choice c = row.sampler.sample(logits_.data<float>() + int64_t(r) * vocab,
                                                   row.request.prompt, row.tokens);
      next_[r] = c.token;
      const auto& stop_ids = row.request.stop_ids;
      if (std::find(stop_ids.begin(), stop_ids.end(), c.token) != stop_ids.end()) {
        end_row(r, "stop", row.text.flush(row.tokens));
        continue;
      }
      row.tokens.push_back(c.token);
      row.channel->push_token(c.token, c.logprob, row.text.update(row.tokens));
      if (row.text.stopped() || int64_t(row.tokens.size()) >= row.request.max_tokens)
        end_row(r, row.text.stopped() ? "stop" : "length", row.text.flush(row.tokens));
    } catch (const std::exception& e) {
      end_row(r, "", "", e.what());
    }
  }
}

void Engine::decode_all() {
  std::vector<int64_t> live;
  for (size_t r = 0; r < rows_.size(); ++r)
    if (rows_[r]) live.push_back(int64_t(r));
  if (live.empty()) return;
  try {
    decode_rows(model_, live, next_, state_, logits_);
  } catch (const std::exception& e) {
    for (int64_t r : live) end_row(size_t(r), "", "", e.what());
  }
}

void Engine::end_row(size_t r, const std::string& reason, const std::string& text,
                     const std::string& error) {
  const std::shared_ptr<Channel> channel = rows_[r]->channel;
  rows_[r].reset();
  state_.release(int64_t(r));
  --active_;
  if (error.empty())
    channel->finish(reason, text);
  else
    channel->fail(error);
}

}  // namespace nh::serve
