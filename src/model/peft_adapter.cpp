#include "model/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/text_file.h"

namespace nh {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

bool is_expert(const LoraTarget& t) { return t.experts > 0; }

// `layers.1.mixer.experts.up_proj` -> (`layers.1.mixer.experts`, `up_proj`).
std::pair<std::string, std::string> split_expert(const std::string& name) {
  const auto dot = name.rfind('.');
  return {name.substr(0, dot), name.substr(dot + 1)};
}

// PEFT's module path of each target (without the base_model.model. prefix): the module itself,
// or for an expert weight its experts module with one `.base_layer` per targeted parameter
// registered after it.
std::map<std::string, std::string> peft_paths(const ModelConfig& config,
                                              const std::vector<LoraTarget>& targets) {
  const std::string prefix = peft_module_prefix(config);
  std::map<std::string, std::vector<std::string>> expert_params;  // module -> params, in order
  for (const char* p : {"up_proj", "down_proj"})
    for (const LoraTarget& t : targets)
      if (is_expert(t) && split_expert(t.name).second == p)
        expert_params[split_expert(t.name).first].push_back(p);
  std::map<std::string, std::string> out;
  for (const LoraTarget& t : targets) {
    if (!is_expert(t)) {
      out[t.name] = prefix + t.name;
      continue;
    }
    const auto [module, param] = split_expert(t.name);
    const auto& params = expert_params[module];
    std::string path = prefix + module;
    for (size_t i = std::find(params.begin(), params.end(), param) - params.begin();
         i + 1 < params.size(); ++i)
      path += ".base_layer";
    out[t.name] = path;
  }
  return out;
}

// Expert e's block of B: ours [E, out, r] <-> PEFT's [out, r·E] (column j·E + e).
Tensor expert_b_to_peft(const Tensor& b) {
  const int64_t e_n = b.size(0), out = b.size(1), r = b.size(2);
  Tensor p = Tensor::empty({out, r * e_n}, DType::F32);
  for (int64_t e = 0; e < e_n; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j)
        p.data<float>()[o * r * e_n + j * e_n + e] = b.data<float>()[(e * out + o) * r + j];
  return p;
}

Tensor expert_b_from_peft(const Tensor& p, int64_t e_n) {
  const int64_t out = p.size(0), r = p.size(1) / e_n;
  Tensor b = Tensor::empty({e_n, out, r}, DType::F32);
  for (int64_t e = 0; e < e_n; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j)
        b.data<float>()[(e * out + o) * r + j] = p.data<float>()[o * r * e_n + j * e_n + e];
  return b;
}

std::vector<std::string> leaf_names(const std::vector<LoraTarget>& targets) {
  std::set<std::string> leaves;
  for (const LoraTarget& t : targets)
    if (!is_expert(t)) leaves.insert(t.name.substr(t.name.rfind('.') + 1));
  return {leaves.begin(), leaves.end()};
}

// target_modules as PEFT reads it: the list entries (with every linear leaf for
// target_linear), or the regular expression alone; the exact module names when both were set.
json target_modules_json(const ModelConfig& config, const LoraAdapter& a) {
  const LoraConfig& c = a.config;
  std::vector<std::string> linear;
  for (const LoraTarget& t : a.targets)
    if (!is_expert(t)) linear.push_back(peft_module_prefix(config) + t.name);
  if (linear.empty()) return nullptr;
  if (c.target_modules_regex.empty()) {
    std::set<std::string> entries(c.target_modules.begin(), c.target_modules.end());
    if (c.target_linear || entries.empty())
      for (const auto& leaf : leaf_names(a.targets)) entries.insert(leaf);
    return std::vector<std::string>(entries.begin(), entries.end());
  }
  if (c.target_modules.empty() && !c.target_linear) return c.target_modules_regex;
  return linear;
}

template <class T>
T field(const json& j, const char* key, const std::string& where, const char* expected) {
  if (!j.contains(key)) throw Error(where, key, expected, "none");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw Error(where, key, expected, j.at(key).dump());
  }
}

