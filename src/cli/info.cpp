// nemotronh info: the layer pattern, parameters per layer kind and the memory a model
// needs for inference and for training.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "model/memory_estimate.h"
#include "model/presets.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, preset, adapter, lora_targets = "linear";
  int64_t batch = 1, seq_len = 8192, lora_r = 16;
  bool lora_experts = false;
};

std::string human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", bytes, units[u]);
  return buf;
}

std::string count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

void run(const Options& o) {
  if (o.model.empty() == o.preset.empty())
    throw Error("info", "arguments", "exactly one of --model and --preset", "both or neither");
  const ModelConfig c = o.model.empty() ? preset_config(o.preset) : load_config(o.model);
  const ParameterCount p = count_parameters(c);
  const MemoryEstimate m = estimate_memory(c, o.batch, o.seq_len);
  std::printf("model_type      %s\n", c.model_type.c_str());
  std::printf("layers          %zu: %s\n", c.layers.size(), c.pattern().c_str());
  std::printf("hidden_size     %lld, vocab %lld, %s LM head\n", (long long)c.hidden_size,
              (long long)c.vocab_size, c.tie_word_embeddings ? "tied" : "separate");
  std::printf("parameters      %s (%lld)", count(double(p.total)).c_str(), (long long)p.total);
  if (p.active != p.total) std::printf(", %s active per token", count(double(p.active)).c_str());
  std::printf("\n");
  for (const auto& [kind, n] : p.by_kind)
    std::printf("  %-13s %s\n", kind.c_str(), count(double(n)).c_str());
  std::printf("inference       weights %s (bf16); per sequence: Mamba state %s (constant), "
              "KV cache %s at %lld tokens\n",
              human(double(m.weights_bf16)).c_str(),
              human(double(m.state_per_sequence) / double(o.batch)).c_str(),
              human(double(m.kv_cache) / double(o.batch)).c_str(), (long long)o.seq_len);
  std::printf("training        weights+grads+master+Adam %s; activations %s for %lld x %lld "
              "tokens without recompute, %s with every layer recomputed\n",
              human(double(m.training_state)).c_str(), human(double(m.activations)).c_str(),
              (long long)o.batch, (long long)o.seq_len,
              human(double(m.activations_recompute)).c_str());
  if (o.adapter.empty()) return;
  if (o.adapter != "lora" && o.adapter != "qlora")
    throw Error("--adapter", "value", "lora or qlora", o.adapter);
  const LoraConfig lora = lora_config_of_options(o.lora_r, o.lora_targets, o.lora_experts);
  const bool q = o.adapter == "qlora";
  const AdapterMemory a = estimate_adapter_memory(c, lora, q);
  const int64_t total = a.base + a.adapter_state + a.dequantized + m.activations_recompute;
  std::printf("%-15s r %lld: %s adapter parameters; base %s%s; adapter+grads+master+Adam %s",
              o.adapter.c_str(), (long long)o.lora_r, count(double(a.adapter_params)).c_str(),
              human(double(a.base)).c_str(),
              q ? (" (" + count(double(a.quantized_params)) + " in NF4)").c_str() : " (bf16)",
              human(double(a.adapter_state)).c_str());
  if (q) std::printf("; de-quantised at once %s", human(double(a.dequantized)).c_str());
  std::printf("\n                total with every layer recomputed about %s for %lld x %lld "
              "tokens\n",
              human(double(total)).c_str(), (long long)o.batch, (long long)o.seq_len);
}

}  // namespace

void add_info(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("info", "Layer pattern, parameter counts and memory needs");
  cmd->add_option("--model", o->model, "HF model directory or config.json");
  cmd->add_option("--preset", o->preset, "a configuration in configs/models (e.g. nemotron-h-8b)");
  cmd->add_option("--batch", o->batch, "sequences, for the memory estimate")->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence, for the memory estimate")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--adapter", o->adapter, "lora or qlora: the memory of training an adapter");
  cmd->add_option("--lora-r", o->lora_r, "adapter rank")->capture_default_str();
  cmd->add_option("--lora-targets", o->lora_targets,
                  "linear (every linear module) or a comma list of module names")
      ->capture_default_str();
  cmd->add_flag("--lora-experts", o->lora_experts, "adapt the routed experts' weights too");
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
