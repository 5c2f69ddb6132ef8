#include "train/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>

#include "core/cuda_memory.h"
#include "core/device_select.h"
#include "dist/data_parallel.h"
#include "dist/launch.h"
#include "infer/generate.h"
#include "io/tokenizer.h"
#include "model/presets.h"
#include "ops/moe.h"
#include "train/checkpoint.h"
#include "train/data_sources.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace nh {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs SIGINT/SIGTERM handlers for the lifetime of a run: the loop saves a checkpoint at
// the next step boundary and returns.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    old_int_ = std::signal(SIGINT, on_stop_signal);
    old_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }
  bool requested() const { return g_stop_signal != 0; }

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

std::vector<LayerKind> recompute_kinds(const Recipe& r) {
  std::vector<LayerKind> kinds;
  for (const auto& k : r.recompute) {
    if (k == "all" || r.gradient_checkpointing)
      return {LayerKind::Mamba, LayerKind::Attention, LayerKind::Mlp, LayerKind::Moe};
    if (k == "mamba") kinds.push_back(LayerKind::Mamba);
    if (k == "attention") kinds.push_back(LayerKind::Attention);
    if (k == "mlp") kinds.push_back(LayerKind::Mlp);
    if (k == "moe") kinds.push_back(LayerKind::Moe);
  }
  return kinds;
}

std::string tokenizer_path(const Recipe& r) {
  if (!r.tokenizer.empty()) return r.tokenizer;
  if (!r.init_from.empty()) return r.init_from;
  throw Error("recipe", "tokenizer", "a tokenizer.json (or init_from a model directory with one)",
              "none");
}

LoraConfig lora_config(const Recipe& r) {
  LoraConfig c;
  c.r = r.lora_r;
  c.alpha = r.lora_alpha;
  c.dropout = r.lora_dropout;
  c.rslora = r.peft_use_rslora;
  c.init = r.lora_init;
  c.target_modules = r.lora_target_modules;
  c.target_modules_regex = r.lora_target_modules_regex;
  c.target_linear = r.lora_target_linear;
  c.target_parameters = r.lora_target_parameters;
  return c;
}

// How the recipe holds the frozen base: NF4 for qlora or load_in_4bit, int8 for load_in_8bit.
std::optional<QuantKind> base_quantization(const Recipe& r) {
  if (r.adapter == "qlora" || r.load_in_4bit) return QuantKind::NF4;
  if (r.load_in_8bit) return QuantKind::Int8;
  return std::nullopt;
}

Model new_model(const Recipe& r) {
  if (!r.adapter.empty()) {
    Model m = Model::load(r.init_from);
    m.attach_adapter(new_lora_adapter(m.config(), lora_config(r), r.seed, "recipe"));
    return m;
  }
  if (!r.init_from.empty()) return Model::load(r.init_from);
  const bool is_file = r.model.ends_with(".json") || fs::is_directory(r.model);
  const ModelConfig config = is_file ? load_config(r.model) : preset_config(r.model);
  return Model::init(with_layer_pattern(config, r.hybrid_override_pattern, "recipe"), r.seed,
                     r.precision == "bf16" ? DType::BF16 : DType::F32);
}

int64_t total_steps(const Recipe& r) {
  if (r.max_steps > 0) return r.max_steps;
  return std::max<int64_t>(1, r.train_tokens / (r.global_batch_size * r.seq_length));
}

// Mean loss over `iters` micro-batches; a group splits them between its ranks.
double mean_loss(Model& model, DataStream& stream, const Recipe& r, int64_t iters,
                 Communicator* group = nullptr) {
  double sum = 0, count = 0;
  Tensor none;
  model.set_lora_dropout(false, 0);
  for (int64_t i = 0; i < iters; ++i) {
    MicroBatch b = stream.next_batch(r.micro_batch_size);
    if (group && i % group->size() != group->rank()) continue;
    const LossSum l = model.forward(b.ids, b.targets, b.seq_idx, none);
    sum += l.sum;
    count += double(l.count);
  }
  if (group) {
    sum = group->all_reduce(sum);
    count = group->all_reduce(count);
  }
  return count > 0 ? sum / count : NAN;
}

// Sums each MoE layer's expert loads (I64 on the CPU) over the group.
void all_reduce_loads(std::vector<std::pair<size_t, Tensor>>& loads, Communicator& group) {
  for (auto& [layer, load] : loads) {
    Tensor t = load.to(group.device());
    group.all_reduce(t);
    load = t.to(Device::CPU);
  }
}

