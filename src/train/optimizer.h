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

// How a parameter is held across ranks, which decides where its squared gradient norm is
// summed: whole (the same on every tensor- and expert-parallel rank), a tensor-parallel shard, or
// an expert-parallel rank's experts.
enum class NormKind { Whole, TensorShard, Expert };

// The groups the gradient norm is summed over (null: none). `data` and `expert_data` are the
// distributed optimizer's: the ranks whose ranges of the non-expert, or expert, parameters
// together make this rank's model.
struct NormGroups {
  Communicator *data = nullptr, *tensor = nullptr, *expert_data = nullptr, *expert = nullptr;
};

// Elements [begin, begin + numel) of this rank's trainable parameter `name` (all of it when
// begin is 0 and param has its full shape): what one optimizer updates of it. With the
// distributed optimizer each data-parallel rank holds such ranges of a flat buffer
// (dist/data_parallel.h).
struct OptimizerRange {
  std::string name;
  Tensor param, grad;  // the range's elements, same shape
  int64_t begin = 0;
  bool decay = true;
  // The saved state's view: the whole parameter's elements (0: param is all of it), and where
  // this rank's part of it starts there (expert parallelism).
  int64_t full_numel = 0, whole_offset = 0;
  NormKind norm = NormKind::Whole;
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
  // Over ranges of parameters, with the groups their squared gradient norm is summed over.
  Optimizer(std::vector<OptimizerRange> ranges, OptimizerSettings settings,
            const ParamSet* full_precision = nullptr, NormGroups groups = {});
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
    int64_t begin, full_numel, whole_offset;
    Tensor param, grad, m, v;
    Tensor master;  // fp32 copy AdamW updates when param is bf16; undefined otherwise
    bool decay;
    NormKind norm;
  };
  OptimizerSettings settings_;
  std::vector<Slot> slots_;
  NormGroups groups_;
};

}  // namespace nh
