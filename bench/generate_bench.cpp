// nemotronh-bench-generate: times inference of a model on random tokens and prints JSON lines:
//   prefill: one sequence of --prefill tokens (tokens/s, peak device memory, state bytes);
//   decode:  --batch sequences after a --prompt-token prompt, --new greedy steps (tokens/s,
//            ms per step), on the GPU with and without CUDA graphs, and the weight bytes read
//            per step (every parameter but the embedding table, of which a step reads B rows)
//            over the measured device copy bandwidth (the memory-bandwidth limit of batch-1
//            decoding).
//
//   nemotronh-bench-generate --model nemotron-h-8b [--pattern P] --prefill 8192,131072
//                            --batch 1,8,64 [--prompt 32] [--new 128] [--dtype bf16]
//   (--prefill 0: decoding only; --profile-step: under `ncu --profile-from-start off`, profile
//   one eager decode step per batch size)
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench_model.h"
#include "core/cuda_memory.h"
#include "core/device_select.h"

namespace nh {
namespace {

struct Options {
  std::string model = "nemotron-h-8b", pattern, dtype, device = "auto";  // dtype "": default
  std::vector<int64_t> prefill{8192}, batch{1, 8};
  int64_t prompt = 32, new_tokens = 128;
  bool profile_step = false;
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
void sync(Device d) {
  if (d == Device::CUDA) cuda_synchronize();
}

int run(const Options& o) {
  const Device device = select_device(o.device, "--device");
  const DType dtype = select_compute_dtype(o.dtype, device, "--dtype");
  const auto t_load = Clock::now();
  Model model = bench_model(o.model, o.pattern, dtype, 1);
  if (device == Device::CUDA) model.to(device, dtype);
  const ModelConfig& c = model.config();
  int64_t params = 0;
  for (const auto& n : model.params().names()) params += model.params().at(n).numel();
  const int64_t table = model.tied_head() ? 0 : c.vocab_size * c.hidden_size;
  const double weight_bytes = double(params - table) * double(dtype_size(model.dtype()));
  auto line = [&](nlohmann::ordered_json j) {
    j["model"] = o.model;
    j["pattern"] = c.pattern();
    j["params"] = params;
    j["device"] = device == Device::CUDA ? cuda_device_name() : "cpu";
    j["dtype"] = dtype == DType::BF16 ? "bf16" : "fp32";
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  };
  line({{"bench", "load"}, {"seconds", seconds_since(t_load)}});
  Rng rng(7);

  for (int64_t s : o.prefill) {
    if (s <= 0) continue;  // --prefill 0: decoding only
    InferenceState state = model.new_inference_state(1, s + 1);
    Tensor logits = Tensor::empty({1, c.vocab_size}, DType::F32);
    const Tensor ids = random_token_ids({s}, c.vocab_size, rng);
    sync(device);
    reset_device_memory_peak();
    const auto t = Clock::now();
    model.prefill(ids, state, 0, logits);
    sync(device);
    const double sec = seconds_since(t);
    line({{"bench", "prefill"}, {"tokens", s}, {"seconds", sec}, {"tokens_per_s", double(s) / sec},
          {"peak_tensor_gib", gib(device_memory_stats().peak)},
          {"state_gib", gib(state.bytes())}});
  }

  const double bandwidth = device == Device::CUDA ? copy_bandwidth() : 0;
  for (int64_t b : o.batch)
    for (bool graphs : device == Device::CUDA ? std::vector<bool>{true, false}
                                              : std::vector<bool>{false}) {
      InferenceState state = model.new_inference_state(b, o.prompt + o.new_tokens + 2);
      state.use_graphs = graphs;
      Tensor logits = Tensor::empty({b, c.vocab_size}, DType::F32);
      for (int64_t r = 0; r < b; ++r) {
        Tensor row = logits.slice0(r, r + 1);
        model.prefill(random_token_ids({o.prompt}, c.vocab_size, rng), state, r, row);
      }
      Tensor next = Tensor::empty({b}, DType::I64);
      auto step = [&] {
        for (int64_t r = 0; r < b; ++r) {
          const float* l = logits.data<float>() + r * c.vocab_size;
          next.data<int64_t>()[r] = std::max_element(l, l + c.vocab_size) - l;
        }
        model.decode(next, state, logits);
      };
      for (int i = 0; i < 3; ++i) step();  // warm-up (and the graph's capture)
      if (o.profile_step && !graphs) {  // one eager step for `ncu --profile-from-start off`
        cuda_profiler(true);
        step();
        cuda_profiler(false);
      }
      sync(device);
      const auto t = Clock::now();
      const int64_t steps = o.new_tokens - 3;
      for (int64_t i = 0; i < steps; ++i) step();
      sync(device);
      const double sec = seconds_since(t), step_s = sec / double(steps);
      nlohmann::ordered_json j = {{"bench", "decode"},
                                  {"batch", b},
                                  {"cuda_graphs", graphs},
                                  {"prompt", o.prompt},
                                  {"steps", steps},
                                  {"ms_per_step", step_s * 1e3},
                                  {"tokens_per_s", double(b * steps) / sec},
                                  {"state_gib", gib(state.bytes())}};
      if (bandwidth > 0) {
        j["copy_bandwidth_gb_s"] = bandwidth / 1e9;
        j["weight_read_limit_ms"] = weight_bytes / bandwidth * 1e3;
        j["fraction_of_bandwidth_limit"] = weight_bytes / bandwidth / step_s;
      }
      line(j);
    }
  return 0;
}

}  // namespace
}  // namespace nh

int main(int argc, char** argv) {
  nh::Options o;
  CLI::App app{"Times prefill and decoding of a model on random tokens"};
  app.add_option("--model", o.model, "preset, config.json or HF directory")->capture_default_str();
  app.add_option("--pattern", o.pattern, "replace the layers (hybrid_override_pattern)");
  app.add_option("--prefill", o.prefill, "prompt lengths to prefill (one sequence each)")
      ->delimiter(',');
  app.add_option("--batch", o.batch, "decode batch sizes")->delimiter(',');
  app.add_option("--prompt", o.prompt, "prompt tokens before decoding")->capture_default_str();
  app.add_option("--new", o.new_tokens, "decode steps (3 of them warm-up)")->capture_default_str();
  app.add_option("--dtype", o.dtype, "fp32, or bf16 on cuda (the default there)");
  app.add_option("--device", o.device, "cpu, cuda or auto")->capture_default_str();
  app.add_flag("--profile-step", o.profile_step,
               "mark one eager decode step per batch size as the profiler's range");
  CLI11_PARSE(app, argc, argv);
  try {
    return nh::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemotronh-bench-generate: %s\n", e.what());
    return 2;
  }
}
