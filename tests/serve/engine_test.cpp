// The serving engine on a real tiny model (tests/data/reference/dense_hybrid, token-id prompts):
// requests batched continuously give exactly the tokens nh::generate gives each alone, a
// cancelled request frees its row, the queue limit holds, and drain() finishes what it accepted.
#include "serve/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "infer/generate.h"

namespace nh::serve {
namespace {

const std::string kModel = std::string(NH_SOURCE_DIR) + "/tests/data/reference/dense_hybrid";

EngineRequest request(std::vector<int32_t> prompt, int64_t max_tokens, double temperature = 0,
                      uint64_t seed = 0) {
  EngineRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  return r;
}

// What nh::generate gives the request on its own.
GenerationResult alone(Model& model, const EngineRequest& r) {
  GenerationRequest g;
  g.prompt = r.prompt;
  g.sampling = r.sampling;
  g.max_new_tokens = r.max_tokens;
  g.stop_ids = r.stop_ids;
  return generate(model, nullptr, {g})[0];
}

// Waits until the request has produced a token (so it holds a row).
void wait_first_token(Channel& c, Output& got) {
  for (int i = 0; i < 100 && got.tokens.empty(); ++i)
    got.append(c.take(std::chrono::milliseconds(100)));
  ASSERT_FALSE(got.tokens.empty());
}

TEST(ServeEngine, ConcurrentRequestsGiveTheTokensEachGivesAlone) {
  Model model = Model::load(kModel);
  std::vector<EngineRequest> requests = {
      request({1, 5, 9, 13}, 12),     request({40}, 20),
      request({3, 3, 3, 3, 3, 3}, 7), request({90, 80, 70}, 15, 1.0, 11),
      request({2, 4, 8, 16, 32}, 25), request({7, 77}, 9, 0.8, 5),
      request({60, 61, 62, 63}, 18),
  };
  requests[4].stop_ids = {alone(model, requests[4]).tokens[6]};  // ends early with "stop"
  std::vector<GenerationResult> want;
  for (const auto& r : requests) want.push_back(alone(model, r));

  // 3 rows for 7 requests, submitted from threads at once: rows are reused as requests end.
  Engine engine(model, nullptr, {3, 64, 16});
  std::vector<Output> got(requests.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i)
    clients.emplace_back([&, i] { got[i] = engine.submit(requests[i])->take_all(); });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "request " << i;
    EXPECT_EQ(got[i].finish_reason, want[i].finish_reason) << "request " << i;
    EXPECT_TRUE(got[i].error.empty()) << got[i].error;
  }
  EXPECT_EQ(got[4].finish_reason, "stop");
  EXPECT_EQ(engine.active(), 0);
  EXPECT_EQ(engine.queued(), 0);
}

TEST(ServeEngine, ACancelledRequestFreesItsRow) {
  Model model = Model::load(kModel);
  const EngineRequest quick = request({5, 6, 7}, 10);
  const GenerationResult want = alone(model, quick);
  Engine engine(model, nullptr, {1, 4096, 4});
  // The long request holds the only row; the quick one can only run once it is cancelled.
  const auto slow = engine.submit(request({1, 2}, 4000));
  Output slow_out;
  wait_first_token(*slow, slow_out);
  const auto next = engine.submit(quick);
  EXPECT_EQ(engine.queued(), 1);
  slow->cancel();
  const Output got = next->take_all();
  EXPECT_EQ(got.tokens, want.tokens);
  slow_out.append(slow->take_all());
  EXPECT_EQ(slow_out.finish_reason, "cancelled");
  EXPECT_LT(slow_out.tokens.size(), 4000u);
  EXPECT_EQ(engine.active(), 0);
}

TEST(ServeEngine, TheQueueLimitIsEnforcedAndCancelledWaitersLeaveIt) {
  Model model = Model::load(kModel);
  Engine engine(model, nullptr, {1, 4096, 2});
  const auto running = engine.submit(request({1, 2}, 4000));
  Output first;
  wait_first_token(*running, first);
  const auto a = engine.submit(request({3}, 5));
  const auto b = engine.submit(request({4}, 5));
  EXPECT_THROW(engine.submit(request({5}, 5)), QueueFull);
  // A waiting request that is cancelled gives its place back at the next step.
  a->cancel();
  EXPECT_EQ(a->take_all().finish_reason, "cancelled");
  const auto c = engine.submit(request({5}, 5));
  running->cancel();
  EXPECT_EQ(b->take_all().tokens.size(), 5u);
  EXPECT_EQ(c->take_all().tokens.size(), 5u);
}

TEST(ServeEngine, RequestsItCannotRunAreErrors) {
  Model model = Model::load(kModel);
  Engine engine(model, nullptr, {2, 16, 4});
  EXPECT_THROW(engine.submit(request({}, 4)), Error);
  EXPECT_THROW(engine.submit(request({96}, 4)), Error);     // outside the vocabulary of 96
  EXPECT_THROW(engine.submit(request({1, 2}, 15)), Error);  // 2 + 15 > 16 positions
  EXPECT_THROW(engine.submit(request({1}, 0)), Error);
  EngineRequest bad = request({1}, 4);
  bad.sampling.top_p = 0;
  EXPECT_THROW(engine.submit(bad), Error);
  EngineRequest text = request({1}, 4);
  text.stop_strings = {"x"};  // needs a tokenizer
  EXPECT_THROW(engine.submit(text), Error);
  EXPECT_EQ(engine.submit(request({1, 2}, 14))->take_all().tokens.size(), 14u);  // just fits
}

TEST(ServeEngine, RequestsWaitForKvPagesAndRunAsTheyWouldAlone) {
  Model model = Model::load(kModel);
  std::vector<EngineRequest> requests = {request({1, 5, 9}, 20), request({40, 41}, 30),
                                         request({3, 3, 3}, 25), request({8}, 12, 0.7, 3)};
  std::vector<GenerationResult> want;
  for (const auto& r : requests) want.push_back(alone(model, r));
  // 3 rows but a pool of 128 positions (2 pages of 64): each request reserves one page, so at
  // most two run at once, and one that could never fit the pool is refused.
  Engine engine(model, nullptr, {3, 200, 16, 128});
  EXPECT_THROW(engine.submit(request({1, 2}, 140)), Error);
  std::vector<std::shared_ptr<Channel>> channels;
  for (const auto& r : requests) channels.push_back(engine.submit(r));
  std::atomic<bool> done = false;
  int64_t most_active = 0;
  std::thread probe([&] {
    while (!done) most_active = std::max(most_active, engine.active());
  });
  for (size_t i = 0; i < requests.size(); ++i)
    EXPECT_EQ(channels[i]->take_all().tokens, want[i].tokens) << "request " << i;
  done = true;
  probe.join();
  EXPECT_LE(most_active, 2);
  EXPECT_EQ(engine.active(), 0);
}

TEST(ServeEngine, DrainFinishesWhatWasAcceptedAndRefusesTheRest) {
  Model model = Model::load(kModel);
  Engine engine(model, nullptr, {1, 64, 4});
  const auto a = engine.submit(request({1, 2, 3}, 30));
  const auto b = engine.submit(request({4, 5}, 30));
  engine.drain();
  EXPECT_THROW(engine.submit(request({1}, 1)), ShuttingDown);
  for (const auto& c : {a, b}) {
    const Output o = c->take_all();
    EXPECT_EQ(o.finish_reason, "length");
    EXPECT_EQ(o.tokens.size(), 30u);
  }
}

}  // namespace
}  // namespace nh::serve
