// nemotronh tokenize: text to token ids (or ids to text with --decode) through a Hugging Face
// tokenizer.json, one record per line of stdin, one output line per record. Lines are read
// and written in batches, each encoded on all cores, so input of any size streams through.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "io/tokenizer.h"

namespace nh::cli {

namespace {

using json = nlohmann::json;

struct Options {
  std::string tokenizer;
  bool jsonl = false, decode = false, no_special = false;
  int threads = 0;
  size_t batch_lines = 4096;
};

// One input line with its 1-based number (for errors).
struct Line {
  size_t number;
  std::string text;
};

[[noreturn]] void bad_line(size_t number, const std::string& expected, const std::string& found) {
  throw Error("stdin", "line " + std::to_string(number), expected, found);
}

json parse_line(const Line& l, const std::string& expected) {
  try {
    return json::parse(l.text);
  } catch (const json::parse_error&) {
    bad_line(l.number, expected, "text that is not JSON");
  }
}

// The text of a plain line, or of a JSONL record's "text" field.
std::string record_text(const Line& l, bool jsonl) {
  if (!jsonl) return l.text;
  const json j = parse_line(l, "a JSON object with a \"text\" string");
  if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
    bad_line(l.number, "a JSON object with a \"text\" string", j.dump().substr(0, 80));
  return j["text"].get<std::string>();
}

std::vector<int32_t> record_ids(const Line& l) {
  const json j = parse_line(l, "a JSON array of token ids");
  if (!j.is_array()) bad_line(l.number, "a JSON array of token ids", j.dump().substr(0, 80));
  std::vector<int32_t> ids;
  for (const json& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
      bad_line(l.number, "integer token ids", v.dump().substr(0, 40));
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

void write_out(const std::string& out) {
  if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0)
    throw Error("stdout", "write", "a writable output", "a write error");
}

void process(const Options& o, const Tokenizer& tok, const std::vector<Line>& lines) {
  std::string out;
  if (o.decode) {
    for (const Line& l : lines) {
      const std::string text = tok.decode(record_ids(l), o.no_special);
      out += o.jsonl ? json{{"text", text}}.dump(-1, ' ', false, json::error_handler_t::replace)
                     : text;
      out += '\n';
    }
  } else {
    std::vector<std::string> texts;
    texts.reserve(lines.size());
    for (const Line& l : lines) texts.push_back(record_text(l, o.jsonl));
    for (const auto& ids : tok.encode_batch(texts, !o.no_special, o.threads)) {
      out += '[';
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i) out += ',';
        out += std::to_string(ids[i]);
      }
      out += "]\n";
    }
  }
  write_out(out);
}

void run(const Options& o) {
  const Tokenizer tok = Tokenizer::load(o.tokenizer);
  std::ios::sync_with_stdio(false);
  std::vector<Line> batch;
  std::string text;
  size_t number = 0;
  while (std::getline(std::cin, text)) {
    ++number;
    // JSON records may be separated by blank lines; plain lines are all records.
    if ((o.jsonl || o.decode) && text.find_first_not_of(" \t\r") == std::string::npos) continue;
    batch.push_back({number, std::move(text)});
    if (batch.size() >= o.batch_lines) {
      process(o, tok, batch);
      batch.clear();
    }
  }
  if (std::cin.bad()) throw Error("stdin", "read", "readable input", "a read error");
  if (!batch.empty()) process(o, tok, batch);
}

}  // namespace

void add_tokenize(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "tokenize", "Text lines of stdin to JSON arrays of token ids (or back with --decode)");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json, or a directory holding one")
      ->required();
  cmd->add_flag("--jsonl", o->jsonl,
                "records are JSON objects with a \"text\" field; --decode writes {\"text\": ...}");
  cmd->add_flag("--decode", o->decode, "each line is a JSON array of ids; writes the text");
  cmd->add_flag("--no-special-tokens", o->no_special,
                "no BOS/EOS from the post-processor (with --decode: skip special tokens)");
  cmd->add_option("--threads", o->threads, "encoding threads (default: all cores)");
  cmd->add_option("--batch-lines", o->batch_lines, "lines read before each parallel encode")
      ->check(CLI::Range(size_t{1}, size_t{1} << 24));
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
