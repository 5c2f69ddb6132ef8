#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dist/data_parallel.h"
#include "dist/tensor_parallel.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/text_file.h"
#include "model/params.h"
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

std::string shard_file_name(int rank, int ranks) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "training_state-%05d-of-%05d.safetensors", rank, ranks);
  return buf;
}

// Ends a phase of a save: when any rank of the group failed, every rank throws (the first rank
// removes the temporary directory), so no rank goes on with a half-written checkpoint.
void agree(Communicator* group, const std::string& failure, const fs::path& tmp, bool lead,
           const std::string& what) {
  double failed = failure.empty() ? 0 : 1;
  if (group) failed = group->all_reduce(failed, ReduceOp::Max);
  if (failed == 0) return;
  if (lead) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  }
  throw Error(failure.empty() ? what + ": another rank failed to write its part" : failure);
}

// Runs `body` and returns what went wrong, "" when nothing did.
template <class F>
std::string attempt(const fs::path& root, const std::string& what, F&& body) {
  try {
    body();
    return "";
  } catch (const fs::filesystem_error& e) {
    return Error(root.string(), what, "a writable directory with room", e.code().message()).what();
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointContents& c,
                            int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(step);
  const bool lead = !c.group || c.group->rank() == 0;
  // Every rank of a group writes into the same directory, so its name cannot hold a pid.
  const fs::path tmp = root / (".tmp-" + step_name(step) + "-" +
                               (c.group ? std::string("ranks") : std::to_string(getpid())));
  const std::string what = "checkpoint " + step_name(step);
  std::string failure;
  if (lead)
    failure = attempt(root, what, [&] {
      fs::create_directories(root);
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    });
  agree(c.group, failure, tmp, lead, what);

  failure = attempt(root, what, [&] {
    if (c.saves_model && c.model.has_adapter() && lead)
      save_peft_adapter(tmp.string(), c.model.config(), c.model.adapter(), c.base_model);
    else if (c.saves_model && !c.model.has_adapter())
      c.model.save_gathered(tmp.string(), lead);
    if (lead) {
      write_file_atomic((tmp / "trainer_state.json").string(), c.trainer_state.dump(2) + "\n");
      write_file_atomic((tmp / "recipe.yaml").string(), c.recipe_yaml);
      if (!c.tokenizer_file.empty() && !fs::exists(tmp / "tokenizer.json"))
        fs::copy_file(c.tokenizer_file, tmp / "tokenizer.json");
    }
    if (!lead && !c.sharded_state) return;
    std::vector<std::pair<std::string, Tensor>> tensors;
    std::map<std::string, std::string> begins;
    for (const auto& p : c.optimizer.state()) {
      if (c.sharded_state && !c.distributed_optimizer) {
        const bool expert =
            norm_kind(c.model, p.name.substr(p.name.find('/') + 1)) == NormKind::Expert;
        if (!(expert ? c.saves_model : c.first_data_rank)) continue;
      }
      tensors.emplace_back(p.name,
                           c.sharded_state ? p.tensor.reshape({p.tensor.numel()}) : p.tensor);
      begins[p.name] = std::to_string(p.begin);
    }
    if (c.saves_model && !c.model.has_adapter() && needs_master(c.model))
      for (const auto& name : c.model.params().names()) {
        if (!c.first_data_rank && norm_kind(c.model, name) != NormKind::Expert) continue;
        const Tensor& w = c.model.params().at(name);
        tensors.emplace_back("master/" + name, c.sharded_state ? w.reshape({w.numel()}) : w);
        begins["master/" + name] = std::to_string(whole_offset(c.model, name));
      }
    if (const Communicator* tp = c.model.tensor_parallel_group())
      begins["tensor_parallel"] = std::to_string(tp->rank()) + "/" + std::to_string(tp->size());
    if (c.sharded_state)
      write_safetensors((tmp / shard_file_name(c.group->rank(), c.group->size())).string(), tensors,
                        begins);
    else
      write_safetensors((tmp / "training_state.safetensors").string(), tensors);
  });
  agree(c.group, failure, tmp, lead, what);

  if (lead)
    failure = attempt(root, what, [&] {
      fs::remove_all(final_dir);
      fs::rename(tmp, final_dir);
      write_file_atomic((root / "latest").string(), step_name(step) + "\n");
    });
  agree(c.group, failure, tmp, lead, what);
  if (lead) remove_old(root, keep_last);
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

SavedState::SavedState(const std::string& dir, const Model& model)
    : where_(dir),
      tp_rank_(model.tensor_parallel_group() ? model.tensor_parallel_group()->rank() : 0),
      tp_size_(model.tensor_parallel_group() ? model.tensor_parallel_group()->size() : 1),
      config_(model.full_config()) {
  std::vector<fs::path> paths;
  if (fs::exists(fs::path(dir) / "training_state.safetensors"))
    paths.push_back(fs::path(dir) / "training_state.safetensors");
  else if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with("training_state-") && name.ends_with(".safetensors"))
        paths.push_back(e.path());
    }
  if (paths.empty())
    throw Error(dir, "training state", "training_state.safetensors or its per-rank pieces", "none");
  std::sort(paths.begin(), paths.end());
  for (const auto& path : paths) {
    files_.emplace_back(path.string());
    const SafetensorsFile& f = files_.back();
    int shard = 0, shards = 1;
    if (auto it = f.metadata().find("tensor_parallel"); it != f.metadata().end())
      if (std::sscanf(it->second.c_str(), "%d/%d", &shard, &shards) != 2 || shards < 1 ||
          shard < 0 || shard >= shards)
        throw Error(path.string(), "metadata tensor_parallel", "RANK/SIZE", "'" + it->second + "'");
    if (saved_tp_size_ != 0 && shards != saved_tp_size_)
      throw Error(path.string(), "metadata tensor_parallel",
                  "the size the other files have, " + std::to_string(saved_tp_size_),
                  std::to_string(shards));
    saved_tp_size_ = shards;
    for (const auto& name : f.names()) {
      int64_t begin = 0;
      if (auto it = f.metadata().find(name); it != f.metadata().end()) {
        size_t used = 0;
        try {
          begin = std::stoll(it->second, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != it->second.size() || begin < 0)
          throw Error(path.string(), "metadata " + name, "the piece's first element index",
                      "'" + it->second + "'");
      }
      pieces_[{shard, name}].push_back({files_.size() - 1, begin});
    }
  }
}

bool SavedState::read(const std::string& name, int64_t begin, int64_t full_numel,
                      Tensor& dst) const {
  if (saved_tp_size_ == tp_size_) return read_shard(tp_rank_, name, begin, full_numel, dst);
  if (!pieces_.count({0, name})) return false;
  // Another split: the whole tensor from every saved shard, then this rank's shard of it.
  const std::string param = name.substr(name.find('/') + 1);
  Shape whole_shape;
  for (const auto& spec : param_specs(config_, config_.tie_word_embeddings))
    if (spec.name == param) whole_shape = spec.shape;
  if (whole_shape.empty()) throw Error(where_, name, "a tensor of the model", "none");
  const TpSplit split = tp_split(config_, param);
  std::vector<Tensor> shards;
  for (int r = 0; r < (split.kind == TpSplit::Whole ? 1 : saved_tp_size_); ++r) {
    Tensor t = Tensor::empty(tp_shard_shape(whole_shape, split, saved_tp_size_), DType::F32);
    if (!read_shard(r, name, 0, t.numel(), t))
      throw Error(where_, name, "pieces of shard " + std::to_string(r), "none");
    shards.push_back(t);
  }
  const Tensor mine = tp_shard(tp_unshard(shards, split), split, tp_rank_, tp_size_);
  if (mine.numel() != full_numel)
    throw Error(where_, name, std::to_string(full_numel) + " elements in this rank's shard",
                std::to_string(mine.numel()));
  dst.reshape({dst.numel()})
      .copy_from(mine.reshape({mine.numel()}).slice0(begin, begin + dst.numel()));
  return true;
}

bool SavedState::read_shard(int shard, const std::string& name, int64_t begin, int64_t full_numel,
                            Tensor& dst) const {
  auto it = pieces_.find({shard, name});
  if (it == pieces_.end()) return false;
  const int64_t n = dst.numel(), end = begin + n;
  Tensor flat = dst.reshape({n});
  int64_t covered = 0, saved_end = 0;
  for (const Piece& p : it->second) {
    const Tensor src = files_[p.file].get(name);
    const int64_t pb = p.begin, pe = p.begin + src.numel();
    saved_end = std::max(saved_end, pe);
    const int64_t a = std::max(begin, pb), b = std::min(end, pe);
    if (a >= b) continue;
    flat.slice0(a - begin, b - begin).copy_from(src.reshape({src.numel()}).slice0(a - pb, b - pb));
    covered += b - a;
  }
  if (saved_end != full_numel)
    throw Error(where_, name, std::to_string(full_numel) + " elements in all",
                std::to_string(saved_end));
  if (covered != n)
    throw Error(
        where_, name,
        "elements " + std::to_string(begin) + ".." + std::to_string(end) + " in the saved pieces",
        std::to_string(covered) + " of them");
  return true;
}

LoadedCheckpoint load_checkpoint(const std::string& dir, const std::string& base_model) {
  const bool adapter = fs::exists(fs::path(dir) / "adapter_config.json");
  if (adapter && base_model.empty())
    throw Error(dir, "base model", "the directory of the model the adapter was trained on", "none");
  Model model = Model::load(adapter ? base_model : dir);
  if (adapter) model.attach_adapter(load_peft_adapter(dir, model.config()));
  const std::string where = (fs::path(dir) / "trainer_state.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(where));
  } catch (const nlohmann::json::exception& e) {
    throw Error(where, "JSON", "valid JSON", e.what());
  }
  return {std::move(model), std::move(j)};
}

void restore_masters(const std::string& dir, Model& model) {
  const SavedState state(dir, model);
  ParamSet& restored = model.has_adapter() ? model.adapter_params() : model.params();
  for (const auto& name : restored.names()) {
    Tensor& w = restored.at(name);
    state.read("master/" + name, whole_offset(model, name), whole_numel(model, name), w);
  }
}

void load_optimizer_state(const std::string& dir, Optimizer& optimizer, const Model& model) {
  const SavedState state(dir, model);
  optimizer.load_state([&](const std::string& name, int64_t begin, int64_t full_numel,
                           Tensor& dst) { return state.read(name, begin, full_numel, dst); },
                       state.where());
}

}  // namespace nh
