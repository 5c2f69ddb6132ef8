#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "model/memory_estimate.h"

namespace nh {

namespace {

using Json = nlohmann::ordered_json;

// ETA from the mean of the last steps: a slow first step (warm-up) is soon forgotten.
constexpr size_t kEtaWindow = 20;

// JSON has no NaN or infinity.
Json number(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string dump(const Json& j) {
  // Extra keys come from the caller: replace invalid UTF-8 rather than throw mid-run.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// printf-style formatting appended to `out` (progress lines are short).
template <typename... Args>
void appendf(std::string& out, const char* format, Args... args) {
  char buf[160];
  std::snprintf(buf, sizeof buf, format, args...);
  out += buf;
}

// 950, 52.3k, 1.25M
void append_rate(std::string& out, double v) {
  if (v >= 1e6)
    appendf(out, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    appendf(out, "%.1fk", v / 1e3);
  else
    appendf(out, "%.0f", v);
}

int64_t kind_count(const ParameterCount& p, const char* kind) {
  const auto it = p.by_kind.find(kind);
  return it == p.by_kind.end() ? 0 : it->second;
}

}  // namespace

MetricsLogger::MetricsLogger(const std::string& run_dir, int64_t total_steps, double peak_flops,
                             bool tensorboard, int64_t log_interval)
    : jsonl_path_(run_dir + "/metrics.jsonl"),
      total_steps_(total_steps),
      peak_flops_(peak_flops),
      log_interval_(std::max<int64_t>(1, log_interval)),
      console_(&std::cerr),
      terminal_(::isatty(STDERR_FILENO) != 0) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) throw Error(run_dir, "run directory", "a directory that can be created", ec.message());
  open_jsonl();
  if (tensorboard) tensorboard_ = std::make_unique<TensorBoardWriter>(run_dir);
}

MetricsLogger::~MetricsLogger() {
  if (line_open_) *console_ << "\n" << std::flush;
  if (jsonl_) std::fclose(jsonl_);
}

void MetricsLogger::set_console(std::ostream& out, bool is_terminal) {
  console_ = &out;
  terminal_ = is_terminal;
}

void MetricsLogger::open_jsonl() {
  jsonl_ = std::fopen(jsonl_path_.c_str(), "a");
  if (!jsonl_)
    throw Error(jsonl_path_, "metrics file", "a file open for appending", std::strerror(errno));
}

void MetricsLogger::append_line(const std::string& line) {
  // One line per write and flushed at once: a killed run keeps every complete line.
  if (!jsonl_ || std::fputs((line + "\n").c_str(), jsonl_) == EOF || std::fflush(jsonl_) != 0)
    throw Error(jsonl_path_, "metrics line", "written", std::strerror(errno));
}

void MetricsLogger::truncate_after(int64_t step) {
  std::ifstream in(jsonl_path_, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const std::string all = text.str();
  std::string kept;
  size_t begin = 0;
  for (int64_t line_no = 1; begin < all.size(); ++line_no) {
    const size_t end = all.find('\n', begin);
    const bool complete = end != std::string::npos;
    const std::string line = all.substr(begin, complete ? end - begin : std::string::npos);
    begin = complete ? end + 1 : all.size();
    if (line.empty()) continue;
    const Json j = Json::parse(line, nullptr, false);
    const bool valid = j.is_object() && j.contains("step") && j["step"].is_number_integer();
    if (!valid && !complete) break;  // the write a crash cut short
    if (!valid)
      throw Error(jsonl_path_ + ":" + std::to_string(line_no), "metrics line",
                  "a JSON object with an integer \"step\"", "'" + line.substr(0, 60) + "'");
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(jsonl_path_, kept);
  // The open handle still appends to the replaced file.
  std::fclose(jsonl_);
  open_jsonl();
  if (tensorboard_) tensorboard_->add_session_start(step + 1);
}

std::string MetricsLogger::progress_line(const StepMetrics& m, double tokens_per_s,
                                         double flops_per_s) {
  std::string line;
  appendf(line, "step %lld", (long long)m.step);
  if (total_steps_ > 0) appendf(line, "/%lld", (long long)total_steps_);
  appendf(line, " | loss %.4f | lr %.3e | grad %.3f | ", m.loss, m.lr, m.grad_norm);
  append_rate(line, tokens_per_s);
  line += " tok/s";
  if (flops_per_s > 0) {
    appendf(line, " | %.1f TFLOP/s", flops_per_s / 1e12);
    if (peak_flops_ > 0) appendf(line, " | MFU %.1f%%", 100 * flops_per_s / peak_flops_);
  }
  const int64_t left = total_steps_ - m.step;
  if (left > 0 && !recent_seconds_.empty()) {
    const double mean = std::accumulate(recent_seconds_.begin(), recent_seconds_.end(), 0.0) /
                        double(recent_seconds_.size());
    line += " | ETA ";
    line += format_duration(mean * double(left));
  }
  if (m.skipped) line += " | skipped (non-finite gradients)";
  return line;
}

void MetricsLogger::print(const std::string& line, bool keep) {
  if (terminal_) {
    // Carriage return and "erase line": the next step overwrites this one.
    *console_ << "\r\033[2K" << line;
    if (keep) *console_ << "\n";
    line_open_ = !keep;
  } else if (keep) {
    *console_ << line << "\n";
  }
  console_->flush();
}

void MetricsLogger::log_step(const StepMetrics& m) {
  const double tokens_per_s = m.seconds > 0 ? double(m.tokens) / m.seconds : NAN;
  const double flops_per_s = m.model_flops > 0 && m.seconds > 0 ? m.model_flops / m.seconds : 0;
  if (m.seconds > 0) {
    recent_seconds_.push_back(m.seconds);
    if (recent_seconds_.size() > kEtaWindow) recent_seconds_.pop_front();
  }

  Json j;
  j["step"] = m.step;
  j["loss"] = number(m.loss);
  j["lr"] = number(m.lr);
  j["grad_norm"] = number(m.grad_norm);
  j["tokens"] = m.tokens;
  j["seconds"] = number(m.seconds);
  j["tokens_per_s"] = number(tokens_per_s);
  if (flops_per_s > 0) j["tflops"] = number(flops_per_s / 1e12);
  if (flops_per_s > 0 && peak_flops_ > 0) j["mfu"] = number(flops_per_s / peak_flops_);
  j["skipped"] = m.skipped;
  j["time"] = unix_time();
  for (const auto& [key, value] : m.extra) {
    if (j.contains(key))
      throw Error("metrics", "extra key", "a name other than the standard fields", key);
    j[key] = number(value);
  }
  append_line(dump(j));

  if (tensorboard_) {
    for (const auto& [key, value] : j.items()) {
      if (key == "step" || key == "time" || value.is_null()) continue;
      const double v = value.is_boolean() ? double(value.get<bool>()) : value.get<double>();
      tensorboard_->add_scalar("train/" + key, v, m.step);
    }
  }

  const bool keep = m.step % log_interval_ == 0 || m.step == total_steps_ || m.skipped;
  print(progress_line(m, tokens_per_s, flops_per_s), keep);
}

void MetricsLogger::log_validation(int64_t step, double val_loss) {
  const double ppl = std::exp(val_loss);
  Json j;
  j["step"] = step;
  j["val_loss"] = number(val_loss);
  j["val_ppl"] = number(ppl);
  j["time"] = unix_time();
  append_line(dump(j));
  if (tensorboard_) {
    if (std::isfinite(val_loss)) tensorboard_->add_scalar("val/loss", val_loss, step);
    if (std::isfinite(ppl)) tensorboard_->add_scalar("val/ppl", ppl, step);
  }
  std::string line;
  appendf(line, "validation at step %lld | loss %.4f | ppl %.2f", (long long)step, val_loss, ppl);
  print(line, true);
}

void MetricsLogger::flush() {
  if (::fsync(::fileno(jsonl_)) != 0)
    throw Error(jsonl_path_, "flush", "the metrics on disk", std::strerror(errno));
  if (tensorboard_) tensorboard_->flush();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = std::llround(seconds);
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else if (s < 86400)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600),
                  (long long)(s % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", (long long)(s / 86400),
                  (long long)(s % 86400 / 3600));
  return buf;
}

double model_flops_per_token(const ModelConfig& c, int64_t seq_length) {
  if (seq_length <= 0)
    throw Error("model flops", "seq_length", "a positive length", std::to_string(seq_length));
  const ParameterCount p = count_parameters(c);
  const double s = double(seq_length);
  double flops = 6.0 * double(p.active - kind_count(p, "embedding") - kind_count(p, "lm_head") +
                              c.vocab_size * c.hidden_size);
  const double q = double(std::min(c.chunk_size, seq_length));
  const double heads = double(c.mamba_num_heads), hd = double(c.mamba_head_dim),
               n = double(c.ssm_state_size);
  for (LayerKind kind : c.layers) {
    if (kind == LayerKind::Attention)
      flops += 6.0 * s * double(c.num_attention_heads) * double(c.head_dim);
    else if (kind == LayerKind::Mamba)
      flops += 6.0 * heads * (q * (n + hd) / 2 + 2 * hd * n);
  }
  return flops;
}

}  // namespace nh
