// `nemotronh train`: the training loop of a recipe. Gradient accumulation to the global batch,
// mean loss over the tokens of the global batch, global-norm clipping, AdamW, the MoE
// correction-bias update, validation, checkpoints, exact resume, metrics and fault handling
// (docs/TRAINING.md).
#pragma once

#include <cstdint>
#include <string>

#include "train/recipe.h"

namespace nh {

struct TrainOutcome {
  int64_t steps = 0;          // optimizer steps completed in total (resumed ones included)
  double last_loss = 0;       // mean loss of the last step
  double first_loss = 0;      // mean loss of the first step this process ran
  int64_t skipped_steps = 0;  // non-finite steps skipped in this process
  bool interrupted = false;   // stopped by SIGINT/SIGTERM (after a checkpoint)
  std::string checkpoint;     // the last checkpoint written
  double tokens_per_s = 0;    // of the whole job
  int rank = 0;               // of this process in a multi-process job (0 reports)
};

// Runs the recipe; `resume` continues from the newest checkpoint of recipe.out when there is
// one. Progress goes to stderr unless quiet.
TrainOutcome train(const Recipe& recipe, bool resume, bool quiet = false);

// Mean validation loss of a model directory over `iters` micro-batches of the recipe's
// validation split (`nemotronh eval`).
double evaluate(const std::string& model_dir, const Recipe& recipe, int64_t iters);

}  // namespace nh
