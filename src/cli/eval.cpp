// nemotronh eval: validation loss and perplexity of a model directory on data.
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, recipe;
  std::vector<std::string> set;
  int64_t iters = 8;
};

void run(const Options& o) {
  std::vector<std::string> set = o.set;
  // Without a recipe, evaluate the whole of the given data (a recipe needs a run length;
  // evaluation does not use it).
  if (o.recipe.empty()) set.insert(set.begin(), {"split=0,100,0", "max_steps=1"});
  const Recipe r = load_recipe(o.recipe, set);
  const double loss = evaluate(o.model, r, o.iters);
  std::printf("val_loss %.6f  val_ppl %.4f  (%lld micro-batches of %lld x %lld tokens)\n", loss,
              std::exp(loss), (long long)o.iters, (long long)r.micro_batch_size,
              (long long)r.seq_length);
}

}  // namespace

void add_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("eval", "Validation loss and perplexity of a model on data");
  cmd->add_option("--model", o->model, "HF model directory")->required();
  cmd->add_option("--recipe", o->recipe, "recipe whose data, split and sequence length to use");
  cmd->add_option("--set", o->set, "recipe keys, e.g. --set data=[corpus.jsonl] (repeatable)");
  cmd->add_option("--iters", o->iters, "micro-batches to evaluate")->check(CLI::PositiveNumber);
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
