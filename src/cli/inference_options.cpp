#include "cli/inference_options.h"

#include <filesystem>

#include "core/device_select.h"
#include "model/peft_adapter.h"

namespace nh::cli {

void add_sampling_options(CLI::App* cmd, SamplingParams& s) {
  cmd->add_option("--temperature", s.temperature, "0 is greedy")->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "keep the k most likely tokens (0: off)");
  cmd->add_option("--top-p", s.top_p, "nucleus sampling mass (1: off)");
  cmd->add_option("--min-p", s.min_p, "drop tokens below min_p × the top probability");
  cmd->add_option("--repetition-penalty", s.repetition_penalty, "transformers' rule (1: off)");
  cmd->add_option("--frequency-penalty", s.frequency_penalty, "OpenAI's rule (0: off)");
  cmd->add_option("--presence-penalty", s.presence_penalty, "OpenAI's rule (0: off)");
  cmd->add_option("--seed", s.seed, "random seed (same seed, same tokens)");
  cmd->add_flag("--logprobs", s.logprobs, "report the log-probability of each chosen token");
}

LoadedModel load_for_inference(const std::string& dir, const std::string& adapter,
                               const std::string& device_name, const std::string& dtype_name) {
  const Device device = select_device(device_name, "--device");
  const DType dtype = select_compute_dtype(dtype_name, device, "--dtype");
  LoadedModel m{Model::load(dir), nullptr, {}};
  if (!adapter.empty()) m.model.attach_adapter(load_peft_adapter(adapter, m.model.config()));
  if (device != Device::CPU) m.model.to(device, dtype);
  if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json"))
    m.tokenizer = std::make_unique<Tokenizer>(Tokenizer::load(dir));
  for (int64_t id : m.model.config().eos_token_ids) m.eos_ids.push_back(int32_t(id));
  if (m.tokenizer && m.tokenizer->eos_id()) m.eos_ids.push_back(*m.tokenizer->eos_id());
  return m;
}

}  // namespace nh::cli
