// A training recipe: what `nemotronh train` reads from YAML (--recipe) and --set key=value.
// Keys follow NeMo/Megatron names where one exists (docs/TRAINING.md lists them all).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace nh {

struct DataSourceSpec {
  std::string path;     // Megatron prefix (PREFIX.bin/.idx), or a .jsonl file
  std::string type;     // "megatron", "text" (JSONL with a text field) or "chat" (JSONL messages)
  double weight = 1.0;  // blend weight, > 0
  std::string text_key = "text";

  bool operator==(const DataSourceSpec&) const = default;
};

struct Recipe {
  // model: a preset name, a config.json path, or init_from an HF directory.
  std::string model = "tiny-hybrid";
  std::string init_from;  // HF directory to continue from (continued pretraining, fine-tuning)
  std::string tokenizer;  // tokenizer.json or its directory; default: the model directory's
  // Replaces the model's layer list (Megatron's --hybrid-override-pattern): a slice or a
  // shorter stack of a published shape. Only for models initialised from scratch.
  std::string hybrid_override_pattern;

  int64_t seq_length = 256;
  int64_t global_batch_size = 8;  // sequences per optimizer step
  int64_t micro_batch_size = 4;   // sequences per forward/backward
  int64_t max_steps = 0;          // one of max_steps and train_tokens
  int64_t train_tokens = 0;

  double lr = 3e-4;
  double min_lr = 3e-5;
  std::string lr_schedule = "cosine";  // cosine, linear, wsd, constant
  int64_t warmup_steps = 0;
  double wsd_decay_fraction = 0.1;  // WSD: share of steps in the final decay
  double weight_decay = 0.1;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;  // global-norm clipping; 0 disables
  uint64_t seed = 1234;
  std::string precision = "bf16";  // bf16 (bf16 weights, fp32 master) or fp32

  std::vector<DataSourceSpec> data;  // blend
  std::string split = "98,2";        // train,validation percentages (Megatron's split string)
  std::string chat_template = "chatml";
  bool train_on_all_turns = false;
  bool append_eod = true;

  int64_t eval_interval = 0;  // steps; 0: no validation
  int64_t eval_iters = 4;     // validation micro-batches per evaluation
  int64_t save_interval = 0;  // steps; 0: save at the end only
  int64_t keep_last = 2;      // checkpoints kept
  int64_t log_interval = 1;
  std::vector<std::string> recompute;         // layer kinds whose activations are recomputed:
                                              // mamba, attention, mlp, moe, or all
  double moe_router_bias_update_rate = 1e-3;  // aux-loss-free balancing; 0 disables
  int64_t max_skipped_steps = 10;             // non-finite steps in a row before stopping
  bool gradient_checkpointing = false;        // recompute every layer (as recompute: all)
  bool sample_packing = true;  // SFT: pack several examples per row (false: one per row)

  // Adapters (axolotl's keys; model/lora.h): only the adapter trains, the base stays frozen.
  std::string adapter;  // "", lora, or qlora
  int64_t lora_r = 8;
  double lora_alpha = 16;
  double lora_dropout = 0;
  std::vector<std::string> lora_target_modules;  // names or dotted suffixes, as PEFT matches
  std::string lora_target_modules_regex;         // lora_target_modules given as one string
  bool lora_target_linear = false;               // every linear module but the LM head
  std::vector<std::string> lora_target_parameters;  // expert weights: experts.up_proj, ...
  bool peft_use_rslora = false;                     // scale alpha / √r instead of alpha / r
  std::string lora_init = "default";                // default (Kaiming-uniform A) or gaussian
  // The frozen base held quantised: NF4 (qlora implies it) or int8.
  bool load_in_4bit = false;
  bool load_in_8bit = false;

  // Parallel layout (Megatron's names; docs/DISTRIBUTED.md). The data-parallel size is the
  // world size over the tensor-parallel size; expert groups are made of data-parallel ranks.
  // Sequence parallelism applies with tensor parallelism (as in Megatron, it has no effect
  // without).
  int64_t tensor_model_parallel_size = 1;
  bool sequence_parallel = false;
  int64_t expert_model_parallel_size = 1;
  bool use_distributed_optimizer = false;  // ZeRO-1: optimizer state sharded over data parallel
  int64_t ddp_bucket_size = 40000000;      // parameters per gradient-reduction bucket

  std::string device = "auto";  // cpu, cuda, or auto (cuda when a GPU is present)
  std::string out = "runs/run";
  std::string sample_prompt;  // a short generation at the end of the run, when set

  bool operator==(const Recipe&) const = default;
};

// Reads a YAML recipe (or none when `path` is empty: the struct defaults) and applies --set
// overrides ("key=value", nested keys as "data.0.weight"). Unknown keys, wrong types and
// impossible settings (global batch not divisible by the micro batch, ...) are an Error naming
// the file and line or --set, and the key, before any work starts. Exactly one of max_steps
// and train_tokens must end up > 0.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides);
// The recipe as YAML text (saved in every checkpoint).
std::string recipe_to_yaml(const Recipe& recipe);

}  // namespace nh
