// What the inference commands (generate, chat, serve) share: the sampling options and loading a
// model with its tokenizer onto the chosen device.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "infer/sampler.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace nh::cli {

// --temperature, --top-k, --top-p, --min-p, the three penalties, --seed and --logprobs.
void add_sampling_options(CLI::App* cmd, SamplingParams& s);

struct LoadedModel {
  Model model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the directory has no tokenizer.json
  std::vector<int32_t> eos_ids;          // config.json's eos_token_id and the tokenizer's EOS
};

// device: cpu, cuda or auto; dtype: fp32, bf16 (cuda only) or empty for the device's default.
// `adapter`: a PEFT LoRA adapter directory applied beside the base weights, or empty.
LoadedModel load_for_inference(const std::string& dir, const std::string& adapter,
                               const std::string& device, const std::string& dtype);

}  // namespace nh::cli
