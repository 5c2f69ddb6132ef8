#include "train/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/memory_estimate.h"
#include "support/temp_dir.h"

namespace nh {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);) out.push_back(json::parse(line));
  return out;
}

StepMetrics step_metrics(int64_t step, Rng& rng) {
  StepMetrics m;
  m.step = step;
  m.loss = 5 + rng.normal();
  m.lr = 3e-4 * rng.uniform();
  m.grad_norm = rng.uniform(0.1, 2);
  m.tokens = 4096;
  m.seconds = rng.uniform(0.5, 1.5);
  m.model_flops = 1e15 * rng.uniform(1, 2);
  return m;
}

// A logger whose console output goes to `console`.
struct Logged {
  test::TempDir dir;
  std::ostringstream console;
  std::unique_ptr<MetricsLogger> logger;
  Logged(int64_t total, double peak, bool tensorboard, int64_t interval, bool terminal) {
    logger = std::make_unique<MetricsLogger>(dir / "run", total, peak, tensorboard, interval);
    logger->set_console(console, terminal);
  }
};

TEST(MetricsLogger, EachStepIsOneJsonLineWithAllFields) {
  Logged l(10, 2e15, false, 1, false);
  Rng rng(3);
  std::vector<StepMetrics> steps;
  for (int64_t s = 1; s <= 3; ++s) {
    steps.push_back(step_metrics(s, rng));
    steps.back().extra["moe/load_max"] = 1.5 * double(s);
    l.logger->log_step(steps.back());
  }
  const std::vector<json> lines = read_jsonl(l.logger->jsonl_path());
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const StepMetrics& m = steps[i];
    const json& j = lines[i];
    EXPECT_EQ(j["step"], m.step);
    EXPECT_DOUBLE_EQ(j["loss"].get<double>(), m.loss);
    EXPECT_DOUBLE_EQ(j["lr"].get<double>(), m.lr);
    EXPECT_DOUBLE_EQ(j["grad_norm"].get<double>(), m.grad_norm);
    EXPECT_EQ(j["tokens"], 4096);
    EXPECT_DOUBLE_EQ(j["seconds"].get<double>(), m.seconds);
    EXPECT_DOUBLE_EQ(j["tokens_per_s"].get<double>(), 4096 / m.seconds);
    EXPECT_DOUBLE_EQ(j["tflops"].get<double>(), m.model_flops / m.seconds / 1e12);
    EXPECT_DOUBLE_EQ(j["mfu"].get<double>(), m.model_flops / m.seconds / 2e15);
    EXPECT_EQ(j["skipped"], false);
    EXPECT_GT(j["time"].get<double>(), 1.6e9);
    EXPECT_DOUBLE_EQ(j["moe/load_max"].get<double>(), 1.5 * double(m.step));
  }
}

TEST(MetricsLogger, NonFiniteNumbersAreNullAndMfuNeedsAPeak) {
  Logged l(10, 0, false, 1, false);
  StepMetrics m;
  m.step = 4;
  m.loss = NAN;
  m.grad_norm = INFINITY;
  m.lr = 1e-4;
  m.tokens = 100;
  m.seconds = 2;
  m.model_flops = 1e12;
  m.skipped = true;
  m.extra["moe/imbalance"] = -INFINITY;
  l.logger->log_step(m);
  const std::string text = read_file(l.logger->jsonl_path());
  EXPECT_EQ(text.find("NaN"), std::string::npos) << text;
  EXPECT_EQ(text.find("nf"), std::string::npos) << text;
  const json j = json::parse(text);
  EXPECT_TRUE(j["loss"].is_null());
  EXPECT_TRUE(j["grad_norm"].is_null());
  EXPECT_TRUE(j["moe/imbalance"].is_null());
  EXPECT_EQ(j["skipped"], true);
  EXPECT_DOUBLE_EQ(j["tflops"].get<double>(), 0.5);
  EXPECT_FALSE(j.contains("mfu"));
}

TEST(MetricsLogger, ValidationLineHasLossAndPerplexity) {
  Logged l(10, 0, false, 1, false);
  l.logger->log_validation(8, 2.5);
  l.logger->log_validation(9, 1e6);  // exp overflows: null, not inf
  const std::vector<json> lines = read_jsonl(l.logger->jsonl_path());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], 8);
  EXPECT_DOUBLE_EQ(lines[0]["val_loss"].get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(lines[0]["val_ppl"].get<double>(), std::exp(2.5));
  EXPECT_TRUE(lines[1]["val_ppl"].is_null());
  EXPECT_NE(l.console.str().find("validation at step 8 | loss 2.5000 | ppl 12.18"),
            std::string::npos)
      << l.console.str();
}

