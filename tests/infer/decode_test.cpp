// Decoding with state equals recomputing the whole forward at every step, on every reference
// case (dense hybrid, MoE, latent MoE, pure Mamba-2 ...), for one sequence and for a batch of
// sequences of different lengths; and generate() follows the same tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "infer/generate.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace nh {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> reference_cases() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(std::string(NH_SOURCE_DIR) + "/tests/data/reference"))
    if (e.is_directory()) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The reference case's input ids, row 0.
std::vector<int32_t> reference_ids(const std::string& dir) {
  const Tensor ids = SafetensorsFile(dir + "/reference.safetensors").get("input_ids").to(DType::I64);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < ids.size(-1); ++i) out.push_back(int32_t(ids.data<int64_t>()[i]));
  return out;
}

// Logits of the last position of `tokens` by the full forward.
std::vector<float> full_forward_last(Model& m, const std::vector<int32_t>& tokens) {
  const int64_t s = int64_t(tokens.size()), v = m.config().vocab_size;
  Tensor ids = Tensor::from(std::vector<int64_t>(tokens.begin(), tokens.end()), {1, s});
  Tensor logits = Tensor::empty({s, v}, DType::F32);
  m.forward(ids, Tensor(), Tensor(), logits);
  const float* last = logits.data<float>() + (s - 1) * v;
  return std::vector<float>(last, last + v);
}

double rel_diff(const float* a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

constexpr double kTol = 1e-4;  // fp32: the chunked scan against the recurrence

class DecodeWithState : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeWithState, EqualsTheFullForwardAtEveryStep) {
  Model m = Model::load(GetParam());
  const int64_t v = m.config().vocab_size;
  const std::vector<int32_t> ids = reference_ids(GetParam());
  std::vector<int32_t> seq(ids.begin(), ids.begin() + 5);
  InferenceState state = m.new_inference_state(1, int64_t(seq.size()) + 8);
  Tensor logits = Tensor::empty({1, v}, DType::F32);
  m.prefill(Tensor::from(std::vector<int64_t>(seq.begin(), seq.end()), {int64_t(seq.size())}),
            state, 0, logits);
  for (int step = 0; step < 8; ++step) {
    EXPECT_LT(rel_diff(logits.data<float>(), full_forward_last(m, seq)), kTol) << "step " << step;
    // Alternate the model's choice with the reference's next ids, so the decoded tokens are
    // not only the model's favourites.
    const int32_t next = step % 2 ? argmax(logits.data<float>(), v) : ids[size_t(5 + step) % ids.size()];
    seq.push_back(next);
    m.decode(Tensor::from(std::vector<int64_t>{next}, {1}), state, logits);
  }
  EXPECT_LT(rel_diff(logits.data<float>(), full_forward_last(m, seq)), kTol) << "last step";
  EXPECT_EQ(state.lengths[0], int64_t(seq.size()));
}

TEST_P(DecodeWithState, ABatchOfDifferentLengthsEqualsEachAlone) {
  Model m = Model::load(GetParam());
  const int64_t v = m.config().vocab_size;
  const std::vector<int32_t> ids = reference_ids(GetParam());
  const std::vector<std::vector<int32_t>> prompts = {
      {ids.begin(), ids.begin() + 3}, {ids.begin() + 2, ids.begin() + 11}, {ids[7]}};
  InferenceState state = m.new_inference_state(3, 16);
  Tensor logits = Tensor::empty({3, v}, DType::F32);
  std::vector<std::vector<int32_t>> seqs = prompts;
  for (int64_t r = 0; r < 3; ++r) {
    const auto& p = prompts[size_t(r)];
    Tensor row = logits.slice0(r, r + 1);
    m.prefill(Tensor::from(std::vector<int64_t>(p.begin(), p.end()), {int64_t(p.size())}), state,
              r, row);
  }
  for (int step = 0; step < 5; ++step) {
    Tensor next = Tensor::empty({3}, DType::I64);
    for (int64_t r = 0; r < 3; ++r) {
      EXPECT_LT(rel_diff(logits.data<float>() + r * v, full_forward_last(m, seqs[size_t(r)])), kTol)
          << "row " << r << " step " << step;
      const int32_t t = argmax(logits.data<float>() + r * v, v);
      next.data<int64_t>()[r] = t;
      seqs[size_t(r)].push_back(t);
    }
    m.decode(next, state, logits);
  }
}

