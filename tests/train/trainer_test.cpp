#include "train/trainer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/checkpoint.h"
#include "model/model.h"
#include "model/presets.h"
#include "support/temp_dir.h"
#include "train/checkpoint.h"
#include "train/first_run.h"

namespace nh {

namespace fs = std::filesystem;

namespace {

// The first run's corpus and tokenizer, with a small, fast recipe on them.
Recipe small_recipe(const test::TempDir& tmp, const std::string& out) {
  Recipe r = first_run_recipe(tmp / "data");
  r.out = tmp / out;
  r.seq_length = 32;
  r.global_batch_size = 4;
  r.micro_batch_size = 2;
  r.max_steps = 6;
  r.lr_schedule = "constant";
  r.warmup_steps = 0;
  r.lr = 2e-3;
  r.eval_interval = 0;
  r.sample_prompt.clear();
  return r;
}

std::vector<nlohmann::json> metrics_lines(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

bool same_weights(const std::string& a, const std::string& b) {
  Model ma = Model::load(a), mb = Model::load(b);
  for (const auto& n : ma.params().names()) {
    const Tensor &x = ma.params().at(n), &y = mb.params().at(n);
    if (x.shape() != y.shape() || std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0) return false;
  }
  return true;
}

}  // namespace

TEST(Train, LossFallsOnTheTinyRun) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  r.max_steps = 40;
  r.lr = 3e-3;
  const TrainOutcome t = train(r, false, true);
  EXPECT_EQ(t.steps, 40);
  EXPECT_LT(t.last_loss, 0.6 * t.first_loss) << t.first_loss << " -> " << t.last_loss;
  EXPECT_EQ(int64_t(metrics_lines(r.out).size()), 40);
  EXPECT_TRUE(fs::exists(r.out + "/checkpoints/step-00000040/config.json"));
  EXPECT_TRUE(fs::exists(r.out + "/checkpoints/step-00000040/tokenizer.json"));
}

TEST(Train, OverfitsOneBatch) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  // One short document: every batch is the same text.
  std::ofstream(tmp / "one.jsonl") << R"({"text": "7 plus 5 is 12. The cat sees the river."})" << "\n"
                                   << R"({"text": "held out for validation"})" << "\n";
  r.data = {DataSourceSpec{tmp / "one.jsonl", "text", 1.0, "text"}};
  r.split = "50,50";
  r.global_batch_size = r.micro_batch_size = 1;
  r.max_steps = 150;
  r.lr = 3e-3;
  r.weight_decay = 0;
  const TrainOutcome t = train(r, false, true);
  EXPECT_LT(t.last_loss, 0.05) << "first " << t.first_loss;
}

// Σ-loss backward and one 1/tokens scale per step: 4 micro-batches of 1 row give the update
// that one micro-batch of 4 rows gives.
TEST(Train, AccumulatingFourTimesOneEqualsOneTimesFour) {
  test::TempDir tmp;
  Recipe a = small_recipe(tmp, "a"), b = small_recipe(tmp, "b");
  a.max_steps = b.max_steps = 2;
  a.micro_batch_size = 1;
  b.micro_batch_size = 4;
  train(a, false, true);
  train(b, false, true);
  Model ma = Model::load(latest_checkpoint(a.out)), mb = Model::load(latest_checkpoint(b.out));
  for (const auto& n : ma.params().names()) {
    const Tensor &x = ma.params().at(n), &y = mb.params().at(n);
    // The gradients differ only in fp32 summation order, but Adam divides by sqrt(v): for a
    // component whose gradient is near zero that difference can move the update by a fair share
    // of lr. 1% of lr per element bounds it; a wrong accumulation moves weights by ~lr.
    for (int64_t i = 0; i < x.numel(); ++i)
      ASSERT_NEAR(x.data<float>()[i], y.data<float>()[i], 0.01 * a.lr) << n << "[" << i << "]";
  }
  const auto la = metrics_lines(a.out), lb = metrics_lines(b.out);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_NEAR(la[i]["loss"].get<double>(), lb[i]["loss"].get<double>(), 1e-5) << "step " << i + 1;
}

