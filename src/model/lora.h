// LoRA adapters (Hu et al. 2021) as PEFT defines them: a low-rank pair beside a frozen weight,
// W + s · B · A with s = alpha / r (or alpha / √r with rsLoRA), on linear modules chosen by name
// (`target_modules`) and on the routed experts' 3-D weights (`target_parameters`: one pair per
// expert). Initialisation as PEFT's: A Kaiming-uniform (bound 1/√in) or Gaussian (std 1/r),
// B zero, so a new adapter leaves the model unchanged.
//
// Canonical adapter names (params.h's names plus PEFT's suffixes):
//   layers.3.mixer.q_proj.lora_A.weight          A [r, in]
//   layers.3.mixer.q_proj.lora_B.weight          B [out, r]
//   layers.1.mixer.experts.up_proj.lora_A.weight A [E, r, in]   (expert e's A is row block e)
//   layers.1.mixer.experts.up_proj.lora_B.weight B [E, out, r]
// peft_adapter.h maps them to PEFT's file names and layouts.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace nh {

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0;  // on the input of the low-rank path of linear modules (PEFT's lora_dropout)
  bool rslora = false;
  std::string init = "default";  // "default" (Kaiming-uniform A) or "gaussian"
  // Linear modules: each entry names modules exactly or as a dotted suffix (`q_proj` matches
  // `model.layers.3.mixer.q_proj`), as PEFT matches a list; or one regular expression matched
  // against the whole module name (PEFT's string form); or every linear module but the LM head.
  std::vector<std::string> target_modules;
  std::string target_modules_regex;
  bool target_linear = false;
  // Expert parameters by name or dotted suffix: `experts.up_proj`, `down_proj`.
  std::vector<std::string> target_parameters;

  double scaling() const;
  bool operator==(const LoraConfig&) const = default;
};

// One adapted weight.
struct LoraTarget {
  std::string name;     // canonical module (layers.3.mixer.q_proj) or expert parameter
                        // (layers.1.mixer.experts.up_proj)
  int64_t experts = 0;  // 0 for a linear module; E for an expert weight [E, out, in]
  int64_t out = 0, in = 0;
};

// Every weight LoRA can adapt in a model of `config` (linear modules and expert weights), with
// its shape, in parameter order.
std::vector<LoraTarget> lora_candidates(const ModelConfig& config);

// The adapter the benchmark and `nemotronh info` options describe: rank r (alpha 2r) on
// `targets` ("linear": every linear module, else a comma list of names), and on the experts'
// up/down weights when `experts`.
LoraConfig lora_config_of_options(int64_t r, const std::string& targets, bool experts);

std::string lora_a_name(const std::string& target);
std::string lora_b_name(const std::string& target);

// The modules and expert weights `lora` selects in a model of `config`, in parameter order.
// A pattern that matches nothing, a target the engine cannot adapt (lm_head, embeddings,
// conv1d, the router), a rank above a target's dimensions or r < 1 is an Error naming `where`
// and the setting.
std::vector<LoraTarget> lora_targets(const ModelConfig& config, const LoraConfig& lora,
                                     const std::string& where);

// The module names PEFT matches patterns against: `model.` + canonical (`backbone.` for
// mamba2 models).
std::string peft_module_prefix(const ModelConfig& config);

struct LoraAdapter {
  LoraConfig config;
  std::vector<LoraTarget> targets;
  ParamSet params;  // lora_A / lora_B of every target, fp32 on the CPU until attached
};

// A new adapter: A drawn from a stream per tensor (seed, name), B zero.
LoraAdapter new_lora_adapter(const ModelConfig& config, const LoraConfig& lora, uint64_t seed,
                             const std::string& where);

}  // namespace nh