// Continuous batching on small KV pages (3 positions): rows decode in any order and subset, a
// finished row gives its pages back and a new prompt takes them, and every row still equals
// the full forward over its own tokens.
TEST_P(DecodeWithState, RowsJoinAndLeaveOnSharedPagesInAnyOrder) {
  Model m = Model::load(GetParam());
  const int64_t v = m.config().vocab_size, page = 3;
  const std::vector<int32_t> ids = reference_ids(GetParam());
  // Room for the two longest rows at once: the third must wait for the pages of one.
  InferenceState state = m.new_inference_state(3, 12, 2 * 12, page);
  std::vector<std::vector<int32_t>> seqs(3);
  std::vector<std::vector<float>> logits(3, std::vector<float>(size_t(v)));
  auto start = [&](int64_t r, std::vector<int32_t> prompt, int64_t positions) {
    ASSERT_TRUE(state.reserve(r, positions));
    Tensor l = Tensor::empty({v}, DType::F32);
    m.prefill(Tensor::from(std::vector<int64_t>(prompt.begin(), prompt.end()),
                           {int64_t(prompt.size())}),
              state, r, l);
    std::copy_n(l.data<float>(), v, logits[size_t(r)].begin());
    seqs[size_t(r)] = std::move(prompt);
  };
  auto step = [&](const std::vector<int64_t>& rows) {
    Tensor next = Tensor::empty({int64_t(rows.size())}, DType::I64);
    for (size_t i = 0; i < rows.size(); ++i) {
      auto& seq = seqs[size_t(rows[i])];
      const float* l = logits[size_t(rows[i])].data();
      EXPECT_LT(rel_diff(l, full_forward_last(m, seq)), kTol) << "row " << rows[i];
      next.data<int64_t>()[i] = argmax(l, v);
      seq.push_back(int32_t(next.data<int64_t>()[i]));
    }
    Tensor out = Tensor::empty({int64_t(rows.size()), v}, DType::F32);
    m.decode(next, rows, state, out);
    for (size_t i = 0; i < rows.size(); ++i)
      std::copy_n(out.data<float>() + int64_t(i) * v, v, logits[size_t(rows[i])].begin());
  };
  start(2, {ids.begin() + 1, ids.begin() + 8}, 12);
  start(0, {ids.begin(), ids.begin() + 2}, 12);
  if (state.page_size > 0) {
    EXPECT_FALSE(state.reserve(1, 4)) << "rows 0 and 2 hold the pool";
  }
  step({2, 0});
  step({0, 2});
  state.release(2);
  start(1, {ids.begin() + 3, ids.begin() + 10}, 12);
  step({1, 0});
  step({0});
  step({1, 0});
  EXPECT_LT(rel_diff(logits[0].data(), full_forward_last(m, seqs[0])), kTol);
  EXPECT_LT(rel_diff(logits[1].data(), full_forward_last(m, seqs[1])), kTol);
  EXPECT_EQ(state.lengths[2], 0);
}

INSTANTIATE_TEST_SUITE_P(ReferenceCases, DecodeWithState, ::testing::ValuesIn(reference_cases()),
                         [](const auto& info) { return fs::path(info.param).filename().string(); });

TEST(Generate, GreedyFollowsTheArgmaxOfTheFullForward) {
  const std::string dir = reference_cases().front();
  Model m = Model::load(dir);
  GenerationRequest q;
  q.prompt = reference_ids(dir);
  q.prompt.resize(4);
  q.sampling.temperature = 0;
  q.max_new_tokens = 6;
  const auto res = generate(m, nullptr, {q});
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0].finish_reason, "length");
  ASSERT_EQ(res[0].tokens.size(), 6u);
  std::vector<int32_t> seq = q.prompt;
  for (int32_t t : res[0].tokens) {
    const std::vector<float> l = full_forward_last(m, seq);
    EXPECT_EQ(t, argmax(l.data(), int64_t(l.size())));
    seq.push_back(t);
  }
}

TEST(Generate, StopsAtAStopIdAndHonoursMaxNewTokensPerRequest) {
  const std::string dir = reference_cases().front();
  Model m = Model::load(dir);
  GenerationRequest a;
  a.prompt = reference_ids(dir);
  a.sampling.temperature = 0;
  a.max_new_tokens = 5;
  const auto free_run = generate(m, nullptr, {a});
  GenerationRequest b = a;
  b.stop_ids = {free_run[0].tokens[2]};
  GenerationRequest c = a;
  c.max_new_tokens = 2;
  const auto res = generate(m, nullptr, {a, b, c});
  EXPECT_EQ(res[0].tokens, free_run[0].tokens);  // batching does not change a sequence
  const auto first_stop = std::find(free_run[0].tokens.begin(), free_run[0].tokens.end(), b.stop_ids[0]);
  EXPECT_EQ(res[1].tokens, std::vector<int32_t>(free_run[0].tokens.begin(), first_stop));
  EXPECT_EQ(res[1].finish_reason, "stop");
  EXPECT_EQ(res[2].tokens, std::vector<int32_t>(free_run[0].tokens.begin(), free_run[0].tokens.begin() + 2));
  EXPECT_EQ(res[2].finish_reason, "length");
}

TEST(Generate, BadRequestsAreErrors) {
  Model m = Model::load(reference_cases().front());
  GenerationRequest q;
  EXPECT_THROW(generate(m, nullptr, {q}), Error);  // empty prompt
  q.prompt = {1, 100000};
  EXPECT_THROW(generate(m, nullptr, {q}), Error);  // id outside the vocabulary
  q.prompt = {1, 2};
  q.stop_strings = {"x"};
  EXPECT_THROW(generate(m, nullptr, {q}), Error);  // stop strings without a tokenizer
}

}  // namespace
}  // namespace nh
