// The serving engine: one thread owns the model and an inference state of max_batch rows of up
// to max_context positions, whose attention layers share a pool of KV pages, and batches
// continuously. At each step boundary it admits queued requests, in order, into free rows while
// the pool has the pages a request may use (prompt + max_tokens; reserved whole, so a running
// request never runs out), prefilling each; then it samples every active row from its logits,
// hands the token and any released text to the request's channel, frees the rows (and their
// pages) that ended, and decodes one token for the active rows together.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "serve/channel.h"

namespace nh::serve {

struct EngineRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_tokens = 16;
  std::vector<int32_t> stop_ids;          // end the request, not part of the output
  std::vector<std::string> stop_strings;  // end it and are cut from the text
};

struct EngineOptions {
  int64_t max_batch = 8;
  int64_t max_context = 4096;  // positions per row: prompt + max_tokens must fit
  int64_t max_queue = 64;      // requests waiting for a row
  int64_t kv_positions = 0;    // KV pool size in positions over all rows (0: max_batch × max_context)
};

// submit() refusals the HTTP layer answers with 429 and 503.
struct QueueFull : Error {
  using Error::Error;
};
struct ShuttingDown : Error {
  using Error::Error;
};

class Engine {
 public:
  // tokenizer may be null (no text, no stop strings). The model is used only by the engine
  // thread from now until the engine is destroyed.
  Engine(Model& model, const Tokenizer* tokenizer, EngineOptions options);
  // Cancels what is still queued or running and joins the thread.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; its channel receives the output. Throws nh::Error for a request the
  // engine cannot run (empty prompt, ids outside the vocabulary, too long for a row, bad
  // sampling), QueueFull when max_queue requests are waiting, ShuttingDown after drain().
  std::shared_ptr<Channel> submit(EngineRequest request);
  // Refuses new requests, finishes every queued and running one, then stops the thread.
  void drain();

  int64_t active() const { return active_; }  // rows generating now
  int64_t queued() const;                     // requests waiting for a row

 private:
  struct Waiting {
    EngineRequest request;
    std::shared_ptr<Channel> channel;
  };
  struct Row {
    EngineRequest request;
    std::shared_ptr<Channel> channel;
    Sampler sampler;
    TextStream text;
    std::vector<int32_t> tokens;
  };

  void run();
  // Takes queued requests, in order, into free rows while the KV pool can hold them; drops
  // cancelled ones. Returns false when the thread should end.
  bool admit(std::vector<Waiting>& admitted);
  void start(Waiting w);
  void sample_all();
  void decode_all();
  // Frees row r, then tells its request how it ended (reason and the last text, or an error),
  // so whoever sees the end also sees the row free.
  void end_row(size_t r, const std::string& reason, const std::string& text = "",
               const std::string& error = "");

  Model& model_;
  const Tokenizer* tokenizer_;
  const EngineOptions options_;
  InferenceState state_;
  int64_t kv_pool_positions_ = 0;  // positions the KV pool holds in all (set once)
  Tensor logits_;                // F32 [max_batch, vocab] on the host, by row
  std::vector<int64_t> next_;    // per row: the token the next decode feeds
  std::vector<std::optional<Row>> rows_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Waiting> queue_;
  std::atomic<int64_t> active_{0};
  bool draining_ = false, stopping_ = false;
  std::thread thread_;
};

}  // namespace nh::serve