TEST(MetricsLogger, ExtraKeyNamingAStandardFieldIsAnError) {
  Logged l(10, 0, false, 1, false);
  StepMetrics m;
  m.step = 1;
  m.extra["loss"] = 1;
  EXPECT_THROW(l.logger->log_step(m), Error);
}

TEST(MetricsLogger, ResumedLoggerAppendsAfterTruncatingTheDeadRunsSteps) {
  test::TempDir dir;
  std::ostringstream console;
  Rng rng(5);
  {
    MetricsLogger first(dir / "run", 20, 0, false);
    first.set_console(console, false);
    for (int64_t s = 1; s <= 7; ++s) first.log_step(step_metrics(s, rng));
    first.log_validation(5, 3.0);
  }
  // The crash also cut the last write short.
  std::ofstream(dir / "run/metrics.jsonl", std::ios::app) << "{\"step\": 8, \"lo";
  MetricsLogger resumed(dir / "run", 20, 0, false);
  resumed.set_console(console, false);
  resumed.truncate_after(5);
  for (int64_t s = 6; s <= 8; ++s) resumed.log_step(step_metrics(s, rng));
  const std::vector<json> lines = read_jsonl(dir / "run/metrics.jsonl");
  std::vector<int64_t> steps;
  for (const json& j : lines) steps.push_back(j["step"].get<int64_t>());
  // 1..5 and the validation at 5 kept; the dead run's 6, 7 and half line dropped.
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 5, 6, 7, 8}));
  EXPECT_TRUE(lines[5].contains("val_loss"));
  EXPECT_FALSE(fs::exists(dir / "run/metrics.jsonl.tmp-" + std::to_string(getpid())));
}

TEST(MetricsLogger, TruncateRejectsABrokenLineInTheMiddle) {
  test::TempDir dir;
  fs::create_directories(dir / "run");
  std::ofstream(dir / "run/metrics.jsonl") << "{\"step\": 1}\nnot json\n{\"step\": 2}\n";
  MetricsLogger logger(dir / "run", 10, 0, false);
  try {
    logger.truncate_after(1);
    FAIL() << "a broken line was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir / "run/metrics.jsonl"), "{\"step\": 1}\nnot json\n{\"step\": 2}\n");
  // The logger still appends after the failed truncation.
  std::ostringstream console;
  logger.set_console(console, false);
  logger.log_validation(3, 1.0);
  const std::string after = read_file(dir / "run/metrics.jsonl");
  EXPECT_EQ(std::count(after.begin(), after.end(), '\n'), 4);
  EXPECT_NE(after.find("{\"step\":3,\"val_loss\":1.0,"), std::string::npos) << after;
}

TEST(MetricsLogger, PlainOutputPrintsEveryIntervalAndTheLastStep) {
  Logged l(7, 1e15, false, 3, false);
  Rng rng(9);
  for (int64_t s = 1; s <= 7; ++s) l.logger->log_step(step_metrics(s, rng));
  const std::string out = l.console.str();
  EXPECT_EQ(out.find('\r'), std::string::npos);
  std::istringstream lines(out);
  std::vector<std::string> starts;
  for (std::string line; std::getline(lines, line);) starts.push_back(line.substr(0, 9));
  EXPECT_EQ(starts, (std::vector<std::string>{"step 3/7 ", "step 6/7 ", "step 7/7 "}));
  EXPECT_NE(out.find("TFLOP/s | MFU "), std::string::npos) << out;
  EXPECT_NE(out.find("tok/s"), std::string::npos) << out;
  EXPECT_NE(out.find("ETA "), std::string::npos) << out;
}

TEST(MetricsLogger, TerminalOutputRewritesOneLineAndKeepsEveryInterval) {
  Logged l(4, 0, false, 2, true);
  Rng rng(11);
  for (int64_t s = 1; s <= 3; ++s) l.logger->log_step(step_metrics(s, rng));
  const std::string out = l.console.str();
  size_t rewrites = 0;
  for (size_t at = 0; (at = out.find("\r\033[2K", at)) != std::string::npos; ++at) ++rewrites;
  EXPECT_EQ(rewrites, 3u);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);  // after step 2 only
  EXPECT_EQ(out.find("MFU"), std::string::npos);           // no peak given
  l.logger.reset();                                        // the open line of step 3 is ended
  EXPECT_TRUE(l.console.str().ends_with("\n"));
}