// Stopping after 3 steps and resuming to 6 gives bit-identical losses and weights to 6 steps
// without a stop (constant LR, so the schedule does not depend on where the first run ends).
TEST(Train, ResumeIsBitExactOnCpu) {
  test::TempDir tmp;
  Recipe whole = small_recipe(tmp, "whole"), split = small_recipe(tmp, "split");
  train(whole, false, true);
  split.max_steps = 3;
  train(split, false, true);
  split.max_steps = 6;
  const TrainOutcome resumed = train(split, true, true);
  EXPECT_EQ(resumed.steps, 6);
  const auto lw = metrics_lines(whole.out), ls = metrics_lines(split.out);
  ASSERT_EQ(lw.size(), 6u);
  ASSERT_EQ(ls.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(ls[i]["step"], lw[i]["step"]);
    EXPECT_EQ(ls[i]["loss"].get<double>(), lw[i]["loss"].get<double>()) << "step " << i + 1;
  }
  EXPECT_TRUE(same_weights(latest_checkpoint(whole.out), latest_checkpoint(split.out)));
}

TEST(Train, KeepsOnlyTheLastCheckpoints) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  r.save_interval = 1;
  r.keep_last = 2;
  train(r, false, true);
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(r.out + "/checkpoints"))
    if (e.is_directory()) dirs.push_back(e.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  EXPECT_EQ(dirs, (std::vector<std::string>{"step-00000005", "step-00000006"}));
}

TEST(Train, NonFiniteStepsAreSkippedAndStopTheRunWithACheckpoint) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "first");
  r.max_steps = 1;
  train(r, false, true);
  // A model whose final norm is NaN: every loss is non-finite.
  const std::string broken = tmp / "broken";
  fs::copy(latest_checkpoint(r.out), broken);
  {
    WeightSet w(broken);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& n : w.names()) {
      Tensor t = w.get(n).clone();
      if (n == "backbone.norm_f.weight") t.fill(NAN);
      tensors.emplace_back(n, t);
    }
    write_weights(broken, tensors);
  }
  Recipe bad = small_recipe(tmp, "bad");
  bad.init_from = broken;
  bad.max_skipped_steps = 3;
  try {
    train(bad, false, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3 non-finite steps in a row"), std::string::npos) << e.what();
  }
  const auto lines = metrics_lines(bad.out);
  ASSERT_EQ(lines.size(), 3u);
  for (const auto& l : lines) EXPECT_TRUE(l["skipped"].get<bool>());
  EXPECT_TRUE(fs::exists(bad.out + "/checkpoints/step-00000003"));
}

TEST(Train, SigtermSavesACheckpointAndStops) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  r.max_steps = 100000;
  std::thread killer([&] {
    while (metrics_lines(r.out).size() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::raise(SIGTERM);
  });
  const TrainOutcome t = train(r, false, true);
  killer.join();
  EXPECT_TRUE(t.interrupted);
  EXPECT_LT(t.steps, 100000);
  EXPECT_EQ(latest_checkpoint(r.out), t.checkpoint);
}

// MoE layers: the correction bias moves toward balance and the expert load is logged.
TEST(Train, MoeRouterBiasIsUpdatedAndLoadLogged) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  ModelConfig c = preset_config("tiny-moe");
  c.vocab_size = 264;
  std::ofstream(tmp / "moe.json") << to_hf_json(c).dump();
  r.model = tmp / "moe.json";
  r.max_steps = 3;
  r.moe_router_bias_update_rate = 0.01;
  train(r, false, true);
  Model m = Model::load(latest_checkpoint(r.out));
  const Tensor& bias = m.params().at("layers.1.mixer.gate.e_score_correction_bias");
  double moved = 0;
  for (int64_t e = 0; e < bias.numel(); ++e) moved += std::fabs(bias.data<float>()[e]);
  EXPECT_GT(moved, 0.0);
  for (const auto& line : metrics_lines(r.out)) EXPECT_GE(line["moe_max_load_over_mean"].get<double>(), 1.0);
}

TEST(Train, UnwritableRunDirectoryIsAClearError) {
  test::TempDir tmp;
  std::ofstream(tmp / "file") << "x";
  Recipe r = small_recipe(tmp, "file/run");  // a directory under a regular file
  EXPECT_THROW(train(r, false, true), std::exception);
}

TEST(Train, HybridOverridePatternReplacesTheLayers) {
  test::TempDir tmp;
  Recipe r = small_recipe(tmp, "run");
  r.max_steps = 1;
  r.hybrid_override_pattern = "M*-M";
  const TrainOutcome t = train(r, false, true);
  EXPECT_EQ(load_config(t.checkpoint).pattern(), "M*-M");

  r.out = tmp / "bad";
  r.hybrid_override_pattern = "MX";
  try {
    train(r, false, true);
    FAIL() << "a bad pattern trained";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hybrid_override_pattern"), std::string::npos) << e.what();
  }
}

}  // namespace nh
