#include "model/lora.h"

#include <cmath>
#include <functional>
#include <regex>
#include <set>
#include <sstream>

#include "core/rng.h"
#include "model/init.h"

namespace nh {

namespace {

// The leaf names of the linear modules a Nemotron-H or Mamba-2 model has.
const std::set<std::string> kLinearLeaves = {
    "in_proj", "out_proj", "q_proj",    "k_proj",          "v_proj",
    "o_proj",  "up_proj",  "down_proj", "fc1_latent_proj", "fc2_latent_proj"};

std::string leaf(const std::string& name) { return name.substr(name.rfind('.') + 1); }

// PEFT's rule for a list entry: the whole name, or a dotted suffix of it.
bool matches_entry(const std::string& name, const std::string& entry) {
  return name == entry || name.ends_with("." + entry);
}

struct Module {
  std::string canonical, peft;  // layers.3.mixer.q_proj / model.layers.3.mixer.q_proj
  Shape shape;
  int64_t experts = 0;  // E for an expert weight [E, out, in]
};

struct ModelModules {
  std::vector<Module> linear, experts, other;  // `other`: weights LoRA cannot adapt here
  std::vector<Module> adaptable;               // linear and experts, in parameter order
};

ModelModules model_modules(const ModelConfig& config) {
  const std::string prefix = peft_module_prefix(config);
  ModelModules m;
  for (const ParamSpec& s : param_specs(config, config.tie_word_embeddings)) {
    if (is_expert_weight(s.name)) {
      m.experts.push_back({s.name, prefix + s.name, s.shape, s.shape[0]});
      m.adaptable.push_back(m.experts.back());
      continue;
    }
    if (!s.name.ends_with(".weight")) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);
    const std::string peft = module == "lm_head" ? module : prefix + module;
    if (!kLinearLeaves.count(leaf(module))) {
      m.other.push_back({module, peft, s.shape});
      continue;
    }
    m.linear.push_back({module, peft, s.shape});
    m.adaptable.push_back(m.linear.back());
  }
  if (config.tie_word_embeddings) m.other.push_back({"lm_head", "lm_head", {}});
  return m;
}

std::string leaves_of(const std::vector<Module>& modules) {
  std::set<std::string> names;
  for (const Module& m : modules) names.insert(leaf(m.canonical));
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// An Error when a pattern selects a weight that is not a linear module (the LM head, the
// embedding, conv1d, the router, a norm).
void reject_unadaptable(const std::vector<Module>& other, const std::string& linear_leaves,
                        const std::string& where, const std::string& key,
                        const std::string& pattern,
                        const std::function<bool(const std::string&)>& match) {
  for (const Module& m : other)
    if (match(m.peft))
      throw Error(where, key, "linear modules only (" + linear_leaves + ")",
                  "'" + pattern + "', which selects " + m.peft);
}

}  // namespace

std::vector<LoraTarget> lora_candidates(const ModelConfig& config) {
  LoraConfig all;
  all.r = 1;
  all.target_linear = true;
  if (config.has(LayerKind::Moe)) all.target_parameters = {"experts.up_proj", "experts.down_proj"};
  return lora_targets(config, all, "lora_candidates");
}

LoraConfig lora_config_of_options(int64_t r, const std::string& targets, bool experts) {
  LoraConfig c;
  c.r = r;
  c.alpha = 2.0 * double(r);
  if (targets == "linear") {
    c.target_linear = true;
  } else {
    std::stringstream ss(targets);
    for (std::string t; std::getline(ss, t, ',');) c.target_modules.push_back(t);
  }
  if (experts) c.target_parameters = {"experts.up_proj", "experts.down_proj"};
  return c;
}

double LoraConfig::scaling() const {
  return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
}

std::string lora_a_name(const std::string& target) { return target + ".lora_A.weight"; }
std::string lora_b_name(const std::string& target) { return target + ".lora_B.weight"; }

std::string peft_module_prefix(const ModelConfig& config) {
  return config.model_type == "mamba2" ? "backbone." : "model.";
}

std::vector<LoraTarget> lora_targets(const ModelConfig& config, const LoraConfig& lora,
                                     const std::string& where) {
  if (lora.r < 1) throw Error(where, "lora_r", "an integer >= 1", std::to_string(lora.r));
  if (!(lora.dropout >= 0 && lora.dropout < 1))
    throw Error(where, "lora_dropout", "in [0, 1)", std::to_string(lora.dropout));
  if (lora.init != "default" && lora.init != "gaussian")
    throw Error(where, "lora_init", "default or gaussian", lora.init);
  const ModelModules mods = model_modules(config);
  std::set<std::string> chosen;

  // Adds the linear modules `match` selects; a pattern selecting none, or a weight that is not
  // a linear module, is an Error.
  const auto select = [&](const std::string& pattern, const std::string& expected,
                          const std::function<bool(const std::string&)>& match) {
    reject_unadaptable(mods.other, leaves_of(mods.linear), where, "lora_target_modules", pattern,
                       match);
    size_t hits = 0;
    for (const Module& m : mods.linear)
      if (match(m.peft)) {
        chosen.insert(m.canonical);
        ++hits;
      }
    if (hits == 0)
      throw Error(where, "lora_target_modules", expected, "'" + pattern + "', which matches none");
  };
  if (lora.target_linear)
    for (const Module& m : mods.linear) chosen.insert(m.canonical);
  for (const std::string& entry : lora.target_modules)
    select(entry, "names of linear modules of this model (" + leaves_of(mods.linear) + ")",
           [&](const std::string& name) { return matches_entry(name, entry); });
  if (!lora.target_modules_regex.empty()) {
    // std::regex compiles and matches recursively: a bound keeps a hostile pattern from
    // exhausting the stack.
    if (lora.target_modules_regex.size() > 1000)
      throw Error(where, "lora_target_modules", "a regular expression of at most 1000 characters",
                  std::to_string(lora.target_modules_regex.size()) + " characters");
    std::regex re;
    try {
      re = std::regex(lora.target_modules_regex);
    } catch (const std::regex_error& e) {
      throw Error(where, "lora_target_modules", "a valid regular expression",
                  "'" + lora.target_modules_regex + "' (" + e.what() + ")");
    }
    select(lora.target_modules_regex,
           "a regular expression matching whole module names such as " + mods.linear.front().peft,
           [&](const std::string& name) { return std::regex_match(name, re); });
  }
  for (const std::string& entry : lora.target_parameters) {
    size_t hits = 0;
    for (const Module& m : mods.experts)
      if (matches_entry(m.peft, entry)) {
        chosen.insert(m.canonical);
        ++hits;
      }
    if (hits == 0)
      throw Error(where, "lora_target_parameters",
                  mods.experts.empty() ? std::string("no entries: this model has no routed experts")
                                       : std::string("experts.up_proj or experts.down_proj"),
                  "'" + entry + "', which matches no expert weight");
  }
  if (chosen.empty())
    throw Error(where, "lora_target_modules",
                "some target: lora_target_modules, lora_target_linear or lora_target_parameters",
                "none");

  std::vector<LoraTarget> out;
  for (const Module& m : mods.adaptable) {
    if (!chosen.count(m.canonical)) continue;
    LoraTarget t{m.canonical, m.experts, m.shape[m.shape.size() - 2], m.shape.back()};
    if (lora.r > std::min(t.out, t.in))
      throw Error(where, "lora_r",
                  "at most " + std::to_string(std::min(t.out, t.in)) + " (the smaller side of " +
                      m.peft + ", " + std::to_string(t.out) + " x " + std::to_string(t.in) + ")",
                  std::to_string(lora.r));
    out.push_back(std::move(t));
  }
  return out;
}

LoraAdapter new_lora_adapter(const ModelConfig& config, const LoraConfig& lora, uint64_t seed,
                             const std::string& where) {
  LoraAdapter a{lora, lora_targets(config, lora, where), ParamSet()};
  for (const LoraTarget& t : a.targets) {
    const Shape a_shape = t.experts ? Shape{t.experts, lora.r, t.in} : Shape{lora.r, t.in};
    const Shape b_shape = t.experts ? Shape{t.experts, t.out, lora.r} : Shape{t.out, lora.r};
    Tensor A = Tensor::empty(a_shape, DType::F32);
    Rng rng(seed ^ name_hash(lora_a_name(t.name)));
    // Kaiming-uniform with a = √5 over fan_in = in gives the bound 1/√in (nn.Linear's default).
    const double bound = 1.0 / std::sqrt(double(t.in)), std_dev = 1.0 / double(lora.r);
    for (int64_t i = 0; i < A.numel(); ++i)
      A.data<float>()[i] =
          float(lora.init == "gaussian" ? std_dev * rng.normal() : rng.uniform(-bound, bound));
    a.params.add(lora_a_name(t.name), std::move(A));
    a.params.add(lora_b_name(t.name), Tensor::zeros(b_shape, DType::F32));
  }
  return a;
}

}  // namespace nh
