#include "model/weight_names.h"

#include <regex>

namespace nh {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// Splits `layers.L.mixer.experts.J.up_proj.weight` into (`layers.L.mixer.experts.up_proj`, J).
bool split_per_expert(const std::string& canonical, std::string& fused, int64_t& expert) {
  static const std::regex re(R"((layers\.\d+\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight)");
  std::smatch m;
  if (!std::regex_match(canonical, m, re)) return false;
  fused = m[1].str() + "." + m[3].str();
  expert = std::stoll(m[2].str());
  return true;
}

Tensor convert(const Tensor& t, DType dtype, const std::string& where, const std::string& name) {
  if (!is_float(t.dtype()))
    throw Error(where, name, "a floating-point tensor", std::string("dtype ") + dtype_name(t.dtype()));
  return t.to(dtype);
}

}  // namespace

std::string canonical_name(const std::string& file_name) {
  std::string n = file_name;
  if (starts_with(n, "backbone."))
    n = n.substr(9);
  else if (starts_with(n, "model."))
    n = n.substr(6);
  if (n == "embedding.weight") n = "embeddings.weight";  // mamba_ssm layout
  return n;
}

ModelWeights load_model_weights(const ModelConfig& config, const WeightSet& weights,
                                const std::string& where, DType dtype) {
  // canonical name -> file name; per-expert tensors grouped by their fused name.
  std::map<std::string, std::string> by_canonical;
  std::map<std::string, std::map<int64_t, std::string>> experts;
  for (const auto& f : weights.names()) {
    const std::string c = canonical_name(f);
    std::string fused;
    int64_t j;
    if (split_per_expert(c, fused, j))
      experts[fused][j] = f;
    else
      by_canonical[c] = f;
  }

  ModelWeights out;
  out.tied_head = config.tie_word_embeddings && !by_canonical.count("lm_head.weight");
  for (size_t l = 0; l < config.layers.size(); ++l)
    if (config.layers[l] == LayerKind::Attention &&
        by_canonical.count("layers." + std::to_string(l) + ".mixer.q_proj.bias"))
      out.attention_biases = true;

  std::map<std::string, bool> used;
  for (const auto& spec : param_specs(config, out.tied_head, out.attention_biases)) {
    auto it = by_canonical.find(spec.name);
    if (it != by_canonical.end()) {
      const Tensor t = weights.get(it->second);
      if (t.shape() != spec.shape)
        throw Error(where, it->second, "shape " + shape_str(spec.shape), shape_str(t.shape()));
      out.params.add(spec.name, convert(t, dtype, where, it->second));
      out.file_dtype[spec.name] = t.dtype();
      used[it->second] = true;
      continue;
    }
    if (is_expert_weight(spec.name) && experts.count(spec.name)) {
      // Stack the per-expert matrices into the fused [E, out, in] tensor.
      const auto& files = experts.at(spec.name);
      Tensor fused = Tensor::empty(spec.shape, dtype);
      const Shape one{spec.shape[1], spec.shape[2]};
      for (int64_t j = 0; j < spec.shape[0]; ++j) {
        auto f = files.find(j);
        const std::string expect = "backbone." + spec.name.substr(0, spec.name.rfind('.')) + "." +
                                   std::to_string(j) + spec.name.substr(spec.name.rfind('.')) +
                                   ".weight";
        if (f == files.end()) throw Error(where, expect, "a tensor in the checkpoint", "none");
        const Tensor t = weights.get(f->second);
        if (t.shape() != one) throw Error(where, f->second, "shape " + shape_str(one), shape_str(t.shape()));
        Tensor dst = fused.slice0(j, j + 1).reshape(one);
        dst.copy_from(convert(t, dtype, where, f->second));
        out.file_dtype[spec.name] = t.dtype();
        used[f->second] = true;
      }
      out.params.add(spec.name, fused);
      continue;
    }
    const std::string hf = spec.name == "lm_head.weight" ? spec.name : "backbone." + spec.name;
    throw Error(where, hf, "a tensor of shape " + shape_str(spec.shape) + " in the checkpoint",
                "none");
  }
  for (const auto& f : weights.names())
    if (!used.count(f)) out.extra.emplace_back(f, weights.get(f));
  return out;
}

std::vector<std::pair<std::string, Tensor>> hf_tensors(const ModelConfig& config,
                                                       const ModelWeights& w) {
  std::vector<std::pair<std::string, Tensor>> out;
  auto dtype_for = [&](const std::string& name) {
    auto it = w.file_dtype.find(name);
    return it == w.file_dtype.end() ? w.params.at(name).dtype() : it->second;
  };
  for (const auto& spec : param_specs(config, w.tied_head, w.attention_biases)) {
    const Tensor t = w.params.at(spec.name).to(Device::CPU);
    const DType dt = dtype_for(spec.name);
    const std::string file = spec.name == "lm_head.weight" ? spec.name : "backbone." + spec.name;
    if (is_expert_weight(spec.name)) {
      const std::string base = file.substr(0, file.rfind('.'));
      const std::string proj = file.substr(file.rfind('.'));
      const Shape one{spec.shape[1], spec.shape[2]};
      for (int64_t j = 0; j < spec.shape[0]; ++j)
        out.emplace_back(base + "." + std::to_string(j) + proj + ".weight",
                         t.slice0(j, j + 1).reshape(one).to(dt));
    } else {
      out.emplace_back(file, t.to(dt));
    }
  }
  for (const auto& e : w.extra) out.push_back(e);
  return out;
}

}  // namespace nh
