// Training checkpoints: RUN/checkpoints/step-<N>/ is an HF model directory (config.json,
// weights, tokenizer) that transformers and `nemotronh generate` load, or, when an adapter
// trains, a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for the
// base model init_from names; plus
//   training_state.safetensors  optimizer moments (exp_avg/…, exp_avg_sq/…) and, when the
//                               weights on disk are narrower than fp32, master/<name>
//   training_state-RRRRR-of-NNNNN.safetensors
//                               instead, under the distributed optimizer: rank R's pieces of
//                               those tensors, 1-D, each with its first element's index in the
//                               full tensor in the file's metadata (under the tensor's name)
//   trainer_state.json          step, tokens, data-stream positions, counters
//   recipe.yaml                 the recipe of the run
// Each is written under a temporary directory name and renamed when complete; RUN/checkpoints/
// latest then names it (written atomically), and checkpoints beyond the newest keep_last are
// removed. A failed save leaves the previous checkpoints as they were.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
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
  // Data-parallel runs: the ranks that save together (rank 0 writes the model and the trainer
  // state), and whether each holds only its own pieces of the optimizer state.
  Communicator* group = nullptr;
  bool sharded_state = false;
};

// Saves step `step` and returns its directory. Under a group every rank calls it; a failure on
// any rank is an Error on all of them.
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

// Reads the saved optimizer state of checkpoint `dir`, whole or in pieces written by any number
// of ranks (a resumed run may have another layout).
class SavedState {
 public:
  explicit SavedState(const std::string& dir);
  // The StateReader contract (train/optimizer.h); a range the pieces do not cover is an Error.
  bool read(const std::string& name, int64_t begin, int64_t full_numel, Tensor& dst) const;
  const std::string& where() const { return where_; }

 private:
  struct Piece {
    size_t file;
    int64_t begin;
  };
  std::string where_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::vector<Piece>> pieces_;
};

}  // namespace nh
