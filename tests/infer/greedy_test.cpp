// Greedy continuations equal transformers' (model.generate, do_sample=False) on every reference
// case, and so do the logits each token was chosen from (tools/make_greedy_reference.py).
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

std::vector<std::string> cases_with_greedy() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(std::string(NH_SOURCE_DIR) + "/tests/data/reference"))
    if (fs::exists(e.path() / "greedy.safetensors")) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int32_t> ids_of(const Tensor& t) {
  const Tensor i = t.to(DType::I64);
  return std::vector<int32_t>(i.data<int64_t>(), i.data<int64_t>() + i.numel());
}

class Greedy : public ::testing::TestWithParam<std::string> {};

TEST_P(Greedy, MatchesTransformersGenerate) {
  SafetensorsFile ref(GetParam() + "/greedy.safetensors");
  Model m = Model::load(GetParam());
  GenerationRequest q;
  q.prompt = ids_of(ref.get("prompt_ids"));
  const std::vector<int32_t> want = ids_of(ref.get("greedy_ids"));
  q.sampling.temperature = 0;
  q.sampling.logprobs = true;
  q.max_new_tokens = int64_t(want.size());
  const auto res = generate(m, nullptr, {q});
  EXPECT_EQ(res[0].tokens, want);

  // The logits behind each choice, step by step.
  const Tensor want_logits = ref.get("greedy_logits").to(DType::F32);
  const int64_t v = m.config().vocab_size;
  ASSERT_EQ(want_logits.numel(), int64_t(want.size()) * v);
  InferenceState state = m.new_inference_state(1, int64_t(q.prompt.size() + want.size()));
  Tensor logits = Tensor::empty({1, v}, DType::F32);
  m.prefill(Tensor::from(std::vector<int64_t>(q.prompt.begin(), q.prompt.end()),
                         {int64_t(q.prompt.size())}),
            state, 0, logits);
  for (size_t step = 0; step < want.size(); ++step) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < v; ++i) {
      const double a = logits.data<float>()[i], b = want_logits.data<float>()[int64_t(step) * v + i];
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4) << "step " << step;
    m.decode(Tensor::from(std::vector<int64_t>{want[step]}, {1}), state, logits);
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceCases, Greedy, ::testing::ValuesIn(cases_with_greedy()),
                         [](const auto& info) { return fs::path(info.param).filename().string(); });

}  // namespace
}  // namespace nh
