// Whole-model checks on the GPU: forward and backward of every tiny preset in fp32 and bf16
// against the same model on the CPU, the optimizer's fp32 masters, and training runs that
// track the CPU run and resume across devices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "cuda/harness.h"
#include "model/model.h"
#include "model/presets.h"
#include "support/temp_dir.h"
#include "train/first_run.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace nh {
namespace {

// The tolerances nemotronh verify uses against fp32 references.
double logits_tolerance(DType dt) { return dt == DType::BF16 ? 3e-2 : 1e-4; }
double grad_tolerance(DType dt) { return dt == DType::BF16 ? 1e-1 : 1e-3; }

struct Inputs {
  Tensor ids, targets, seq_idx;
};

// Two rows of 45 tokens (not a multiple of the chunk or tile sizes), two documents in the
// first row, some ignored targets.
Inputs random_inputs(int64_t vocab, uint64_t seed) {
  const int64_t b = 2, s = 45;
  Rng rng(seed);
  Inputs in{Tensor::empty({b, s}, DType::I64), Tensor::empty({b, s}, DType::I64),
            Tensor::empty({b, s}, DType::I32)};
  for (int64_t i = 0; i < b * s; ++i) {
    in.ids.data<int64_t>()[i] = int64_t(rng.uniform() * double(vocab)) % vocab;
    in.targets.data<int64_t>()[i] = i % 11 == 5 ? -100 : int64_t(rng.uniform() * double(vocab)) % vocab;
    in.seq_idx.data<int32_t>()[i] = i < 20 ? 0 : (i < s ? 1 : 0);
  }
  return in;
}

class ModelOnGpu : public ::testing::TestWithParam<std::tuple<std::string, DType>> {};

TEST_P(ModelOnGpu, ForwardAndBackwardMatchTheCpu) {
  const auto& [preset, dtype] = GetParam();
  const ModelConfig config = preset_config(preset);
  Model cpu = Model::init(config, 11), gpu = Model::init(config, 11);
  gpu.to(Device::CUDA, dtype);
  ASSERT_EQ(gpu.device(), Device::CUDA);
  const Inputs in = random_inputs(config.vocab_size, 3);
  const int64_t t = in.ids.numel(), v = config.vocab_size;

  Tensor cpu_logits = Tensor::empty({t, v}, DType::F32), gpu_logits = Tensor::empty({t, v}, DType::F32);
  const LossSum lc = cpu.forward(in.ids, in.targets, in.seq_idx, cpu_logits);
  const LossSum lg = gpu.forward(in.ids, in.targets, in.seq_idx, gpu_logits);
  ASSERT_EQ(lc.count, lg.count);
  EXPECT_NEAR(lg.sum / double(lg.count), lc.sum / double(lc.count),
              logits_tolerance(dtype) * lc.sum / double(lc.count));
  test::expect_close(preset + " logits", gpu_logits, cpu_logits, logits_tolerance(dtype));

  // In bf16 a token whose two best experts nearly tie can route differently than in fp32,
  // moving its whole contribution between two experts' gradients (transformers in bf16 does the
  // same). Count such moves from the per-expert loads; the routed experts' gradients of a layer
  // where routing moved get a wider tolerance, everything else keeps its own.
  std::set<std::string> moved;
  const auto cpu_loads = cpu.expert_loads(), gpu_loads = gpu.expert_loads();
  for (size_t i = 0; i < cpu_loads.size(); ++i) {
    const Tensor a = cpu_loads[i].second, b = test::to_cpu(gpu_loads[i].second);
    int64_t diff = 0;
    for (int64_t e = 0; e < a.numel(); ++e)
      diff += std::abs(a.data<int64_t>()[e] - b.data<int64_t>()[e]);
    if (diff == 0) continue;
    EXPECT_NE(dtype, DType::F32) << "fp32 routing differs in layer " << cpu_loads[i].first;
    std::printf("  layer %zu: %lld routed pairs moved between experts\n", cpu_loads[i].first,
                (long long)diff / 2);
    moved.insert("layers." + std::to_string(cpu_loads[i].first) + ".mixer.experts.");
  }
  cpu.backward(1.0 / double(lc.count));
  gpu.backward(1.0 / double(lg.count));
  for (const auto& name : cpu.grads().names()) {
    const bool routed = std::any_of(moved.begin(), moved.end(),
                                    [&](const std::string& p) { return name.starts_with(p); });
    test::expect_close(preset + " grad " + name, gpu.grads().at(name), cpu.grads().at(name),
                       routed ? 0.25 : grad_tolerance(dtype));
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, ModelOnGpu,
                         ::testing::Combine(::testing::Values("tiny-hybrid", "tiny-moe",
                                                              "tiny-mamba2"),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           std::string n = std::get<0>(info.param) +
                                           (std::get<1>(info.param) == DType::BF16 ? "_bf16" : "_fp32");
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// Decoding on the GPU (prefill, then one token per step with conv/SSM state and KV caches)
// gives the logits the CPU model's full forward gives for the whole sequence so far.
TEST_P(ModelOnGpu, DecodingWithStateMatchesTheCpuFullForward) {
  const auto& [preset, dtype] = GetParam();
  const ModelConfig config = preset_config(preset);
  Model cpu = Model::init(config, 11), gpu = Model::init(config, 11);
  gpu.to(Device::CUDA, dtype);
  const int64_t v = config.vocab_size;
  const Inputs in = random_inputs(v, 5);
  std::vector<int64_t> seq(in.ids.data<int64_t>(), in.ids.data<int64_t>() + 7);
  InferenceState state = gpu.new_inference_state(1, 7 + 6);
  Tensor logits = Tensor::empty({1, v}, DType::F32);
  gpu.prefill(Tensor::from(seq, {int64_t(seq.size())}), state, 0, logits);
  for (int step = 0; step <= 6; ++step) {
    const int64_t s = int64_t(seq.size());
    Tensor full = Tensor::empty({s, v}, DType::F32);
    cpu.forward(Tensor::from(seq, {1, s}), Tensor(), Tensor(), full);
    test::expect_close(preset + " decode step " + std::to_string(step), logits,
                       full.slice0(s - 1, s), logits_tolerance(dtype));
    if (step == 6) break;
    seq.push_back(in.ids.data<int64_t>()[50 + step]);
    gpu.decode(Tensor::from(std::vector<int64_t>{seq.back()}, {1}), state, logits);
  }
}

// Decode steps replayed from CUDA graphs (batches padded to a power of two, rows in any order
// and subset, KV pages of 4 positions) give the logits of the same steps run eagerly (to the
// tolerance of a GEMM whose padded row count may pick another cuBLAS algorithm).
TEST_P(ModelOnGpu, GraphReplayEqualsEagerDecoding) {
  const auto& [preset, dtype] = GetParam();
  const ModelConfig config = preset_config(preset);
  Model gpu = Model::init(config, 13);
  gpu.to(Device::CUDA, dtype);
  const int64_t v = config.vocab_size;
  const Inputs in = random_inputs(v, 9);
  const int64_t* ids = in.ids.data<int64_t>();
  std::vector<InferenceState> states;
  for (bool graphs : {true, false}) {
    states.push_back(gpu.new_inference_state(3, 24, 0, 4));
    states.back().use_graphs = graphs;
    for (int64_t r = 0; r < 3; ++r) {
      Tensor l = Tensor::empty({v}, DType::F32);
      gpu.prefill(Tensor::from(std::vector<int64_t>(ids + 10 * r, ids + 10 * r + 3 + 2 * r),
                               {3 + 2 * r}),
                  states.back(), r, l);
    }
  }
  const std::vector<std::vector<int64_t>> steps = {{0, 1, 2}, {2, 0}, {1}, {2, 1, 0}, {0, 2}};
  for (size_t i = 0; i < steps.size(); ++i) {
    const int64_t b = int64_t(steps[i].size());
    const Tensor next = Tensor::from(std::vector<int64_t>(ids + 40 + b, ids + 40 + 2 * b), {b});
    Tensor replayed = Tensor::empty({b, v}, DType::F32), eager = Tensor::empty({b, v}, DType::F32);
    gpu.decode(next, steps[i], states[0], replayed);
    gpu.decode(next, steps[i], states[1], eager);
    test::expect_close(preset + " step " + std::to_string(i), replayed, eager,
                       logits_tolerance(dtype));
  }
  EXPECT_EQ(states[0].lengths, states[1].lengths);
}

// A bf16 model's optimizer keeps fp32 masters started from the full-precision values, updates
// them like the CPU optimizer updates its fp32 model, and rounds them into the model.
TEST(OptimizerOnGpu, Bf16ModelsStepTheirFp32Masters) {
  const ModelConfig config = preset_config("tiny-hybrid");
  Model cpu = Model::init(config, 5), gpu = Model::init(config, 5);
  const ParamSet full = gpu.params();
  gpu.to(Device::CUDA, DType::BF16);
  const OptimizerSettings settings{0.9, 0.95, 1e-8, 0.1, 0.0};
  Optimizer cpu_opt(cpu, settings), gpu_opt(gpu, settings, &full);
  // Gradients both sides can represent exactly: bf16 values, the same on both devices.
  for (const auto& name : cpu.grads().names()) {
    const Tensor g = test::random_cpu(cpu.grads().at(name).shape(), 17).to(DType::BF16);
    cpu.grads().at(name).copy_from(g);
    gpu.grads().at(name).copy_from(g);
  }
  cpu_opt.step(0.5, 1e-2, 1);
  gpu_opt.step(0.5, 1e-2, 1);
  int masters = 0;
  for (const auto& [name, begin, t] : gpu_opt.state()) {
    if (!name.starts_with("master/")) continue;
    ++masters;
    const std::string p = name.substr(7);
    test::expect_close("master " + p, t, cpu.params().at(p), 1e-6);
    test::expect_close("bf16 param " + p, gpu.params().at(p), test::to_cpu(t.to(DType::BF16)),
                       0.0);
  }
  EXPECT_EQ(masters, int(cpu.grads().names().size()));
}

// The first run's corpus and tokenizer with a small recipe (as the CPU trainer tests use).
Recipe small_recipe(const test::TempDir& tmp, const std::string& out, const std::string& device,
                    const std::string& precision) {
  Recipe r = first_run_recipe(tmp / "data");
  r.out = tmp / out;
  r.seq_length = 64;
  r.global_batch_size = 4;
  r.micro_batch_size = 2;
  r.max_steps = 8;
  r.lr_schedule = "constant";
  r.warmup_steps = 0;
  r.lr = 2e-3;
  r.eval_interval = 0;
  r.sample_prompt.clear();
  r.device = device;
  r.precision = precision;
  return r;
}

std::vector<double> losses(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> out;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

void expect_tracks(const std::vector<double>& got, const std::vector<double>& want, double rtol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], rtol * want[i]) << "step " << i + 1;
}

class TrainOnGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainOnGpu, TracksTheCpuRun) {
  const std::string precision = GetParam();
  test::TempDir tmp;
  const TrainOutcome c = train(small_recipe(tmp, "cpu", "cpu", precision), false, true);
  const TrainOutcome g = train(small_recipe(tmp, "gpu", "cuda", precision), false, true);
  EXPECT_LT(g.last_loss, g.first_loss);
  expect_tracks(losses(tmp / "gpu"), losses(tmp / "cpu"), precision == "bf16" ? 3e-2 : 1e-3);
  (void)c;
}

// A checkpoint written on one device resumes on the other, and the resumed steps track the
// uninterrupted run on the first device.
TEST_P(TrainOnGpu, CheckpointsResumeOnTheOtherDevice) {
  const std::string precision = GetParam();
  const double rtol = precision == "bf16" ? 3e-2 : 1e-3;
  test::TempDir tmp;
  for (const auto& [first, second] : {std::pair{"cuda", "cpu"}, std::pair{"cpu", "cuda"}}) {
    const std::string whole = std::string("whole-") + first, split = std::string("split-") + first;
    train(small_recipe(tmp, whole, first, precision), false, true);
    Recipe a = small_recipe(tmp, split, first, precision);
    a.max_steps = 4;
    train(a, false, true);
    const TrainOutcome b = train(small_recipe(tmp, split, second, precision), true, true);
    EXPECT_EQ(b.steps, 8);
    expect_tracks(losses(tmp / split), losses(tmp / whole), rtol);
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, TrainOnGpu, ::testing::Values("fp32", "bf16"));

}  // namespace
}  // namespace nh
