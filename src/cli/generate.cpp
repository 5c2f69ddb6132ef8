// nemotronh generate: continuations of prompts with constant-memory Mamba state, streamed as
// text, or as token ids; a JSONL batch mode runs many prompts as one batch.
#include <climits>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/inference_options.h"
#include "infer/generate.h"
#include "io/atomic_file.h"
#include "io/text_file.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, adapter, prompt, prompt_file, prompt_ids, batch_file, output,
      device = "auto", dtype;
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_ids;
  bool output_ids = false, ignore_eos = false;
};

std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      throw Error(where, "token id", "a non-negative integer", "\"" + item + "\"");
    }
  }
  return ids;
}

// One request per prompt of the batch file: {"prompt": "..."} or {"prompt_ids": [...]},
// optionally "max_new_tokens".
std::vector<GenerationRequest> batch_requests(const Options& o, const GenerationRequest& base,
                                              const Tokenizer* tok) {
  std::ifstream in(o.batch_file);
  if (!in) throw Error(o.batch_file, "file", "a readable JSONL file", "none");
  std::vector<GenerationRequest> out;
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = o.batch_file + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where, "JSON", "one JSON object per line", e.what());
    }
    GenerationRequest r = base;
    try {
      if (j.contains("prompt_ids")) {
        r.prompt = j.at("prompt_ids").get<std::vector<int32_t>>();
      } else {
        if (!tok) throw Error(where, "prompt", "prompt_ids (the model has no tokenizer.json)", "prompt");
        r.prompt = tok->encode(j.at("prompt").get<std::string>(), true);
      }
      if (j.contains("max_new_tokens")) r.max_new_tokens = j.at("max_new_tokens").get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(where, "fields", "\"prompt\" (a string) or \"prompt_ids\" (integers)", e.what());
    }
    out.push_back(std::move(r));
  }
  return out;
}

void run(const Options& o) {
  const int given = !o.prompt.empty() + !o.prompt_file.empty() + !o.prompt_ids.empty() +
                    !o.batch_file.empty();
  if (given != 1)
    throw Error("generate", "prompt", "exactly one of --prompt, --prompt-file, --prompt-ids, --batch-file",
                std::to_string(given) + " given");
  o.sampling.validate("generate");

  LoadedModel loaded = load_for_inference(o.model, o.adapter, o.device, o.dtype);
  Model& model = loaded.model;
  const std::unique_ptr<Tokenizer>& tok = loaded.tokenizer;
  if (!tok && (!o.prompt.empty() || !o.prompt_file.empty()))
    throw Error(o.model, "tokenizer.json", "a tokenizer for text prompts (or use --prompt-ids)",
                "none");

  GenerationRequest base;
  base.sampling = o.sampling;
  base.max_new_tokens = o.max_new_tokens;
  base.stop_ids = o.stop_ids;
  base.stop_strings = o.stop;
  if (!o.ignore_eos) base.stop_ids.insert(base.stop_ids.end(), loaded.eos_ids.begin(), loaded.eos_ids.end());

  std::vector<GenerationRequest> requests;
  if (!o.batch_file.empty()) {
    requests = batch_requests(o, base, tok.get());
  } else {
    GenerationRequest r = base;
    if (!o.prompt_ids.empty())
      r.prompt = parse_ids(o.prompt_ids, "--prompt-ids");
    else
      r.prompt = tok->encode(o.prompt.empty() ? read_text_file(o.prompt_file) : o.prompt, true);
    requests.push_back(std::move(r));
  }

  const bool stream = o.batch_file.empty() && !o.output_ids && tok;
  const auto results = generate(model, tok.get(), requests, [&](size_t, const std::string& piece) {
    if (!stream) return;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (stream) {
    std::printf("\n");
    return;
  }
  std::string out;
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& res = results[i];
    if (o.batch_file.empty() && !o.sampling.logprobs) {
      out += nlohmann::json(res.tokens).dump() + "\n";
      continue;
    }
    nlohmann::ordered_json j = {{"index", i}, {"ids", res.tokens}};
    if (tok) j["text"] = res.text;
    if (o.sampling.logprobs) j["logprobs"] = res.logprobs;
    j["finish_reason"] = res.finish_reason;
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (o.output.empty())
    std::fwrite(out.data(), 1, out.size(), stdout);
  else
    write_file_atomic(o.output, out);
}

}  // namespace

void add_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "generate", "Continue prompts (streamed text, token ids, or a JSONL batch)");
  cmd->add_option("--model", o->model, "HF model directory")->required();
  cmd->add_option("--prompt", o->prompt, "prompt text");
  cmd->add_option("--prompt-file", o->prompt_file, "a file whose text is the prompt");
  cmd->add_option("--prompt-ids", o->prompt_ids, "prompt token ids, comma-separated");
  cmd->add_option("--batch-file", o->batch_file,
                  "JSONL of {\"prompt\": ...} or {\"prompt_ids\": [...]}, run as one batch");
  cmd->add_option("--output", o->output, "batch results (JSONL) to this file instead of stdout");
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory to apply (not merged)");
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "fp32, or bf16 on cuda (the default there)");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "new tokens at most")
      ->capture_default_str();
  add_sampling_options(cmd, o->sampling);
  cmd->add_option("--stop", o->stop, "stop string (repeatable)");
  cmd->add_option("--stop-id", o->stop_ids, "stop token id (repeatable)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at the end-of-sequence token");
  cmd->add_flag("--output-ids", o->output_ids, "print the new token ids as one JSON array");
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