// Settings PEFT can hold that this engine does not run: each must be absent, null, false or
// empty (or "none" for bias).
void reject_unsupported(const json& j, const std::string& where) {
  if (j.contains("peft_type") && j["peft_type"] != "LORA")
    throw Error(where, "peft_type", "LORA", j["peft_type"].dump());
  auto off = [&](const char* key) {
    if (!j.contains(key) || j[key].is_null() || j[key] == false ||
        (j[key].is_object() && j[key].empty()) || (j[key].is_array() && j[key].empty()))
      return;
    throw Error(where, key, "unset (this engine runs plain LoRA)", j[key].dump());
  };
  for (const char* key : {"use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save",
                          "rank_pattern", "alpha_pattern", "layers_to_transform", "use_qalora",
                          "trainable_token_indices", "layer_replication"})
    off(key);
  if (j.contains("bias") && j["bias"] != "none")
    throw Error(where, "bias", "\"none\"", j["bias"].dump());
}

LoraConfig config_from_json(const json& j, const std::string& where) {
  reject_unsupported(j, where);
  LoraConfig c;
  c.r = field<int64_t>(j, "r", where, "an integer >= 1");
  c.alpha = field<double>(j, "lora_alpha", where, "a number");
  if (j.contains("lora_dropout") && !j["lora_dropout"].is_null())
    c.dropout = field<double>(j, "lora_dropout", where, "a number in [0, 1)");
  if (j.contains("use_rslora") && !j["use_rslora"].is_null())
    c.rslora = field<bool>(j, "use_rslora", where, "true or false");
  const json tm = j.value("target_modules", json());
  if (tm.is_string()) {
    if (tm == "all-linear")
      c.target_linear = true;
    else
      c.target_modules_regex = tm.get<std::string>();
  } else if (!tm.is_null()) {
    c.target_modules = field<std::vector<std::string>>(j, "target_modules", where,
                                                       "a list of module names or a string");
  }
  const json tp = j.value("target_parameters", json());
  if (!tp.is_null())
    c.target_parameters =
        field<std::vector<std::string>>(j, "target_parameters", where, "a list of parameter names");
  if (c.r < 1) throw Error(where, "r", "an integer >= 1", std::to_string(c.r));
  if (!std::isfinite(c.alpha)) throw Error(where, "lora_alpha", "a finite number", "not finite");
  if (!(c.dropout >= 0 && c.dropout < 1))
    throw Error(where, "lora_dropout", "in [0, 1)", std::to_string(c.dropout));
  return c;
}

}  // namespace

LoraConfig parse_peft_adapter_config(std::string_view text, const std::string& where) {
  const json j = parse_json_text(text, where);
  if (!j.is_object()) throw Error(where, "JSON", "an object", j.dump().substr(0, 40));
  return config_from_json(j, where);
}

std::vector<std::pair<std::string, Tensor>> to_peft_tensors(const ModelConfig& config,
                                                            const LoraAdapter& adapter,
                                                            const ParamSet& tensors) {
  const auto paths = peft_paths(config, adapter.targets);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const LoraTarget& t : adapter.targets) {
    const std::string base = kPrefix + paths.at(t.name);
    Tensor a = tensors.at(lora_a_name(t.name)).to(Device::CPU).to(DType::F32);
    Tensor b = tensors.at(lora_b_name(t.name)).to(Device::CPU).to(DType::F32);
    if (is_expert(t)) {
      a = a.reshape({a.size(0) * a.size(1), a.size(2)}).clone();
      b = expert_b_to_peft(b);
    }
    out.emplace_back(base + ".lora_A.weight", a);
    out.emplace_back(base + ".lora_B.weight", b);
  }
  return out;
}

void save_peft_adapter(const std::string& dir, const ModelConfig& config,
                       const LoraAdapter& adapter, const std::string& base_model) {
  fs::create_directories(dir);
  const LoraConfig& c = adapter.config;
  json target_params = nullptr;
  if (!c.target_parameters.empty()) target_params = c.target_parameters;
  const json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model},
      {"r", c.r},
      {"lora_alpha", c.alpha},
      {"lora_dropout", c.dropout},
      {"use_rslora", c.rslora},
      {"init_lora_weights", c.init == "gaussian" ? json("gaussian") : json(true)},
      {"target_modules", target_modules_json(config, adapter)},
      {"target_parameters", target_params},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"use_dora", false},
      {"modules_to_save", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
      {"inference_mode", true},
  };
  write_safetensors((fs::path(dir) / kWeightsFile).string(),
                    to_peft_tensors(config, adapter, adapter.params), {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / kConfigFile).string(), j.dump(2) + "\n");
}

