// nemotronh merge: folds a LoRA adapter into its base model and writes an ordinary HF directory.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "model/peft_adapter.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, adapter, out;
};

void run(const Options& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(o.out, ec) && fs::equivalent(o.out, o.model, ec))
    throw Error("--out", "directory", "another directory than --model (the base stays as it is)",
                o.out);
  Model model = Model::load(o.model);
  model.attach_adapter(load_peft_adapter(o.adapter, model.config()));
  const size_t targets = model.adapter().targets.size();
  model.merge_adapter();
  model.save(o.out);
  std::printf("wrote %s: %s with %zu adapted weights merged\n", o.out.c_str(), o.model.c_str(),
              targets);
}

}  // namespace

void add_merge(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("merge", "Fold a LoRA adapter into its base model (HF directory)");
  cmd->add_option("--model", o->model, "the base model's HF directory")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory")->required();
  cmd->add_option("--out", o->out, "output directory for the merged model")->required();
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
