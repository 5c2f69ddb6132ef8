// nemotronh init: a freshly initialised model (SPEC §8) written as an HF directory.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "model/presets.h"

namespace nh::cli {

namespace {

struct Options {
  std::string preset, config, out, dtype = "bf16";
  uint64_t seed = 1234;
};

void run(const Options& o) {
  if (o.preset.empty() == o.config.empty())
    throw Error("init", "arguments", "exactly one of --preset and --config", "both or neither");
  const ModelConfig c = o.preset.empty() ? load_config(o.config) : preset_config(o.preset);
  const DType dtype = o.dtype == "bf16" ? DType::BF16 : o.dtype == "fp32" ? DType::F32 : DType::F16;
  if (o.dtype != "bf16" && o.dtype != "fp32" && o.dtype != "fp16")
    throw Error("--dtype", "value", "bf16, fp16 or fp32", o.dtype);
  Model::init(c, o.seed, dtype).save(o.out);
  std::printf("wrote %s (%s, %zu layers %s)\n", o.out.c_str(), c.model_type.c_str(),
              c.layers.size(), c.pattern().c_str());
}

}  // namespace

void add_init(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("init", "Write a freshly initialised model as an HF directory");
  cmd->add_option("--preset", o->preset, "a configuration in configs/models (e.g. tiny-hybrid)");
  cmd->add_option("--config", o->config, "a config.json file or a directory holding one");
  cmd->add_option("--out", o->out, "output directory")->required();
  cmd->add_option("--seed", o->seed, "random seed");
  cmd->add_option("--dtype", o->dtype, "bf16 (default), fp16 or fp32 weights on disk");
  cmd->callback([o] { run(*o); });
}

}  // namespace nh::cli
