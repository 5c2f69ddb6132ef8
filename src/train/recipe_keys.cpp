#include "train/recipe_keys.h"

namespace nh::recipe_keys {

const std::array<Field, 55> kFields = {{
    {"model", &Recipe::model},
    {"init_from", &Recipe::init_from},
    {"hybrid_override_pattern", &Recipe::hybrid_override_pattern},
    {"tokenizer", &Recipe::tokenizer},
    {"seq_length", &Recipe::seq_length},
    {"global_batch_size", &Recipe::global_batch_size},
    {"micro_batch_size", &Recipe::micro_batch_size},
    {"max_steps", &Recipe::max_steps},
    {"train_tokens", &Recipe::train_tokens},
    {"lr", &Recipe::lr},
    {"min_lr", &Recipe::min_lr},
    {"lr_schedule", &Recipe::lr_schedule},
    {"warmup_steps", &Recipe::warmup_steps},
    {"wsd_decay_fraction", &Recipe::wsd_decay_fraction},
    {"weight_decay", &Recipe::weight_decay},
    {"adam_beta1", &Recipe::adam_beta1},
    {"adam_beta2", &Recipe::adam_beta2},
    {"adam_eps", &Recipe::adam_eps},
    {"clip_grad", &Recipe::clip_grad},
    {"seed", &Recipe::seed},
    {"precision", &Recipe::precision},
    {"data", &Recipe::data},
    {"split", &Recipe::split},
    {"chat_template", &Recipe::chat_template},
    {"train_on_all_turns", &Recipe::train_on_all_turns},
    {"append_eod", &Recipe::append_eod},
    {"eval_interval", &Recipe::eval_interval},
    {"eval_iters", &Recipe::eval_iters},
    {"save_interval", &Recipe::save_interval},
    {"keep_last", &Recipe::keep_last},
    {"log_interval", &Recipe::log_interval},
    {"recompute", &Recipe::recompute},
    {"moe_router_bias_update_rate", &Recipe::moe_router_bias_update_rate},
    {"max_skipped_steps", &Recipe::max_skipped_steps},
    {"gradient_checkpointing", &Recipe::gradient_checkpointing},
    {"sample_packing", &Recipe::sample_packing},
    {"adapter", &Recipe::adapter},
    {"lora_r", &Recipe::lora_r},
    {"lora_alpha", &Recipe::lora_alpha},
    {"lora_dropout", &Recipe::lora_dropout},
    {"lora_target_modules", &Recipe::lora_target_modules},
    {"lora_target_linear", &Recipe::lora_target_linear},
    {"lora_target_parameters", &Recipe::lora_target_parameters},
    {"peft_use_rslora", &Recipe::peft_use_rslora},
    {"lora_init", &Recipe::lora_init},
    {"load_in_4bit", &Recipe::load_in_4bit},
    {"load_in_8bit", &Recipe::load_in_8bit},
    {"tensor_model_parallel_size", &Recipe::tensor_model_parallel_size},
    {"sequence_parallel", &Recipe::sequence_parallel},
    {"expert_model_parallel_size", &Recipe::expert_model_parallel_size},
    {"use_distributed_optimizer", &Recipe::use_distributed_optimizer},
    {"ddp_bucket_size", &Recipe::ddp_bucket_size},
    {"device", &Recipe::device},
    {"out", &Recipe::out},
    {"sample_prompt", &Recipe::sample_prompt},
}};

const std::array<Alias, 6> kAliases = {{
    {"train_iters", "max_steps"},
    {"lr_warmup_iters", "warmup_steps"},
    {"lr_decay_style", "lr_schedule"},
    {"encoder_seq_length", "seq_length"},
    {"recompute_layer_kinds", "recompute"},
    {"data_path", "data"},
}};

const std::array<const char*, 10> kAdapterKeys = {"lora_r",
                                                  "lora_alpha",
                                                  "lora_dropout",
                                                  "lora_target_modules",
                                                  "lora_target_linear",
                                                  "lora_target_parameters",
                                                  "peft_use_rslora",
                                                  "lora_init",
                                                  "load_in_4bit",
                                                  "load_in_8bit"};

const Field* find_field(std::string_view key) {
  for (const Field& f : kFields)
    if (key == f.key) return &f;
  return nullptr;
}

std::string canonical_key(std::string_view name) {
  if (find_field(name)) return std::string(name);
  for (const Alias& a : kAliases)
    if (name == a.alias) return a.key;
  if (name == kGranularity) return kGranularity;
  return "";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::vector<std::string_view> top_level_names() {
  std::vector<std::string_view> names;
  for (const Field& f : kFields) names.push_back(f.key);
  for (const Alias& a : kAliases) names.push_back(a.alias);
  names.push_back(kGranularity);
  return names;
}

}  // namespace nh::recipe_keys
