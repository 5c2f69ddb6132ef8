// nemotronh train: pretraining, continued pretraining and fine-tuning from a YAML recipe;
// with no arguments, the built-in first run (a tiny hybrid on a generated corpus).
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/cuda_memory.h"
#include "core/error.h"
#include "core/tensor.h"
#include "dist/launch.h"
#include "io/atomic_file.h"
#include "train/first_run.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace nh::cli {

namespace {

struct Options {
  std::string recipe, out;
  std::vector<std::string> set;
  bool resume = false;
};

void run(Options o) {
  if (!o.out.empty()) o.set.push_back("out=" + o.out);
  std::string path = o.recipe;
  const bool lead = launch_info().rank == 0;  // the first rank of a multi-process job reports
  if (path.empty()) {
    // The first run writes its corpus, tokenizer and recipe, then trains like any recipe.
    const std::string out = o.out.empty() ? "runs/first-run" : o.out;
    Recipe first = first_run_recipe(out + "/data");
    first.out = out;
    path = out + "/first-run.yaml";
    write_file_atomic(path, recipe_to_yaml(first));
    if (lead)
      std::fprintf(stderr, "nemotronh train: the built-in first run (recipe %s)\n", path.c_str());
  }
  const Recipe r = load_recipe(path, o.set);
  const TrainOutcome t = train(r, o.resume);
  if (t.rank != 0) return;
  const int64_t gpu_peak = device_memory_stats().peak;
  const std::string gpu =
      gpu_peak > 0 ? ", GPU " + std::to_string(gpu_peak >> 20) + " MiB" : std::string();
  std::fprintf(stderr,
               "%s after %lld steps: loss %.4f (first %.4f), %.0f tokens/s, peak tensor memory "
               "%.1f MiB host%s; checkpoint %s\n",
               t.interrupted ? "interrupted" : "done", (long long)t.steps, t.last_loss,
               t.first_loss, t.tokens_per_s, double(host_memory_stats().peak) / (1 << 20),
               gpu.c_str(), t.checkpoint.c_str());
}

}  // namespace

void add_train(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("train",
                                 "Train from a YAML recipe (no arguments: the built-in first run)");
  cmd->add_option("--recipe", o->recipe, "YAML recipe (configs/recipes/ has examples)");
  cmd->add_option("--set", o->set, "override a recipe key: key=value (repeatable)");
  cmd->add_option("--out", o->out, "run directory (checkpoints, metrics.jsonl, TensorBoard)");
  cmd->add_flag("--resume", o->resume, "continue from the newest checkpoint in the run directory");
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