LoraAdapter load_peft_adapter(const std::string& dir, const ModelConfig& config) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  LoraAdapter adapter;
  adapter.config = parse_peft_adapter_config(
      read_text_file(config_path, "adapter", "a PEFT adapter_config.json"), config_path);
  if (!fs::exists(weights_path))
    throw Error(dir, kWeightsFile, "a PEFT adapter_model.safetensors (convert a .bin first)",
                "none");
  const SafetensorsFile file(weights_path);

  // Every adaptable weight by its PEFT path, were all of them targeted in the config's way
  // (the nesting of expert weights depends on which of them the adapter targets).
  std::vector<LoraTarget> candidates = lora_candidates(config);
  std::set<std::string> expert_params_targeted;
  for (const LoraTarget& t : candidates)
    if (is_expert(t))
      for (const auto& entry : adapter.config.target_parameters)
        if (t.name == entry || t.name.ends_with("." + entry))
          expert_params_targeted.insert(split_expert(t.name).second);
  std::vector<LoraTarget> addressable;
  for (const LoraTarget& t : candidates)
    if (!is_expert(t) || expert_params_targeted.count(split_expert(t.name).second))
      addressable.push_back(t);
  std::map<std::string, const LoraTarget*> by_path;
  const auto paths = peft_paths(config, addressable);
  for (const LoraTarget& t : addressable) by_path[paths.at(t.name)] = &t;

  std::map<std::string, Tensor> a_of, b_of;  // canonical target -> PEFT tensor
  std::map<std::string, const LoraTarget*> found;
  for (const std::string& name : file.names()) {
    const bool is_a = name.ends_with(".lora_A.weight"), is_b = name.ends_with(".lora_B.weight");
    if (!name.starts_with(kPrefix) || !(is_a || is_b))
      throw Error(weights_path, name,
                  "base_model.model.<module>.lora_A.weight or .lora_B.weight (plain LoRA)",
                  "another tensor");
    const std::string path =
        name.substr(std::string(kPrefix).size(), name.size() - std::string(kPrefix).size() - 14);
    const auto it = by_path.find(path);
    if (it == by_path.end())
      throw Error(weights_path, name,
                  "a LoRA pair on a linear module or expert weight of this model",
                  "no such module");
    const LoraTarget& t = *it->second;
    found[t.name] = &t;
    (is_a ? a_of : b_of)[t.name] = file.get(name).to(DType::F32);
  }
  if (found.empty()) throw Error(weights_path, "tensors", "LoRA pairs", "none");

  const int64_t r = adapter.config.r;
  for (const LoraTarget& t : candidates) {  // in parameter order
    if (!found.count(t.name)) continue;
    const std::string a_name = kPrefix + paths.at(t.name) + ".lora_A.weight";
    const std::string b_name = kPrefix + paths.at(t.name) + ".lora_B.weight";
    if (!a_of.count(t.name) || !b_of.count(t.name))
      throw Error(weights_path, a_of.count(t.name) ? b_name : a_name, "a tensor", "none");
    const int64_t e = std::max<int64_t>(1, t.experts);
    const Tensor& a = a_of[t.name];
    const Tensor& b = b_of[t.name];
    if (a.shape() != Shape{e * r, t.in})
      throw Error(weights_path, a_name,
                  shape_str({e * r, t.in}) + " (r = " + std::to_string(r) + ")",
                  shape_str(a.shape()));
    if (b.shape() != Shape{t.out, r * e})
      throw Error(weights_path, b_name,
                  shape_str({t.out, r * e}) + " (r = " + std::to_string(r) + ")",
                  shape_str(b.shape()));
    adapter.targets.push_back(t);
    adapter.params.add(lora_a_name(t.name),
                       is_expert(t) ? a.reshape({t.experts, r, t.in}).clone() : a.clone());
    adapter.params.add(lora_b_name(t.name),
                       is_expert(t) ? expert_b_from_peft(b, t.experts) : b.clone());
  }
  return adapter;
}

}  // namespace nh
