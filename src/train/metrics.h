// What a training run reports, step by step: a progress line on stderr, one JSON object per
// logged step in <run_dir>/metrics.jsonl, and the same scalars in TensorBoard event files in
// <run_dir> (docs/TRAINING.md, "Metrics and TensorBoard").
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <ostream>
#include <string>

#include "model/config.h"
#include "train/tensorboard.h"

namespace nh {

struct StepMetrics {
  int64_t step = 0;  // optimizer steps completed, counting from 1
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;    // before clipping
  int64_t tokens = 0;      // tokens this step trained on (the global batch)
  double seconds = 0;      // wall time of this step
  double model_flops = 0;  // model FLOPs of this step (model_flops_per_token × tokens), 0: unknown
  bool skipped = false;    // the update was skipped (non-finite gradients)
  std::map<std::string, double> extra;  // more scalars (MoE expert load ...), written as given
};

class MetricsLogger {
 public:
  // Creates `run_dir` when missing and opens <run_dir>/metrics.jsonl for appending, so a
  // resumed run continues the file (see truncate_after). `total_steps` is the step count of the
  // whole run (for the ETA); `peak_flops` the peak FLOP/s of all the devices a step runs on
  // together (0 when unknown: no MFU); `tensorboard` adds an event file in `run_dir`. The
  // progress line goes to stderr, rewritten in place when stderr is a terminal, where a line is
  // kept every `log_interval` steps; elsewhere only every `log_interval`-th step is printed.
  // Throws nh::Error naming the directory or file when they cannot be created.
  MetricsLogger(const std::string& run_dir, int64_t total_steps, double peak_flops,
                bool tensorboard, int64_t log_interval = 1);
  // Ends a progress line left open on a terminal.
  ~MetricsLogger();
  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;

  // Sends the progress lines to `out` instead of stderr (a quiet run, tests); `is_terminal`
  // selects the rewritten-line form.
  void set_console(std::ostream& out, bool is_terminal);

  // Keeps the lines of metrics.jsonl with step <= `step` and drops the rest (left by a run that
  // went past its last checkpoint before it died); the file is rewritten atomically. Call it when
  // resuming from a checkpoint of step `step`, before logging. A last line cut short by a crash
  // is dropped; any other line that is not a JSON object with an integer "step" is an nh::Error
  // naming the file and line. With TensorBoard on, a restart marker at step + 1 makes TensorBoard
  // drop the dead run's events past `step` likewise.
  void truncate_after(int64_t step);

  // Records one step: metrics.jsonl gets {step, loss, lr, grad_norm, tokens, seconds,
  // tokens_per_s, tflops (when model_flops > 0), mfu (also needs peak_flops), skipped, time,
  // the extra keys}, with non-finite numbers as null; TensorBoard gets train/<name> for each of
  // those numbers that is finite. An extra key that repeats one of these names is an nh::Error.
  // Write failures are an nh::Error naming the file.
  void log_step(const StepMetrics& metrics);

  // Records a validation result: {step, val_loss, val_ppl, time} to metrics.jsonl, val/loss and
  // val/ppl to TensorBoard, and a line on the console.
  void log_validation(int64_t step, double val_loss);

  // Makes metrics.jsonl and the event file durable on disk (at checkpoints, at the end).
  void flush();

  const std::string& jsonl_path() const { return jsonl_path_; }

 private:
  void open_jsonl();
  void append_line(const std::string& line);
  void print(const std::string& line, bool keep);
  std::string progress_line(const StepMetrics& m, double tokens_per_s, double flops_per_s);

  std::string jsonl_path_;
  int64_t total_steps_;
  double peak_flops_;
  int64_t log_interval_;
  std::FILE* jsonl_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::ostream* console_;
  bool terminal_;
  bool line_open_ = false;             // a rewritten line without its newline is on the terminal
  std::deque<double> recent_seconds_;  // the last step times, for the ETA
};

// "1h02m", "3m05s", "12s"; days as "2d03h". Negative or non-finite: "?".
std::string format_duration(double seconds);

// Training FLOPs per token (forward + backward) of a model at sequence length `seq_length`,
// counted as Megatron-LM counts them for hybrid models (megatron/training/training.py,
// num_floating_point_operations → hybrid_flops: every GEMM 3 times, 2 FLOPs a multiply-add,
// causal attention scores over half the sequence, the logits layer included):
//   6·(A − E − O + V·d)                              matmuls touching a parameter once a token
//   + Σ attention layers  6·S·heads·head_dim          QKᵀ and PV, each query over S/2 keys
//   + Σ Mamba layers      6·H·(Q·(N + P)/2 + 2·P·N)    the chunked SSD scan
// A: active parameters (count_parameters; MoE: top-k routed experts), E/O: embedding and
// lm_head parameters (a lookup is no matmul; the logits matmul V·d runs tied or not), S the
// sequence length, V the vocabulary, d the hidden size, H/P/N the Mamba heads, head_dim and
// state size. The SSD scan per head and token: C·Bᵀ
// and (L∘C·Bᵀ)·X over the Q/2 earlier tokens of its chunk (Q = min(chunk_size, S)), its share
// of the chunk state Bᵀ·X and C·state_in, P·N multiply-adds each (as ops/ssd computes it, C·Bᵀ
// per head). Megatron counts that scan as 7·d_inner·N forward FLOPs instead; the totals agree
// within 0.3% for the Nemotron-H presets (the scan is 3-5% of a Mamba layer there) and within 5%
// for mamba2-130m (large chunk, small model). Norms, convolution taps and biases count as one
// multiply-add per parameter per token, which overstates them slightly (Megatron leaves them out);
// MTP layers are not counted. seq_length must be positive (nh::Error otherwise).
double model_flops_per_token(const ModelConfig& config, int64_t seq_length);

}  // namespace nh
