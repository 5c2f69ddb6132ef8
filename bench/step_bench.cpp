// nemotronh-bench-step: times whole training steps (forward, backward and optionally AdamW) of a
// model on random tokens and prints one JSON line per run: median step time, tokens/s, model
// TFLOP/s and MFU, peak device memory, loss. For sizing runs (what fits, with or without
// recompute) and for comparing against the PyTorch stack at the same shape.
//
//   nemotronh-bench-step --model nemotron-h-8b [--pattern M-M-M-M*-] [--seq 8192,...] [--batch 1]
//                        [--steps 5] [--warmup 2] [--recompute all] [--optimizer adamw|none]
//                        [--dtype bf16|fp32] [--device cuda|cpu]
//                        [--adapter lora|qlora] [--lora-r 16] [--lora-targets q_proj,...|linear]
//                        [--lora-experts]
// --model is a preset name, a config.json, or an HF directory (its weights are loaded). Several
// --seq values time each length in turn on the same model (a scaling curve); a length that does
// not fit prints a line with its error and the next one runs.
// With --adapter only the adapter trains; qlora builds the model with its linear and expert
// weights quantised to NF4 on the device as they are made (so a 30B model needs no 120 GB of
// fp32 on the host).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench_model.h"
#include "core/cuda_memory.h"
#include "core/device_select.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace nh {
namespace {

struct Options {
  std::string model = "nemotron-h-8b", pattern, recompute = "none", optimizer = "adamw";
  std::string dtype, device = "auto";  // dtype "": the device's default
  std::string adapter = "none", lora_targets = "linear";
  int64_t lora_r = 16;
  bool lora_experts = false;
  std::vector<int64_t> seqs{8192};
  int64_t batch = 1, steps = 5, warmup = 2;
  uint64_t seed = 1;
};

std::vector<LayerKind> recompute_kinds(const std::string& s) {
  if (s == "none") return {};
  if (s == "all") return {LayerKind::Mamba, LayerKind::Attention, LayerKind::Mlp, LayerKind::Moe};
  std::vector<LayerKind> out;
  for (char c : s) {
    if (c == 'M') out.push_back(LayerKind::Mamba);
    else if (c == '*') out.push_back(LayerKind::Attention);
    else if (c == '-') out.push_back(LayerKind::Mlp);
    else if (c == 'E') out.push_back(LayerKind::Moe);
    else throw Error("--recompute", "value", "none, all, or layer characters M * - E", s);
  }
  return out;
}

LoraConfig lora_config(const Options& o) {
  return lora_config_of_options(o.lora_r, o.lora_targets, o.lora_experts);
}

Model make_model(const Options& o, DType dtype, Device device) {
  if (o.adapter == "qlora") {
    const ModelConfig c = bench_config(o.model, o.pattern);
    return Model::init_quantized(c, o.seed, lora_config(o), QuantKind::NF4, device);
  }
  Model m = bench_model(o.model, o.pattern, dtype, o.seed);
  if (o.adapter == "lora") m.attach_adapter(new_lora_adapter(m.config(), lora_config(o), o.seed, "bench"));
  return m;
}

// Times o.steps steps of `seq` tokens per row after o.warmup untimed ones; prints their line.
void time_steps(const Options& o, Model& model, Optimizer* opt, Device device, DType dtype,
                int64_t seq, double load_s) {
  const ModelConfig& c = model.config();
  Rng rng(o.seed);
  std::vector<double> ms;
  double loss = 0;
  reset_device_memory_peak();
  for (int64_t i = 0; i < o.warmup + o.steps; ++i) {
    const Tensor ids = random_token_ids({o.batch, seq}, c.vocab_size, rng).to(device);
    const Tensor targets = random_token_ids({o.batch, seq}, c.vocab_size, rng).to(device);
    if (device == Device::CUDA) cuda_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grads();
    Tensor none;
    model.head_gradients_in_next_forward(1.0);  // as the trainer: Σ loss, scaled in the step
    const LossSum l = model.forward(ids, targets, Tensor(), none);
    model.backward(1.0);
    if (opt) opt->step(1.0 / double(l.count), 1e-5, i + 1);
    if (device == Device::CUDA) cuda_synchronize();
    const double step_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    loss = l.sum / double(l.count);
    if (i >= o.warmup) ms.push_back(step_ms);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms.empty() ? 0 : ms[ms.size() / 2];
  const double tokens = double(o.batch * seq);
  const double flops = model_flops_per_token(c, seq) * tokens;
  const double peak = device == Device::CUDA ? gpu_bf16_peak_flops() : 0;
  const DeviceMemoryStats mem = device_memory_stats();
  int64_t params = model.quantized_params(), trainable = 0;
  for (const auto& n : model.params().names()) params += model.params().at(n).numel();
  for (const auto& t : model.trainable()) trainable += t.param.numel();
  nlohmann::ordered_json j = {
      {"bench", "step"},
      {"model", o.model},
      {"pattern", c.pattern()},
      {"params", params},
      {"adapter", o.adapter},
      {"lora_r", o.adapter == "none" ? 0 : o.lora_r},
      {"trainable_params", trainable},
      {"quantized_bytes_per_param",
       model.quantized_params() ? double(model.quantized_bytes()) / double(model.quantized_params())
                                : 0.0},
      {"device", device == Device::CUDA ? cuda_device_name() : "cpu"},
      {"dtype", dtype == DType::BF16 ? "bf16" : "fp32"},
      {"batch", o.batch},
      {"seq", seq},
      {"recompute", o.recompute},
      {"optimizer", o.optimizer},
      {"steps", o.steps},
      {"load_s", load_s},
      {"step_ms_median", median},
      {"step_ms_min", ms.empty() ? 0 : ms.front()},
      {"tokens_per_s", median > 0 ? tokens / (median / 1e3) : 0},
      {"model_tflops", median > 0 ? flops / (median / 1e3) / 1e12 : 0},
      {"mfu", peak > 0 && median > 0 ? flops / (median / 1e3) / peak : 0},
      {"peak_tensor_gib", gib(mem.peak)},
      {"device_used_gib", gib(mem.total - mem.free)},
      {"loss", loss},
  };
  std::printf("%s\n", j.dump().c_str());
}

int run(const Options& o) {
  const Device device = select_device(o.device, "--device");
  const DType dtype = select_compute_dtype(o.dtype, device, "--dtype");
  if (o.optimizer != "adamw" && o.optimizer != "none")
    throw Error("--optimizer", "value", "adamw or none", o.optimizer);
  if (o.adapter != "none" && o.adapter != "lora" && o.adapter != "qlora")
    throw Error("--adapter", "value", "none, lora or qlora", o.adapter);
  const auto t_load = std::chrono::steady_clock::now();
  Model model = make_model(o, dtype, device);
  ParamSet full;
  if (o.optimizer == "adamw" && model.dtype() == DType::F32 && dtype != DType::F32)
    full = model.has_adapter() ? model.adapter().params : model.params();
  if (device == Device::CUDA) model.to(device, dtype);
  model.set_recompute(recompute_kinds(o.recompute));
  std::unique_ptr<Optimizer> opt;
  if (o.optimizer == "adamw")
    opt = std::make_unique<Optimizer>(model, OptimizerSettings{},
                                      full.names().empty() ? nullptr : &full);
  full = ParamSet();
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  for (int64_t seq : o.seqs) {
    try {
      time_steps(o, model, opt.get(), device, dtype, seq, load_s);
    } catch (const std::exception& e) {
      const nlohmann::ordered_json j = {
          {"bench", "step"}, {"model", o.model}, {"seq", seq}, {"error", e.what()}};
      std::printf("%s\n", j.dump().c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace nh

int main(int argc, char** argv) {
  nh::Options o;
  CLI::App app{"Times training steps of a model on random tokens"};
  app.add_option("--model", o.model, "preset, config.json or HF directory")->capture_default_str();
  app.add_option("--pattern", o.pattern, "replace the layers (hybrid_override_pattern)");
  app.add_option("--seq", o.seqs, "tokens per row; several (comma-separated) time each in turn")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", o.batch, "rows per step")->capture_default_str();
  app.add_option("--steps", o.steps, "timed steps")->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--recompute", o.recompute, "none, all, or layer characters (M*-E)")
      ->capture_default_str();
  app.add_option("--optimizer", o.optimizer, "adamw or none")->capture_default_str();
  app.add_option("--dtype", o.dtype, "fp32, or bf16 on cuda (the default there)");
  app.add_option("--device", o.device, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--seed", o.seed, "random seed")->capture_default_str();
  app.add_option("--adapter", o.adapter, "none, lora or qlora (NF4 base)")->capture_default_str();
  app.add_option("--lora-r", o.lora_r, "adapter rank (alpha = 2r)")->capture_default_str();
  app.add_option("--lora-targets", o.lora_targets,
                 "linear (every linear module) or a comma list of module names")
      ->capture_default_str();
  app.add_flag("--lora-experts", o.lora_experts, "adapt the routed experts' up/down weights too");
  CLI11_PARSE(app, argc, argv);
  try {
    return nh::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemotronh-bench-step: %s\n", e.what());
    return 2;
  }
}
