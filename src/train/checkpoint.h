// Training checkpoints: RUN/checkpoints/step-<N>/ is an HF model directory (config.json,
// weights, tokenizer) that transformers and `nemotronh generate` load, or, when an adapter
// trains, a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for the
// base model init_from names; plus
//   training_state.safetensors  optimizer moments (exp_avg/…, exp_avg_sq/…) and, when the
//                               weights on disk are narrower than fp32, master/<name>
//   trainer_state.json          step, tokens, data-stream positions, counters
//   recipe.yaml                 the recipe of the run
// Each is written under a temporary directory name and renamed when complete; RUN/checkpoints/
// latest then names it (written atomically), and checkpoints beyond the newest keep_last are
// removed. A failed save leaves the previous checkpoints as they were.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"
#include "train/optimizer.h"

namespace nh {

struct CheckpointContents {
  const Model& model;
  const Optimizer& optimizer;
  nlohmann::json trainer_state;
  std::string recipe_yaml;
  std::string tokenizer_file;  // copied in as tokenizer.json when the model has none
  std::string base_model;      // the adapter's base model directory (init_from)
};

// Saves step `step` and returns its directory.
std::string save_checkpoint(const std::string& run_dir, int64_t step,
                            const CheckpointContents& contents, int64_t keep_last);
// The directory `latest` names in RUN/checkpoints, or "" when the run has no checkpoint.
std::string latest_checkpoint(const std::string& run_dir);

struct LoadedCheckpoint {
  Model model;
  nlohmann::json trainer_state;
};
// The model of a checkpoint directory with its master weights restored (for an adapter
// checkpoint: `base_model` with the adapter attached and its masters restored); the optimizer
// state is loaded separately (load_optimizer_state) once an Optimizer exists for the model.
LoadedCheckpoint load_checkpoint(const std::string& dir, const std::string& base_model = "");
void load_optimizer_state(const std::string& dir, Optimizer& optimizer);

}  // namespace nh