TEST(MetricsLogger, TensorBoardGetsTrainAndValidationTags) {
  Logged l(10, 1e15, true, 1, false);
  Rng rng(13);
  StepMetrics m = step_metrics(1, rng);
  m.grad_norm = NAN;
  l.logger->log_step(m);
  l.logger->log_validation(1, 2.0);
  l.logger->flush();
  std::string events;
  for (const auto& e : fs::directory_iterator(l.dir / "run"))
    if (e.path().filename().string().starts_with("events.out.tfevents."))
      events = read_file(e.path().string());
  for (const char* tag : {"train/loss", "train/lr", "train/tokens_per_s", "train/tflops",
                          "train/mfu", "train/skipped", "val/loss", "val/ppl"})
    EXPECT_NE(events.find(tag), std::string::npos) << tag;
  EXPECT_EQ(events.find("train/grad_norm"), std::string::npos);  // NaN is left out
}

TEST(MetricsLogger, TruncateMarksARestartForTensorBoard) {
  Logged l(10, 0, true, 1, false);
  l.logger->truncate_after(5);
  std::string events;
  for (const auto& e : fs::directory_iterator(l.dir / "run"))
    if (e.path().filename().string().starts_with("events.out.tfevents."))
      events = read_file(e.path().string());
  // step 6, then session_log {status: START}, closing the record before its 4-byte checksum.
  const std::string start("\x10\x06\x3a\x02\x08\x01", 6);
  ASSERT_GE(events.size(), start.size() + 4);
  EXPECT_EQ(events.substr(events.size() - 4 - start.size(), start.size()), start);
}

TEST(FormatDuration, PicksTheTwoLargestUnits) {
  EXPECT_EQ(format_duration(12.3), "12s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(2 * 86400 + 3 * 3600 + 59), "2d03h");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(NAN), "?");
  EXPECT_EQ(format_duration(-1), "?");
}

// A four-layer model (M * - E) small enough to count by hand.
ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 8;
  c.layers = {LayerKind::Mamba, LayerKind::Attention, LayerKind::Mlp, LayerKind::Moe};
  c.mamba_num_heads = 2;
  c.mamba_head_dim = 4;
  c.ssm_state_size = 4;
  c.n_groups = 1;
  c.conv_kernel = 4;
  c.chunk_size = 4;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 6;
  c.moe_shared_expert_intermediate_size = 5;
  return c;
}

TEST(ModelFlops, MatchesAHandCountOfATinyHybrid) {
  const ModelConfig c = tiny_config();
  // Active parameters: embedding 32·8 = 256, lm_head 256, four layer norms and norm_f 5·8 = 40,
  // Mamba: in_proj (8 + 16 + 2)·8 = 208, conv 16·4 + 16 = 80, dt_bias/A_log/D 6, norm 8,
  //   out_proj 64 → 366;
  // attention: q 64 + k 32 + v 32 + o 64 = 192; MLP: 96 + 96 = 192;
  // MoE: router 32, routed 2 of 4 experts of (6·8 + 8·6) → 192, shared 40 + 40 → 304.
  ASSERT_EQ(count_parameters(c).active, 256 + 256 + 40 + 366 + 192 + 192 + 304);
  // Matmuls: 6·(1606 − 256 − 256 + 32·8) = 8100.
  // S = 16: attention 6·16·2·4 = 768; SSD with Q = 4: 6·2·(4·(4 + 4)/2 + 2·4·4) = 576.
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 16), 8100 + 768 + 576);
  // S = 2, shorter than a chunk (Q = 2): attention 96, SSD 6·2·(2·8/2 + 32) = 480.
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 2), 8100 + 96 + 480);
}

TEST(ModelFlops, TiedHeadStillCountsTheLogitsMatmul) {
  ModelConfig c = tiny_config();
  const double untied = model_flops_per_token(c, 16);
  c.tie_word_embeddings = true;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 16), untied);
  EXPECT_THROW(model_flops_per_token(c, 0), Error);
}

}  // namespace
}  // namespace nh
