#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/text_file.h"
#include "model/peft_adapter.h"

namespace nh {

namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", (long long)step);
  return buf;
}

// True when the model holds full-precision parameters its files round (the optimizer holds the
// masters itself when the model computes in bf16).
bool needs_master(const Model& model) {
  for (const auto& [name, dtype] : model.weights().file_dtype)
    if (dtype != DType::F32 && model.params().has(name) &&
        model.params().at(name).dtype() == DType::F32)
      return true;
  return false;
}

void remove_old(const fs::path& dir, int64_t keep_last) {
  std::vector<fs::path> steps;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().starts_with("step-"))
      steps.push_back(e.path());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep_last, 1)) < steps.size(); ++i)
    fs::remove_all(steps[i]);
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step,
                            const CheckpointContents& c, int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp = root / (".tmp-" + step_name(step) + "-" + std::to_string(getpid()));
  try {
    fs::create_directories(root);
    fs::remove_all(tmp);
    if (c.model.has_adapter())
      save_peft_adapter(tmp.string(), c.model.config(), c.model.adapter(), c.base_model);
    else
      c.model.save(tmp.string());
    std::vector<std::pair<std::string, Tensor>> state = c.optimizer.state();
    if (!c.model.has_adapter() && needs_master(c.model))
      for (const auto& name : c.model.params().names())
        state.emplace_back("master/" + name, c.model.params().at(name));
    write_safetensors((tmp / "training_state.safetensors").string(), state);
    write_file_atomic((tmp / "trainer_state.json").string(), c.trainer_state.dump(2) + "\n");
    write_file_atomic((tmp / "recipe.yaml").string(), c.recipe_yaml);
    if (!c.tokenizer_file.empty() && !fs::exists(tmp / "tokenizer.json"))
      fs::copy_file(c.tokenizer_file, tmp / "tokenizer.json");
    fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    write_file_atomic((root / "latest").string(), step_name(step) + "\n");
  } catch (const fs::filesystem_error& e) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw Error(root.string(), "checkpoint " + step_name(step), "a writable directory with room",
                e.code().message());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  remove_old(root, keep_last);
  return final_dir.string();
}

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::exists(root / "latest")) return "";
  std::string name = read_text_file((root / "latest").string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = root / name;
  if (!fs::is_directory(dir))
    throw Error((root / "latest").string(), "checkpoint", "an existing directory", name);
  return dir.string();
}

LoadedCheckpoint load_checkpoint(const std::string& dir, const std::string& base_model) {
  const bool adapter = fs::exists(fs::path(dir) / "adapter_config.json");
  if (adapter && base_model.empty())
    throw Error(dir, "base model", "the directory of the model the adapter was trained on", "none");
  Model model = Model::load(adapter ? base_model : dir);
  if (adapter) model.attach_adapter(load_peft_adapter(dir, model.config()));
  SafetensorsFile state((fs::path(dir) / "training_state.safetensors").string());
  ParamSet& restored = adapter ? model.adapter_params() : model.params();
  for (const auto& name : restored.names())
    if (state.has("master/" + name)) restored.at(name).copy_from(state.get("master/" + name));
  const std::string where = (fs::path(dir) / "trainer_state.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(where));
  } catch (const nlohmann::json::exception& e) {
    throw Error(where, "JSON", "valid JSON", e.what());
  }
  return {std::move(model), std::move(j)};
}

void load_optimizer_state(const std::string& dir, Optimizer& optimizer) {
  const std::string path = (fs::path(dir) / "training_state.safetensors").string();
  SafetensorsFile f(path);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& n : f.names())
    if (!n.starts_with("master/")) tensors.emplace_back(n, f.get(n));
  optimizer.load_state(tensors, path);
}

}  // namespace nh