// The data-parallel size the world gives the recipe's layout; a world or batch it does not fit
// is an Error naming the key.
int data_parallel_size(const Recipe& r, int world) {
  const int64_t tp = r.tensor_model_parallel_size;
  if (world % tp != 0)
    throw Error("recipe", "tensor_model_parallel_size",
                "a divisor of the world size " + std::to_string(world), std::to_string(tp));
  const int64_t dp = world / tp;
  if (dp % r.expert_model_parallel_size != 0)
    throw Error("recipe", "expert_model_parallel_size",
                "a divisor of the data-parallel size " + std::to_string(dp) +
                    " (the world size over tensor_model_parallel_size)",
                std::to_string(r.expert_model_parallel_size));
  if (r.global_batch_size % (r.micro_batch_size * dp) != 0)
    throw Error("recipe", "global_batch_size",
                "a multiple of micro_batch_size × data-parallel size (" +
                    std::to_string(r.micro_batch_size) + " × " + std::to_string(dp) + ")",
                std::to_string(r.global_batch_size));
  return int(dp);
}

// Adds `from` (I64 [E], any device) into `into` (on the CPU).
void add_load(Tensor& into, const Tensor& from) {
  const Tensor f = from.to(Device::CPU);
  for (int64_t e = 0; e < into.numel(); ++e) into.data<int64_t>()[e] += f.data<int64_t>()[e];
}

// Puts a CPU fp32 model on `device` in the recipe's precision; returns the fp32 parameters it
// was rounded from (the optimizer's masters start from them), empty when nothing was rounded.
ParamSet place_model(Model& model, Device device, const Recipe& r) {
  if (device == Device::CPU) return {};
  const DType dtype = r.precision == "bf16" ? DType::BF16 : DType::F32;
  // Under an adapter only its tensors have masters (and the base needs no fp32 copy kept).
  ParamSet full = dtype == DType::F32   ? ParamSet()
                  : model.has_adapter() ? model.adapter().params
                                        : model.params();
  model.to(device, dtype);
  return full;
}

}  // namespace

