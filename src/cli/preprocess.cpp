// nemotronh preprocess: JSONL text to a Megatron-LM indexed dataset, as Megatron's
// tools/preprocess_data.py makes one ({PREFIX}_{json_key}_document.bin/.idx, one sequence per
// document, dtype from the vocabulary size). Three stages overlap: a reader thread cuts the input
// into batches of lines, this thread parses the records and tokenizes a batch on all cores, and a
// writer thread appends the ids to the dataset in input order.
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "io/indexed_dataset.h"
#include "io/indexed_dataset_format.h"
#include "io/tokenizer.h"
#include "io/tokenizer/unicode.h"

namespace nh::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<std::string> inputs;
  std::string tokenizer, output, json_key = "text";
  bool append_eod = false, add_special_tokens = false, skip_bad_records = false;
  int workers = 0;
};

// A batch ends at whichever limit comes first; a few batches in flight bound the memory.
constexpr size_t kBatchLines = 4096;
constexpr size_t kBatchBytes = size_t(16) << 20;
constexpr size_t kQueueBatches = 2;
// Bad records skipped with --skip-bad-records are each named on stderr, up to this many.
constexpr int64_t kBadRecordsShown = 10;

enum class Status { kOk, kBlank, kEmpty, kBad };

struct Batch {
  size_t file = 0;         // index into Options::inputs
  int64_t first_line = 0;  // 1-based number of lines[0]
  uint64_t bytes = 0;      // input bytes the lines span
  std::vector<std::string> lines;
  // Filled by the tokenizing stage, one entry per line.
  std::vector<Status> status;
  std::vector<std::string> problem;  // the Error text of a bad record
  std::vector<std::vector<int32_t>> ids;
};

// A bounded FIFO between two threads. close() lets the consumer drain what is queued; abort() drops
// it, and both make push() return false so a producer stops.
template <class T>
class Channel {
 public:
  explicit Channel(size_t capacity) : capacity_(capacity) {}
  bool push(T item) {
    std::unique_lock lock(mutex_);
    space_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    ready_.notify_one();
    return true;
  }
  std::optional<T> pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    space_.notify_one();
    return item;
  }
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    ready_.notify_all();
    space_.notify_all();
  }
  void abort() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    items_.clear();
    ready_.notify_all();
    space_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  std::deque<T> items_;
  size_t capacity_;
  bool closed_ = false;
};

