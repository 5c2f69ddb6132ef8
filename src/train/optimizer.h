// AdamW over a model's trainable parameters (Model::trainable: the adapter alone under LoRA;
// fp32 master weights and moments, fp64 ones for an fp64 model), with global-norm clipping and
// the weight-decay rule Megatron uses: no decay on norms, biases, A_log, D and dt_bias (every 1-D
// parameter); decay on matrices, conv weights, the embedding and LoRA factors.
// When the model computes in bf16 the optimizer holds the fp32 masters beside the moments (on
// the model's device), updates them and rounds them into the model after each step.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/model.h"

namespace nh {

struct OptimizerSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, clip_grad = 1.0;
};

struct StepResult {
  double grad_norm = 0;  // of the scaled gradients, before clipping
  bool finite = true;    // false: nothing was updated
};

// Elements [begin, begin + numel) of trainable parameter `name` (all of it when begin is 0 and
// param has the full shape): what one optimizer updates of it. With the distributed optimizer
// each data-parallel rank holds such ranges of a flat buffer (dist/data_parallel.h).
struct OptimizerRange {
  std::string name;
  Tensor param, grad;  // the range's elements, same shape
  int64_t begin = 0;
  bool decay = true;
  int64_t full_numel = 0;  // of the whole parameter (0: param is the whole of it)
  // The same on every tensor-parallel rank (counted once in the gradient norm), rather than a
  // tensor-parallel shard.
  bool replicated = true;
};

// A piece of saved optimizer state: elements [begin, begin + tensor.numel()) of the full tensor
// `name` (exp_avg/<param>, exp_avg_sq/<param>, master/<param>).
struct StatePiece {
  std::string name;
  int64_t begin = 0;
  Tensor tensor;
};
// Copies elements [begin, begin + dst.numel()) of the saved tensor `name`, which must have
// full_numel elements, into dst; false when the state has no such tensor (train/checkpoint.h
// reads them from a checkpoint's files).
using StateReader =
    std::function<bool(const std::string& name, int64_t begin, int64_t full_numel, Tensor& dst)>;

class Optimizer {
 public:
  // `full_precision`: the fp32 values a bf16 model was rounded from, by name (any device), to
  // start the masters from; without it they start from the model's own parameters.
  Optimizer(Model& model, OptimizerSettings settings, const ParamSet* full_precision = nullptr);
  // Over ranges of parameters. The squared gradient norm is summed over `norm_group` (the
  // data-parallel ranks whose ranges together make this rank's model), and its tensor-parallel
  // shards' part over `tp_group`, when given.
  Optimizer(std::vector<OptimizerRange> ranges, OptimizerSettings settings,
            const ParamSet* full_precision = nullptr, Communicator* norm_group = nullptr,
            Communicator* tp_group = nullptr);
  // Scales the gradients by grad_scale (1/tokens for the mean loss), clips their global norm
  // to clip_grad and takes AdamW step number `step` (1-based) at rate `lr`. Non-finite
  // gradients update nothing.
  StepResult step(double grad_scale, double lr, int64_t step);
  // Moments (exp_avg/<name>, exp_avg_sq/<name>) and the masters when the optimizer holds them
  // (master/<name>), as pieces of the full tensors, for checkpoints.
  std::vector<StatePiece> state() const;
  // Restores the moments from saved state; a missing piece is an Error naming `where`.
  void load_state(const StateReader& read, const std::string& where);

 private:
  struct Slot {
    std::string name;
    int64_t begin, full_numel;
    Tensor param, grad, m, v;
    Tensor master;  // fp32 copy AdamW updates when param is bf16; undefined otherwise
    bool decay, replicated;
  };
  OptimizerSettings settings_;
  std::vector<Slot> slots_;
  Communicator* norm_group_ = nullptr;
  Communicator* tp_group_ = nullptr;
};

}  // namespace nh
