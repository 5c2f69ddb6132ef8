// The parameters of a model, by canonical name, with the table that says which
// parameters a config has. Canonical names are transformers' named_parameters()
// without the `model.`/`backbone.` prefix: `embeddings.weight`,
// `layers.3.mixer.in_proj.weight`, `layers.1.mixer.experts.up_proj` (fused
// [E, I, Din]), `norm_f.weight`, `lm_head.weight`. weight_names.h maps them to
// the names found in checkpoint files.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace nh {

// How a parameter is initialised for training from scratch (SPEC §8).
enum class Init { Normal, Zero, One, ALogRange, DtBias, OutProjRescaled };

struct ParamSpec {
  std::string name;
  Shape shape;
  Init init = Init::Normal;
  bool trainable = true;    // false: a buffer (the router's correction bias)
  bool weight_decay = true; // Megatron skips norms, biases, A_log, D, dt_bias
};

// Every parameter and buffer of the model the config describes, in a stable
// order (embedding, then layer by layer, then final norm and LM head).
// `attention_biases` adds q/k/v/o biases (present only when a checkpoint has them).
std::vector<ParamSpec> param_specs(const ModelConfig& config, bool tied_head,
                                   bool attention_biases = false);

// Whether canonical name `name` is a layer's fused routed-expert weight
// (`layers.L.mixer.experts.up_proj` or `.down_proj`, [E, ...]).
bool is_expert_weight(const std::string& name);
// L of a `layers.L.…` name; -1 for the embedding, final norm and LM head.
int layer_of(const std::string& name);

// Named tensors in insertion order.
class ParamSet {
 public:
  void add(const std::string& name, Tensor t);
  bool has(const std::string& name) const { return index_.count(name) > 0; }
  Tensor& at(const std::string& name);
  const Tensor& at(const std::string& name) const;
  const std::vector<std::string>& names() const { return names_; }
  // Same names and shapes, zero-filled.
  ParamSet zeros_like(DType dtype) const;
  void fill_zero();
  void remove(const std::string& name);

 private:
  std::vector<std::string> names_;
  std::map<std::string, Tensor> index_;
};

}  // namespace nh