TrainOutcome train(const Recipe& r, bool resume, bool quiet) {
  const Device device = select_device(r.device, "recipe");
  // The communicators first: on the GPU they choose this rank's device.
  const std::unique_ptr<Communicator> world = world_communicator(launch_info(), device);
  const int dp = data_parallel_size(r, world->size());
  const int tp = int(r.tensor_model_parallel_size);
  // Tensor-parallel ranks are neighbours (one node), as Megatron orders them.
  const std::unique_ptr<Communicator> tp_group = world->split(world->rank() / tp, world->rank());
  const std::unique_ptr<Communicator> dp_group = world->split(world->rank() % tp, world->rank());
  // Expert groups are neighbouring data-parallel ranks; the ranks holding the same experts
  // reduce their gradients.
  const int ep = int(r.expert_model_parallel_size);
  const std::unique_ptr<Communicator> ep_group = dp_group->split(dp_group->rank() / ep, 0);
  const std::unique_ptr<Communicator> expert_dp_group = dp_group->split(dp_group->rank() % ep, 0);
  const bool lead = world->rank() == 0;
  quiet = quiet || !lead;
  fs::create_directories(r.out);
  const std::string tok_path = tokenizer_path(r);
  const Tokenizer tokenizer = Tokenizer::load(tok_path);
  const std::string tok_file =
      fs::is_directory(tok_path) ? (fs::path(tok_path) / "tokenizer.json").string() : tok_path;

  // Model and where the run stands.
  const std::string ckpt = resume ? latest_checkpoint(r.out) : "";
  nlohmann::json state;
  Model model = ckpt.empty() ? new_model(r) : [&] {
    LoadedCheckpoint c = load_checkpoint(ckpt, r.init_from);
    state = std::move(c.trainer_state);
    return std::move(c.model);
  }();
  if (tokenizer.vocab_size() > model.config().vocab_size)
    throw Error(tok_file, "vocabulary",
                "at most the model's vocab_size " + std::to_string(model.config().vocab_size),
                std::to_string(tokenizer.vocab_size()) + " tokens");
  if (tp > 1) model.shard_tensor_parallel(*tp_group);
  if (tp > 1 && r.sequence_parallel) model.set_sequence_parallel(true);
  if (ep > 1) model.shard_experts(*ep_group);
  if (!ckpt.empty()) restore_masters(ckpt, model);
  if (const auto kind = base_quantization(r)) {
    model.quantize_base(*kind, device);
    if (!quiet)
      std::fprintf(stderr, "%s base: %.1f M weights in %.2f bytes per parameter\n",
                   *kind == QuantKind::NF4 ? "NF4" : "int8", double(model.quantized_params()) / 1e6,
                   double(model.quantized_bytes()) / double(model.quantized_params()));
  }
  model.set_recompute(recompute_kinds(r));
  ParamSet full_precision = place_model(model, device, r);
  const std::unique_ptr<DataParallel> ddp =
      dp > 1 ? std::make_unique<DataParallel>(model, *dp_group, r.use_distributed_optimizer,
                                              r.ddp_bucket_size,
                                              ep > 1 ? expert_dp_group.get() : nullptr)
             : nullptr;
  const OptimizerSettings settings{r.adam_beta1, r.adam_beta2, r.adam_eps, r.weight_decay,
                                   r.clip_grad};
  const ParamSet* masters_from = full_precision.names().empty() ? nullptr : &full_precision;
  Optimizer optimizer =
      ddp ? Optimizer(ddp->optimizer_ranges(), settings, masters_from, ddp->norm_groups())
          : Optimizer(model, settings, masters_from);
  full_precision = ParamSet();  // the masters hold these values now
  if (!ckpt.empty()) load_optimizer_state(ckpt, optimizer, model);

  DataStream train_stream(stream_config(r, tokenizer, model.config().vocab_size, 0));
  std::unique_ptr<DataStream> val_stream;
  nlohmann::json val_start;
  if (r.eval_interval > 0) {
    val_stream =
        std::make_unique<DataStream>(stream_config(r, tokenizer, model.config().vocab_size, 1));
    val_start = val_stream->state();
  }
  // step counts optimizer steps taken or skipped; updates only those taken (AdamW's t).
  int64_t step = 0, updates = 0, tokens_seen = 0, skipped_in_a_row = 0;
  if (!ckpt.empty()) {
    try {
      step = state.at("step").get<int64_t>();
      updates = state.at("updates").get<int64_t>();
      tokens_seen = state.at("tokens").get<int64_t>();
      skipped_in_a_row = state.at("skipped_in_a_row").get<int64_t>();
      train_stream.restore(state.at("data"));
    } catch (const nlohmann::json::exception& e) {
      throw Error(ckpt + "/trainer_state.json", "state", "a trainer state of this version",
                  e.what());
    }
  }

  const int64_t steps = total_steps(r);
  const int64_t accum = r.global_batch_size / r.micro_batch_size;
  const LrSchedule schedule{r.lr_schedule,  r.lr,  r.min_lr,
                            r.warmup_steps, steps, r.wsd_decay_fraction};
  // Only the first rank writes metrics.
  std::optional<MetricsLogger> metrics;
  if (lead) {
    // MFU of the whole job: its FLOP/s against the peak of all its GPUs.
    const double peak = device == Device::CUDA ? gpu_bf16_peak_flops() * world->size() : 0.0;
    metrics.emplace(r.out, steps, peak, true, r.log_interval);
    if (quiet) {
      static std::ostringstream sink;
      metrics->set_console(sink, false);
    }
    metrics->truncate_after(step);
  }
  const double flops_per_token = model_flops_per_token(model.full_config(), r.seq_length);
  const std::string recipe_yaml = recipe_to_yaml(r);

  TrainOutcome out;
  out.rank = world->rank();
  auto save = [&] {
    nlohmann::json s = {{"step", step},
                        {"updates", updates},
                        {"tokens", tokens_seen},
                        {"skipped_in_a_row", skipped_in_a_row},
                        {"data", train_stream.state()}};
    if (metrics) metrics->flush();
    out.checkpoint = save_checkpoint(
        r.out, step,
        {model, optimizer, s, recipe_yaml, tok_file, r.init_from,
         world->size() > 1 ? world.get() : nullptr, tp > 1 || ep > 1 || r.use_distributed_optimizer,
         ddp && ddp->distributed_optimizer(), dp_group->rank() < ep, dp_group->rank() == 0},
        r.keep_last);
  };

  StopSignals signals;
  const auto run_start = std::chrono::steady_clock::now();
  int64_t run_tokens = 0;
  bool first = true;
  while (step < steps) {
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grads();
    double loss_sum = 0;
    int64_t loss_count = 0, step_tokens = 0;
    std::vector<std::pair<size_t, Tensor>> loads;
    for (int64_t micro = 0; micro < accum; ++micro) {
      // Every rank reads the whole global batch and computes its share of the micro-batches,
      // so the step sees the same data at any data-parallel size.
      MicroBatch b = train_stream.next_batch(r.micro_batch_size);
      step_tokens += b.ids.numel();
      if (micro % dp != dp_group->rank()) continue;
      if (ddp) ddp->set_last_micro_batch(micro + dp >= accum);
      model.set_final_backward(micro + dp >= accum);
      model.set_lora_dropout(true, r.seed ^ (uint64_t(step) << 20) ^ uint64_t(micro));
      Tensor none;
      model.head_gradients_in_next_forward(1.0);
      const LossSum l = model.forward(b.ids, b.targets, b.seq_idx, none);
      model.backward(1.0);  // Σ loss; scaled by 1/tokens of the whole global batch below
      loss_sum += l.sum;
      loss_count += l.count;
      const auto micro_loads = model.expert_loads();
      if (loads.empty())
        for (const auto& [layer, load] : micro_loads)
          loads.emplace_back(layer, load.to(Device::CPU).clone());
      else
        for (size_t i = 0; i < loads.size(); ++i) add_load(loads[i].second, micro_loads[i].second);
    }
    if (ddp) {
      ddp->finish_gradient_reduction();
      loss_sum = dp_group->all_reduce(loss_sum);
      loss_count = int64_t(dp_group->all_reduce(double(loss_count)));
      all_reduce_loads(loads, *dp_group);
    }
    const double loss = loss_count ? loss_sum / double(loss_count) : NAN;
    const double lr = schedule.at(step);
    StepResult res{NAN, false};
    if (std::isfinite(loss) && loss_count > 0)
      res = optimizer.step(1.0 / double(loss_count), lr, updates + 1);
    StepMetrics m;
    if (!res.finite) {
      ++out.skipped_steps;
      ++skipped_in_a_row;
      m.skipped = true;
    } else {
      if (ddp) ddp->gather_parameters();
      ++updates;
      skipped_in_a_row = 0;
      // Auxiliary-loss-free balancing: nudge each router's bias toward balanced load.
      double worst = 0;
      for (const auto& [layer, load] : loads) {
        if (r.moe_router_bias_update_rate > 0)
          moe_update_correction_bias(model.correction_bias(layer), load.to(device),
                                     r.moe_router_bias_update_rate);
        int64_t max = 0, total = 0;
        for (int64_t e = 0; e < load.numel(); ++e) {
          max = std::max(max, load.data<int64_t>()[e]);
          total += load.data<int64_t>()[e];
        }
        if (total) worst = std::max(worst, double(max) * double(load.numel()) / double(total));
      }
      if (!loads.empty()) m.extra["moe_max_load_over_mean"] = worst;
    }
    if (device == Device::CUDA) {
      cuda_synchronize();
      m.extra["gpu_memory_peak_gib"] = double(device_memory_stats().peak) / double(1 << 30);
    }
    ++step;
    tokens_seen += step_tokens;
    run_tokens += step_tokens;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.step = step;
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = res.grad_norm;
    m.tokens = step_tokens;
    m.seconds = seconds;
    m.model_flops = flops_per_token * double(step_tokens);
    if (metrics) metrics->log_step(m);
    if (first) out.first_loss = loss;
    first = false;
    out.last_loss = loss;

    if (skipped_in_a_row >= r.max_skipped_steps) {
      save();
      throw Error("training", "loss", "finite losses and gradients",
                  std::to_string(skipped_in_a_row) +
                      " non-finite steps in a row (stopped at step " + std::to_string(step) +
                      " after saving " + out.checkpoint + ")");
    }
    if (val_stream && step % r.eval_interval == 0) {
      val_stream->restore(val_start);
      const double val_loss =
          // Under expert parallelism every rank evaluates every batch: the expert group's ranks
          // must run the same forwards.
          mean_loss(model, *val_stream, r, r.eval_iters, ddp && ep == 1 ? dp_group.get() : nullptr);
      if (metrics) metrics->log_validation(step, val_loss);
    }
    // A signal to any rank stops them all at the same step.
    const bool stop = world->size() > 1
                          ? world->all_reduce(signals.requested() ? 1.0 : 0.0, ReduceOp::Max) > 0
                          : signals.requested();
    if (stop) {
      save();
      out.interrupted = true;
      break;
    }
    if (r.save_interval > 0 && step % r.save_interval == 0 && step < steps) save();
  }
  if (!out.interrupted) save();
  out.steps = step;
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  out.tokens_per_s = wall > 0 ? double(run_tokens) / wall : 0;

  // Generation runs on a whole model (tensor- and expert-parallel shards would need the others).
  if (!r.sample_prompt.empty() && !quiet && !out.interrupted && tp == 1 && ep == 1) {
    GenerationRequest q;
    q.prompt = tokenizer.encode(r.sample_prompt, false);
    q.sampling.temperature = 0;
    q.max_new_tokens = 64;
    if (const auto eod = tokenizer.eos_id()) q.stop_ids.push_back(*eod);
    const auto res = generate(model, &tokenizer, {q});
    std::fprintf(stderr, "sample: %s%s\n", r.sample_prompt.c_str(), res[0].text.c_str());
  }
  return out;
}

double evaluate(const std::string& model_dir, const Recipe& r, int64_t iters) {
  Model model = Model::load(model_dir);
  place_model(model, select_device(r.device, "recipe"), r);
  const Tokenizer tokenizer = Tokenizer::load(r.tokenizer.empty() ? model_dir : r.tokenizer);
  DataStream stream(stream_config(r, tokenizer, model.config().vocab_size, 1));
  return mean_loss(model, stream, r, iters);
}

}  // namespace nh
