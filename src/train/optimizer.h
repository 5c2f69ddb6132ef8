// AdamW over a model's trainable parameters (Model::trainable: the adapter alone under LoRA;
// fp32 master weights and moments), with global-norm clipping and the weight-decay rule
// Megatron uses: no decay on norms, biases, A_log, D and dt_bias (every 1-D parameter); decay on
// matrices, conv weights, the embedding and LoRA factors.
// When the model computes in bf16 the optimizer holds the fp32 masters beside the moments (on
// the model's device), updates them and rounds them into the model after each step.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/model.h"

namespace nh {

struct OptimizerSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, clip_grad = 1.0;
};

struct StepResult {
  double grad_norm = 0;  // of the scaled gradients, before clipping
  bool finite = true;    // false: nothing was updated
};

class Optimizer {
 public:
  // `full_precision`: the fp32 values a bf16 model was rounded from, by name (any device), to
  // start the masters from; without it they start from the model's own parameters.
  Optimizer(Model& model, OptimizerSettings settings, const ParamSet* full_precision = nullptr);
  // Scales the gradients by grad_scale (1/tokens for the mean loss), clips their global norm
  // to clip_grad and takes AdamW step number `step` (1-based) at rate `lr`. Non-finite
  // gradients update nothing.
  StepResult step(double grad_scale, double lr, int64_t step);
  // Moments as named tensors (exp_avg/<name>, exp_avg_sq/<name>) and the masters when the
  // optimizer holds them (master/<name>), for checkpoints.
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores state() from a checkpoint file's tensors; a missing or misshapen tensor is an
  // Error naming `where` and the tensor.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const std::string& where);

 private:
  struct Slot {
    std::string name;
    Tensor param, grad, m, v;
    Tensor master;  // fp32 copy AdamW updates when param is bf16; undefined otherwise
    bool decay;
  };
  OptimizerSettings settings_;
  std::vector<Slot> slots_;
};

}  // namespace nh