// The first error of any stage; the others stop when they see it.
class FirstError {
 public:
  void set(std::exception_ptr e) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = e;
  }
  void rethrow() {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

// A SAX handler that keeps only the top-level field `key` of a record, so the other fields
// (metadata, URLs ...) are never built into a DOM. A repeated key keeps the last value, as Python's
// json.loads does.
class FieldExtractor {
 public:
  using json = nlohmann::json;
  explicit FieldExtractor(const std::string& key) : key_(key) {}

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(json::number_integer_t) { return scalar("a number"); }
  bool number_unsigned(json::number_unsigned_t) { return scalar("a number"); }
  bool number_float(json::number_float_t, const std::string&) { return scalar("a number"); }
  bool binary(json::binary_t&) { return scalar("binary data"); }
  bool string(std::string& s) {
    if (depth_ == 0) top_ = "a string";
    if (taking_) {
      text_ = std::move(s);
      found_ = "a string";
    }
    taking_ = false;
    return true;
  }
  bool start_object(size_t) { return open("an object"); }
  bool start_array(size_t) { return open("an array"); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& k) {
    taking_ = depth_ == 1 && k == key_;
    return true;
  }
  bool parse_error(size_t, const std::string&, const json::exception& e) {
    parse_error_ = e.what();
    return false;
  }

  const std::string& parse_error_message() const { return parse_error_; }
  const std::string& top() const { return top_; }  // "an object" for a JSON object record
  const std::string& found() const { return found_; }
  std::string& text() { return text_; }

 private:
  bool scalar(const char* what) {
    if (depth_ == 0) top_ = what;
    if (taking_) found_ = what;
    taking_ = false;
    return true;
  }
  bool open(const char* what) {
    if (depth_ == 0) top_ = what;
    if (taking_) found_ = what;
    taking_ = false;
    ++depth_;
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }

  const std::string& key_;
  int depth_ = 0;
  bool taking_ = false;
  std::string top_, found_, text_, parse_error_;
};

std::string clip(const std::string& s, size_t max = 160) {
  return s.size() <= max ? s : s.substr(0, max) + "...";
}

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

// The text of one JSONL line, or the Error text saying what is wrong with it.
Status parse_record(std::string& line, const std::string& key, const std::string& where,
                    std::string& text, std::string& problem) {
  if (is_blank(line)) return Status::kBlank;
  const size_t bad = tok::invalid_utf8_at(line);
  if (bad != std::string_view::npos) {
    char found[64];
    std::snprintf(found, sizeof found, "byte 0x%02x at column %zu",
                  static_cast<unsigned char>(line[bad]), bad + 1);
    problem = Error(where, "record", "valid UTF-8", found).what();
    return Status::kBad;
  }
  FieldExtractor field(key);
  if (!nlohmann::json::sax_parse(line, &field)) {
    // nlohmann prefixes its messages with "[json.exception.parse_error.101] ", noise here.
    std::string message = field.parse_error_message();
    if (message.starts_with("[json.exception.")) message.erase(0, message.find("] ") + 2);
    problem = Error(where, "record", "valid JSON", clip(message)).what();
    return Status::kBad;
  }
  if (field.top() != "an object") {
    problem = Error(where, "record", "a JSON object", field.top()).what();
    return Status::kBad;
  }
  const std::string name = "\"" + clip(key, 60) + "\"";
  if (field.found().empty()) {
    problem = Error(where, name, "a string field", "no such field").what();
    return Status::kBad;
  }
  if (field.found() != "a string") {
    problem = Error(where, name, "a string", field.found()).what();
    return Status::kBad;
  }
  text = std::move(field.text());
  line = std::string();  // the text is all that is needed from here on
  return text.empty() ? Status::kEmpty : Status::kOk;
}

void read_inputs(const Options& o, Channel<Batch>& out) {
  for (size_t f = 0; f < o.inputs.size(); ++f) {
    const std::string& path = o.inputs[f];
    std::FILE* in = std::fopen(path.c_str(), "rb");
    if (!in) throw Error(path, "file", "a readable JSONL file", std::strerror(errno));
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> guard(in, std::fclose);
    std::setvbuf(in, nullptr, _IOFBF, size_t(1) << 20);
    // getline grows `line` as needed; it is freed here whichever way the loop ends.
    char* line = nullptr;
    size_t cap = 0;
    struct FreeLine {
      char*& p;
      ~FreeLine() { std::free(p); }
    } free_line{line};
    Batch b;
    b.file = f;
    b.first_line = 1;
    int64_t line_no = 0;
    for (;;) {
      const ssize_t n = ::getline(&line, &cap, in);
      if (n < 0) break;
      ++line_no;
      size_t len = size_t(n);
      b.bytes += len;
      if (len > 0 && line[len - 1] == '\n') --len;
      b.lines.emplace_back(line, len);
      if (b.lines.size() >= kBatchLines || b.bytes >= kBatchBytes) {
        if (!out.push(std::move(b))) return;
        b = Batch();
        b.file = f;
        b.first_line = line_no + 1;
      }
    }
    if (std::ferror(in)) throw Error(path, "file", "readable to the end", std::strerror(errno));
    if (!b.lines.empty() && !out.push(std::move(b))) return;
  }
}

// Parses the batch's records on all cores, tokenizes the good ones in one encode_batch call and
// appends the EOD id. A bad record is an Error here unless --skip-bad-records.
void tokenize(const Options& o, const Tokenizer& tok, std::optional<int32_t> eod, Batch& b) {
  const int64_t n = int64_t(b.lines.size());
  b.status.assign(size_t(n), Status::kOk);
  b.problem.assign(size_t(n), std::string());
  std::vector<std::string> texts(static_cast<size_t>(n));
  const std::string& file = o.inputs[b.file];
#pragma omp parallel for schedule(dynamic, 16) \
    num_threads(o.workers > 0 ? o.workers : omp_get_max_threads())
  for (int64_t i = 0; i < n; ++i) {
    const std::string where = file + ":" + std::to_string(b.first_line + i);
    b.status[size_t(i)] =
        parse_record(b.lines[size_t(i)], o.json_key, where, texts[size_t(i)], b.problem[size_t(i)]);
  }
  std::vector<std::string> good;
  std::vector<size_t> good_at;
  for (int64_t i = 0; i < n; ++i) {
    const Status s = b.status[size_t(i)];
    if (s == Status::kBad && !o.skip_bad_records) throw Error(b.problem[size_t(i)]);
    if (s == Status::kOk) {
      good.push_back(std::move(texts[size_t(i)]));
      good_at.push_back(size_t(i));
    }
  }
  b.lines.clear();
  std::vector<std::vector<int32_t>> ids = tok.encode_batch(good, o.add_special_tokens, o.workers);
  b.ids.assign(size_t(n), {});
  for (size_t k = 0; k < good_at.size(); ++k) {
    if (ids[k].empty()) {
      b.status[good_at[k]] = Status::kEmpty;
      continue;
    }
    if (eod) ids[k].push_back(*eod);
    b.ids[good_at[k]] = std::move(ids[k]);
  }
}

struct Counts {
  int64_t documents = 0, tokens = 0, empty = 0, bad = 0, blank = 0;
  uint64_t bytes = 0;
};

// Progress on stderr: redrawn in place a few times a second on a terminal, else a plain line every
// few seconds so logs stay short.
class Progress {
 public:
  explicit Progress(uint64_t total_bytes)
      : total_(total_bytes),
        tty_(::isatty(STDERR_FILENO) != 0),
        start_(Clock::now()),
        last_(start_) {}

  void update(const Counts& c, bool force = false) {
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (!force && since < (tty_ ? 0.25 : 5.0)) return;
    last_ = now;
    const double t = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
    const double rate = double(c.bytes) / t;
    char eta[32] = "--";
    if (rate > 0 && total_ >= c.bytes) {
      const long s = long(double(total_ - c.bytes) / rate);
      std::snprintf(eta, sizeof eta, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    }
    std::fprintf(stderr,
                 "%s%lld docs, %lld tokens | %.0f docs/s, %.0f tokens/s, %.1f MB/s | "
                 "%.1f%% | ETA %s%s",
                 tty_ ? "\r" : "", (long long)c.documents, (long long)c.tokens,
                 double(c.documents) / t, double(c.tokens) / t, rate / 1e6,
                 total_ ? 100.0 * double(c.bytes) / double(total_) : 100.0, eta,
                 tty_ ? "\x1b[K" : "\n");
    std::fflush(stderr);
    drawn_ = true;
  }
  // On a terminal, the final numbers replace the last redraw; a log already has the summary.
  void finish_with(const Counts& c) {
    if (tty_) update(c, true);
    finish();
  }
  // Ends an in-place line so what follows starts on a fresh one.
  void finish() {
    if (tty_ && drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  uint64_t total_;
  bool tty_;
  Clock::time_point start_, last_;
  bool drawn_ = false;
};

void write_batches(Channel<Batch>& in, IndexedDatasetWriter& out, Counts& c, Progress& progress) {
  while (std::optional<Batch> b = in.pop()) {
    for (size_t i = 0; i < b->status.size(); ++i) {
      switch (b->status[i]) {
        case Status::kOk:
          out.add_sequence(b->ids[i]);
          out.end_document();
          ++c.documents;
          c.tokens += int64_t(b->ids[i].size());
          break;
        case Status::kEmpty:
          ++c.empty;
          break;
        case Status::kBlank:
          ++c.blank;
          break;
        case Status::kBad:
          if (++c.bad <= kBadRecordsShown) {
            progress.finish();
            std::fprintf(stderr, "skipped bad record: %s\n", b->problem[i].c_str());
          }
          break;
      }
    }
    c.bytes += b->bytes;
    progress.update(c);
  }
}

uint64_t total_input_bytes(const Options& o) {
  uint64_t total = 0;
  for (const std::string& path : o.inputs) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0)
      throw Error(path, "file", "a readable JSONL file", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw Error(path, "file", "a regular file", "something else");
    total += uint64_t(st.st_size);
  }
  return total;
}

void run(const Options& o) {
  if (o.workers < 0)
    throw Error("--workers", "value", ">= 0 (0: all cores)", std::to_string(o.workers));
  if (o.json_key.empty()) throw Error("--json-key", "value", "a field name", "an empty string");
  const uint64_t total = total_input_bytes(o);
  const Tokenizer tok = Tokenizer::load(o.tokenizer);
  std::optional<int32_t> eod;
  if (o.append_eod) {
    eod = tok.eos_id();
    if (!eod)
      throw Error(o.tokenizer, "end-of-document token",
                  "an eos token for --append-eod (tokenizer_config.json eos_token, or one of "
                  "</s> <|endoftext|> <|im_end|> <eos>)",
                  "none");
  }
  const TokenDType dtype = token_dtype_for_vocab(tok.vocab_size());
  const std::string prefix = o.output + "_" + o.json_key + "_document";
  IndexedDatasetWriter out(prefix, dtype);

  Channel<Batch> to_tokenize(kQueueBatches), to_write(kQueueBatches);
  FirstError error;
  Counts counts;
  Progress progress(total);
  std::thread reader([&] {
    try {
      read_inputs(o, to_tokenize);
    } catch (...) {
      error.set(std::current_exception());
      to_write.abort();
    }
    to_tokenize.close();
  });
  std::thread writer([&] {
    try {
      write_batches(to_write, out, counts, progress);
    } catch (...) {
      error.set(std::current_exception());
      to_tokenize.abort();
      to_write.abort();
    }
  });
  try {
    while (std::optional<Batch> b = to_tokenize.pop()) {
      tokenize(o, tok, eod, *b);
      if (!to_write.push(std::move(*b))) break;
    }
  } catch (...) {
    error.set(std::current_exception());
    to_tokenize.abort();
    to_write.abort();
  }
  to_write.close();
  reader.join();
  writer.join();
  try {
    error.rethrow();
    out.finalize();
  } catch (...) {
    progress.finish();  // the error message then starts a line of its own
    throw;
  }
  progress.finish_with(counts);

  const double t = std::max(1e-9, progress.seconds());
  std::printf("wrote %s.bin and %s.idx (%s)\n", prefix.c_str(), prefix.c_str(),
              token_dtype_name(dtype));
  std::printf(
      "documents %lld, tokens %lld, skipped: empty %lld, bad records %lld, blank lines %lld; "
      "%.2f s (%.0f docs/s, %.0f tokens/s, %.1f MB/s)\n",
      (long long)counts.documents, (long long)counts.tokens, (long long)counts.empty,
      (long long)counts.bad, (long long)counts.blank, t, double(counts.documents) / t,
      double(counts.tokens) / t, double(counts.bytes) / t / 1e6);
}

}  // namespace

void add_preprocess(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "preprocess", "Tokenize JSONL text into a Megatron-LM indexed dataset (.bin + .idx)");
  cmd->add_option("--input", o->inputs, "JSONL files, one JSON object per line")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json, or a directory holding one")
      ->required();
  cmd->add_option("--output", o->output,
                  "output prefix: writes {PREFIX}_{json-key}_document.bin and .idx")
      ->required();
  cmd->add_option("--json-key", o->json_key, "the field holding the text")->capture_default_str();
  cmd->add_flag("--append-eod", o->append_eod,
                "end every document with the tokenizer's end-of-document (eos) token");
  cmd->add_flag("--add-special-tokens", o->add_special_tokens,
                "apply the tokenizer's post-processor (BOS/EOS templates) to each document");
  cmd->add_option("--workers", o->workers, "threads for parsing and tokenizing (0: all cores)")
      ->capture_default_str();
  cmd->add_flag("--skip-bad-records", o->skip_bad_records,
                "count and skip records that are not JSON objects with a string field "
                "instead of stopping with an error");
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
