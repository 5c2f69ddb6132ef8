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
  // Each data-parallel rank holds its own ranges of the state; without it, the ranks after the
  // first (after the first expert group, for the experts) hold copies and write none.
  bool distributed_optimizer = false;
  // Whether this rank takes part in writing the model: the first expert group's whole
  // tensor-parallel groups, which gather the weights (rank 0 writes them); and whether it is
  // the first data-parallel rank (which writes the masters a CPU model's files round, but the
  // experts' of every rank of the first expert group).
  bool saves_model = true, first_data_rank = true;
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
// The model of a checkpoint directory (for an adapter checkpoint: `base_model` with the adapter
// attached) as its files hold it; restore_masters then puts back the fp32 values the files
// rounded (after any tensor-parallel split), and load_optimizer_state the optimizer state once
// an Optimizer exists for the model.
LoadedCheckpoint load_checkpoint(const std::string& dir, const std::string& base_model = "");
void restore_masters(const std::string& dir, Model& model);
void load_optimizer_state(const std::string& dir, Optimizer& optimizer, const Model& model);

// Reads the saved optimizer state of checkpoint `dir`, whole or in pieces written by any layout
// (a resumed run may have another one), for `model`'s layout. A tensor-parallel rank reads its
// shard: the saved shard itself when the tensor-parallel size is the same, else its part of the
// whole tensor put together from every saved shard.
class SavedState {
 public:
  SavedState(const std::string& dir, const Model& model);
  // The StateReader contract (train/optimizer.h); a range the pieces do not cover is an Error.
  bool read(const std::string& name, int64_t begin, int64_t full_numel, Tensor& dst) const;
  const std::string& where() const { return where_; }

 private:
  struct Piece {
    size_t file;
    int64_t begin;
  };
  // read() from the pieces of saved tensor-parallel shard `shard`.
  bool read_shard(int shard, const std::string& name, int64_t begin, int64_t full_numel,
                  Tensor& dst) const;
  std::string where_;
  int tp_rank_, tp_size_, saved_tp_size_ = 0;
  const ModelConfig& config_;  // the whole model's
  std::vector<SafetensorsFile> files_;
  std::map<std::pair<int, std::string>, std::vector<Piece>> pieces_;  // by (shard, name)
};

}  // namespace nh
